//! Inputs that used to wedge or mislead the daemon (issue #14): a job that panics, a failed
//! attempt that backed off a healthy certificate (and outlived a restart), a list of
//! compromised keys that cannot be read, a certificate that is due for renewal the moment it
//! is installed. No web server: the certificates are installed only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Run, run_certagent, run_certagent_under, wait_until};

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    key_file: PathBuf,
}

impl Site {
    /// One certificate `site` for a.test, installed only, with `agent_extra` in `[agent]`,
    /// `cert_extra` in `[certificate.site]` and `tables` (issuers) after it.
    fn new(agent_extra: &str, cert_extra: &str, tables: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("ssl")).unwrap();
        std::fs::create_dir_all(p.join("etc")).unwrap();
        let config = p.join("etc/config.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{s}\"\nruntime_dir = \"{r}\"\nlock_timeout = \"5s\"\n{agent_extra}\n\n[certificate.site]\nnames = [\"a.test\"]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n{cert_extra}\n\n{tables}\n",
                s = p.join("state").display(),
                r = p.join("run").display(),
                c = p.join("ssl/site.pem").display(),
                k = p.join("ssl/site.key").display(),
            ),
        )
        .unwrap();
        Site {
            key_file: p.join("ssl/site.key"),
            config,
            dir,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn certagent(&self, args: &[&str]) -> Run {
        run_certagent(&self.config, args, &[])
    }

    /// A command that must not hang: killed after 30 s (exit 124), which fails the test.
    fn certagent_bounded(&self, args: &[&str]) -> Run {
        run_certagent_under(&["timeout", "30"], &self.config, args, &[])
    }

    fn daemon(&self, log: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&self.config, &self.path(log), env)
    }

    fn key(&self) -> Option<String> {
        std::fs::read_to_string(&self.key_file).ok()
    }
}

/// The text a daemon logged after `from` bytes.
fn log_since(daemon: &Daemon, from: usize) -> String {
    daemon.log().get(from..).unwrap_or_default().to_string()
}

/// The first log line containing `needle`.
fn line_with(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
        .to_string()
}

#[test]
fn a_panicking_job_is_reported_failed_with_its_reason_and_does_not_wedge_the_certificate() {
    let site = Site::new("", "", "");
    let first = site.certagent(&["reissue", "--now", "site"]);
    assert_eq!(first.code, 0, "{first:?}");
    // The daemon's re-issues panic once their key is persisted (a bug, as an overflow was).
    let daemon = site.daemon(
        "daemon.log",
        &[("CERTAGENT_FAILPOINT", "after-key-persisted=panic")],
    );

    let run = site.certagent_bounded(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "the re-issue must fail, not hang: {run:?}");
    assert!(
        run.stderr.contains(
            "certagent: site: the job for \"site\" crashed: failpoint after-key-persisted"
        ),
        "{run:?}"
    );
    // The message an operator reads carries the reason, not the last success's.
    daemon.wait_log("re-issue failed, retrying in", Duration::from_secs(10));
    let line = line_with(&daemon.log(), "re-issue failed, retrying in");
    assert!(
        line.contains(": the job for \"site\" crashed: failpoint after-key-persisted"),
        "{line}"
    );
    assert!(!line.contains("installed and verified"), "{line}");
    // Not left in flight: asked again, it is tried again (and fails again), never a hang.
    let again = site.certagent_bounded(&["reissue", "--now", "site"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("crashed"), "{again:?}");
    let status = site.certagent_bounded(&["status", "--json"]);
    let last = &status.json()["certificates"][0]["last"];
    assert_eq!(last["result"], "failed", "{status:?}");
    assert!(
        last["message"].as_str().unwrap().contains("crashed"),
        "{status:?}"
    );
    // The certificate installed before is still the one in service.
    let check = site.certagent_bounded(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn a_failed_attempt_neither_holds_back_a_new_trigger_nor_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let veto = dir.path().join("veto");
    let site = Site::new(
        "",
        &format!(
            "pre_install = [\"/bin/sh\", \"-c\", \"test ! -e {}\"]",
            veto.display()
        ),
        "",
    );
    // 1. The first issue is vetoed by the hook: backoff, with the hook's message.
    std::fs::write(&veto, "").unwrap();
    let mut daemon = site.daemon("daemon1.log", &[]);
    daemon.wait_log("re-issue failed, retrying in", Duration::from_secs(20));
    let line = line_with(&daemon.log(), "re-issue failed, retrying in");
    assert!(line.contains("pre_install hook of \"site\""), "{line}");
    assert_eq!(daemon.stop(), Some(0));

    // 2. Fixed (say `certagent install` widened what the unit may write) and restarted: the
    //    old backoff is not waited out.
    std::fs::remove_file(&veto).unwrap();
    let daemon = site.daemon("daemon2.log", &[]);
    let decided = wait_until(Duration::from_secs(20), || {
        let log = daemon.log();
        log.contains("event=installed") || log.contains("retry scheduled")
    });
    assert!(decided, "{}", daemon.log());
    assert!(daemon.log().contains("event=installed"), "{}", daemon.log());
    assert_eq!(site.certagent(&["check"]).code, 0);

    // 3. A forced re-issue fails while the certificate in service stays healthy.
    std::fs::write(&veto, "").unwrap();
    let run = site.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    // Its outcome is known once the daemon has looked at the certificate again: the
    // pending re-issue waits for its retry.
    let failed = wait_until(Duration::from_secs(10), || {
        let log = daemon.log();
        log.matches("re-issue failed, retrying in").count() == 1 && log.contains("retry scheduled")
    });
    assert!(failed, "{}", daemon.log());
    std::fs::remove_file(&veto).unwrap();

    // 4. The key is deleted: a new trigger, acted on at once, not after the backoff.
    let from = daemon.log().len();
    std::fs::remove_file(&site.key_file).unwrap();
    let decided = wait_until(Duration::from_secs(20), || {
        let log = log_since(&daemon, from);
        log.contains("event=detected") || log.contains("retry scheduled")
    });
    assert!(decided, "{}", daemon.log());
    let log = log_since(&daemon, from);
    assert!(
        log.contains("reason=key-missing event=detected"),
        "the deleted key waited out the backoff of the failed forced re-issue:\n{log}"
    );
    let healed = wait_until(Duration::from_secs(20), || {
        log_since(&daemon, from).contains("event=installed")
    });
    assert!(healed, "{}", daemon.log());
    assert_eq!(site.certagent(&["check"]).code, 0);
}

#[test]
fn a_list_of_compromised_keys_that_cannot_be_read_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "# nothing leaked yet\n").unwrap();
    let site = Site::new(&format!("key_blocklist = [\"{}\"]", list.display()), "", "");
    assert_eq!(site.certagent(&["reissue", "--now", "site"]).code, 0);
    let key = site.key().unwrap();

    // Oversized: not one digest of it can be trusted to be absent.
    std::fs::write(&list, "#".repeat(17 << 20)).unwrap();
    let check = site.certagent(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(
        check.stdout.trim(),
        format!(
            "site: unhealthy: compromise-unknown (key blocklist: failed to read {:?}: larger than 16384 KiB); nothing is re-issued until the list can be read",
            list.display().to_string()
        )
    );
    let json = site.certagent(&["check", "--json"]).json();
    let report = &json["certificates"][0];
    assert_eq!(report["healthy"], false, "{json}");
    assert_eq!(report["reason"], "compromise-unknown", "{json}");
    assert_eq!(report["action"], "hold", "{json}");
    let status = site.certagent(&["status"]);
    assert!(
        status
            .stdout
            .contains("  problem:     key blocklist: failed to read"),
        "{status:?}"
    );
    // Nothing is installed over it with a key that may be listed, not even when forced.
    let run = site.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "certagent: site: failed to re-issue \"site\": cannot tell which keys are compromised: key blocklist: failed to read"
        ),
        "{run:?}"
    );
    assert_eq!(site.key().as_deref(), Some(key.as_str()));
    let status = site.certagent(&["status", "--json"]).json();
    let last = &status["certificates"][0]["last"];
    assert_eq!(last["result"], "failed", "{status}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("cannot tell which keys are compromised"),
        "the refusal is the last outcome, not the install before it: {status}"
    );

    // certagent's own memory of compromised keys, unreadable: the same.
    std::fs::write(&list, "# nothing leaked yet\n").unwrap();
    let memory = site.path("state/compromised-keys");
    std::fs::create_dir_all(&memory).unwrap();
    let check = site.certagent(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check.stdout.contains(&format!(
            "compromise-unknown (certagent's list of compromised keys: failed to read {:?}: not a regular file)",
            memory.display().to_string()
        )),
        "{check:?}"
    );

    // The daemon holds too: a deleted key is not replaced while the memory is unreadable...
    let daemon = site.daemon("daemon.log", &[]);
    let held = "nothing is re-issued until it can be read";
    daemon.wait_log(held, Duration::from_secs(10));
    std::fs::remove_file(&site.key_file).unwrap();
    let again = wait_until(Duration::from_secs(20), || {
        daemon.log().matches(held).count() >= 2
    });
    assert!(again, "{}", daemon.log());
    assert!(
        !daemon.log().contains("re-issue needed"),
        "{}",
        daemon.log()
    );
    assert!(site.key().is_none());
    // ... and is, once it can be read again (a blocklist written makes the daemon look).
    std::fs::remove_dir(&memory).unwrap();
    std::fs::write(&list, "# still nothing leaked\n").unwrap();
    daemon.wait_log("event=installed", Duration::from_secs(20));
    assert_eq!(site.certagent(&["check"]).code, 0);
}

/// Sign the CSR certagent wrote for a manual CA, valid from an hour ago for `days`.
fn sign_csr(csr_pem: &str, days: i64) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "short-lived CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let der = common::pem_to_der(csr_pem);
    let mut csr = CertificateSigningRequestParams::from_der(&der.into()).unwrap();
    csr.params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    csr.params.not_after = csr.params.not_before + time::Duration::days(days);
    let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    format!("{}{}", csr.signed_by(&issuer).unwrap().pem(), ca.pem())
}

#[test]
fn a_certificate_due_when_installed_is_installed_once_and_renewed_half_way() {
    // The CA sends 6-day certificates; the window asks for 7 days.
    let site = Site::new(
        "",
        "issuer = \"ca\"\nrenew_before = \"7d\"",
        "[issuer.ca]\nkind = \"manual\"\n",
    );
    let run = site.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 75, "{run:?}");
    let csr = std::fs::read_to_string(site.path("state/outbox/site.csr")).unwrap();
    let cert = site.path("issued.pem");
    std::fs::write(&cert, sign_csr(&csr, 6)).unwrap();

    let import = site.certagent(&["import", "site", cert.to_str().unwrap()]);
    assert_eq!(import.code, 0, "{import:?}");
    let warning = line_with(&import.stderr, "certagent: warning: ");
    assert!(
        warning.contains(
            "the new certificate, valid for 6d 0h, was already inside its renewal window (renew_before = \"7d\") when it was installed: it is renewed at "
        ) && warning.contains(
            ", half-way through what was left of its lifetime; hint: make renew_before shorter than the lifetime of the certificates issuer \"ca\" sends"
        ),
        "{import:?}"
    );
    // Healthy, due in about three days, not now.
    let json = site.certagent(&["check", "--json"]).json();
    let report = &json["certificates"][0];
    assert_eq!(report["healthy"], true, "{json}");
    let renew_at = time::OffsetDateTime::parse(
        report["renew_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ahead = renew_at - time::OffsetDateTime::now_utc();
    assert!(
        ahead > time::Duration::hours(70) && ahead < time::Duration::hours(73),
        "{json}"
    );
    // The daemon decides about it before it says it is ready: nothing to do.
    let daemon = site.daemon("daemon.log", &[]);
    assert!(
        !daemon.log().contains("re-issue needed"),
        "{}",
        daemon.log()
    );
    assert!(Path::new(&site.key_file).exists());
}
