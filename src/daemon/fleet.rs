//! The daemon's side of a fleet: one watch on each shared certificate's published record
//! (from the revision it was read at, so nothing is missed; re-reading after a compaction or
//! a broken stream), and the decision to install a published generation this host does not
//! serve yet. A generation whose install failed here (its config test or TLS proof, say) is
//! tried again after 10 s, doubling to an hour, until this host serves it or another is
//! published; the host reports the failure meanwhile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Daemon;
use super::jobs::Job;
use crate::cluster::{ChallengeEvent, Published};
use crate::config::Config;
use crate::core::Timestamp;
use crate::executor::Executor;
use crate::fleet::FleetLink;

/// Longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A published generation that failed to install here is tried again after this many
/// seconds, doubling, up to `RETRY_MAX`.
const RETRY_FIRST: i64 = 10;
const RETRY_MAX: i64 = 3_600;

#[derive(Default)]
pub(super) struct FleetWatch {
    rx: Option<mpsc::Receiver<Published>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The newest record seen for each shared certificate.
    latest: HashMap<String, Published>,
    /// Generations this daemon tried to install from a watch event: how many times, and
    /// when it may try again.
    tried: HashMap<(String, u64), (u32, Timestamp)>,
}

impl Drop for FleetWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FleetWatch {
    /// Watches every shared certificate of `config` (none without `[cluster]`).
    pub(super) fn start(executor: &Executor, config: &Config) -> FleetWatch {
        let Some(link) = executor.fleet.clone() else {
            return FleetWatch::default();
        };
        let names: Vec<crate::config::Certificate> = config
            .certificates
            .values()
            .filter(|c| c.shared)
            .cloned()
            .collect();
        if names.is_empty() {
            return FleetWatch::default();
        }
        log::info!(node = link.node(), certificates = names.len(); "watching the fleet's published certificates in etcd");
        let (tx, rx) = mpsc::channel(64);
        let mut tasks = vec![tokio::spawn(watch_all(link.clone(), names, tx))];
        let webroots = webroots(config);
        if !webroots.is_empty() {
            tasks.push(tokio::spawn(serve_tokens(link.clone(), webroots)));
        }
        FleetWatch {
            rx: Some(rx),
            tasks,
            latest: HashMap::new(),
            tried: HashMap::new(),
        }
    }

    /// The next published record; never returns without a fleet.
    pub(super) async fn recv(&mut self) -> Option<Published> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// Follow every published record for ever on one watch, reconnecting with backoff (and
/// reading everything again after each break, so nothing is missed).
async fn watch_all(
    link: Arc<FleetLink>,
    shared: Vec<crate::config::Certificate>,
    tx: mpsc::Sender<Published>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut warned = false;
    let mut reported = false;
    loop {
        if !reported && link.connect().await.is_ok() {
            // Join the fleet's view: what this host serves now.
            for cert in &shared {
                crate::fleet::report(&link, cert, &crate::executor::Outcome::Finished).await;
            }
            reported = true;
        }
        match follow(&link, &tx, &mut backoff).await {
            Ok(()) => return, // the daemon is gone
            Err(e) if !warned => {
                log::warn!(
                    "cannot follow the fleet in etcd: {e}; trying again (the certificates in service stay)"
                );
                warned = true;
            }
            Err(e) => log::debug!("etcd: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow(
    link: &FleetLink,
    tx: &mpsc::Sender<Published>,
    backoff: &mut Duration,
) -> crate::error::Result<()> {
    let fleet = link.connect().await?;
    let (records, revision) = fleet.all_published().await?;
    let mut watch = fleet.watch_all_published(revision).await?;
    *backoff = Duration::from_millis(500);
    for record in records {
        if tx.send(record).await.is_err() {
            return Ok(());
        }
    }
    loop {
        let record = watch.next().await?;
        if tx.send(record).await.is_err() {
            return Ok(());
        }
    }
}

/// The http-01 webroots of the ACME issuers shared certificates use: every host writes the
/// holder's tokens there.
fn webroots(config: &Config) -> Vec<PathBuf> {
    use crate::config::{Challenge, Http01, IssuerKind};
    let mut dirs: Vec<PathBuf> = config
        .certificates
        .values()
        .filter(|c| c.shared)
        .filter_map(|c| config.issuers.get(&c.issuer))
        .filter_map(|i| match &i.kind {
            IssuerKind::Acme(a) => match &a.challenge {
                Challenge::Http01(Http01::Webroot(root)) => {
                    Some(root.join(".well-known").join("acme-challenge"))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Serve the holder's http-01 tokens from this host's webroots for as long as they are in
/// etcd, acknowledging each; reconnecting with backoff.
async fn serve_tokens(link: Arc<FleetLink>, webroots: Vec<PathBuf>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result: crate::error::Result<()> = async {
            let fleet = link.connect().await?;
            let (now, revision) = fleet.challenges().await?;
            for event in now {
                token_event(&fleet, &webroots, event).await;
            }
            let mut watch = fleet.watch_challenges(revision).await?;
            loop {
                let event = watch.next().await?;
                token_event(&fleet, &webroots, event).await;
            }
        }
        .await;
        if let Err(e) = result {
            log::debug!("following the fleet's http-01 tokens: {e}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn token_event(fleet: &crate::cluster::Fleet, webroots: &[PathBuf], event: ChallengeEvent) {
    match event {
        ChallengeEvent::Put {
            token,
            key_auth,
            lease,
        } => {
            for dir in webroots {
                let written = crate::files::ensure_dir(dir, 0o755).and_then(|()| {
                    crate::files::replace_file(
                        &dir.join(&token),
                        key_auth.as_bytes(),
                        crate::files::Perms::mode(0o644),
                    )
                });
                if let Err(e) = written {
                    log::warn!("failed to serve the fleet's http-01 token: {e}");
                }
            }
            if let Err(e) = fleet.ack_challenge(&token, lease).await {
                log::debug!("failed to acknowledge an http-01 token: {e}");
            }
        }
        ChallengeEvent::Removed { token } => {
            for dir in webroots {
                let _ = std::fs::remove_file(dir.join(&token));
            }
        }
    }
}

impl Daemon {
    /// When the newest published generation, which failed to install here and is still not
    /// served, may be tried again (in the future; `None` otherwise).
    pub(super) fn retry_at(&self, name: &str) -> Option<Timestamp> {
        let record = self.fleet.latest.get(name)?;
        let (_, at) = self
            .fleet
            .tried
            .get(&(name.to_string(), record.generation))?;
        if *at <= self.clock.now() {
            return None;
        }
        let cert = self.config.certificates.get(name)?;
        let serving = crate::executor::InService::read(cert)
            .leaf()
            .map(|l| l.serial.clone());
        (serving.as_deref() != Some(record.serial.as_str())).then_some(*at)
    }

    /// A record arrived from the watch: install it if this host does not serve it.
    pub(super) fn on_published(&mut self, record: Published) {
        let name = record.name.clone();
        if !self
            .config
            .certificates
            .get(&name)
            .is_some_and(|c| c.shared)
        {
            return; // another host's certificate
        }
        let newer = self
            .fleet
            .latest
            .get(&name)
            .is_none_or(|old| record.generation >= old.generation);
        if newer {
            log::debug!(cert = name.as_str(), generation = record.generation; "the fleet published a generation");
            self.fleet.latest.insert(name.clone(), record);
            self.offer_published(&name);
        }
    }

    /// Start installing the newest published generation of `name` if this host serves
    /// another certificate, has no job for it, and has not tried that generation. True when
    /// a job was started.
    pub(super) fn offer_published(&mut self, name: &str) -> bool {
        let Some(cert) = self.config.certificates.get(name).filter(|c| c.shared) else {
            return false;
        };
        if self.certs.get(name).is_some_and(|s| s.in_flight) {
            return false;
        }
        let Some(record) = self.fleet.latest.get(name) else {
            return false;
        };
        let serving = crate::executor::InService::read(cert)
            .leaf()
            .map(|l| l.serial.clone());
        if serving.as_deref() == Some(record.serial.as_str()) {
            return false;
        }
        let now = self.clock.now();
        let key = (name.to_string(), record.generation);
        let (attempts, not_before) = self.fleet.tried.get(&key).copied().unwrap_or((0, now));
        if now < not_before {
            return false; // `retry_at` wakes the certificate then
        }
        let delay = (RETRY_FIRST << attempts.min(9)).min(RETRY_MAX);
        self.fleet.tried.insert(key, (attempts + 1, now + delay));
        log::info!(cert = name, generation = record.generation, node = record.node.as_str(), event = "fleet-install"; "installing generation {} the fleet published", record.generation);
        let job = Job::InstallPublished(Box::new(record.clone()));
        self.start(name, job);
        true
    }
}
