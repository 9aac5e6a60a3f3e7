//! The daemon's schedule: what it does about a certificate's next step (a job now, or a
//! wake-up at the time `status` reports), and the words it logs about it. The step itself is
//! the lifecycle's (`core::lifecycle`); nothing here decides it.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::Daemon;
use super::jobs::Job;
use crate::compromise::Blocked;
use crate::config::Config;
use crate::core::lifecycle::Step;
use crate::core::{self, Reason, Timestamp, humanize};
use crate::executor::{Signals, observe};
use crate::store::Store;

/// What the daemon does about a step: start a job now, or look again at a time (`None`:
/// only when something changes). Every step that is work starts now; every wait wakes at the
/// time `status` reports as the next check.
pub(super) enum Plan {
    Start(Job),
    WakeAt(Option<Timestamp>),
}

pub(super) fn plan(step: &Step, now: Timestamp) -> Plan {
    match step {
        Step::FinishFlip | Step::FinishCompromise => Plan::Start(Job::Finish),
        Step::Refresh => Plan::Start(Job::Refresh),
        Step::FixPermissions => Plan::Start(Job::FixPermissions),
        Step::Act { reason } | Step::Resume { reason } => Plan::Start(Job::Reissue(*reason, None)),
        Step::Hold { .. }
        | Step::Backoff { .. }
        | Step::RateLimited { .. }
        | Step::WaitForHuman { .. }
        | Step::WaitForCa { .. }
        | Step::Idle { .. } => Plan::WakeAt(step.next_look(now)),
    }
}

/// What the daemon learns from looking at one certificate.
pub(super) struct Look {
    pub(super) step: Step,
    /// What an operator reads about why, for a re-issue.
    pub(super) detail: String,
    /// Why it is not healthy, `None` when it is (the metrics' healthy gauge).
    pub(super) unhealthy: Option<&'static str>,
}

/// Observe one certificate (tracking its compromise flag in the journal first) and ask the
/// lifecycle for its next step.
pub(super) fn next_step(
    config: &Config,
    blocked: &Blocked,
    cert: &crate::config::Certificate,
    now: Timestamp,
) -> Look {
    let store = Store::at(&config.agent.state_dir);
    let mut journal = store.journal(&cert.name).ok();
    if let Some(j) = journal.as_mut() {
        crate::compromise::track_flag(&store, config, &cert.name, j);
    }
    let next = crate::lifecycle::next(config, blocked, cert, journal.as_ref(), now);
    let unhealthy = next.unhealthy();
    let obs = next.observation;
    let pending = journal.as_ref().is_some_and(|j| j.pending.is_some());
    let detail = match &next.step {
        Step::Resume { .. } => "resuming a pending re-issue".to_string(),
        Step::Act {
            reason: Reason::KeyCompromised,
        } if pending => "the key in service is compromised".to_string(),
        Step::Act { reason } | Step::RateLimited { reason, .. } => {
            problem_detail(*reason, obs.key_problem, obs.cert_problem)
        }
        _ => String::new(),
    };
    Look {
        step: next.step,
        detail,
        unhealthy,
    }
}

/// What an operator reads about why a re-issue is needed.
fn problem_detail(
    reason: Reason,
    key_problem: Option<String>,
    cert_problem: Option<String>,
) -> String {
    let detail = match reason {
        Reason::KeyCompromised => {
            "the key in service is compromised (flag file, blocklist or CA)".to_string()
        }
        Reason::Revoked => "the CA revoked the certificate in service".to_string(),
        _ => [key_problem, cert_problem]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
    };
    if detail.is_empty() {
        reason.as_str().to_string()
    } else {
        detail
    }
}

/// "2 days", "5 hours", "40 minutes".
pub(super) fn human_wait(secs: i64) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs >= 86_400 {
        plural(secs / 86_400, "day")
    } else if secs >= 3_600 {
        plural(secs / 3_600, "hour")
    } else {
        plural((secs / 60).max(1), "minute")
    }
}

impl Daemon {
    pub(super) fn next_wake(&self) -> Option<Timestamp> {
        self.certs
            .values()
            .filter(|s| !s.in_flight)
            .filter_map(|s| s.wake_at)
            .min()
    }

    /// Recover and look at every certificate (start-up, config reload). Observation reads
    /// and checks every pair, so it is spread over the blocking pool.
    pub(super) async fn evaluate_all(&mut self) {
        let names: Vec<String> = self.config.certificates.keys().cloned().collect();
        self.certs
            .retain(|n, s| s.in_flight || self.config.certificates.contains_key(n));
        self.blocked = Arc::new(Blocked::load(&self.config));
        // Written whatever the looks found: the set of certificates may have changed.
        self.evaluate_many(names).await;
        self.write_metrics();
    }

    /// Look at these certificates (those without a job in flight) and act on what is found;
    /// the metrics file is rewritten when a certificate's health changed.
    /// The verdicts (file reads, parses, the pair check) run on the blocking pool, so a
    /// rescan of thousands neither stalls the loop nor uses one core only; systemd hears the
    /// status once, after the batch (it walks every certificate).
    pub(super) async fn evaluate_many(&mut self, names: Vec<String>) {
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
        let mut health_changed = false;
        for (name, look) in verdicts {
            health_changed |= self.act(&name, look).await;
        }
        self.publish_status();
        if health_changed {
            self.write_metrics();
        }
    }

    /// Look at one certificate (after its job ended) and act on what is found. The caller
    /// tells systemd and rewrites the metrics.
    pub(super) async fn evaluate(&mut self, name: &str) {
        if self.certs.get(name).is_some_and(|s| s.in_flight) {
            return;
        }
        let Some(cert) = self.config.certificates.get(name) else {
            return;
        };
        let look = next_step(&self.config, &self.blocked, cert, self.clock.now());
        self.act(name, look).await;
    }

    /// Carry out a certificate's next step: start its job, or sleep until its time. True when
    /// the certificate's health changed.
    async fn act(&mut self, name: &str, look: Look) -> bool {
        let Look {
            step,
            detail,
            unhealthy,
        } = look;
        let health = &mut self.certs.entry(name.to_string()).or_default().health;
        let changed = *health != Some(unhealthy);
        *health = Some(unhealthy);
        // A shared certificate this host does not serve as the fleet published it: that
        // generation is installed first (no order); the lifecycle looks again after it.
        if self.offer_published(name) {
            return changed;
        }
        let now = self.clock.now();
        match plan(&step, now) {
            Plan::Start(job) => {
                if let Job::Reissue(reason, _) = job {
                    log::info!(cert = name, reason = reason.as_str(), event = "detected"; "re-issue needed: {detail}");
                    self.record_start(name);
                }
                self.start(name, job);
            }
            Plan::WakeAt(wake_at) => {
                self.log_wait(name, &step, &detail);
                // A published generation to try installing again comes first if sooner.
                let wake_at = match (wake_at, self.retry_at(name)) {
                    (Some(w), Some(r)) => Some(w.min(r)),
                    (w, r) => w.or(r),
                };
                self.certs.entry(name.to_string()).or_default().wake_at = wake_at;
            }
        }
        changed
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

    /// A re-issue ended pending: send the reminder that is due (manual CA, every
    /// `remind_every` since it started: "pending approval for 2 days") and journal when to
    /// look again (the next reminder, or when the CA suggested), which the lifecycle then
    /// waits for. `Err(at)`: it could not be journalled; look again at `at`.
    pub(super) fn pending_wake(
        &mut self,
        name: &str,
        retry_in: Option<i64>,
    ) -> std::result::Result<(), Timestamp> {
        let now = self.clock.now();
        let store = &self.executor.store;
        let journal = store.journal(name).ok();
        // The issuer of the pending order (of a failover list, the one it was placed with).
        let issuer = journal
            .as_ref()
            .and_then(|j| j.pending.as_ref())
            .map(|p| p.issuer.clone())
            .or_else(|| self.config.certificates.get(name).map(|c| c.issuer.clone()));
        let every = match issuer
            .and_then(|i| self.config.issuers.get(&i))
            .map(|i| &i.kind)
        {
            Some(crate::config::IssuerKind::Manual(m)) => Some(m.remind_every.0.max(60)),
            _ => None,
        };
        let fallback = now + every.unwrap_or_else(|| retry_in.unwrap_or(300).clamp(10, 86_400));
        let Some(mut journal) = journal else {
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
    pub(super) fn schedule_retry(&mut self, name: &str, why: &str) {
        let store = &self.executor.store;
        let now = self.clock.now();
        let mut journal = match store.journal(name) {
            Ok(j) => j,
            Err(e) => {
                log::error!(cert = name, event = "failed"; "re-issue failed: {why}; and failed to schedule the retry: {e}");
                return;
            }
        };
        let observation = self.config.certificates.get(name).map(|c| {
            let signals = Signals::for_cert(&self.config, &self.blocked, Some(&journal), name);
            observe(c, now, &signals)
        });
        // The validity of the certificate in service: the backoff never waits past the
        // point where fewer than two more attempts would fit before it expires.
        let validity = observation
            .as_ref()
            .and_then(|o| o.leaf.as_ref())
            .map(|l| (l.not_before, l.not_after));
        let delay = core::retry_delay(
            journal.failures.max(1),
            rand::random::<f64>(),
            journal.server_retry_after,
            core::cadence::backoff_ceiling(validity.map(|(_, na)| na - now)),
        );
        // With a failover list, no longer than until the next issuer is due.
        let next_issuer = self.config.certificates.get(name).and_then(|c| {
            let failing = journal
                .failover
                .as_ref()
                .and_then(|f| Some((f.issuer.as_str(), f.failing_since?)));
            core::failover::moves_on_at(&c.issuers, failing, c.failover_after)
        });
        let delay = next_issuer.map_or(delay, |at| delay.min((at - now).max(1)));
        journal.retry_at = Some(now + delay);
        journal.retry_reasons = observation
            .as_ref()
            .map(|o| o.decision.reasons.clone())
            .unwrap_or_default();
        if let Err(e) = store.save_journal(name, &journal) {
            log::error!(cert = name; "failed to journal the retry time: {e}");
        }
        let when = humanize(delay);
        match validity {
            // Less than a quarter of its lifetime left: a human must act.
            Some((nb, na)) if core::cadence::renewal_failure_is_urgent(nb, na, now) => {
                log::error!(
                    cert = name, event = "failed", failures = journal.failures;
                    "re-issue failed, certificate expires in {}, retrying in {when}: {why}", humanize(na - now)
                )
            }
            _ => log::warn!(
                cert = name, event = "failed", failures = journal.failures;
                "re-issue failed, retrying in {when}: {why}"
            ),
        }
    }

    /// At start: a backoff journalled by the previous run is not waited out. What changed
    /// since (a fix, `certagent install` widening what the unit may write) is new
    /// information; the hourly guard still bounds a restart loop.
    pub(super) fn forget_backoffs(&self) {
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

    /// An operator asking is new information: forget the backoff.
    pub(super) fn clear_backoff(&self, name: &str) {
        let store = &self.executor.store;
        if let Ok(mut j) = store.journal(name)
            && j.retry_at.is_some()
        {
            j.retry_at = None;
            let _ = store.save_journal(name, &j);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::core::lifecycle::{CaView, PendingView, View, next_step};
    use crate::core::{Budget, Decision};

    const REASONS: [Reason; 5] = [
        Reason::KeyCompromised,
        Reason::KeyMissing,
        Reason::Expiring,
        Reason::NamesChanged,
        Reason::Forced,
    ];

    fn some<T>(rng: &mut StdRng, f: impl FnOnce(&mut StdRng) -> T) -> Option<T> {
        rng.random_bool(0.5).then(|| f(rng))
    }

    fn reasons(rng: &mut StdRng) -> Vec<Reason> {
        REASONS
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.3))
            .collect()
    }

    fn time(rng: &mut StdRng, now: Timestamp) -> Timestamp {
        now + rng.random_range(-5_000..5_000)
    }

    fn view(rng: &mut StdRng, now: Timestamp) -> View {
        View {
            flip: rng.random_bool(0.05),
            post_compromise: rng.random_bool(0.05),
            retry_at: some(rng, |r| time(r, now)),
            failed_with: reasons(rng),
            pending: some(rng, |r| PendingView {
                reason: REASONS[r.random_range(0..REASONS.len())],
                answers_compromise: r.random_bool(0.3),
                human: r.random_bool(0.5),
                next_look: some(r, |r| time(r, now)),
            }),
            compromise_problem: rng.random_bool(0.05).then(|| "unreadable".to_string()),
            permission_drift: rng.random_bool(0.2),
            ca_view: match rng.random_range(0..3) {
                0 => CaView::Nothing,
                1 => CaView::Unknown,
                _ => CaView::At(time(rng, now)),
            },
            budget: match rng.random_bool(0.2) {
                // The guard frees a slot within the hour after the oldest start.
                true => Budget::HeldUntil(now + rng.random_range(1..3_600)),
                false => Budget::Allowed,
            },
        }
    }

    fn decision(rng: &mut StdRng, now: Timestamp) -> Decision {
        Decision {
            reasons: reasons(rng),
            noted: vec![],
            renew_at: some(rng, |r| time(r, now)),
            renewal_rule: None,
            not_after: None,
        }
    }

    /// Over random journals and decisions: the daemon starts work exactly when `status`
    /// says the next check is now, otherwise it wakes exactly at the `next_check` that
    /// `status` reports — and never in the past, so it cannot spin.
    #[test]
    fn the_daemons_schedule_is_what_status_reports() {
        let mut rng = StdRng::seed_from_u64(15);
        let now: Timestamp = 1_800_000_000;
        for _ in 0..20_000 {
            let (view, decision) = (view(&mut rng, now), decision(&mut rng, now));
            let step = next_step(&view, &decision, now);
            let status_next_check = step.next_look(now);
            match plan(&step, now) {
                Plan::Start(_) => assert_eq!(status_next_check, Some(now), "{step:?}"),
                Plan::WakeAt(at) => {
                    assert_eq!(at, status_next_check, "{step:?} {view:?} {decision:?}");
                    assert!(
                        at.is_none_or(|at| at > now),
                        "{step:?} {view:?} {decision:?}"
                    );
                }
            }
        }
    }
}
