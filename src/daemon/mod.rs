//! `certagent run`: the event loop. It wakes for inotify events on the configured files and
//! the config, for the next deadline the core computed (renewal window, retry), for control
//! requests and for signals — and for nothing else. With nothing due it sleeps.
//!
//! The daemon holds the shared lock for its whole life: every re-issue on the host goes
//! through it (the CLI asks over the control socket), so two never interleave. Jobs run
//! concurrently across certificates, bounded by `max_parallel`; one certificate never has
//! two jobs.

mod schedule;
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
use crate::control::{self, Request, Response};
use crate::core::lifecycle::Step;
use crate::core::{self, Reason, Timestamp, humanize};
use crate::error::{Error, Result, exit};
use crate::executor::{Executor, Outcome, Signals, observe};
use crate::ops;
use crate::output::ReissueResult;
use crate::store::Lock;

use schedule::{Plan, human_wait, next_step, plan};

/// Events arriving this close together are handled as one (an editor or config management
/// replacing cert and key with two renames, our own flip touching several links).
const SETTLE: Duration = Duration::from_millis(20);

/// A re-issue asked for over the control socket.
struct ReissueAsk {
    names: Vec<String>,
    reason: Reason,
    wait: bool,
    reply: oneshot::Sender<Response>,
    /// A certificate handed in for a pending manual re-issue (one name), and the inbox file
    /// it came from.
    import: Option<(Arc<Vec<u8>>, Option<PathBuf>)>,
}

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
}

/// Run as the service: signals SIGTERM/SIGINT end it.
pub async fn run_service(config_path: &Path) -> Result<u8> {
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
    let config = Arc::new(crate::config::Config::load(config_path)?);
    let agent = &config.agent;
    let lock_wait = Duration::from_secs(agent.lock_timeout.0.max(0) as u64);
    let _lock = Lock::acquire(&agent.runtime_dir, lock_wait)
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

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (fs_tx, mut fs_rx) = mpsc::channel(1024);
    let watcher = watch::Watcher::new(fs_tx)?;
    let executor = Executor::new(config.clone(), clock, stop_rx.clone())?;
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
    };
    d.watcher.watch(&d.config, &d.config_path);
    d.forget_backoffs();
    d.evaluate_all().await;
    crate::systemd::notify_ready(&d.summary());
    let (ask_tx, mut ask_rx) = mpsc::channel::<ReissueAsk>(64);
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CLIENTS));
    // Certificates dropped into the inbox while the daemon was down.
    d.scan_inbox(&ask_tx);
    log::info!(certificates = d.config.certificates.len(); "certagent daemon ready");

    let mut sighup = signal(SignalKind::hangup())
        .map_err(|e| Error::msg(format!("failed to catch SIGHUP: {e}")))?;
    let watchdog = crate::systemd::watchdog_interval();
    let mut watchdog_at = watchdog.map(|w| Instant::now() + w);
    let mut dirty: HashSet<String> = HashSet::new();
    let mut settle_at: Option<Instant> = None;
    let mut reload_pending = false;
    tokio::pin!(shutdown);

    loop {
        let wake = d.next_wake().map(|ts| clock.instant_at(ts));
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
            }
            () = sleep_until(settle_at) => {
                settle_at = None;
                if std::mem::take(&mut reload_pending) {
                    d.reload_if_changed().await;
                }
                // A blocklist or flag file may be what changed. And after a reload too: when
                // the new configuration is invalid, nothing else looks at a certificate whose
                // files changed in the same settle window.
                d.blocked = Arc::new(Blocked::load(&d.config));
                let dirty: Vec<String> = std::mem::take(&mut dirty).into_iter().collect();
                let certificates = dirty.len();
                d.evaluate_many(dirty).await;
                // Everything inotify reported up to here has been looked at (and any work it
                // called for started): tests wait for this line before they check that
                // something did not happen.
                log::debug!(certificates; "file changes handled");
            }
            () = sleep_until(wake) => {
                let now = clock.now();
                let due: Vec<String> = d.certs.iter()
                    .filter(|(_, s)| !s.in_flight && s.wake_at.is_some_and(|w| w <= now))
                    .map(|(n, _)| n.clone())
                    .collect();
                d.evaluate_many(due).await;
            }
            Some(done) = d.jobs.join_next_with_id() => d.joined(done).await,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let client = serve_client(stream, config_rx.clone(), clock, ask_tx.clone());
                    let clients = clients.clone();
                    tokio::spawn(async move {
                        // Requests and answers of at most this many clients are in memory at
                        // once: a burst of clients waits here holding only its connection.
                        let Ok(_permit) = clients.acquire_owned().await else {
                            return;
                        };
                        client.await
                    });
                }
            }
            Some(ask) = ask_rx.recv() => d.ask(ask),
            _ = sighup.recv() => {
                d.reload("SIGHUP received").await;
            }
            () = sleep_until(watchdog_at) => {
                crate::systemd::notify_watchdog();
                watchdog_at = watchdog.map(|w| Instant::now() + w);
            }
        }
    }

    crate::systemd::notify_stopping();
    let in_flight = d.jobs.len();
    if in_flight > 0 {
        log::info!(jobs = in_flight; "waiting for re-issues in progress to reach a safe point");
    }
    let _ = stop_tx.send(true);
    while let Some(done) = d.jobs.join_next_with_id().await {
        d.joined(done).await;
    }
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    log::info!("certagent daemon stopped");
    Ok(())
}

/// After an inbox file was tried: gone when installed, else kept in `inbox/rejected/` with
/// the reason next to it, so nothing an operator dropped there is silently lost.
fn settle_inbox_file(path: &Path, error: Option<&str>) {
    match error {
        None => {
            let _ = std::fs::remove_file(path);
        }
        Some(why) => {
            let Some(dir) = path.parent() else { return };
            let rejected = dir.join("rejected");
            let _ = std::fs::create_dir_all(&rejected);
            if let Some(name) = path.file_name() {
                let to = rejected.join(name);
                let _ = std::fs::rename(path, &to);
                let _ = std::fs::write(
                    rejected.join(format!("{}.error", name.to_string_lossy())),
                    format!("{why}\n"),
                );
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn next_wake(&self) -> Option<Timestamp> {
        self.certs
            .values()
            .filter(|s| !s.in_flight)
            .filter_map(|s| s.wake_at)
            .min()
    }

    /// Recover and look at every certificate (start-up, config reload). Observation reads
    /// and checks every pair, so it is spread over the blocking pool.
    async fn evaluate_all(&mut self) {
        let names: Vec<String> = self.config.certificates.keys().cloned().collect();
        self.certs
            .retain(|n, s| s.in_flight || self.config.certificates.contains_key(n));
        self.blocked = Arc::new(Blocked::load(&self.config));
        self.evaluate_many(names).await;
        self.write_metrics();
    }

    /// Look at these certificates (those without a job in flight) and act on what is found.
    /// The verdicts (file reads, parses, the pair check) run on the blocking pool, so a
    /// rescan of thousands neither stalls the loop nor uses one core only; systemd hears the
    /// status once, after the batch (it walks every certificate).
    async fn evaluate_many(&mut self, names: Vec<String>) {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !self.certs.get(n).is_some_and(|s| s.in_flight))
            .collect();
        let now = self.clock.now();
        let mut tasks = JoinSet::new();
        for chunk in names.chunks(256) {
            let chunk = chunk.to_vec();
            let config = self.config.clone();
            let blocked = self.blocked.clone();
            tasks.spawn_blocking(move || {
                chunk
                    .into_iter()
                    .filter_map(|name| {
                        let cert = config.certificates.get(&name)?;
                        Some((name, next_step(&config, &blocked, cert, now)))
                    })
                    .collect::<Vec<_>>()
            });
        }
        let mut verdicts = Vec::new();
        while let Some(Ok(part)) = tasks.join_next().await {
            verdicts.extend(part);
        }
        for (name, (step, detail)) in verdicts {
            self.act(&name, step, detail).await;
        }
        self.publish_status();
    }

    /// Rewrite the metrics file (when configured); a failure is logged, never fatal.
    fn write_metrics(&self) {
        if let Err(e) = crate::metrics::write(&self.config, self.clock.now()) {
            log::warn!("failed to write the metrics file: {e}");
        }
    }

    /// Look at one certificate (after its job ended) and act on what is found. The caller
    /// tells systemd.
    async fn evaluate(&mut self, name: &str) {
        if self.certs.get(name).is_some_and(|s| s.in_flight) {
            return;
        }
        let Some(cert) = self.config.certificates.get(name) else {
            return;
        };
        let (step, detail) = next_step(&self.config, &self.blocked, cert, self.clock.now());
        self.act(name, step, detail).await;
    }

    /// Carry out a certificate's next step: start its job, or sleep until its time.
    async fn act(&mut self, name: &str, step: Step, detail: String) {
        let now = self.clock.now();
        match plan(&step, now) {
            Plan::Start(job) => {
                if let Job::Reissue(reason) = job {
                    log::info!(cert = name, reason = reason.as_str(), event = "detected"; "re-issue needed: {detail}");
                    self.record_start(name);
                }
                self.start(name, job);
            }
            Plan::WakeAt(wake_at) => {
                self.log_wait(name, &step, &detail);
                self.certs.entry(name.to_string()).or_default().wake_at = wake_at;
            }
        }
    }

    /// What an operator reads about a certificate that needs work but waits.
    fn log_wait(&self, name: &str, step: &Step, detail: &str) {
        match step {
            Step::Backoff { until, reason } => {
                log::debug!(cert = name, reason = reason.as_str(); "needs a re-issue, retry scheduled at {}", crate::output::rfc3339(*until));
            }
            Step::RateLimited { until, reason } => log::warn!(
                cert = name, reason = reason.as_str(), event = "held";
                "re-issue held back until {}: {} re-issues started in the last hour (max_reissues_per_hour); re-issue needed: {detail}; hint: `certagent reissue --now {name}` is not limited; a loop usually means renew_before is as long as the certificates the issuer sends",
                crate::output::rfc3339(*until), self.config.agent.max_reissues_per_hour
            ),
            Step::Hold { why, .. } => log::error!(
                cert = name, reason = Reason::CompromiseUnknown.as_str();
                "cannot tell whether a key of {name} is compromised: {why}; nothing is re-issued until it can be read"
            ),
            _ => {}
        }
    }

    fn start(&mut self, name: &str, job: Job) {
        let Some(cert) = self.config.certificates.get(name).cloned() else {
            return;
        };
        let state = self.certs.entry(name.to_string()).or_default();
        if state.in_flight {
            return;
        }
        state.in_flight = true;
        state.reissuing = matches!(job, Job::Reissue(_));
        state.wake_at = None;
        let executor = self.executor.clone();
        let semaphore = self.semaphore.clone();
        let stop = self.stop_rx.clone();
        let name = name.to_string();
        let remembered = (name.clone(), job.clone());
        let task = self.jobs.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            // Queued when the daemon began to stop: do not start (no key, no order); the
            // journal or the next evaluation picks it up at the next start.
            let reason = job_reason(&job);
            if *stop.borrow() {
                return Ended {
                    outcome: not_started(),
                    name,
                    reason,
                };
            }
            let outcome = match job {
                Job::Reissue(reason) => ops::reissue_one(&executor, &cert, reason).await,
                Job::Finish => executor.finish(&cert).await,
                Job::Refresh => executor.refresh(&cert).await,
                Job::FixPermissions => executor.fix_permissions(&cert),
                Job::Import(data, source) => {
                    let outcome = ops::import_one(&executor, &cert, &data).await;
                    if let Some(path) = source {
                        let error = outcome.error().map(|e| e.to_string());
                        settle_inbox_file(&path, error.as_deref());
                    }
                    outcome
                }
            };
            Ended {
                name,
                reason,
                outcome,
            }
        });
        self.job_of.insert(task.id(), remembered);
    }

    /// A job's task ended: with its result, or by a panic, which is reported as the job's
    /// failure (never a certificate left "in flight" for ever, never a client left waiting).
    async fn joined(
        &mut self,
        done: std::result::Result<(tokio::task::Id, Ended), tokio::task::JoinError>,
    ) {
        let (id, ended) = match done {
            Ok(done) => done,
            Err(e) => {
                let Some((name, job)) = self.job_of.remove(&e.id()) else {
                    log::error!("a job ended abnormally: {e}");
                    return;
                };
                let why = match e.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into()),
                    Err(e) => e.to_string(),
                };
                let outcome = crashed(&name, &job, &why);
                let message = outcome.error().map(|e| e.to_string()).unwrap_or_default();
                log::error!(cert = name.as_str(), event = "failed"; "{message}");
                if matches!(job, Job::Reissue(_) | Job::Import(..)) {
                    self.executor
                        .record_failure(&name, job_reason(&job), &message);
                }
                let ended = Ended {
                    reason: job_reason(&job),
                    name,
                    outcome,
                };
                self.finished(ended).await;
                return;
            }
        };
        self.job_of.remove(&id);
        self.finished(ended).await;
    }

    async fn finished(&mut self, ended: Ended) {
        let name = ended.name.as_str();
        let result = ops::document(name, ended.reason, &ended.outcome);
        let state = self.certs.entry(name.to_string()).or_default();
        state.in_flight = false;
        for w in state.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
        if let Some((job, waiters)) = state.queued.take() {
            if matches!(job, Job::Reissue(_)) {
                self.clear_backoff(name);
            }
            self.start(name, job);
            self.certs
                .entry(name.to_string())
                .or_default()
                .waiters
                .extend(waiters);
            return;
        }
        // A compromise response adds to certagent's memory of compromised keys.
        self.blocked = Arc::new(Blocked::load(&self.config));
        // A job cut short by shutdown did not fail: it resumes at the next start, at once.
        let stopping = *self.stop_rx.borrow();
        // Only a failed re-issue backs off here; finishing and refreshing keep their own
        // schedule in the journal.
        let failed = match &ended.outcome {
            Outcome::Failed(e) | Outcome::RolledBack(e) | Outcome::PermissionsFailed(e) => Some(e),
            _ => None,
        };
        if let Some(e) = failed
            && !stopping
        {
            self.schedule_retry(name, &e.to_string());
        }
        if let Outcome::Pending(waiting) = &ended.outcome
            && !stopping
        {
            // Waiting on a human or a slow CA: no backoff, no loop; the journal says when to
            // look again (the next reminder, or when the CA suggested).
            if let Err(wake) = self.pending_wake(name, waiting.retry_in) {
                self.certs.entry(name.to_string()).or_default().wake_at = Some(wake);
                self.publish_status();
                log::debug!(cert = name, result = result.result.as_str(); "job finished");
                return;
            }
        }
        if let Outcome::RefreshFailed(e) = &ended.outcome {
            // The CA's view could not be fetched or recorded: try again in an hour, not now.
            log::warn!(cert = name; "{e}");
            self.certs.entry(name.to_string()).or_default().wake_at =
                Some(self.clock.now() + 3_600);
        } else if !stopping {
            self.evaluate(name).await;
        }
        self.write_metrics();
        self.publish_status();
        // After the evaluation that follows a job: tests wait for this line before they check
        // that nothing else was started.
        log::debug!(cert = name, result = result.result.as_str(); "job finished");
    }

    /// Hand every complete file in the inbox to the certificate whose pending key it is
    /// for; a file for no pending re-issue (or not a certificate at all) is set aside in
    /// `inbox/rejected/` with the reason.
    fn scan_inbox(&mut self, asks: &mpsc::Sender<ReissueAsk>) {
        let inbox = crate::issuer::manual::inbox_dir(&self.config.agent.state_dir);
        let Ok(entries) = std::fs::read_dir(&inbox) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let shown = path.display().to_string();
            let leaf = crate::store::fsutil::read_capped(&path, crate::keys::MAX_PEM_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|b| b.ok_or_else(|| "vanished".to_string()))
                .and_then(|b| {
                    let chain = crate::keys::Chain::from_pem(&b)?;
                    Ok((chain.leaf()?, b))
                });
            let (leaf, data) = match leaf {
                Ok(x) => x,
                Err(e) => {
                    log::error!(file = shown.as_str(); "rejected an inbox file: {e}");
                    settle_inbox_file(&path, Some(&e));
                    continue;
                }
            };
            let owner = self.config.certificates.keys().find(|name| {
                self.executor
                    .store
                    .journal(name)
                    .ok()
                    .and_then(|j| j.pending)
                    .is_some_and(|p| p.key_spki_sha256 == leaf.spki_sha256)
            });
            let Some(name) = owner.cloned() else {
                let why = "the certificate is not for the key of any pending re-issue: nothing was installed";
                log::error!(file = shown.as_str(), serial = leaf.serial.as_str(); "rejected an inbox file: {why}");
                settle_inbox_file(&path, Some(why));
                continue;
            };
            log::info!(cert = name.as_str(), file = shown.as_str(); "found the certificate for the pending re-issue in the inbox");
            let (reply, _ignored) = oneshot::channel();
            let ask = ReissueAsk {
                names: vec![name],
                reason: Reason::Forced,
                wait: false,
                reply,
                import: Some((Arc::new(data), Some(path))),
            };
            let _ = asks.try_send(ask);
        }
    }

    /// A re-issue ended pending: send the reminder that is due (manual CA, every
    /// `remind_every` since it started: "pending approval for 2 days") and journal when to
    /// look again (the next reminder, or when the CA suggested), which the lifecycle then
    /// waits for. `Err(at)`: it could not be journalled; look again at `at`.
    fn pending_wake(
        &mut self,
        name: &str,
        retry_in: Option<i64>,
    ) -> std::result::Result<(), Timestamp> {
        let now = self.clock.now();
        let every = match self
            .config
            .certificates
            .get(name)
            .and_then(|c| self.config.issuers.get(&c.issuer))
            .map(|i| &i.kind)
        {
            Some(crate::config::IssuerKind::Manual(m)) => Some(m.remind_every.0.max(60)),
            _ => None,
        };
        let fallback = now + every.unwrap_or_else(|| retry_in.unwrap_or(300).clamp(10, 86_400));
        let store = &self.executor.store;
        let Ok(mut journal) = store.journal(name) else {
            return Err(fallback);
        };
        let Some(p) = journal.pending.as_mut() else {
            return Err(fallback);
        };
        let Some(every) = every else {
            p.next_look = Some(fallback);
            return store.save_journal(name, &journal).map_err(|_| fallback);
        };
        let waited = (now - p.started_at).max(0);
        let due = (waited / every) as u32;
        p.next_look = Some(p.started_at + (i64::from(due) + 1) * every);
        let remind = due > p.reminders;
        if remind {
            p.reminders = due;
        }
        let reason = p.reason;
        let saved = store.save_journal(name, &journal).map_err(|_| fallback);
        if remind {
            let message = format!(
                "re-issue of {name} pending approval for {}: check the approval e-mail sent by the CA",
                human_wait(waited)
            );
            log::warn!(cert = name, event = "reminder", reason = reason.as_str(); "{message}");
            let config = self.config.clone();
            let event = crate::notify::Event::new("reminder", name, message, now);
            tokio::spawn(async move { crate::notify::emit(&config, event).await });
        }
        saved
    }

    /// After a failure (`why`): back off (exponentially, with jitter, honouring the server's
    /// Retry-After), journalled so that a new trigger can be told from what failed; escalate
    /// the log level as expiry approaches. The message an operator reads says why.
    fn schedule_retry(&mut self, name: &str, why: &str) {
        let store = &self.executor.store;
        let now = self.clock.now();
        let mut journal = match store.journal(name) {
            Ok(j) => j,
            Err(e) => {
                log::error!(cert = name, event = "failed"; "re-issue failed: {why}; and failed to schedule the retry: {e}");
                return;
            }
        };
        let delay = core::retry_delay(
            journal.failures.max(1),
            rand::random::<f64>(),
            journal.server_retry_after,
        );
        journal.retry_at = Some(now + delay);
        let observation = self.config.certificates.get(name).map(|c| {
            let signals = Signals::for_cert(&self.config, &self.blocked, Some(&journal), name);
            observe(c, now, &signals)
        });
        journal.retry_reasons = observation
            .as_ref()
            .map(|o| o.decision.reasons.clone())
            .unwrap_or_default();
        if let Err(e) = store.save_journal(name, &journal) {
            log::error!(cert = name; "failed to journal the retry time: {e}");
        }
        let left = observation
            .and_then(|o| o.decision.not_after)
            .map(|na| na - now);
        let when = humanize(delay);
        match left {
            Some(l) if l < 7 * 86_400 => log::error!(
                cert = name, event = "failed", failures = journal.failures;
                "re-issue failed, certificate expires in {}, retrying in {when}: {why}", humanize(l)
            ),
            _ => log::warn!(
                cert = name, event = "failed", failures = journal.failures;
                "re-issue failed, retrying in {when}: {why}"
            ),
        }
    }

    /// At start: a backoff journalled by the previous run is not waited out. What changed
    /// since (a fix, `certagent install` widening what the unit may write) is new
    /// information; the hourly guard still bounds a restart loop.
    fn forget_backoffs(&self) {
        let store = &self.executor.store;
        for name in self.config.certificates.keys() {
            let Ok(mut j) = store.journal(name) else {
                continue;
            };
            let waited = j
                .pending
                .as_mut()
                .and_then(|p| p.next_look.take())
                .is_some();
            let backed_off = j.retry_at.take().is_some();
            if backed_off {
                log::info!(cert = name.as_str(); "not waiting out the retry delay of the previous run");
            }
            if (backed_off || waited)
                && let Err(e) = store.save_journal(name, &j)
            {
                log::warn!(cert = name.as_str(); "failed to journal the retry time: {e}");
            }
        }
    }

    /// The hourly guard counts the re-issues the daemon starts by itself: journal this one
    /// (the lifecycle allowed it).
    fn record_start(&self, name: &str) {
        let store = &self.executor.store;
        let Ok(mut j) = store.journal(name) else {
            return;
        };
        let now = self.clock.now();
        j.auto_reissues.retain(|&t| t > now - 3_600 && t <= now);
        j.auto_reissues.push(now);
        if let Err(e) = store.save_journal(name, &j) {
            log::warn!(cert = name; "failed to journal the start of a re-issue: {e}");
        }
    }

    fn ask(&mut self, ask: ReissueAsk) {
        let names: Vec<String> = if ask.names.is_empty() {
            self.config.certificates.keys().cloned().collect()
        } else {
            ask.names
        };
        let mut receivers = Vec::new();
        for name in &names {
            if !self.config.certificates.contains_key(name) {
                let e = Error::msg(format!(
                    "no certificate named {name:?} in the daemon's configuration"
                ))
                .with_hint("if you just added it, reload the daemon: systemctl reload certagent");
                let _ = ask.reply.send(Response::error(&e));
                return;
            }
        }
        if let Some((data, source)) = ask.import.clone() {
            let name = &names[0];
            let state = self.certs.entry(name.clone()).or_default();
            let (tx, rx) = oneshot::channel();
            if state.in_flight {
                // Runs right after the current job (which may be the pending re-issue itself),
                // in place of anything queued before; whoever waited for that gets its result.
                let mut waiters = vec![tx];
                if let Some((_, earlier)) = state.queued.take() {
                    waiters.extend(earlier);
                }
                state.queued = Some((Job::Import(data, source), waiters));
            } else {
                self.start(name, Job::Import(data, source));
                self.certs.entry(name.clone()).or_default().waiters.push(tx);
            }
            // The client waits for the import, and only for it.
            let reply = ask.reply;
            let name = name.clone();
            tokio::spawn(async move {
                answer(reply, vec![outcome(&name, Reason::Forced, rx).await]);
            });
            return;
        }
        for name in &names {
            let state = self.certs.entry(name.clone()).or_default();
            let (tx, rx) = oneshot::channel();
            if state.in_flight && state.reissuing {
                // A re-issue already running for this certificate is the one asked for: wait
                // for it rather than starting a second one.
                state.waiters.push(tx);
            } else if state.in_flight {
                // A refresh, finish or import is running: the re-issue starts right after it.
                match &mut state.queued {
                    Some((_, waiters)) => waiters.push(tx),
                    None => state.queued = Some((Job::Reissue(ask.reason), vec![tx])),
                }
                log::debug!(cert = name.as_str(); "re-issue queued behind the job in flight");
            } else {
                state.waiters.push(tx);
                self.clear_backoff(name);
                self.start(name, Job::Reissue(ask.reason));
            }
            if ask.wait {
                receivers.push((name.clone(), rx));
            }
        }
        self.publish_status();
        let reason = ask.reason;
        let reply = ask.reply;
        tokio::spawn(async move {
            let results = if receivers.is_empty() {
                names
                    .iter()
                    .map(|n| ReissueResult::new(n, "started", reason.as_str()))
                    .collect()
            } else {
                let mut out = Vec::new();
                for (name, rx) in receivers {
                    out.push(outcome(&name, reason, rx).await);
                }
                out
            };
            answer(reply, results);
        });
    }

    /// An operator asking is new information: forget the backoff.
    fn clear_backoff(&self, name: &str) {
        let store = &self.executor.store;
        if let Ok(mut j) = store.journal(name)
            && j.retry_at.is_some()
        {
            j.retry_at = None;
            let _ = store.save_journal(name, &j);
        }
    }

    /// A file of the configuration changed on disk: reload, unless the files say what the
    /// configuration in use says (an editor touching a file; a SIGHUP that already did it).
    async fn reload_if_changed(&mut self) {
        let loaded = crate::config::Config::load(&self.config_path).map_err(Error::Config);
        if loaded
            .as_ref()
            .is_ok_and(|new| new.fingerprint == self.config.fingerprint)
        {
            log::debug!("the configuration files changed on disk, their content did not");
            return;
        }
        self.apply(loaded, "the configuration changed on disk")
            .await;
    }

    /// Re-read the configuration; keep the old one if the new one is invalid.
    async fn reload(&mut self, why: &str) -> bool {
        let loaded = crate::config::Config::load(&self.config_path).map_err(Error::Config);
        self.apply(loaded, why).await
    }

    /// Switch to a configuration just read, or log why not and keep the old one.
    async fn apply(&mut self, loaded: Result<crate::config::Config>, why: &str) -> bool {
        crate::systemd::notify_reloading();
        let applied = match loaded {
            Ok(new) => {
                let new = Arc::new(new);
                match Executor::new(new.clone(), self.clock, self.stop_rx.clone()) {
                    Ok(executor) => {
                        log::info!(certificates = new.certificates.len(); "{why}: configuration reloaded");
                        self.executor = executor;
                        self.config = new.clone();
                        let _ = self.config_tx.send(new);
                        self.watcher.watch(&self.config, &self.config_path);
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

/// The outcome a control client waits for; a job that went away without one (replaced in
/// the queue, or the daemon stopped) is a failure, never silence that reads as success.
async fn outcome(
    name: &str,
    reason: Reason,
    rx: oneshot::Receiver<ReissueResult>,
) -> ReissueResult {
    rx.await.unwrap_or_else(|_| {
        let mut r = ReissueResult::new(name, "failed", reason.as_str());
        r.error = Some("the daemon ended this request without an outcome".into());
        r.hint = Some("run the command again; `certagent status` shows the state".into());
        r
    })
}

/// Answer a control client with the re-issue document of `results` and its exit code.
fn answer(reply: oneshot::Sender<Response>, results: Vec<ReissueResult>) {
    let (doc, code) = ops::reissue_doc(results);
    let document = serde_json::to_value(doc).unwrap_or_default();
    let _ = reply.send(Response {
        exit: code,
        document,
        error: None,
        hint: None,
    });
}

/// The outcome of a job that was still queued when the daemon began to stop.
fn not_started() -> Outcome {
    Outcome::Failed(Error::msg(
        "not started: certagent is shutting down; it is taken up again at the next start",
    ))
}

/// A job that ended: for which certificate, the reason it is reported under, and how.
struct Ended {
    name: String,
    reason: Reason,
    outcome: Outcome,
}

/// Work the daemon runs for one certificate.
#[derive(Clone, Debug)]
enum Job {
    Reissue(Reason),
    Finish,
    Refresh,
    /// Install a handed-in certificate; the inbox file (if any) is removed on success and
    /// moved to `inbox/rejected/` otherwise.
    Import(Arc<Vec<u8>>, Option<PathBuf>),
    /// Give the kept generations the configured owner, group and modes (no new key).
    FixPermissions,
}

/// The reason a job is reported under.
fn job_reason(job: &Job) -> Reason {
    match job {
        Job::Reissue(reason) => *reason,
        Job::Finish | Job::Refresh | Job::Import(..) | Job::FixPermissions => Reason::Forced,
    }
}

/// The outcome of a job whose task panicked.
fn crashed(name: &str, job: &Job, why: &str) -> Outcome {
    let e = Error::msg(format!("the job for {name:?} crashed: {why}")).with_hint(
        "this is a bug in certagent; the journal keeps the work, it is retried with backoff",
    );
    match job {
        Job::Reissue(_) | Job::Import(..) | Job::FixPermissions => Outcome::Failed(e),
        Job::Finish => Outcome::FinishFailed(e),
        Job::Refresh => Outcome::RefreshFailed(e),
    }
}

/// Control connections served at once (the others wait their turn).
const MAX_CONTROL_CLIENTS: usize = 8;

/// One control connection: check and status are answered from a snapshot of the config
/// (read-only, off the event loop); reissue goes through the loop.
async fn serve_client(
    mut stream: tokio::net::UnixStream,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    clock: Clock,
    asks: mpsc::Sender<ReissueAsk>,
) {
    // Root (or whoever runs the daemon) only, whatever the socket's mode says.
    let me = nix::unistd::geteuid().as_raw();
    match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
        _ => {
            let e = Error::msg("permission denied: the control socket is for root only");
            let _ = control::write_response(&mut stream, &Response::error(&e)).await;
            return;
        }
    }
    let req = match control::read_request(&mut stream).await {
        Ok(r) => r,
        Err(e) => {
            let _ = control::write_response(&mut stream, &Response::error(&e)).await;
            return;
        }
    };
    let config = config.borrow().clone();
    let response = match req {
        Request::Check { names } | Request::Status { names } => {
            let now = clock.now();
            let work = tokio::task::spawn_blocking(move || {
                let certs = ops::select(&config, &names)?;
                let (doc, code) = ops::check_doc(&config, &certs, now);
                Ok::<_, Error>(Response {
                    exit: code,
                    document: serde_json::to_value(doc).unwrap_or_default(),
                    error: None,
                    hint: None,
                })
            });
            match work.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Response::error(&e),
                Err(e) => Response::error(&Error::msg(format!("status failed: {e}"))),
            }
        }
        Request::Import { name, certificate } => {
            let (reply, rx) = oneshot::channel();
            let import = Some((Arc::new(certificate.into_bytes()), None));
            let ask = ReissueAsk {
                names: vec![name],
                reason: Reason::Forced,
                wait: true,
                reply,
                import,
            };
            if asks.send(ask).await.is_err() {
                Response::error(&Error::msg("the daemon is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::error(&Error::msg("the daemon stopped before the import finished"))
                })
            }
        }
        Request::Reissue {
            names,
            all,
            reason,
            wait,
        } => {
            let names = if all { Vec::new() } else { names };
            let (reply, rx) = oneshot::channel();
            if asks
                .send(ReissueAsk {
                    names,
                    reason,
                    wait,
                    reply,
                    import: None,
                })
                .await
                .is_err()
            {
                Response::error(&Error::msg("the daemon is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::error(&Error::msg(
                        "the daemon stopped before the re-issue finished",
                    ))
                })
            }
        }
    };
    let _ = control::write_response(&mut stream, &response).await;
}
