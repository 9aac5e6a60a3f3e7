//! A shared certificate's lifecycle across the fleet (`shared = true` with `[cluster]`):
//! the decisions, on top of the mechanics in `crate::cluster` and the executor's steps.
//!
//! * Local trouble (key or certificate missing, key not matching) is healed by installing
//!   the generation the fleet published — no lock, no order. With etcd unreachable, from
//!   this host's copy of the last generation it installed.
//! * Everything else (expiry, names or key type changed, revocation, compromise, an operator's
//!   `reissue --now`) takes the certificate's lock in etcd. Under it the holder looks again:
//!   a generation published while it waited is installed instead of ordering; else the holder
//!   resumes the pending order a predecessor journalled, or orders, journals the order URL,
//!   and publishes key (sealed with the fleet key) and chain with a fenced transaction. A
//!   holder whose lease ran out meanwhile is refused; it takes the lock again and publishes
//!   what it obtained only if nobody published since — the CA is never asked twice.
//! * Every host, the holder too, installs the published generation with its ordinary
//!   transaction and reports what it serves under `hosts/NODE/NAME`.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{self, Fleet, FleetKey, FleetLock, HostReport, Pending, Published};

mod account;
mod link;
mod relay;

use crate::compromise::Blocked;
use crate::config::Certificate;
use crate::core::{Asked, Reason, renewal_time};
use crate::error::{Error, Result};
use crate::executor::{Executor, Obtained, Outcome};
use crate::keys::{self, Chain, PrivateKey};
pub(crate) use link::FleetLink;
use relay::TokenRelay;

/// How long a host waits for another holder of a certificate's lock (an order at a slow CA
/// takes minutes); then the re-issue fails and the daemon retries later.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// A published generation opened and checked against this host's configuration.
struct Material {
    key_pem: keys::SecretPem,
    chain_pem: String,
}

/// Re-issue a shared certificate through the fleet (the CLI's and the daemon's entry point),
/// then report what this host serves.
pub(crate) async fn reissue(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
) -> Outcome {
    let outcome = reissue_shared(executor, link, cert, reason, asked).await;
    report(link, cert, &outcome).await;
    outcome
}

/// Install a generation the watch delivered, then report.
pub(crate) async fn install_record(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    record: &Published,
) -> Outcome {
    let outcome = match open(executor, link, cert, record) {
        Ok(material) => install(executor, link, cert, record, material).await,
        Err(e) => Outcome::Failed(e),
    };
    report(link, cert, &outcome).await;
    outcome
}

async fn reissue_shared(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
) -> Outcome {
    let fleet = match link.connect().await {
        Ok(fleet) => fleet,
        Err(e) => return without_etcd(executor, link, cert, reason, asked, e).await,
    };
    let (published, revision) = match fleet.published(&cert.name).await {
        Ok(read) => read,
        Err(e) => return without_etcd(executor, link, cert, reason, asked, e).await,
    };
    if let Some(record) = &published
        && takes_published(reason, record, serving_serial(cert).as_deref())
    {
        match open(executor, link, cert, record) {
            Ok(material) => {
                log::info!(cert = cert.name.as_str(), reason = reason.as_str(), generation = record.generation, event = "fleet-heal"; "installing the generation the fleet published (no order)");
                return install(executor, link, cert, record, material).await;
            }
            Err(e) => {
                log::info!(cert = cert.name.as_str(); "the generation the fleet published does not do: {e}")
            }
        }
    }
    let before = published.as_ref().map_or(0, |p| p.generation);
    // Fenced out once (paused past the lease): take the lock again and publish what was
    // obtained, unless somebody published meanwhile.
    for _ in 0..3 {
        // While waiting for the lock, a generation another host publishes that does for
        // this host ends the wait: hosts that saw the same trigger do not queue for the lock
        // one after another only to find the work done.
        let acquired = tokio::select! {
            acquired = fleet.acquire(&cert.name, LOCK_WAIT) => acquired,
            (record, material) = published_after(executor, link, &fleet, cert, revision, before) => {
                log::info!(cert = cert.name.as_str(), generation = record.generation, node = record.node.as_str(), event = "fleet-heal"; "another host published while this one waited for the lock: installing that (no order)");
                return install(executor, link, cert, &record, material).await;
            }
        };
        let lock = match acquired {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Outcome::Failed(
                    Error::msg(format!(
                        "failed to re-issue {:?}: another host held the fleet lock for {}",
                        cert.name,
                        crate::core::humanize(LOCK_WAIT.as_secs() as i64)
                    ))
                    .with_hint("`certagent status --fleet` shows which node holds it; the daemon tries again"),
                );
            }
            Err(e) => return without_etcd(executor, link, cert, reason, asked, e).await,
        };
        log::info!(cert = cert.name.as_str(), token = lock.token(), event = "fleet-lock"; "holding the fleet lock");
        let held = hold(executor, link, &fleet, &lock, cert, reason, asked, before).await;
        if let Err(e) = lock.release(&fleet).await {
            log::debug!(cert = cert.name.as_str(); "releasing the fleet lock: {e}");
        }
        match held {
            Held::Done(outcome) => return outcome,
            Held::Install(record, material) => {
                return install(executor, link, cert, &record, material).await;
            }
            Held::Published(record) => {
                // Installed like every other host does it, from the saved issued pending
                // re-issue (no second order).
                let outcome = executor.reissue(cert, reason, asked).await;
                if matches!(
                    outcome,
                    Outcome::Installed(_) | Outcome::InstalledNotLoaded(_)
                ) {
                    cache(link, &record);
                }
                return outcome;
            }
            Held::Fenced(e) => {
                log::warn!(cert = cert.name.as_str(), event = "fleet-fenced"; "{e}; taking the lock again");
            }
        }
    }
    Outcome::Failed(Error::msg(format!(
        "failed to publish {:?} to the fleet: the lock was lost three times",
        cert.name
    )))
}

/// The first generation after `before` published from `revision` on that does for this
/// host; never returns if none comes (or the watch breaks: the lock decides then).
async fn published_after(
    executor: &Executor,
    link: &FleetLink,
    fleet: &Fleet,
    cert: &Certificate,
    revision: i64,
    before: u64,
) -> (Published, Material) {
    if let Ok(mut watch) = fleet.watch_published(&cert.name, revision) {
        while let Ok(event) = watch.next().await {
            let record = match event {
                cluster::PublishedEvent::Published { record, .. } => Some(record),
                cluster::PublishedEvent::Resynced { record, .. } => record,
                cluster::PublishedEvent::Deleted { .. } => None,
            };
            if let Some(record) = record.filter(|r| r.generation > before)
                && let Ok(material) = open(executor, link, cert, &record)
            {
                return (record, material);
            }
        }
    }
    std::future::pending().await
}

/// How the work under the lock ended.
enum Held {
    Done(Outcome),
    /// Somebody published while this host waited: install that.
    Install(Box<Published>, Material),
    /// This host published a generation; it installs it next.
    Published(Box<Published>),
    /// The lock was lost before the publish: the obtained certificate waits, saved.
    Fenced(Error),
}

#[allow(clippy::too_many_arguments)]
async fn hold(
    executor: &Executor,
    link: &FleetLink,
    fleet: &Arc<Fleet>,
    lock: &FleetLock,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
    before: u64,
) -> Held {
    let published = match fleet.published(&cert.name).await {
        Ok((published, _)) => published,
        Err(e) => return Held::Done(Outcome::Failed(e)),
    };
    if let Some(record) = published.as_ref().filter(|p| p.generation > before) {
        match open(executor, link, cert, record) {
            Ok(material) => {
                log::info!(cert = cert.name.as_str(), generation = record.generation, node = record.node.as_str(), event = "fleet-heal"; "another host published while this one waited for the lock: installing that (no order)");
                return Held::Install(Box::new(record.clone()), material);
            }
            Err(e) => {
                log::info!(cert = cert.name.as_str(); "the generation published meanwhile does not do: {e}")
            }
        }
    }
    let generation = published.as_ref().map_or(1, |p| p.generation + 1);
    let fleet_key = match link.key() {
        Ok(k) => k,
        Err(e) => return Held::Done(Outcome::Failed(e)),
    };
    let shared_account = match account::take(executor, fleet, &fleet_key, cert).await {
        Ok(has) => has,
        Err(e) => return Held::Done(Outcome::Failed(e)),
    };
    resume_pending(executor, fleet, &fleet_key, cert, reason).await;
    let obtained = obtain(
        executor, fleet, lock, &fleet_key, cert, reason, asked, generation,
    )
    .await;
    if !shared_account && let Err(e) = account::offer(executor, fleet, &fleet_key, cert).await {
        log::warn!(cert = cert.name.as_str(); "failed to offer the ACME account to the fleet: {e}");
    }
    let obtained = match obtained {
        Ok(o) => o,
        Err(outcome) => return Held::Done(outcome),
    };
    let sealed = match cluster::seal::seal(
        &fleet_key,
        &cert.name,
        generation,
        obtained.key_pem.as_bytes(),
    ) {
        Ok(s) => s,
        Err(e) => return Held::Done(Outcome::Failed(e)),
    };
    let record = Published {
        name: cert.name.clone(),
        generation,
        serial: obtained.serial.clone(),
        fullchain_pem: obtained.chain_pem.clone(),
        sealed_key: sealed,
        node: link.node().to_string(),
        fencing_token: lock.token(),
        reason: obtained.reason.as_str().to_string(),
        published_at: cluster::unix_now(),
        compromised_spki: obtained.compromised_spki.clone(),
    };
    match fleet.publish(lock, record.clone()).await {
        Ok(()) => {
            log::info!(cert = cert.name.as_str(), generation = generation, serial = record.serial.as_str(), event = "fleet-published"; "published generation {generation} to the fleet");
            Held::Published(Box::new(record))
        }
        Err(e) if e.to_string().contains(cluster::FENCED) => Held::Fenced(e),
        Err(e) => Held::Done(Outcome::Failed(e)),
    }
}

/// A pending order journalled in etcd by a holder that stopped: this host resumes it.
async fn resume_pending(
    executor: &Executor,
    fleet: &Fleet,
    fleet_key: &FleetKey,
    cert: &Certificate,
    reason: Reason,
) {
    let pending = match fleet.pending(&cert.name).await {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            log::warn!(cert = cert.name.as_str(); "failed to read the fleet's pending order: {e}");
            return;
        }
    };
    let adopted = cluster::seal::open(
        fleet_key,
        &cert.name,
        pending.generation,
        &pending.sealed_key,
    )
    .and_then(|pem| {
        let pem = std::str::from_utf8(&pem)
            .map_err(|_| Error::msg("the fleet's pending key is not PEM"))?
            .to_string();
        let pem = zeroize::Zeroizing::new(pem);
        executor.adopt_fleet_pending(cert, &pem, pending.order_url.as_deref(), reason)
    });
    if let Err(e) = adopted {
        log::warn!(cert = cert.name.as_str(); "not resuming the fleet's pending order of {}: {e}", pending.node);
    }
}

/// Order (or resume) as the lock holder, journalling the pending key and the order URL in
/// etcd as soon as the CA gives it.
#[allow(clippy::too_many_arguments)]
async fn obtain(
    executor: &Executor,
    fleet: &Arc<Fleet>,
    lock: &FleetLock,
    fleet_key: &FleetKey,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
    generation: u64,
) -> std::result::Result<Obtained, Outcome> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let relay = Arc::new(TokenRelay {
        fleet: fleet.clone(),
        lease: lock.lease_id(),
        added: std::sync::Mutex::new(Vec::new()),
    });
    let ordering = executor.for_fleet(tx, relay);
    let journal = async {
        while let Some(url) = rx.recv().await {
            let pem = match executor.store.pending_key(&cert.name) {
                Ok(Some(pem)) => pem,
                _ => continue,
            };
            let sealed =
                match cluster::seal::seal(fleet_key, &cert.name, generation, pem.as_bytes()) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!(cert = cert.name.as_str(); "{e}");
                        continue;
                    }
                };
            let record = Pending {
                name: cert.name.clone(),
                generation,
                order_url: Some(url),
                sealed_key: sealed,
                node: String::new(),
                fencing_token: 0,
                reason: reason.as_str().to_string(),
                started_at: cluster::unix_now(),
            };
            if let Err(e) = fleet.journal_pending(lock, record).await {
                log::warn!(cert = cert.name.as_str(); "failed to journal the order in etcd: {e}");
            }
        }
    };
    // The sender is dropped with `ordering` when the order ends, which ends the journalling.
    let obtain = async move {
        let result = ordering.obtain_for_fleet(cert, reason, asked).await;
        drop(ordering);
        result
    };
    let (result, ()) = tokio::join!(obtain, journal);
    result
}

/// etcd cannot be reached: heal from this host's copy, or re-issue alone close to expiry if
/// the operator allowed it, else fail (the daemon retries with backoff).
async fn without_etcd(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    reason: Reason,
    asked: &Asked,
    e: Error,
) -> Outcome {
    if heals(reason)
        && let Some(record) = link.cached(&cert.name)
    {
        match open(executor, link, cert, &record) {
            Ok(material) => {
                log::warn!(cert = cert.name.as_str(), generation = record.generation, event = "fleet-heal"; "etcd is unreachable ({e}); healing from this host's copy of generation {}", record.generation);
                return install(executor, link, cert, &record, material).await;
            }
            Err(why) => {
                log::warn!(cert = cert.name.as_str(); "this host's copy of the fleet's generation does not do: {why}")
            }
        }
    }
    let close = link.config.fallback_before.is_some_and(|before| {
        let now = executor.clock.now();
        match crate::executor::InService::read(cert).leaf() {
            Some(leaf) => leaf.not_after - now <= before.as_secs() as i64,
            None => true,
        }
    });
    if close {
        log::error!(cert = cert.name.as_str(), reason = reason.as_str(), event = "fleet-fallback"; "etcd is unreachable ({e}) and the certificate is within fallback_before of expiry: re-issuing it on this host ALONE; the other hosts of the fleet will not serve this key");
        return executor.reissue(cert, reason, asked).await;
    }
    Outcome::Failed(
        e.context(format!(
            "failed to re-issue shared certificate {:?}: the fleet's etcd is unreachable",
            cert.name
        ))
        .with_hint(
            "shared certificates are ordered only under the fleet lock; the certificate in service stays, the daemon retries; set fallback_before in [cluster] to let a host re-issue alone close to expiry",
        ),
    )
}

/// Local trouble: healed from the published generation, never by an order.
fn heals(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::KeyMissing | Reason::CertMissing | Reason::KeyMismatch
    )
}

/// Whether a re-issue for `reason` is answered by the published record without the lock:
/// local trouble, or a newer certificate than the one in service (another host renewed).
/// An operator's request and a compromise always go through the lock.
fn takes_published(reason: Reason, record: &Published, serving: Option<&str>) -> bool {
    match reason {
        Reason::Forced | Reason::KeyCompromised | Reason::CompromiseUnknown => false,
        r if heals(r) => true,
        _ => serving != Some(record.serial.as_str()),
    }
}

fn serving_serial(cert: &Certificate) -> Option<String> {
    crate::executor::InService::read(cert)
        .leaf()
        .map(|l| l.serial.clone())
}

/// Open a published record with the fleet key and check it does for this host: the
/// configured names and key type, valid now and not due for renewal, a key nobody reported
/// compromised.
fn open(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    record: &Published,
) -> Result<Material> {
    if record.name != cert.name {
        return Err(Error::msg(format!(
            "the fleet's record for {:?} names {:?}",
            cert.name, record.name
        )));
    }
    let fleet_key = link.key()?;
    let pem = cluster::seal::open(
        &fleet_key,
        &cert.name,
        record.generation,
        &record.sealed_key,
    )?;
    let pem = std::str::from_utf8(&pem)
        .map_err(|_| Error::msg("the fleet's key is not PEM"))?
        .to_string();
    let key_pem = keys::SecretPem::new(pem);
    let key = PrivateKey::from_pem(key_pem.as_str()).map_err(Error::msg)?;
    let chain = Chain::from_pem(record.fullchain_pem.as_bytes()).map_err(Error::msg)?;
    let now = executor.clock.now();
    keys::validate_chain(&cert.names, &key, &chain, now).map_err(Error::msg)?;
    if keys::spec_of_spki(&key.spki_der()) != Some(cert.key_type) {
        return Err(Error::msg(format!(
            "its key is not the configured key_type {}",
            cert.key_type.as_str()
        )));
    }
    let leaf = chain.leaf().map_err(Error::msg)?;
    if renewal_time(leaf.not_before, leaf.not_after, cert.renew_before) <= now {
        return Err(Error::msg("it is due for renewal itself"));
    }
    if Blocked::load(&executor.config).contains(&key.spki_sha256()) {
        return Err(Error::msg(
            "its key is on this host's list of compromised keys",
        ));
    }
    Ok(Material {
        key_pem,
        chain_pem: chain.to_pem(),
    })
}

async fn install(
    executor: &Executor,
    link: &FleetLink,
    cert: &Certificate,
    record: &Published,
    material: Material,
) -> Outcome {
    let reason = Reason::parse(&record.reason).unwrap_or(Reason::Forced);
    let outcome = executor
        .install_published(
            cert,
            material.key_pem.as_str(),
            material.chain_pem.as_bytes(),
            reason,
            record.compromised_spki.as_deref(),
        )
        .await;
    if matches!(
        outcome,
        Outcome::Installed(_) | Outcome::InstalledNotLoaded(_)
    ) {
        cache(link, record);
    }
    outcome
}

fn cache(link: &FleetLink, record: &Published) {
    if let Err(e) = link.save_cache(record) {
        log::warn!(cert = record.name.as_str(); "failed to keep a copy of generation {}: {e}", record.generation);
    }
}

/// Tell the fleet what this host serves for `cert` now (best effort: etcd may be down).
pub(crate) async fn report(link: &FleetLink, cert: &Certificate, outcome: &Outcome) {
    let Ok(fleet) = link.connect().await else {
        return;
    };
    let serial = serving_serial(cert);
    let generation = link
        .cached(&cert.name)
        .filter(|c| Some(&c.serial) == serial.as_ref())
        .map(|c| c.generation);
    let previous = fleet.own_report(&cert.name).await.ok().flatten();
    let verified_at = match outcome {
        Outcome::Installed(_) => Some(cluster::unix_now()),
        _ => previous
            .as_ref()
            .filter(|r| r.serial == serial)
            .and_then(|r| r.verified_at),
    };
    let report = HostReport {
        node: link.node().to_string(),
        name: cert.name.clone(),
        generation,
        serial,
        verified_at,
        error: outcome.error().map(|e| e.to_string()),
    };
    if previous.as_ref() == Some(&report) {
        // Nothing new to say (a daemon starting, say): only make sure this host is alive.
        if let Err(e) = fleet.alive_lease().await {
            log::debug!(cert = cert.name.as_str(); "failed to keep this host alive in etcd: {e}");
        }
        return;
    }
    if let Err(e) = fleet.report(&report).await {
        log::debug!(cert = cert.name.as_str(); "failed to report to the fleet: {e}");
    }
}
