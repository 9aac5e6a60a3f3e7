//! The operations behind `check`, `status` and `reissue`, producing the documents of
//! `output`. The CLI runs them in-process when no daemon runs; the daemon runs them for
//! control-socket requests. Rendering for humans lives here too, so both paths print alike.

use std::path::Path;

use crate::compromise::Blocked;
use crate::config::{Certificate, Config};
use crate::core::{Asked, Reason, RenewalRule, Requested, Timestamp, humanize};
use crate::error::{Error, Result, exit};
use crate::executor::{Executor, Installed, Outcome, Signals, observe};

/// `println!` that does not panic when stdout is closed (`certagent check | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
mod dry_run;
#[cfg(feature = "fleet")]
mod fleet;
mod preflight;
mod render;
pub(crate) use dry_run::{check_supported as dry_run_supported, dry_run};
#[cfg(feature = "fleet")]
pub(crate) use fleet::{cluster_of, fleet_doc, render_fleet, select_shared};
pub(crate) use preflight::preflight;
pub(crate) use render::{render_check, render_reissue, render_status};

use crate::output::{
    self, AriReport, CertificateReport, CheckDoc, CompromiseReport, InstallingReport, LastReport,
    PendingReport, ReissueDoc, ReissueResult, RevokedReport, VerifyReport, rfc3339,
};
use crate::server::Answer;
use crate::store::{Journal, OutcomeKind, Store};

/// Resolve NAME arguments against the config (all certificates when empty).
pub(crate) fn select<'c>(config: &'c Config, names: &[String]) -> Result<Vec<&'c Certificate>> {
    if names.is_empty() {
        return Ok(config.certificates.values().collect());
    }
    // Each certificate once, however often it is named.
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| {
            config.certificate(n).ok_or_else(|| {
                let known: Vec<&str> = config.certificates.keys().map(String::as_str).collect();
                let list = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                Error::msg(format!("no certificate named {n:?} in the configuration"))
                    .with_hint(format!("configured certificates: {list}"))
            })
        })
        .collect()
}

/// The journal, read-only: never create the state directory just to look.
pub(crate) fn journal_of(state_dir: &Path, name: &str) -> Option<Journal> {
    state_dir
        .is_dir()
        .then(|| Store::at(state_dir).journal(name).ok())
        .flatten()
}

pub(crate) fn outcome_str(k: OutcomeKind) -> &'static str {
    match k {
        OutcomeKind::Pending => "pending",
        OutcomeKind::Installed => "installed",
        OutcomeKind::InstalledNotLoaded => "installed-not-loaded",
        OutcomeKind::Failed => "failed",
        OutcomeKind::RolledBack => "rolled-back",
    }
}

pub(crate) fn report(
    config: &Config,
    blocked: &Blocked,
    cert: &Certificate,
    journal: Option<&Journal>,
    now: Timestamp,
) -> CertificateReport {
    let crate::lifecycle::Next {
        observation: obs,
        step,
        drift,
    } = crate::lifecycle::next(config, blocked, cert, journal, now);
    let pending = journal.and_then(|j| j.pending.as_ref());
    let mut problems: Vec<String> = [obs.compromise_problem, obs.cert_problem, obs.key_problem]
        .into_iter()
        .flatten()
        .collect();
    let mut reasons: Vec<String> = obs
        .decision
        .reasons
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    // Reported, not acted on (configuration): listed with the others, healthy still.
    let noted: Vec<String> = obs
        .decision
        .noted
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    reasons.extend(noted.iter().cloned());
    let another_ca = obs.decision.reasons.contains(&Reason::IssuerChanged)
        || obs.decision.noted.contains(&Reason::IssuerChanged);
    if let (true, Some(leaf)) = (another_ca, &obs.leaf) {
        let hint = if cert.reissue_on_issuer_change {
            ""
        } else {
            "; only reported: reissue_on_issuer_change = true replaces it"
        };
        problems.push(format!(
            "the certificate in service was issued by {:?}, not by the configured issuer {:?}{hint}",
            leaf.issuer_dn, cert.issuer
        ));
    }
    if obs.decision.reasons.contains(&Reason::ProfileChanged) {
        let asked = journal
            .and_then(|j| j.installed_profile.as_ref()?.asked.clone())
            .map_or("no ACME profile".to_string(), |p| {
                format!("ACME profile {p:?}")
            });
        let wanted = config.profile_of(cert).map(|p| p.name).unwrap_or_default();
        problems.push(format!(
            "the certificate in service was ordered under {asked}; the configuration asks for {wanted:?}"
        ));
    }
    let mut reason = obs.decision.reason().map(|r| r.as_str().to_string());
    let mut healthy = obs.decision.is_healthy();
    let mut action = step.action();
    // A changed owner, group or mode is work too, but no re-issue: fixed in place.
    if !drift.is_empty() {
        reasons.push(PERMISSIONS_CHANGED.to_string());
        problems.extend(drift);
        if healthy {
            reason = Some(PERMISSIONS_CHANGED.to_string());
            action = "fix-permissions";
            healthy = false;
        }
    }
    CertificateReport {
        name: cert.name.clone(),
        healthy,
        reason,
        reasons,
        noted,
        action: action.to_string(),
        names: cert.names.iter().map(|n| n.to_string()).collect(),
        key_type: cert.key_type.as_str().to_string(),
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        serial: obs.leaf.as_ref().map(|l| l.serial.clone()),
        issuer: journal.and_then(|j| j.issued_by(obs.leaf.as_ref().map(|l| l.serial.as_str()))),
        not_after: obs.decision.not_after.map(rfc3339),
        renew_at: obs.decision.renew_at.map(rfc3339),
        problems,
        generation: journal.and_then(|j| j.current),
        next_check: step.next_look(now).map(rfc3339),
        failures: journal.map(|j| j.failures).unwrap_or(0),
        pending: pending.map(|p| PendingReport {
            reason: p.reason.as_str().to_string(),
            requested_reason: p.requested.map(|r| r.as_str().to_string()),
            since: rfc3339(p.started_at),
            issuer: p.issuer.clone(),
            attempts: p.attempts,
            order_url: p.order_url.clone(),
            issued: p.issued,
        }),
        revoked: journal
            .and_then(|j| j.revoked.as_ref())
            .map(|r| RevokedReport {
                serial: r.serial.clone(),
                reason: r.reason,
                seen_at: rfc3339(r.seen_at),
                source: r.source.clone(),
            }),
        ari: journal
            .and_then(|j| j.ari.as_ref())
            .filter(|a| obs.leaf.as_ref().is_some_and(|l| l.serial == a.serial))
            .map(|a| AriReport {
                window_start: rfc3339(a.window_start),
                window_end: rfc3339(a.window_end),
                renew_at: rfc3339(a.renew_at),
                next_fetch: rfc3339(a.next_fetch),
                explanation_url: a.explanation_url.clone(),
            }),
        compromise: journal
            .and_then(|j| j.post.as_ref())
            .map(|p| CompromiseReport {
                key_sha256: p.old_spki_sha256.clone(),
                revocation_pending: p.revoke.is_some(),
                revoke_attempts: p.revoke_attempts,
                purged: p.purged,
            }),
        verify: Vec::new(),
        installing: journal
            .and_then(|j| j.flip.as_ref())
            .map(|f| InstallingReport {
                from: f.from,
                to: f.to,
                phase: f.phase.as_str().to_string(),
            }),
        profile: journal
            .filter(|j| {
                j.installed_serial.is_some()
                    && j.installed_serial == obs.leaf.as_ref().map(|l| l.serial.clone())
            })
            .and_then(|j| j.installed_profile.as_ref()?.issued.clone()),
        last: journal.and_then(|j| j.last.as_ref()).map(|l| LastReport {
            at: rfc3339(l.at),
            result: outcome_str(l.result).to_string(),
            reason: l.reason.as_str().to_string(),
            message: l.message.clone(),
            serial: l.serial.clone(),
            generation: l.generation,
            requested_reason: l
                .asked
                .as_ref()
                .and_then(|a| a.requested)
                .map(|r| r.as_str().to_string()),
            observed: l
                .asked
                .as_ref()
                .map(|a| a.observed.iter().map(|r| r.as_str().to_string()).collect())
                .unwrap_or_default(),
        }),
    }
}

/// Whether each `verify` endpoint of `cert` answers; each address is connected to once per
/// document (`seen`), however many certificates share it. Blocking: callers run off the
/// event loop.
fn verify_reports(
    config: &Config,
    cert: &Certificate,
    seen: &mut std::collections::HashMap<std::net::SocketAddr, Answer>,
) -> Vec<VerifyReport> {
    let Some(server) = cert.server.as_ref().and_then(|s| config.servers.get(s)) else {
        return Vec::new();
    };
    crate::server::WebServer::new(server)
        .endpoints_for(&cert.names)
        .into_iter()
        .map(
            |crate::server::Target {
                 addr,
                 sni,
                 starttls,
             }| {
                let answer = seen
                    .entry(addr)
                    .or_insert_with(|| crate::server::answer(addr, crate::server::ANSWER_TIMEOUT));
                let error = match answer {
                    Answer::Answered => None,
                    Answer::Refused(e) | Answer::Silent(e) => Some(e.clone()),
                };
                VerifyReport {
                    endpoint: addr.to_string(),
                    sni,
                    starttls: starttls.map(|p| p.as_str().to_string()),
                    answered: error.is_none(),
                    error,
                }
            },
        )
        .collect()
}

pub(crate) fn check_doc(config: &Config, certs: &[&Certificate], now: Timestamp) -> (CheckDoc, u8) {
    let blocked = Blocked::load(config);
    let mut seen = std::collections::HashMap::new();
    let certificates: Vec<CertificateReport> = certs
        .iter()
        .map(|c| {
            let mut r = report(
                config,
                &blocked,
                c,
                journal_of(&config.agent.state_dir, &c.name).as_ref(),
                now,
            );
            r.verify = verify_reports(config, c, &mut seen);
            r
        })
        .collect();
    let healthy = certificates.iter().all(|r| r.healthy);
    let code = if healthy {
        exit::OK
    } else {
        exit::NEEDS_ACTION
    };
    (
        CheckDoc {
            schema: output::SCHEMA,
            changed: false,
            healthy,
            certificates,
            daemon: None,
        },
        code,
    )
}

/// The document of one outcome: the one place an `Outcome` becomes a `ReissueResult`.
/// `reason` is the reason the work was asked for; an install reports the reason it was
/// journalled with, a permission fix `permissions-changed`. A failed post_install hook leaves
/// the certificate installed (the result says so) and fails the run all the same (error
/// set, exit 2).
pub(crate) fn document(name: &str, reason: Reason, outcome: &Outcome) -> ReissueResult {
    let blank = |result: &str| ReissueResult::new(name, result, reason.as_str());
    let failed = |result: &str, e: &Error| {
        let mut r = blank(result);
        r.error = Some(e.to_string());
        r.hint = e.hint().map(str::to_string);
        r
    };
    match outcome {
        Outcome::Installed(i) => installed(name, "installed", i),
        Outcome::InstalledNotLoaded(i) => installed(name, "installed-not-loaded", i),
        Outcome::Pending(w) => {
            let mut r = blank("pending");
            r.hint = Some(w.message.clone());
            r.retry_in = w.retry_in;
            r
        }
        Outcome::Failed(e) => failed("failed", e),
        Outcome::RolledBack(e) => failed("rolled-back", e),
        Outcome::Finished => {
            let mut r = blank("finished");
            r.changed = true;
            r
        }
        Outcome::FinishFailed(e) => failed("finish-failed", e),
        Outcome::Refreshed => blank("refreshed"),
        Outcome::RefreshFailed(e) => failed("refresh-failed", e),
        Outcome::PermissionsFixed { changed } => {
            let mut r = ReissueResult::new(name, "permissions-fixed", PERMISSIONS_CHANGED);
            r.changed = *changed > 0;
            r
        }
        Outcome::PermissionsFailed(e) => {
            let mut r = ReissueResult::new(name, "failed", PERMISSIONS_CHANGED);
            r.error = Some(e.to_string());
            r
        }
    }
}

fn installed(name: &str, result: &str, i: &Installed) -> ReissueResult {
    let mut r = ReissueResult::new(name, result, i.reason.as_str());
    r.changed = true;
    r.serial = Some(i.serial.clone());
    r.not_after = Some(rfc3339(i.not_after));
    r.generation = Some(i.generation);
    r.profile = i.profile.clone();
    r.issuer = i.issuer.clone();
    r.error = i.hook_error.as_ref().map(|e| e.to_string());
    r.hint = i
        .hook_error
        .as_ref()
        .and_then(|e| e.hint().map(str::to_string));
    r
}

/// `document` of a re-issue, with what was asked for and observed when it started.
pub(crate) fn reissue_document(
    name: &str,
    reason: Reason,
    asked: &Asked,
    outcome: &Outcome,
) -> ReissueResult {
    let mut r = document(name, reason, outcome);
    r.requested_reason = asked.requested.map(|q| q.as_str().to_string());
    r.observed = asked
        .observed
        .iter()
        .map(|o| o.as_str().to_string())
        .collect();
    r
}

/// Re-issue one certificate (the executor tells the operators how it went). `requested` is
/// the operator's reason in their words, when an operator asked: it is logged and journalled
/// as given, beside what `check` observes now.
pub(crate) async fn reissue_one(
    executor: &Executor,
    cert: &Certificate,
    reason: Reason,
    requested: Option<Requested>,
) -> (Outcome, Asked) {
    let asked = Asked {
        requested,
        observed: observed_now(executor, cert),
    };
    let said = requested.map_or(reason.as_str(), |r| r.as_str());
    log::info!(cert = cert.name.as_str(), reason = said, observed = asked.observed_list().as_str(); "re-issuing");
    let outcome = reissue_through(executor, cert, reason, &asked).await;
    if let Outcome::Installed(_) | Outcome::InstalledNotLoaded(_) = outcome {
        warn_if_due_at_install(executor, cert);
    }
    (outcome, asked)
}

/// A shared certificate goes through the fleet; any other is this host's alone.
async fn reissue_through(
    executor: &Executor,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
) -> Outcome {
    #[cfg(feature = "fleet")]
    if cert.shared
        && let Some(link) = executor.fleet.as_ref()
    {
        return crate::fleet::reissue(executor, link, cert, reason, asked).await;
    }
    executor.reissue(cert, reason, asked).await
}

/// The reasons `check` gives for `cert` now (empty when it is healthy).
fn observed_now(executor: &Executor, cert: &Certificate) -> Vec<Reason> {
    let blocked = Blocked::load(&executor.config);
    let journal = executor.store.journal(&cert.name).ok();
    let signals = Signals::for_cert(&executor.config, &blocked, journal.as_ref(), &cert.name);
    observe(cert, executor.clock.now(), &signals)
        .decision
        .reasons
}

/// A certificate that was already due for renewal when it was installed is renewed half-way
/// through what was left of its lifetime (never in a loop): say so, and what to change.
fn warn_if_due_at_install(executor: &Executor, cert: &Certificate) {
    let journal = executor.store.journal(&cert.name).ok();
    let signals = Signals {
        journal: journal.as_ref(),
        ..Signals::default()
    };
    let obs = observe(cert, executor.clock.now(), &signals);
    let (Some(RenewalRule::AfterInstall), Some(at), Some(leaf)) =
        (obs.decision.renewal_rule, obs.decision.renew_at, &obs.leaf)
    else {
        return;
    };
    let window = match cert.renew_before {
        Some(b) => format!("renew_before = \"{b}\""),
        None => "a third of its lifetime".into(),
    };
    log::warn!(
        cert = cert.name.as_str(), serial = leaf.serial.as_str(), event = "due-at-install";
        "the new certificate, valid for {}, was already inside its renewal window ({window}) when it was installed: it is renewed at {}, half-way through what was left of its lifetime; hint: make renew_before shorter than the lifetime of the certificates issuer {:?} sends",
        humanize(leaf.not_after - leaf.not_before), rfc3339(at), cert.issuer
    );
}

/// Install a certificate handed back for a pending manual re-issue. Whatever stopped it is
/// reported as a failure (reason `forced`).
pub(crate) async fn import_one(executor: &Executor, cert: &Certificate, data: &[u8]) -> Outcome {
    let outcome = executor.import(cert, data).await;
    if let Outcome::Installed(_) | Outcome::InstalledNotLoaded(_) = outcome {
        warn_if_due_at_install(executor, cert);
    }
    outcome
}

/// The reason `check` gives for kept generations whose access differs from the config.
pub(crate) use crate::lifecycle::PERMISSIONS_CHANGED;

pub(crate) fn reissue_doc(certificates: Vec<ReissueResult>) -> (ReissueDoc, u8) {
    let ok = certificates.iter().all(|r| r.error.is_none());
    let changed = certificates.iter().any(|r| r.changed);
    let pending = certificates.iter().any(|r| r.result == "pending");
    let code = match (ok, pending) {
        (false, _) => exit::ERROR,
        (true, true) => exit::PENDING,
        (true, false) => exit::OK,
    };
    (
        ReissueDoc {
            schema: output::SCHEMA,
            changed,
            ok,
            dry_run: false,
            certificates,
        },
        code,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Waiting;

    fn installed(hook_error: Option<Error>) -> Installed {
        Installed {
            reason: Reason::KeyCompromised,
            generation: 7,
            serial: "8ded".into(),
            not_after: 1_800_000_000,
            loaded: true,
            hook_error,
            profile: None,
            issuer: Some("backup".into()),
        }
    }

    fn doc(reason: Reason, outcome: Outcome) -> serde_json::Value {
        serde_json::to_value(document("site", reason, &outcome)).unwrap()
    }

    #[test]
    fn an_install_reports_its_own_reason_serial_and_generation() {
        let d = doc(Reason::Forced, Outcome::Installed(installed(None)));
        assert_eq!(d["result"], "installed");
        assert_eq!(d["reason"], "key-compromised");
        assert_eq!(d["changed"], true);
        assert_eq!(d["serial"], "8ded");
        assert_eq!(d["generation"], 7);
        assert_eq!(d["issuer"], "backup");
        assert_eq!(d["not_after"], rfc3339(1_800_000_000));
        assert!(d["error"].is_null());
        let d = doc(Reason::Forced, Outcome::InstalledNotLoaded(installed(None)));
        assert_eq!(d["result"], "installed-not-loaded");
    }

    #[test]
    fn a_failed_post_install_hook_is_an_install_with_an_error() {
        let hook = Error::msg("post_install hook of \"site\" failed: exit 1").with_hint("fix it");
        let r = document(
            "site",
            Reason::Forced,
            &Outcome::Installed(installed(Some(hook))),
        );
        assert_eq!(r.result, "installed");
        assert!(r.changed);
        assert_eq!(
            r.error.as_deref(),
            Some("post_install hook of \"site\" failed: exit 1")
        );
        assert_eq!(r.hint.as_deref(), Some("fix it"));
        let (_, code) = reissue_doc(vec![r]);
        assert_eq!(code, exit::ERROR);
    }

    #[test]
    fn pending_is_no_error_and_carries_when_to_look_again() {
        let waiting = Waiting {
            message: "submit the CSR".into(),
            retry_in: Some(600),
            news: true,
        };
        let r = document("site", Reason::Expiring, &Outcome::Pending(waiting));
        assert_eq!(r.result, "pending");
        assert_eq!(r.reason, "expiring");
        assert_eq!(r.hint.as_deref(), Some("submit the CSR"));
        assert_eq!(r.retry_in, Some(600));
        assert!(r.error.is_none() && !r.changed);
        let (_, code) = reissue_doc(vec![r]);
        assert_eq!(code, exit::PENDING);
    }

    #[test]
    fn failures_carry_the_asked_reason_the_error_and_its_hint() {
        let e = || Error::msg("boom").with_hint("look");
        for (outcome, result) in [
            (Outcome::Failed(e()), "failed"),
            (Outcome::RolledBack(e()), "rolled-back"),
            (Outcome::FinishFailed(e()), "finish-failed"),
            (Outcome::RefreshFailed(e()), "refresh-failed"),
        ] {
            let r = document("site", Reason::Forced, &outcome);
            assert_eq!(r.result, result);
            assert_eq!(r.reason, "forced");
            assert_eq!(r.error.as_deref(), Some("boom"));
            assert_eq!(r.hint.as_deref(), Some("look"));
            assert!(!r.changed && r.serial.is_none());
        }
    }

    #[test]
    fn finishing_refreshing_and_fixing_permissions_have_their_own_results() {
        let r = document("site", Reason::Forced, &Outcome::Finished);
        assert_eq!((r.result.as_str(), r.changed), ("finished", true));
        let r = document("site", Reason::Forced, &Outcome::Refreshed);
        assert_eq!((r.result.as_str(), r.changed), ("refreshed", false));
        let r = document(
            "site",
            Reason::Forced,
            &Outcome::PermissionsFixed { changed: 2 },
        );
        assert_eq!(
            (r.result.as_str(), r.reason.as_str(), r.changed),
            ("permissions-fixed", PERMISSIONS_CHANGED, true)
        );
        let r = document(
            "site",
            Reason::Forced,
            &Outcome::PermissionsFixed { changed: 0 },
        );
        assert!(!r.changed);
        let failed = Outcome::PermissionsFailed(Error::msg("chown").with_hint("not shown"));
        let r = document("site", Reason::Forced, &failed);
        assert_eq!(
            (r.result.as_str(), r.reason.as_str()),
            ("failed", PERMISSIONS_CHANGED)
        );
        assert_eq!(r.error.as_deref(), Some("chown"));
        assert!(r.hint.is_none());
    }
}
