//! The `--json` documents: a stable schema (`"schema": 1`), separate from internal types so
//! refactoring never changes what scripts parse. Times are RFC 3339 UTC strings.

use serde::Serialize;

use crate::core::Timestamp;

pub const SCHEMA: u32 = 1;

pub fn rfc3339(ts: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// One certificate in `check` and `status`.
#[derive(Serialize, Debug)]
pub struct CertificateReport {
    pub name: String,
    pub healthy: bool,
    /// The reason that wins, if any.
    pub reason: Option<&'static str>,
    /// Every reason that applies, most urgent first.
    pub reasons: Vec<&'static str>,
    /// What certagent would do / does next: "none", "reissue", "resume".
    pub action: &'static str,
    pub names: Vec<String>,
    pub key_type: &'static str,
    pub cert_file: String,
    pub key_file: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub renew_at: Option<String>,
    pub problems: Vec<String>,
    pub generation: Option<u64>,
    pub pending: Option<PendingReport>,
    pub last: Option<LastReport>,
}

#[derive(Serialize, Debug)]
pub struct PendingReport {
    pub reason: &'static str,
    pub since: String,
    pub issuer: String,
    pub attempts: u32,
    pub order_url: Option<String>,
    pub issued: bool,
}

#[derive(Serialize, Debug)]
pub struct LastReport {
    pub at: String,
    pub result: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub serial: Option<String>,
    pub generation: Option<u64>,
}

#[derive(Serialize, Debug)]
pub struct CheckDoc {
    pub schema: u32,
    pub changed: bool,
    pub healthy: bool,
    pub certificates: Vec<CertificateReport>,
}

/// One certificate's result in `reissue`.
#[derive(Serialize, Debug)]
pub struct ReissueResult {
    pub name: String,
    /// "installed", "installed-not-loaded", "failed", "rolled-back".
    pub result: &'static str,
    pub changed: bool,
    pub reason: &'static str,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub hint: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct ReissueDoc {
    pub schema: u32,
    pub changed: bool,
    pub ok: bool,
    pub certificates: Vec<ReissueResult>,
}

#[derive(Serialize, Debug)]
pub struct ErrorDoc {
    pub schema: u32,
    pub changed: bool,
    pub error: String,
    pub hint: Option<String>,
    pub errors: Vec<crate::config::ConfigError>,
}

#[derive(Serialize, Debug)]
pub struct ValidateDoc {
    pub schema: u32,
    pub changed: bool,
    pub valid: bool,
    pub files: Vec<String>,
    pub certificates: Vec<String>,
    pub errors: Vec<crate::config::ConfigError>,
}

pub fn print_json<T: Serialize>(doc: &T) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("certagent: failed to encode JSON: {e}"),
    }
}
