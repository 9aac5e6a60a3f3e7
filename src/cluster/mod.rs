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

pub mod challenges;
pub mod etcd;
pub mod lock;
pub mod records;
pub mod seal;
pub mod watch;

pub use challenges::ChallengeEvent;
pub use etcd::{FENCED, Fleet, HostStatus};
pub use lock::{FleetLock, LockLost};
pub use records::{HostReport, LockRecord, Pending, Published};
pub use seal::FleetKey;
pub use watch::{AllPublishedWatch, PublishedEvent, PublishedWatch};

pub use crate::config::{
    ClusterConfig, ClusterKind, DEFAULT_LEASE_TTL, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT,
    default_node,
};

/// Unix seconds now (records' time stamps, informational only: no decision compares the
/// wall clocks of two hosts).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
