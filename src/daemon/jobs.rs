//! The daemon's jobs: one at a time per certificate, bounded by `max_parallel` across them;
//! how a job ends (its outcome, or a panic reported as a failure) and what follows: waiters
//! answered, the queued job started, a backoff journalled, the certificate looked at again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Daemon, ops};
use crate::compromise::Blocked;
use crate::core::{Asked, Reason, Requested};
use crate::error::Error;
use crate::executor::Outcome;

impl Daemon {
    pub(super) fn start(&mut self, name: &str, job: Job) {
        let Some(cert) = self.config.certificates.get(name).cloned() else {
            return;
        };
        let state = self.certs.entry(name.to_string()).or_default();
        if state.in_flight {
            return;
        }
        state.in_flight = true;
        state.reissuing = matches!(job, Job::Reissue(..));
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
                    asked: None,
                };
            }
            let mut asked = None;
            let outcome = match job {
                Job::Reissue(reason, requested) => {
                    let (outcome, why) =
                        ops::reissue_one(&executor, &cert, reason, requested).await;
                    asked = Some(why);
                    outcome
                }
                Job::Finish => executor.finish(&cert).await,
                Job::Refresh => executor.refresh(&cert).await,
                Job::FixPermissions => executor.fix_permissions(&cert),
                #[cfg(feature = "fleet")]
                Job::InstallPublished(record) => match executor.fleet.as_ref() {
                    Some(link) => {
                        crate::fleet::install_record(&executor, link, &cert, &record).await
                    }
                    None => Outcome::Failed(Error::msg("no [cluster] is configured")),
                },
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
                asked,
            }
        });
        self.job_of.insert(task.id(), remembered);
    }

    /// A job's task ended: with its result, or by a panic, which is reported as the job's
    /// failure (never a certificate left "in flight" for ever, never a client left waiting).
    pub(super) async fn joined(
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
                if matches!(job, Job::Reissue(..) | Job::Import(..)) {
                    self.executor
                        .record_failure(&name, job_reason(&job), &message);
                }
                let ended = Ended {
                    reason: job_reason(&job),
                    name,
                    outcome,
                    asked: None,
                };
                self.finished(ended).await;
                return;
            }
        };
        self.job_of.remove(&id);
        self.finished(ended).await;
    }

    pub(super) async fn finished(&mut self, ended: Ended) {
        let name = ended.name.as_str();
        let result = match &ended.asked {
            Some(asked) => ops::reissue_document(name, ended.reason, asked, &ended.outcome),
            None => ops::document(name, ended.reason, &ended.outcome),
        };
        let state = self.certs.entry(name.to_string()).or_default();
        state.in_flight = false;
        for w in state.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
        if let Some((job, waiters)) = state.queued.take() {
            if matches!(job, Job::Reissue(..)) {
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
}

/// The outcome of a job that was still queued when the daemon began to stop.
pub(super) fn not_started() -> Outcome {
    Outcome::Failed(Error::msg(
        "not started: certagent is shutting down; it is taken up again at the next start",
    ))
}

/// A job that ended: for which certificate, the reason it is reported under, and how.
pub(super) struct Ended {
    pub(super) name: String,
    pub(super) reason: Reason,
    pub(super) outcome: Outcome,
    /// For a re-issue: what was asked and observed when it started.
    pub(super) asked: Option<Asked>,
}

/// Work the daemon runs for one certificate.
#[derive(Clone, Debug)]
pub(super) enum Job {
    /// With the operator's reason in their words when an operator asked for it.
    Reissue(Reason, Option<Requested>),
    Finish,
    Refresh,
    /// Install a handed-in certificate; the inbox file (if any) is removed on success and
    /// moved to `inbox/rejected/` otherwise.
    Import(Arc<Vec<u8>>, Option<PathBuf>),
    /// Give the kept generations the configured owner, group and modes (no new key).
    FixPermissions,
    /// Install the generation the fleet published (no order).
    #[cfg(feature = "fleet")]
    InstallPublished(Box<crate::cluster::Published>),
}

/// The reason a job is reported under.
pub(super) fn job_reason(job: &Job) -> Reason {
    match job {
        Job::Reissue(reason, _) => *reason,
        Job::Finish | Job::Refresh | Job::Import(..) | Job::FixPermissions => Reason::Forced,
        #[cfg(feature = "fleet")]
        Job::InstallPublished(record) => Reason::parse(&record.reason).unwrap_or(Reason::Forced),
    }
}

/// The outcome of a job whose task panicked.
pub(super) fn crashed(name: &str, job: &Job, why: &str) -> Outcome {
    let e = Error::msg(format!("the job for {name:?} crashed: {why}")).with_hint(
        "this is a bug in certagent; the journal keeps the work, it is retried with backoff",
    );
    match job {
        Job::Reissue(..) | Job::Import(..) | Job::FixPermissions => Outcome::Failed(e),
        #[cfg(feature = "fleet")]
        Job::InstallPublished(_) => Outcome::Failed(e),
        Job::Finish => Outcome::FinishFailed(e),
        Job::Refresh => Outcome::RefreshFailed(e),
    }
}

/// After an inbox file was tried: gone when installed, else kept in `inbox/rejected/` with
/// the reason next to it, so nothing an operator dropped there is silently lost.
pub(super) fn settle_inbox_file(path: &Path, error: Option<&str>) {
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
