//! The `--json` documents: a stable schema (`"schema": 1`), separate from internal types so
//! refactoring never changes what scripts parse. Times are RFC 3339 UTC strings.

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

pub(crate) use crate::core::rfc3339;

/// One certificate in `check` and `status`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct CertificateReport {
    pub(crate) name: String,
    pub(crate) healthy: bool,
    /// The reason that wins, if any.
    pub(crate) reason: Option<String>,
    /// Every reason that applies, most urgent first (those only reported last).
    pub(crate) reasons: Vec<String>,
    /// Reasons that apply but, as configured, are only reported (`issuer-changed` without
    /// `reissue_on_issuer_change`): they make no re-issue and leave `healthy` as it is.
    #[serde(default)]
    pub(crate) noted: Vec<String>,
    /// What certagent would do / does next: "none", "reissue", "resume".
    pub(crate) action: String,
    pub(crate) names: Vec<String>,
    pub(crate) key_type: String,
    pub(crate) cert_file: String,
    pub(crate) key_file: String,
    pub(crate) serial: Option<String>,
    pub(crate) not_after: Option<String>,
    pub(crate) renew_at: Option<String>,
    pub(crate) problems: Vec<String>,
    pub(crate) generation: Option<u64>,
    /// When certagent next looks at this certificate by itself (renewal window or retry).
    pub(crate) next_check: Option<String>,
    /// Consecutive failed attempts.
    pub(crate) failures: u32,
    pub(crate) pending: Option<PendingReport>,
    pub(crate) last: Option<LastReport>,
    /// The CA lists the serial in service as revoked (CRL).
    pub(crate) revoked: Option<RevokedReport>,
    /// ACME Renewal Information for the serial in service.
    pub(crate) ari: Option<AriReport>,
    /// A compromised predecessor still to revoke or purge.
    pub(crate) compromise: Option<CompromiseReport>,
    /// Each `verify` endpoint of the certificate's server and whether it accepts a
    /// connection (TCP, no TLS); empty without a server.
    #[serde(default)]
    pub(crate) verify: Vec<VerifyReport>,
    /// An install in flight: the new generation is flipped in but not yet proven served
    /// (the server may still serve `from`); `null` otherwise.
    #[serde(default)]
    pub(crate) installing: Option<InstallingReport>,
    /// The ACME profile the certificate in service was issued under, as certagent recorded
    /// it when it installed it; `null`: none, or not installed by certagent.
    #[serde(default)]
    pub(crate) profile: Option<String>,
    /// The configured issuer the certificate in service came from (of a failover list, the
    /// one that issued it); `null` when certagent did not install it (or before it recorded
    /// that).
    #[serde(default)]
    pub(crate) issuer: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct InstallingReport {
    pub(crate) from: Option<u64>,
    pub(crate) to: u64,
    /// "flipped" (files point at `to`), "reloading" (config test and reload), "verifying"
    /// (waiting for every endpoint to serve it).
    pub(crate) phase: String,
}

/// `status`: whether a daemon answered, and what is wrong with the files on disk when the
/// daemon runs on the configuration it read before.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct DaemonReport {
    /// The daemon answered on its control socket (the document is its view).
    pub(crate) running: bool,
    /// The configuration files on disk do not load; the daemon keeps the one it has. Empty
    /// when they load.
    #[serde(default)]
    pub(crate) config_errors: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifyReport {
    /// `address:port`.
    pub(crate) endpoint: String,
    /// The SNI a re-issue probes it with.
    pub(crate) sni: String,
    /// "smtp", "imap" or "pop3": the plain-text protocol upgraded before the handshake;
    /// absent for a port that speaks TLS at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) starttls: Option<String>,
    pub(crate) answered: bool,
    /// Why not (`connection refused`, a timeout), when it did not.
    pub(crate) error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct RevokedReport {
    pub(crate) serial: String,
    /// RFC 5280 reason code (1 = keyCompromise).
    pub(crate) reason: Option<u8>,
    pub(crate) seen_at: String,
    pub(crate) source: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct AriReport {
    pub(crate) window_start: String,
    pub(crate) window_end: String,
    pub(crate) renew_at: String,
    pub(crate) next_fetch: String,
    pub(crate) explanation_url: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct CompromiseReport {
    pub(crate) key_sha256: String,
    pub(crate) revocation_pending: bool,
    pub(crate) revoke_attempts: u32,
    pub(crate) purged: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct PendingReport {
    pub(crate) reason: String,
    /// The reason the operator gave for it, as given (`null`: certagent started it).
    #[serde(default)]
    pub(crate) requested_reason: Option<String>,
    pub(crate) since: String,
    pub(crate) issuer: String,
    pub(crate) attempts: u32,
    pub(crate) order_url: Option<String>,
    pub(crate) issued: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct LastReport {
    pub(crate) at: String,
    pub(crate) result: String,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) serial: Option<String>,
    pub(crate) generation: Option<u64>,
    /// The reason the operator gave (`reissue --reason`), as given; `null` when certagent
    /// started the attempt by itself (or the journal predates the field).
    #[serde(default)]
    pub(crate) requested_reason: Option<String>,
    /// What `check` observed when the attempt started (`[]`: nothing was wrong).
    #[serde(default)]
    pub(crate) observed: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct CheckDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    pub(crate) healthy: bool,
    pub(crate) certificates: Vec<CertificateReport>,
    /// `status` only: whether the daemon runs (absent from `check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) daemon: Option<DaemonReport>,
}

/// `status --fleet`: what the fleet's etcd says about each shared certificate. Read from
/// etcd by this host; nothing is changed.
#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    /// This host's node name (`[cluster] node`).
    pub(crate) node: String,
    /// The etcd members asked, and the prefix the records live under.
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) certificates: Vec<FleetCertificate>,
}

#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetCertificate {
    pub(crate) name: String,
    /// What every host should serve; `null` before the first publish.
    pub(crate) published: Option<FleetPublished>,
    /// Who holds the certificate's fleet lock (does the CA work); `null`: nobody.
    pub(crate) lock: Option<FleetLockReport>,
    /// An order a holder started and not yet published; `null`: none.
    pub(crate) pending: Option<FleetPending>,
    /// Every host's last report, by node name.
    pub(crate) hosts: Vec<FleetHost>,
    /// Something is published, and every host that is not stale serves its serial, with no
    /// error.
    pub(crate) in_sync: bool,
}

#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetPublished {
    pub(crate) generation: u64,
    pub(crate) serial: String,
    /// The node that published it.
    pub(crate) node: String,
    pub(crate) published_at: String,
    pub(crate) reason: String,
}

#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetLockReport {
    pub(crate) node: String,
    pub(crate) acquired_at: String,
}

#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetPending {
    pub(crate) generation: u64,
    pub(crate) node: String,
    pub(crate) reason: String,
    pub(crate) started_at: String,
    /// The ACME order, once the CA answered.
    pub(crate) order_url: Option<String>,
}

#[cfg(feature = "fleet")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct FleetHost {
    pub(crate) node: String,
    /// The generation and serial the host last proved served; `null` before it served one.
    pub(crate) generation: Option<u64>,
    pub(crate) serial: Option<String>,
    /// When it last proved it by TLS handshake.
    pub(crate) verified_at: Option<String>,
    /// Why its last install or proof failed, if it did.
    pub(crate) error: Option<String>,
    /// The host is not alive (its liveness lease in etcd expired): the report is its last.
    pub(crate) stale: bool,
    /// It serves the published serial (false when nothing is published).
    pub(crate) current: bool,
}

/// One certificate's result in `reissue`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ReissueResult {
    pub(crate) name: String,
    /// "installed", "installed-not-loaded", "pending", "failed", "rolled-back" (and from the
    /// daemon: "started"). An installed certificate whose post_install hook failed keeps its
    /// result and has `error` set.
    pub(crate) result: String,
    pub(crate) changed: bool,
    pub(crate) reason: String,
    pub(crate) serial: Option<String>,
    pub(crate) not_after: Option<String>,
    pub(crate) generation: Option<u64>,
    pub(crate) error: Option<String>,
    pub(crate) hint: Option<String>,
    /// With result "pending": seconds until certagent looks again by itself, if known.
    #[serde(default)]
    pub(crate) retry_in: Option<i64>,
    /// The reason the operator gave (`--reason`), as given: `reason` is what certagent acted
    /// on (`superseded` is acted on as `forced`, `key-lost` as `key-missing`). `null` when
    /// no operator asked.
    #[serde(default)]
    pub(crate) requested_reason: Option<String>,
    /// What `check` observed when the re-issue started (`[]`: nothing was wrong with it).
    #[serde(default)]
    pub(crate) observed: Vec<String>,
    /// The ACME profile the new certificate was issued under (`null`: none, or nothing
    /// issued).
    #[serde(default)]
    pub(crate) profile: Option<String>,
    /// `reissue --dry-run`: issued and checked, then discarded (`changed` is false).
    #[serde(default)]
    pub(crate) dry_run: bool,
    /// The CA's problem document when the CA refused (RFC 8555 §6.7); `null` otherwise.
    #[serde(default)]
    pub(crate) problem: Option<ProblemReport>,
    /// Once installed: the configured issuer the certificate came from (of a failover list,
    /// the one that issued it).
    #[serde(default)]
    pub(crate) issuer: Option<String>,
}

/// A CA's problem document, as the CA sent it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ProblemReport {
    /// The full type URN (`urn:ietf:params:acme:error:connection`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) detail: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) subproblems: Vec<SubproblemReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct SubproblemReport {
    pub(crate) identifier: Option<String>,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) detail: Option<String>,
}

impl ReissueResult {
    /// A result that installed nothing (yet): its kind and reason, the rest empty.
    pub(crate) fn new(name: &str, result: &str, reason: &str) -> ReissueResult {
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
            requested_reason: None,
            observed: Vec::new(),
            profile: None,
            dry_run: false,
            problem: None,
            issuer: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ReissueDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    pub(crate) ok: bool,
    /// `reissue --dry-run`: nothing on the host changed, whatever the results say.
    #[serde(default)]
    pub(crate) dry_run: bool,
    pub(crate) certificates: Vec<ReissueResult>,
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
pub(crate) struct ValidateDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    pub(crate) valid: bool,
    pub(crate) files: Vec<String>,
    pub(crate) certificates: Vec<String>,
    pub(crate) errors: Vec<crate::config::ConfigError>,
}

/// `install` and `uninstall`: every step considered, whether it changed (or, with
/// `--dry-run`, would change) the host, and the state of the service afterwards.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct InstallDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    pub(crate) dry_run: bool,
    pub(crate) steps: Vec<InstallStep>,
    pub(crate) service: ServiceReport,
    /// Configuration errors that kept the service from being started.
    pub(crate) errors: Vec<crate::config::ConfigError>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct InstallStep {
    /// "directory", "file", "symlink", "remove", "systemctl".
    pub(crate) action: String,
    /// The path acted on, or the systemctl verb.
    pub(crate) target: String,
    pub(crate) changed: bool,
    /// What was (or would be) done, in words.
    pub(crate) detail: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ServiceReport {
    pub(crate) unit: Option<String>,
    pub(crate) enabled: bool,
    /// `None` when systemd is not running here (or with `--root`).
    pub(crate) active: Option<bool>,
    /// Why the service was not started, when it was not.
    pub(crate) note: Option<String>,
}

pub fn print_json<T: Serialize>(doc: &T) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => print_stdout(&format!("{s}\n")),
        Err(e) => eprintln!("certagent: failed to encode JSON: {e}"),
    }
}

/// Write a document to stdout. A reader that went away (`| head`) is not an error worth a
/// panic, which is what `println!` does on a closed pipe.
pub(crate) fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
