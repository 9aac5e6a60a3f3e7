//! The daemon's schedule: what it does about a certificate's next step (a job now, or a
//! wake-up at the time `status` reports), and the words it logs about it. The step itself is
//! the lifecycle's (`core::lifecycle`); nothing here decides it.

use crate::compromise::Blocked;
use crate::config::Config;
use crate::core::lifecycle::Step;
use crate::core::{Reason, Timestamp};
use crate::store::Store;

use super::Job;

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
        Step::Act { reason } | Step::Resume { reason } => Plan::Start(Job::Reissue(*reason)),
        Step::Hold { .. }
        | Step::Backoff { .. }
        | Step::RateLimited { .. }
        | Step::WaitForHuman { .. }
        | Step::WaitForCa { .. }
        | Step::Idle { .. } => Plan::WakeAt(step.next_look(now)),
    }
}

/// Observe one certificate (tracking its compromise flag in the journal first) and ask the
/// lifecycle for its next step; with the text an operator reads about why, for a re-issue.
pub(super) fn next_step(
    config: &Config,
    blocked: &Blocked,
    cert: &crate::config::Certificate,
    now: Timestamp,
) -> (Step, String) {
    let store = Store::at(&config.agent.state_dir);
    let mut journal = store.journal(&cert.name).ok();
    if let Some(j) = journal.as_mut() {
        crate::compromise::track_flag(&store, config, &cert.name, j);
    }
    let next = crate::lifecycle::next(config, blocked, cert, journal.as_ref(), now);
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
    (next.step, detail)
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
