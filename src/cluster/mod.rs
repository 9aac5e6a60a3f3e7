//! Fleets: several hosts share one certificate through etcd. This module holds the mechanics
//! only — the connection, the per-certificate lease lock and its fencing token, the published
//! and pending records, the watch on what is published and the hosts' reports — and the
//! sealing of private keys with the fleet key. It decides nothing about when to re-issue and
//! never touches the local store; the daemon drives it.
//!
//! Layout under the prefix (default `/certagent`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `PREFIX/locks/NAME` | [`LockRecord`] (holder node) | the holder's lock lease |
//! | `PREFIX/certs/NAME/published` | [`Published`] | none |
//! | `PREFIX/certs/NAME/pending` | [`Pending`] | none |
//! | `PREFIX/hosts/NODE/NAME` | [`HostReport`] | the node's liveness lease |
//!
//! Every write to `certs/` is a transaction that compares the lock key's `create_revision`
//! with the writer's fencing token: a holder that lost its lease can never overwrite its
//! successor.

pub mod etcd;
pub mod lock;
pub mod records;
pub mod seal;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

pub use etcd::{FENCED, Fleet, HostStatus};
pub use lock::{FleetLock, LockLost};
pub use records::{HostReport, LockRecord, Pending, Published};
pub use seal::FleetKey;
pub use watch::{PublishedEvent, PublishedWatch};

/// The only kind of cluster there is, for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    Etcd,
}

/// The `[cluster]` table, validated (the TOML loader that builds it comes with the daemon's
/// integration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub kind: ClusterKind,
    /// `http://host:port` or `https://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// Everything certagent keeps in etcd lives under it; no trailing slash.
    pub prefix: String,
    /// This host's name in the fleet; unique.
    pub node: String,
    /// A holder that stops answering loses its lock (and a dead host its reports) after this.
    pub lease_ttl: Duration,
    pub fleet_key_file: PathBuf,
    /// CA certificates that sign the etcd members' certificates (PEM).
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate and key for etcd's client-certificate authentication (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user and the file holding its password (first line).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Bound on every etcd request (and on connecting); a dead cluster fails within it.
    pub request_timeout: Duration,
}

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/certagent";
/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// The default bound on one etcd request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterConfig {
    /// A configuration with the defaults: prefix `/certagent`, node = the host name,
    /// lease TTL 15 s, no TLS, no auth.
    pub fn new(endpoints: Vec<String>, fleet_key_file: PathBuf) -> Self {
        ClusterConfig {
            kind: ClusterKind::Etcd,
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            node: default_node(),
            lease_ttl: DEFAULT_LEASE_TTL,
            fleet_key_file,
            ca_bundle: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The lease TTL in whole seconds, as etcd takes it (at least 2: etcd's minimum lease is
    /// larger anyway, and a 1 s TTL leaves no room for a keep-alive).
    pub fn lease_ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(2)
    }
}

/// The host name, or `localhost` when it cannot be read.
pub fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Unix seconds now (records' time stamps, informational only: no decision compares the
/// wall clocks of two hosts).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_contract_s() {
        let c = ClusterConfig::new(vec!["http://127.0.0.1:2379".into()], "/k".into());
        assert_eq!(c.prefix, "/certagent");
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert_eq!(c.lease_ttl_secs(), 15);
        assert_eq!(c.node, default_node());
        assert!(!c.node.is_empty());
    }
}
