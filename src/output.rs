//! The `--json` documents: a stable schema (`"schema": 1`), separate from internal types so
//! refactoring never changes what scripts parse. Times are RFC 3339 UTC strings.

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

pub use crate::core::rfc3339;

/// One certificate in `check` and `status`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CertificateReport {
    pub name: String,
    pub healthy: bool,
    /// The reason that wins, if any.
    pub reason: Option<String>,
    /// Every reason that applies, most urgent first.
    pub reasons: Vec<String>,
    /// What certagent would do / does next: "none", "reissue", "resume".
    pub action: String,
    pub names: Vec<String>,
    pub key_type: String,
    pub cert_file: String,
    pub key_file: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub renew_at: Option<String>,
    pub problems: Vec<String>,
    pub generation: Option<u64>,
    /// When certagent next looks at this certificate by itself (renewal window or retry).
    pub next_check: Option<String>,
    /// Consecutive failed attempts.
    pub failures: u32,
    pub pending: Option<PendingReport>,
    pub last: Option<LastReport>,
    /// The CA lists the serial in service as revoked (CRL).
    pub revoked: Option<RevokedReport>,
    /// ACME Renewal Information for the serial in service.
    pub ari: Option<AriReport>,
    /// A compromised predecessor still to revoke or purge.
    pub compromise: Option<CompromiseReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RevokedReport {
    pub serial: String,
    /// RFC 5280 reason code (1 = keyCompromise).
    pub reason: Option<u8>,
    pub seen_at: String,
    pub source: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AriReport {
    pub window_start: String,
    pub window_end: String,
    pub renew_at: String,
    pub next_fetch: String,
    pub explanation_url: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CompromiseReport {
    pub key_sha256: String,
    pub revocation_pending: bool,
    pub revoke_attempts: u32,
    pub purged: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PendingReport {
    pub reason: String,
    pub since: String,
    pub issuer: String,
    pub attempts: u32,
    pub order_url: Option<String>,
    pub issued: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LastReport {
    pub at: String,
    pub result: String,
    pub reason: String,
    pub message: String,
    pub serial: Option<String>,
    pub generation: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CheckDoc {
    pub schema: u32,
    pub changed: bool,
    pub healthy: bool,
    pub certificates: Vec<CertificateReport>,
}

/// One certificate's result in `reissue`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReissueResult {
    pub name: String,
    /// "installed", "installed-not-loaded", "pending", "failed", "rolled-back" (and from the
    /// daemon: "started"). An installed certificate whose post_install hook failed keeps its
    /// result and has `error` set.
    pub result: String,
    pub changed: bool,
    pub reason: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub hint: Option<String>,
    /// With result "pending": seconds until certagent looks again by itself, if known.
    #[serde(default)]
    pub retry_in: Option<i64>,
}

impl ReissueResult {
    /// A result that installed nothing (yet): its kind and reason, the rest empty.
    pub fn new(name: &str, result: &str, reason: &str) -> ReissueResult {
        ReissueResult {
            name: name.to_string(),
            result: result.to_string(),
            changed: false,
            reason: reason.to_string(),
            serial: None,
            not_after: None,
            generation: None,
            error: None,
            hint: None,
            retry_in: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReissueDoc {
    pub schema: u32,
    pub changed: bool,
    pub ok: bool,
    pub certificates: Vec<ReissueResult>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ErrorDoc {
    pub schema: u32,
    pub changed: bool,
    pub error: String,
    pub hint: Option<String>,
    pub errors: Vec<crate::config::ConfigError>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ValidateDoc {
    pub schema: u32,
    pub changed: bool,
    pub valid: bool,
    pub files: Vec<String>,
    pub certificates: Vec<String>,
    pub errors: Vec<crate::config::ConfigError>,
}

/// `install` and `uninstall`: every step considered, whether it changed (or, with
/// `--dry-run`, would change) the host, and the state of the service afterwards.
#[derive(Serialize, Debug, Clone)]
pub struct InstallDoc {
    pub schema: u32,
    pub changed: bool,
    pub dry_run: bool,
    pub steps: Vec<InstallStep>,
    pub service: ServiceReport,
    /// Configuration errors that kept the service from being started.
    pub errors: Vec<crate::config::ConfigError>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InstallStep {
    /// "directory", "file", "symlink", "remove", "systemctl".
    pub action: String,
    /// The path acted on, or the systemctl verb.
    pub target: String,
    pub changed: bool,
    /// What was (or would be) done, in words.
    pub detail: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ServiceReport {
    pub unit: Option<String>,
    pub enabled: bool,
    /// `None` when systemd is not running here (or with `--root`).
    pub active: Option<bool>,
    /// Why the service was not started, when it was not.
    pub note: Option<String>,
}

pub fn print_json<T: Serialize>(doc: &T) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => print_stdout(&format!("{s}\n")),
        Err(e) => eprintln!("certagent: failed to encode JSON: {e}"),
    }
}

/// Write a document to stdout. A reader that went away (`| head`) is not an error worth a
/// panic, which is what `println!` does on a closed pipe.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
