//! The per-certificate fleet lock: one key, `PREFIX/locks/NAME`, created on the holder's lease
//! only if absent. Its `create_revision` is the fencing token every write of the holder is
//! compared with; a lease kept alive by a task of its own, and lost (as far as this host
//! knows) when etcd says so or when no renewal got through for a whole TTL.
//!
//! Not fair (whoever's transaction lands first after a release wins) and not meant to be:
//! only hosts with a trigger contend, and each re-checks the published record once it holds.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::etcd::Fleet;
use super::records::{self, LockRecord};
use crate::error::{Error, Result};

/// A lease and the task that keeps it alive. Dropping it stops the renewals (etcd drops
/// the lease a TTL later); [`Lease::revoke`] ends it at once.
pub(crate) struct Lease {
    id: i64,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// Why a holder must stop: its lease is gone, so its writes will be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockLost;

impl Lease {
    pub(crate) async fn grant(fleet: &Fleet, why: &str) -> Result<Lease> {
        let what = format!("take a lease to {why}");
        let ttl = fleet.lease_ttl;
        let granted = fleet
            .call(&what, |mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        let client = fleet.client.clone();
        let (tx, lost) = watch::channel(false);
        let ttl = Duration::from_secs(u64::try_from(granted.ttl().max(1)).unwrap_or(1));
        let task = tokio::spawn(keep_alive(client, granted.id(), ttl, tx));
        Ok(Lease {
            id: granted.id(),
            lost,
            task,
        })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops the renewals and revokes the lease: every key on it goes at once. A lease
    /// etcd no longer knows (it expired) is released already.
    async fn revoke(&self, fleet: &Fleet) -> Result<()> {
        self.task.abort();
        let id = self.id;
        fleet
            .call("release a lease", |mut c| async move {
                match c.lease_revoke(id).await {
                    Err(etcd_client::Error::GRpcStatus(s))
                        if i32::from(s.code()) == GRPC_NOT_FOUND =>
                    {
                        Ok(())
                    }
                    other => other.map(drop),
                }
            })
            .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// gRPC status code 5, NOT_FOUND (grpc/doc/statuscodes.md).
const GRPC_NOT_FOUND: i32 = 5;

/// Whether a lock transaction that failed found the key on `lease` already: an earlier
/// attempt of the same request that went through though its answer was lost.
fn held_by(response: &etcd_client::TxnResponse, lease: i64) -> bool {
    response.op_responses().iter().any(|op| match op {
        TxnOpResponse::Get(got) => got.kvs().first().is_some_and(|kv| kv.lease() == lease),
        _ => false,
    })
}

/// Renews every TTL/3. A stream error is retried (reconnecting) until a whole TTL passed
/// without a renewal; an answer with TTL ≤ 0 means etcd already dropped the lease.
async fn keep_alive(mut client: Client, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = ttl / 3;
    let mut renewed = Instant::now();
    while renewed.elapsed() < ttl {
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(period, client.lease_keep_alive(id)).await
        else {
            tokio::time::sleep(period / 4).await;
            continue;
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => renewed = Instant::now(),
                Ok(Ok(Some(_))) => {
                    let _ = lost.send(true);
                    return;
                }
                _ => break,
            }
            tokio::time::sleep(period).await;
        }
        if renewed.elapsed() >= ttl {
            break;
        }
        tokio::time::sleep(period / 4).await;
    }
    let _ = lost.send(true);
}

/// The fleet lock on one certificate, held. Release it with [`FleetLock::release`];
/// dropping it stops the renewals, and etcd frees the lock a TTL later.
pub struct FleetLock {
    name: String,
    key: String,
    token: i64,
    lease: Lease,
}

impl std::fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLock")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("lease", &self.lease.id)
            .finish()
    }
}

impl FleetLock {
    /// The fencing token: the create revision of the lock key. Monotonic across holders.
    pub fn token(&self) -> i64 {
        self.token
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease the lock lives on: keys put on it go when the holder does.
    pub(crate) fn lease_id(&self) -> i64 {
        self.lease.id()
    }

    /// Whether this host knows it lost the lock (its writes would be refused anyway).
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resolves once the lease is lost; race the CA work against it and stop early.
    pub async fn lost(&self) -> LockLost {
        let mut rx = self.lease.lost.clone();
        // An error means the keep-alive task ended without saying: treat it as lost.
        let _ = rx.wait_for(|lost| *lost).await;
        LockLost
    }

    pub(crate) fn check_name(&self, name: &str) -> Result<()> {
        if name == self.name {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "failed to write {name:?}: the fleet lock held is {:?}'s",
                self.name
            )))
        }
    }

    /// Deletes the lock key if it is still this holder's (never a successor's) and revokes
    /// the lease.
    pub async fn release(self, fleet: &Fleet) -> Result<()> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.token,
            )])
            .and_then(vec![TxnOp::delete(self.key.clone(), None)]);
        let what = format!("release the fleet lock of {:?}", self.name);
        fleet
            .call(&what, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        self.lease.revoke(fleet).await
    }
}

impl Fleet {
    /// Takes the fleet lock of `name`, waiting up to `wait` for another holder to release it
    /// (or lose its lease). `Ok(None)`: another host held it all along.
    pub async fn acquire(&self, name: &str, wait: Duration) -> Result<Option<FleetLock>> {
        records::check_segment("certificate name", name)?;
        let deadline = Instant::now() + wait;
        let lease = Lease::grant(self, &format!("lock {name:?}")).await?;
        let key = self.keys.lock(name);
        let record = records::encode(&LockRecord {
            node: self.node().to_string(),
            acquired_at: super::unix_now(),
        })?;
        loop {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    record.clone(),
                    Some(PutOptions::new().with_lease(lease.id())),
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            let what = format!("lock {name:?} in etcd");
            let response = self
                .call(&what, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() || held_by(&response, lease.id()) {
                let token = self.own_token(&key, lease.id()).await?;
                return Ok(Some(FleetLock {
                    name: name.to_string(),
                    key,
                    token,
                    lease,
                }));
            }
            if Instant::now() >= deadline {
                let _ = lease.revoke(self).await;
                return Ok(None);
            }
            self.wait_for_delete(&key, revision + 1, deadline).await;
        }
    }

    /// The lock key's create revision, read back and checked to be on our lease (the
    /// response header's revision is not it whenever other writes happened in between).
    async fn own_token(&self, key: &str, lease: i64) -> Result<i64> {
        let got = self
            .call("read the fleet lock back", |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        match got.kvs().first() {
            Some(kv) if kv.lease() == lease => Ok(kv.create_revision()),
            _ => Err(Error::msg(format!(
                "failed to lock {key:?}: the lock vanished as it was taken (lease expired)"
            ))),
        }
    }

    /// Waits until `key` is deleted (from `revision` on), a TTL passes (a silent watch must
    /// not stall the waiter: it then simply tries again), or `deadline`.
    async fn wait_for_delete(&self, key: &str, revision: i64, deadline: Instant) {
        let ttl = Duration::from_secs(u64::try_from(self.lease_ttl).unwrap_or(1));
        let until = deadline.min(Instant::now() + ttl);
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision);
        // True when the key went (or etcd ended the watch); false when the watch failed.
        let watch = async {
            let Ok(mut stream) = client.watch(key, Some(options)).await else {
                return false;
            };
            while let Ok(Some(response)) = stream.message().await {
                let deleted = response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete);
                if deleted || response.canceled() {
                    return true;
                }
            }
            false
        };
        if let Ok(false) = tokio::time::timeout_at(until, watch).await {
            // A watch that failed at once must not turn the caller into a busy loop.
            tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(250))).await;
        }
    }
}
