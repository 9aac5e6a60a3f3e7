//! The operations behind `check`, `status` and `reissue`, producing the documents of
//! `output`. The CLI runs them in-process when no daemon runs; the daemon runs them for
//! control-socket requests. Rendering for humans lives here too, so both paths print alike.

use std::path::Path;

use crate::config::{Certificate, Config};
use crate::core::{Reason, Timestamp, humanize};
use crate::error::{Error, Result, exit};
use crate::executor::{Executor, observe};
use crate::output::{
    self, CertificateReport, CheckDoc, LastReport, PendingReport, ReissueDoc, ReissueResult,
    rfc3339,
};
use crate::store::{Journal, OutcomeKind, Store};

/// Resolve NAME arguments against the config (all certificates when empty).
pub fn select<'c>(config: &'c Config, names: &[String]) -> Result<Vec<&'c Certificate>> {
    if names.is_empty() {
        return Ok(config.certificates.values().collect());
    }
    names
        .iter()
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
pub fn journal_of(state_dir: &Path, name: &str) -> Option<Journal> {
    state_dir
        .is_dir()
        .then(|| Store::open(state_dir).ok()?.journal(name).ok())
        .flatten()
}

pub fn outcome_str(k: OutcomeKind) -> &'static str {
    match k {
        OutcomeKind::Installed => "installed",
        OutcomeKind::InstalledNotLoaded => "installed-not-loaded",
        OutcomeKind::Failed => "failed",
        OutcomeKind::RolledBack => "rolled-back",
    }
}

/// When certagent looks at a certificate next by itself: a due retry, the renewal window, or
/// now (something is wrong and no retry is scheduled).
pub fn next_check(
    healthy: bool,
    renew_at: Option<Timestamp>,
    journal: Option<&Journal>,
    now: Timestamp,
) -> Timestamp {
    let retry = journal.and_then(|j| j.retry_at).filter(|&r| r > now);
    match (healthy, retry, renew_at) {
        (_, Some(r), _) => r,
        (true, None, Some(at)) => at.max(now),
        _ => now,
    }
}

pub fn report(cert: &Certificate, journal: Option<&Journal>, now: Timestamp) -> CertificateReport {
    let obs = observe(cert, now);
    let pending = journal.and_then(|j| j.pending.as_ref());
    let healthy = obs.decision.is_healthy();
    let action = match (healthy, pending.is_some()) {
        (_, true) => "resume",
        (false, false) => "reissue",
        (true, false) => "none",
    };
    CertificateReport {
        name: cert.name.clone(),
        healthy,
        reason: obs.decision.reason().map(|r| r.as_str().to_string()),
        reasons: obs
            .decision
            .reasons
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        action: action.to_string(),
        names: cert.names.iter().map(|n| n.to_string()).collect(),
        key_type: cert.key_type.as_str().to_string(),
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        serial: obs.leaf.as_ref().map(|l| l.serial.clone()),
        not_after: obs.decision.not_after.map(rfc3339),
        renew_at: obs.decision.renew_at.map(rfc3339),
        problems: [obs.cert_problem, obs.key_problem]
            .into_iter()
            .flatten()
            .collect(),
        generation: journal.and_then(|j| j.current),
        next_check: Some(rfc3339(next_check(
            healthy || pending.is_some(),
            obs.decision.renew_at,
            journal,
            now,
        ))),
        failures: journal.map(|j| j.failures).unwrap_or(0),
        pending: pending.map(|p| PendingReport {
            reason: p.reason.as_str().to_string(),
            since: rfc3339(p.started_at),
            issuer: p.issuer.clone(),
            attempts: p.attempts,
            order_url: p.order_url.clone(),
            issued: p.issued,
        }),
        last: journal.and_then(|j| j.last.as_ref()).map(|l| LastReport {
            at: rfc3339(l.at),
            result: outcome_str(l.result).to_string(),
            reason: l.reason.as_str().to_string(),
            message: l.message.clone(),
            serial: l.serial.clone(),
            generation: l.generation,
        }),
    }
}

pub fn check_doc(config: &Config, certs: &[&Certificate], now: Timestamp) -> (CheckDoc, u8) {
    let certificates: Vec<CertificateReport> = certs
        .iter()
        .map(|c| {
            report(
                c,
                journal_of(&config.agent.state_dir, &c.name).as_ref(),
                now,
            )
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
        },
        code,
    )
}

/// Re-issue one certificate and describe the outcome (errors become part of the result).
pub async fn reissue_one(executor: &Executor, cert: &Certificate, reason: Reason) -> ReissueResult {
    log::info!(cert = cert.name.as_str(), reason = reason.as_str(); "re-issuing");
    match executor.reissue(cert, reason).await {
        // A failed post_install hook: the certificate is installed (result says so), and the
        // run failed all the same (error set, exit 2).
        Ok(i) => ReissueResult {
            name: cert.name.clone(),
            result: if i.loaded || cert.server.is_none() {
                "installed"
            } else {
                "installed-not-loaded"
            }
            .to_string(),
            changed: true,
            reason: reason.as_str().to_string(),
            serial: Some(i.serial),
            not_after: Some(rfc3339(i.not_after)),
            generation: Some(i.generation),
            error: i.hook_error.as_ref().map(|e| e.to_string()),
            hint: i
                .hook_error
                .as_ref()
                .and_then(|e| e.hint().map(str::to_string)),
        },
        Err(e) => {
            let rolled_back = executor
                .store
                .journal(&cert.name)
                .ok()
                .and_then(|j| j.last)
                .is_some_and(|l| l.result == OutcomeKind::RolledBack);
            ReissueResult {
                name: cert.name.clone(),
                result: if rolled_back { "rolled-back" } else { "failed" }.to_string(),
                changed: false,
                reason: reason.as_str().to_string(),
                serial: None,
                not_after: None,
                generation: None,
                error: Some(e.to_string()),
                hint: e.hint().map(str::to_string),
            }
        }
    }
}

pub fn reissue_doc(certificates: Vec<ReissueResult>) -> (ReissueDoc, u8) {
    let ok = certificates.iter().all(|r| r.error.is_none());
    let changed = certificates.iter().any(|r| r.changed);
    let code = if ok { exit::OK } else { exit::ERROR };
    (
        ReissueDoc {
            schema: output::SCHEMA,
            changed,
            ok,
            certificates,
        },
        code,
    )
}

fn relative(ts: &str, now: Timestamp) -> String {
    match time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.unix_timestamp() > now => format!("in {}", humanize(t.unix_timestamp() - now)),
        Ok(_) => "now".into(),
        Err(_) => ts.to_string(),
    }
}

pub fn render_check(doc: &CheckDoc, now: Timestamp) {
    if doc.certificates.is_empty() {
        println!("no certificates configured");
    }
    for r in &doc.certificates {
        if r.healthy {
            let expiry = match (&r.not_after, &r.renew_at) {
                (Some(na), Some(ra)) => format!(", expires {na}, renews {}", relative(ra, now)),
                _ => String::new(),
            };
            println!(
                "{}: healthy (serial {}{expiry})",
                r.name,
                r.serial.as_deref().unwrap_or("?")
            );
            continue;
        }
        let mut line = format!("{}: needs re-issue: {}", r.name, r.reasons.join(", "));
        if !r.problems.is_empty() {
            line.push_str(&format!(" ({})", r.problems.join("; ")));
        }
        if r.action == "resume" {
            line.push_str("; a re-issue is pending and will be resumed");
        }
        println!("{line}");
    }
}

pub fn render_status(doc: &CheckDoc, now: Timestamp) {
    for r in &doc.certificates {
        println!("{}", r.name);
        println!("  names:       {}", r.names.join(", "));
        println!("  key type:    {}", r.key_type);
        println!(
            "  health:      {}",
            if r.healthy {
                "healthy".to_string()
            } else {
                r.reasons.join(", ")
            }
        );
        println!(
            "  in service:  generation {}, serial {}, expires {}",
            r.generation
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            r.serial.as_deref().unwrap_or("-"),
            r.not_after.as_deref().unwrap_or("-")
        );
        if let Some(p) = &r.pending {
            println!(
                "  pending:     re-issue ({}) since {}, {} attempt(s){}",
                p.reason,
                p.since,
                p.attempts,
                if p.issued {
                    ", certificate issued, not yet installed"
                } else {
                    ""
                }
            );
        }
        if r.failures > 0 {
            println!("  failures:    {} in a row", r.failures);
        }
        if let Some(nc) = &r.next_check {
            println!("  next check:  {nc} ({})", relative(nc, now));
        }
        if let Some(l) = &r.last {
            println!(
                "  last:        {} {} ({}): {}",
                l.at, l.result, l.reason, l.message
            );
        }
    }
}

pub fn render_reissue(doc: &ReissueDoc) {
    for r in &doc.certificates {
        let what = match r.result.as_str() {
            "started" => {
                println!("{}: re-issue started", r.name);
                None
            }
            "installed" => Some("installed and verified in service:"),
            "installed-not-loaded" => Some("installed, not loaded (web server not running):"),
            _ => None,
        };
        if let Some(what) = what {
            println!(
                "{}: {what} serial {} (generation {}), expires {}",
                r.name,
                r.serial.as_deref().unwrap_or("?"),
                r.generation.unwrap_or_default(),
                r.not_after.as_deref().unwrap_or("?")
            );
        }
        // Also after an install: a failed post_install hook is reported, not swallowed.
        if let Some(e) = &r.error {
            eprintln!("certagent: {}: {e}", r.name);
            if let Some(h) = &r.hint {
                eprintln!("  hint: {h}");
            }
        }
    }
}
