//! `certagent run`: the event loop. It wakes for inotify events on the configured files and
//! the config, for the next deadline the core computed (renewal window, retry), for control
//! requests and for signals — and for nothing else. With nothing due it sleeps.
//!
//! The daemon holds the shared lock for its whole life: every re-issue on the host goes
//! through it (the CLI asks over the control socket), so two never interleave. Jobs run
//! concurrently across certificates, bounded by `max_parallel`; one certificate never has
//! two jobs.

mod clients;
#[cfg(feature = "fleet")]
mod fleet;
mod jobs;
mod schedule;
mod trim;
mod watch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::compromise::Blocked;
use crate::config::Config;
use crate::control;
use crate::core::{Timestamp, humanize};
use crate::error::{Error, Result, exit};
use crate::executor::Executor;
use crate::ops;
use crate::output::ReissueResult;
use crate::store::Lock;

use clients::{MAX_CONTROL_CLIENTS, ReissueAsk, serve_client};
use jobs::{Ended, Job};

/// Events arriving this close together are handled as one (an editor or config management
/// replacing cert and key with two renames, our own flip touching several links).
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Default)]
struct CertState {
    in_flight: bool,
    /// The job in flight is a re-issue (not a refresh, finish or import): a forced re-issue
    /// asked for now can wait for its outcome instead of starting a second one.
    reissuing: bool,
    /// Control clients waiting for this certificate's current job.
    waiters: Vec<oneshot::Sender<ReissueResult>>,
    /// When to look at this certificate again by itself.
    wake_at: Option<Timestamp>,
    /// What the last look found: `Some(None)` healthy, `Some(Some(reason))` not; `None`
    /// before the first look.
    health: Option<Option<&'static str>>,
    /// A handed-in certificate, or a re-issue asked for, that arrived while another job ran
    /// (it starts next), and the clients waiting for its outcome.
    queued: Option<(Job, Vec<oneshot::Sender<ReissueResult>>)>,
}

struct Daemon {
    config_path: PathBuf,
    config: Arc<Config>,
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    clock: Clock,
    executor: Executor,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    semaphore: Arc<Semaphore>,
    certs: HashMap<String, CertState>,
    jobs: JoinSet<Ended>,
    /// The certificate and job of each task in `jobs`, so that a task that panicked is still
    /// answered for: its certificate leaves "in flight" and its job is reported failed.
    job_of: HashMap<tokio::task::Id, (String, Job)>,
    watcher: watch::Watcher,
    /// Blocklists and remembered compromised keys, re-read when they may have changed.
    blocked: Arc<Blocked>,
    /// The files on disk did not load at the last reload: the next one that does (or files
    /// back to what is in use) is announced as "configuration valid again".
    config_invalid: bool,
    /// The shared certificates' published records, watched in etcd.
    fleet: fleet::FleetWatch,
}

/// Without fleets, nothing is ever published.
#[cfg(not(feature = "fleet"))]
mod fleet {
    pub(super) enum Never {}

    #[derive(Default)]
    pub(super) struct FleetWatch;

    impl FleetWatch {
        pub(super) fn start(_: &crate::executor::Executor, _: &crate::config::Config) -> Self {
            FleetWatch
        }

        pub(super) async fn recv(&mut self) -> Option<Never> {
            std::future::pending().await
        }
    }

    impl super::Daemon {
        pub(super) fn on_published(&mut self, never: Never) {
            match never {}
        }

        pub(super) fn offer_published(&mut self, _: &str) -> bool {
            false
        }

        pub(super) fn retry_at(&self, _: &str) -> Option<crate::core::Timestamp> {
            None
        }
    }
}

/// Run as the service: signals SIGTERM/SIGINT end it.
pub(crate) async fn run_service(config_path: &Path) -> Result<u8> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::msg(format!("failed to catch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::msg(format!("failed to catch SIGINT: {e}")))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received, stopping at a safe point"),
            _ = int.recv() => log::info!("SIGINT received, stopping at a safe point"),
        }
    };
    run(config_path, Clock::new(), shutdown).await?;
    Ok(exit::OK)
}

/// The daemon. Returns when `shutdown` completes and every job has reached a safe point.
pub async fn run(
    config_path: &Path,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let config = Arc::new(crate::config::Config::load_for_daemon(config_path)?);
    warn_missing_output_directories(&config);
    let (_lock, sock, listener) = take_over(&config.agent).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (fs_tx, mut fs_rx) = mpsc::channel(1024);
    let watcher = watch::Watcher::new(fs_tx)?;
    let executor = Executor::new(config.clone(), clock, stop_rx.clone())?;
    let fleet = fleet::FleetWatch::start(&executor, &config);
    let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        semaphore: Arc::new(Semaphore::new(config.agent.max_parallel)),
        config,
        config_tx,
        clock,
        executor,
        stop_rx,
        certs: HashMap::new(),
        jobs: JoinSet::new(),
        job_of: HashMap::new(),
        watcher,
        blocked: Arc::default(),
        config_invalid: false,
        fleet,
    };
    d.watcher.watch(&d.config, &d.config_path);
    d.forget_backoffs();
    d.evaluate_all().await;
    crate::systemd::notify_ready(&d.summary());
    let (ask_tx, mut ask_rx) = mpsc::channel::<ReissueAsk>(64);
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CLIENTS));
    // Certificates dropped into the inbox while the daemon was down.
    d.scan_inbox(&ask_tx);
    d.log_ready();

    let mut sighup = signal(SignalKind::hangup())
        .map_err(|e| Error::msg(format!("failed to catch SIGHUP: {e}")))?;
    let watchdog = crate::systemd::watchdog_interval();
    let mut watchdog_at = watchdog.map(|w| Instant::now() + w);
    let mut dirty: HashSet<String> = HashSet::new();
    let mut settle_at: Option<Instant> = None;
    let mut reload_pending = false;
    // When the code the last work paged in is given back (`trim`); armed again by any work.
    let mut trim_at = Some(Instant::now() + trim::AFTER);
    tokio::pin!(shutdown);

    loop {
        let wake = d.next_wake().map(|ts| clock.instant_at(ts));
        let mut worked = true;
        tokio::select! {
            () = &mut shutdown => break,
            Some(event) = fs_rx.recv() => {
                match d.watcher.classify(&event) {
                    watch::Touched::Config => reload_pending = true,
                    watch::Touched::Certs(names) => dirty.extend(names),
                    watch::Touched::All => dirty.extend(d.config.certificates.keys().cloned()),
                    watch::Touched::Inbox => {
                        d.scan_inbox(&ask_tx);
                        continue;
                    }
                    watch::Touched::Nothing => continue,
                }
                settle_at.get_or_insert_with(|| Instant::now() + SETTLE);
                worked = false;
            }
            () = sleep_until(settle_at) => {
                settle_at = None;
                let reload = std::mem::take(&mut reload_pending);
                d.settled(reload, std::mem::take(&mut dirty)).await;
            }
            () = sleep_until(wake) => d.wake_due().await,
            Some(done) = d.jobs.join_next_with_id() => d.joined(done).await,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let client = serve_client(stream, config_rx.clone(), clock, ask_tx.clone());
                    tokio::spawn(bounded(clients.clone(), client));
                }
            }
            Some(ask) = ask_rx.recv() => d.ask(ask),
            Some(record) = d.fleet.recv() => d.on_published(record),
            _ = sighup.recv() => {
                d.reload("SIGHUP received").await;
            }
            () = sleep_until(watchdog_at) => {
                crate::systemd::notify_watchdog();
                watchdog_at = watchdog.map(|w| Instant::now() + w);
                worked = false;
            }
            () = sleep_until(trim_at) => {
                worked = false;
                trim_at = None;
                if d.jobs.is_empty() {
                    let bytes = trim::page_out_code();
                    log::debug!(advised_kib = bytes / 1024; "idle: paged out the code the last work used");
                } else {
                    trim_at = Some(Instant::now() + trim::AFTER);
                }
            }
        }
        if worked {
            trim_at = Some(Instant::now() + trim::AFTER);
        }
    }

    d.stop(&stop_tx).await;
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    log::info!("certagent daemon stopped");
    Ok(())
}

/// Take the shared lock (one daemon per host) and listen on the control socket (root only).
async fn take_over(agent: &crate::config::Agent) -> Result<(Lock, PathBuf, UnixListener)> {
    let lock_wait = Duration::from_secs(agent.lock_timeout.0.max(0) as u64);
    let lock = Lock::acquire(&agent.runtime_dir, lock_wait)
        .await
        .map_err(|e| match e {
            Error::Busy(_) => {
                Error::Busy("another certagent daemon or command holds the lock".into())
            }
            other => other,
        })?;
    // We hold the lock, so a socket file left behind is stale.
    let sock = control::socket_path(&agent.runtime_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| {
        Error::msg(format!(
            "failed to listen on {:?}: {e}",
            sock.display().to_string()
        ))
    })?;
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(
        |e| {
            Error::msg(format!(
                "failed to restrict {:?}: {e}",
                sock.display().to_string()
            ))
        },
    )?;

    Ok((lock, sock, listener))
}

/// Serve one control client once a slot is free: requests and answers of at most
/// `MAX_CONTROL_CLIENTS` are in memory at once; a burst waits holding only its connection.
async fn bounded(clients: Arc<Semaphore>, client: impl Future<Output = ()>) {
    let Ok(_permit) = clients.acquire_owned().await else {
        return;
    };
    client.await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// The file changes of one settle window: reload the configuration if one of its files
    /// changed, then look at the certificates whose files changed.
    async fn settled(&mut self, reload: bool, dirty: HashSet<String>) {
        if reload {
            self.reload_if_changed().await;
        }
        // A blocklist or flag file may be what changed. And after a reload too: when the new
        // configuration is invalid, nothing else looks at a certificate whose files changed in
        // the same settle window.
        self.blocked = Arc::new(Blocked::load(&self.config));
        let dirty: Vec<String> = dirty.into_iter().collect();
        let certificates = dirty.len();
        self.evaluate_many(dirty).await;
        // Everything inotify reported up to here has been looked at (and any work it called
        // for started): tests wait for this line before they check that something did not
        // happen.
        log::debug!(certificates; "file changes handled");
    }

    /// Look at the certificates whose time has come.
    async fn wake_due(&mut self) {
        let now = self.clock.now();
        let due: Vec<String> = self
            .certs
            .iter()
            .filter(|(_, s)| !s.in_flight && s.wake_at.is_some_and(|w| w <= now))
            .map(|(n, _)| n.clone())
            .collect();
        self.evaluate_many(due).await;
    }

    /// Stop: every job in flight is told, and waited for until it reaches a safe point.
    async fn stop(&mut self, stop_tx: &tokio::sync::watch::Sender<bool>) {
        crate::systemd::notify_stopping();
        let in_flight = self.jobs.len();
        if in_flight > 0 {
            log::info!(jobs = in_flight; "waiting for re-issues in progress to reach a safe point");
        }
        let _ = stop_tx.send(true);
        while let Some(done) = self.jobs.join_next_with_id().await {
            self.joined(done).await;
        }
    }

    /// Rewrite the metrics file (when configured); a failure is logged, never fatal.
    fn write_metrics(&self) {
        let health = |name: &str| self.certs.get(name).and_then(|s| s.health);
        if let Err(e) = crate::metrics::write(&self.config, self.clock.now(), &health) {
            log::warn!("failed to write the metrics file: {e}");
        }
    }

    /// A file of the configuration changed on disk: reload, unless the files say what the
    /// configuration in use says (an editor touching a file; a SIGHUP that already did it).
    async fn reload_if_changed(&mut self) {
        let loaded =
            crate::config::Config::load_for_daemon(&self.config_path).map_err(Error::Config);
        if loaded
            .as_ref()
            .is_ok_and(|new| new.fingerprint == self.config.fingerprint)
        {
            if std::mem::take(&mut self.config_invalid) {
                // Back to the configuration in use: nothing to reload, but say it is fixed.
                log::info!(
                    "the configuration changed on disk: configuration valid again (the one in use)"
                );
            }
            log::debug!("the configuration files changed on disk, their content did not");
            return;
        }
        self.apply(loaded, "the configuration changed on disk")
            .await;
    }

    /// Re-read the configuration; keep the old one if the new one is invalid.
    async fn reload(&mut self, why: &str) -> bool {
        let loaded =
            crate::config::Config::load_for_daemon(&self.config_path).map_err(Error::Config);
        self.apply(loaded, why).await
    }

    /// Switch to a configuration just read, or log why not and keep the old one.
    async fn apply(&mut self, loaded: Result<crate::config::Config>, why: &str) -> bool {
        crate::systemd::notify_reloading();
        let applied = match loaded {
            Ok(new) => {
                let new = Arc::new(new);
                match Executor::new(new.clone(), self.clock, self.stop_rx.clone()) {
                    #[allow(unused_mut)]
                    Ok(mut executor) => {
                        // The same cluster: the same connection (and watches, if the shared
                        // certificates are the same too).
                        #[cfg(feature = "fleet")]
                        let refollow = {
                            let same = new.cluster == self.config.cluster;
                            if same {
                                executor.fleet = self.executor.fleet.clone();
                            }
                            let shared = |c: &crate::config::Config| -> Vec<String> {
                                c.certificates
                                    .values()
                                    .filter(|c| c.shared)
                                    .map(|c| c.name.clone())
                                    .collect()
                            };
                            !same || shared(&new) != shared(&self.config)
                        };
                        if std::mem::take(&mut self.config_invalid) {
                            log::info!("{why}: configuration valid again");
                        }
                        log::info!(certificates = new.certificates.len(); "{why}: configuration reloaded");
                        warn_missing_output_directories(&new);
                        self.executor = executor;
                        self.config = new.clone();
                        let _ = self.config_tx.send(new);
                        self.watcher.watch(&self.config, &self.config_path);
                        #[cfg(feature = "fleet")]
                        if refollow {
                            self.fleet = fleet::FleetWatch::start(&self.executor, &self.config);
                        }
                        self.evaluate_all().await;
                        true
                    }
                    Err(e) => {
                        log::error!("{why}: keeping the old configuration: {e}");
                        false
                    }
                }
            }
            Err(e) => {
                self.config_invalid = true;
                log::error!("{why}: the new configuration is invalid, keeping the old one");
                if let Error::Config(errors) = &e {
                    for err in &errors.0 {
                        let file = err.file.display().to_string();
                        let file = crate::config::shown(&file);
                        log::error!(file = file.as_ref(), line = err.line, key = err.key.as_str(); "{}", err.message);
                    }
                } else {
                    log::error!("{e}");
                }
                false
            }
        };
        crate::systemd::notify_ready(&self.summary());
        applied
    }

    /// The start-up line: what the daemon read, where it keeps its state, when it next
    /// looks by itself.
    fn log_ready(&self) {
        let dropin_dir = self
            .config_path
            .parent()
            .unwrap_or(Path::new("/"))
            .join("conf.d");
        let mut drop_ins: Vec<String> = std::fs::read_dir(&dropin_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        drop_ins.sort();
        let config = self.config_path.display().to_string();
        let files = std::iter::once(crate::config::shown(&config).into_owned())
            .chain(
                drop_ins
                    .iter()
                    .map(|p| crate::config::shown(p).into_owned()),
            )
            .collect::<Vec<_>>()
            .join(",");
        let next = match self.next_wake() {
            Some(at) => crate::core::rfc3339(at),
            None => "nothing scheduled".into(),
        };
        log::info!(
            certificates = self.config.certificates.len(),
            config = files.as_str(),
            state_dir = self.config.agent.state_dir.display().to_string().as_str(),
            next_check = next.as_str();
            "certagent daemon ready"
        );
    }

    /// Tells systemd the summary, when there is a systemd to tell (the summary walks every
    /// certificate, so it is not computed for nobody).
    fn publish_status(&self) {
        if crate::systemd::notifying() {
            crate::systemd::notify_status(&self.summary());
        }
    }

    /// One line for `systemctl status`: "12 certificates, 1 re-issuing, next check in 3h".
    fn summary(&self) -> String {
        let total = self.config.certificates.len();
        let busy = self.certs.values().filter(|s| s.in_flight).count();
        let mut parts = vec![format!(
            "{total} certificate{}",
            if total == 1 { "" } else { "s" }
        )];
        if busy > 0 {
            parts.push(format!("{busy} re-issuing"));
        }
        match self.next_wake() {
            Some(at) => parts.push(format!(
                "next check in {}",
                humanize((at - self.clock.now()).max(0))
            )),
            None if busy == 0 => parts.push("nothing scheduled".into()),
            None => {}
        }
        parts.join(", ")
    }
}

/// A certificate whose files would go into a directory that is missing cannot be
/// re-issued (its re-issue fails before a key is generated); the others are managed as usual.
fn warn_missing_output_directories(config: &crate::config::Config) {
    for cert in config.certificates.values() {
        for (key, dir, problem, hint) in
            cert.missing_output_directories(&config.agent.state_dir, Path::new("/"))
        {
            log::warn!(cert = cert.name.as_str(); "{key}: directory \"{dir}\" {problem}: this certificate cannot be re-issued until it is fixed; hint: {hint}");
        }
    }
}
