//! What happens next to a certificate, and when: one pure function of the journal's view,
//! the decision and the time. The daemon schedules by it; `status` and `check` report it.
//! Nothing else decides what comes next.

use super::{Budget, Decision, Reason, Timestamp, backoff_holds};

/// How long a certificate whose compromised-key lists cannot be read waits before it is
/// looked at again (sooner when a list changes: the daemon watches them).
pub(crate) const HOLD_RECHECK: i64 = 3_600;

/// What the journal (and the few facts gathered beside it) say about work in progress.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    /// A flip to a new generation is journalled and neither verified nor undone yet.
    pub(crate) flip: bool,
    /// Revoking or purging a compromised predecessor is left to do.
    pub(crate) post_compromise: bool,
    /// The backoff after a failure: no attempt before this time…
    pub(crate) retry_at: Option<Timestamp>,
    /// …for what the certificate needed when it failed (a new trigger is acted on at once).
    pub(crate) failed_with: Vec<Reason>,
    pub(crate) pending: Option<PendingView>,
    /// A list of compromised keys cannot be read (why): nothing may be re-issued.
    pub(crate) compromise_problem: Option<String>,
    /// Kept generations lack the configured owner, group or modes.
    pub(crate) permission_drift: bool,
    /// Whether, and when, to fetch the CA's view of the serial in service (CRL, ARI).
    pub(crate) ca_view: CaView,
    /// The hourly guard on re-issues the daemon starts by itself.
    pub(crate) budget: Budget,
}

/// A re-issue in flight (its key on disk, maybe its order at the CA).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PendingView {
    pub(crate) reason: Reason,
    /// It already answers a compromised key.
    pub(crate) answers_compromise: bool,
    /// Waiting on a human (a manual CA) rather than on a machine.
    pub(crate) human: bool,
    /// When to look at it again, journalled when the last attempt ended pending: the next
    /// reminder (manual CA) or the CA's Retry-After. `None`: at once.
    pub(crate) next_look: Option<Timestamp>,
}

/// The CA's view of the serial in service (CRL, ARI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CaView {
    /// Nothing to fetch: no CRL distribution point and no ACME issuer (or nothing to fetch
    /// for this serial any more).
    Nothing,
    /// Never fetched for this serial.
    Unknown,
    /// Fetch again at this time.
    At(Timestamp),
}

/// The next step for a certificate.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// Verify (or undo) the journalled flip.
    FinishFlip,
    /// Revoke and purge the compromised predecessor.
    FinishCompromise,
    /// Cannot tell whether a new key would be a listed one: re-issue nothing; look again at
    /// `until` or when a list changes.
    Hold { why: String, until: Timestamp },
    /// Start a re-issue.
    Act { reason: Reason },
    /// Resume the pending re-issue (its key and order are journalled).
    Resume { reason: Reason },
    /// The pending re-issue waits for a human; remind (and look again) at `remind_at`.
    WaitForHuman { remind_at: Timestamp },
    /// The pending re-issue waits for the CA; poll again at `poll_at`.
    WaitForCa { poll_at: Timestamp },
    /// A re-issue is needed but the last attempt failed: retry at `until`.
    Backoff { until: Timestamp, reason: Reason },
    /// A re-issue is needed but the hourly guard holds it back until `until`.
    RateLimited { until: Timestamp, reason: Reason },
    /// Give the kept generations their configured owner, group and modes.
    FixPermissions,
    /// Fetch the CA's view (CRL, ARI) of the serial in service.
    Refresh,
    /// Nothing to do; look again at `until` (`None`: only when something changes).
    Idle { until: Option<Timestamp> },
}

impl Step {
    /// When certagent looks at the certificate next by itself: now for a step that is work,
    /// the step's time for a wait.
    pub(crate) fn next_look(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            Step::FinishFlip
            | Step::FinishCompromise
            | Step::Act { .. }
            | Step::Resume { .. }
            | Step::FixPermissions
            | Step::Refresh => Some(now),
            Step::Hold { until, .. }
            | Step::Backoff { until, .. }
            | Step::RateLimited { until, .. } => Some(*until),
            Step::WaitForHuman { remind_at } => Some(*remind_at),
            Step::WaitForCa { poll_at } => Some(*poll_at),
            Step::Idle { until } => *until,
        }
    }

    /// The word `check` and `status` show for it (the `action` of the JSON documents).
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Step::Hold { .. } => "hold",
            Step::Resume { .. } | Step::WaitForHuman { .. } | Step::WaitForCa { .. } => "resume",
            Step::Act { .. } | Step::Backoff { .. } | Step::RateLimited { .. } => "reissue",
            Step::FinishFlip | Step::FinishCompromise => "finish",
            Step::FixPermissions => "fix-permissions",
            Step::Refresh | Step::Idle { .. } => "none",
        }
    }
}

/// The next step for a certificate, given what the journal says (`view`), what it needs
/// (`decision`) and the time. Journalled work comes first (a flip, then a compromised
/// predecessor), then the hold on unreadable key lists, then pending work, then a new
/// re-issue; a healthy certificate gets its permissions fixed or the CA's view refreshed, or
/// waits for its renewal point.
pub(crate) fn next_step(view: &View, decision: &Decision, now: Timestamp) -> Step {
    if view.flip {
        return Step::FinishFlip;
    }
    let retry_at = view.retry_at.filter(|&r| r > now);
    if view.post_compromise {
        return match retry_at {
            Some(until) => Step::Backoff {
                until,
                reason: Reason::KeyCompromised,
            },
            None => Step::FinishCompromise,
        };
    }
    if let Some(why) = &view.compromise_problem {
        return Step::Hold {
            why: why.clone(),
            until: now + HOLD_RECHECK,
        };
    }
    let step = match (&view.pending, decision.reason()) {
        (Some(pending), _) => pending_step(view, pending, decision, retry_at, now),
        (None, Some(reason)) => needed_step(view, reason, decision, retry_at),
        (None, None) => healthy_step(view, decision, retry_at, now),
    };
    guarded(step, view.budget)
}

/// A backoff holds back only what failed: a new trigger is acted on at once.
fn held(view: &View, decision: &Decision, retry_at: Option<Timestamp>) -> Option<Timestamp> {
    retry_at.filter(|_| backoff_holds(&view.failed_with, &decision.reasons))
}

/// Interrupted or failed work is resumed (its key and order are journalled); news of a
/// compromise does not wait for a retry slot, nor for the CA or a human.
fn pending_step(
    view: &View,
    pending: &PendingView,
    decision: &Decision,
    retry_at: Option<Timestamp>,
    now: Timestamp,
) -> Step {
    if decision.reason() == Some(Reason::KeyCompromised) && !pending.answers_compromise {
        return Step::Act {
            reason: Reason::KeyCompromised,
        };
    }
    let held = held(view, decision, retry_at);
    let new_trigger = retry_at.is_some() && held.is_none();
    match (held, decision.reason()) {
        (Some(until), _) => Step::Backoff {
            until,
            reason: pending.reason,
        },
        (None, Some(reason)) if new_trigger => Step::Act { reason },
        (None, _) => match pending.next_look.filter(|&at| at > now) {
            Some(remind_at) if pending.human => Step::WaitForHuman { remind_at },
            Some(poll_at) => Step::WaitForCa { poll_at },
            None => Step::Resume {
                reason: pending.reason,
            },
        },
    }
}

/// A re-issue is needed and none is pending: now, unless a backoff holds it (never for a
/// compromised key).
fn needed_step(
    view: &View,
    reason: Reason,
    decision: &Decision,
    retry_at: Option<Timestamp>,
) -> Step {
    match held(view, decision, retry_at) {
        Some(until) if reason != Reason::KeyCompromised => Step::Backoff { until, reason },
        _ => Step::Act { reason },
    }
}

/// Nothing to re-issue: fix permissions (a fix that failed backs off like a failed
/// re-issue, never loops), refresh the CA's view when due, or wait for the renewal point or
/// the next refresh, whichever comes first.
fn healthy_step(
    view: &View,
    decision: &Decision,
    retry_at: Option<Timestamp>,
    now: Timestamp,
) -> Step {
    if view.permission_drift {
        return match retry_at {
            None => Step::FixPermissions,
            Some(until) => Step::Idle { until: Some(until) },
        };
    }
    let refresh_at = match view.ca_view {
        CaView::Nothing => None,
        CaView::Unknown => return Step::Refresh,
        CaView::At(at) if at <= now => return Step::Refresh,
        CaView::At(at) => Some(at),
    };
    let until = [decision.next_check(now), refresh_at]
        .into_iter()
        .flatten()
        .min();
    Step::Idle { until }
}

/// The hourly guard: a re-issue the daemon would start (or resume) by itself waits while
/// `limit` have started in the last hour.
fn guarded(step: Step, budget: Budget) -> Step {
    match (step, budget) {
        (Step::Act { reason } | Step::Resume { reason }, Budget::HeldUntil(until)) => {
            Step::RateLimited { until, reason }
        }
        (step, _) => step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_000_000;

    fn healthy() -> Decision {
        Decision {
            reasons: vec![],
            noted: vec![],
            renew_at: Some(NOW + 500),
            renewal_rule: None,
            not_after: Some(NOW + 1_000),
        }
    }

    fn needs(reasons: &[Reason]) -> Decision {
        Decision {
            reasons: reasons.to_vec(),
            ..healthy()
        }
    }

    fn idle() -> View {
        View {
            flip: false,
            post_compromise: false,
            retry_at: None,
            failed_with: vec![],
            pending: None,
            compromise_problem: None,
            permission_drift: false,
            ca_view: CaView::Nothing,
            budget: Budget::Allowed,
        }
    }

    fn pending(reason: Reason) -> PendingView {
        PendingView {
            reason,
            answers_compromise: false,
            human: false,
            next_look: None,
        }
    }

    #[test]
    fn each_situation_has_one_next_step() {
        use Reason::*;
        let backoff = |failed: &[Reason]| View {
            retry_at: Some(NOW + 60),
            failed_with: failed.to_vec(),
            ..idle()
        };
        #[rustfmt::skip]
        let table: Vec<(&str, View, Decision, Step)> = vec![
            ("healthy waits for its renewal point",
                idle(), healthy(), Step::Idle { until: Some(NOW + 500) }),
            ("a flip is finished before anything else",
                View { flip: true, compromise_problem: Some("x".into()), ..idle() },
                needs(&[KeyMissing]), Step::FinishFlip),
            ("a compromised predecessor is revoked and purged",
                View { post_compromise: true, ..idle() }, healthy(), Step::FinishCompromise),
            ("…after its backoff",
                View { post_compromise: true, ..backoff(&[]) }, healthy(),
                Step::Backoff { until: NOW + 60, reason: KeyCompromised }),
            ("unreadable key lists hold everything",
                View { compromise_problem: Some("unreadable".into()), ..idle() },
                needs(&[Expiring]), Step::Hold { why: "unreadable".into(), until: NOW + HOLD_RECHECK }),
            ("a need is acted on", idle(), needs(&[Expiring]), Step::Act { reason: Expiring }),
            ("the most urgent reason is the one acted on",
                idle(), needs(&[KeyMissing, Expiring]), Step::Act { reason: KeyMissing }),
            ("a backoff holds back what failed",
                backoff(&[Expiring]), needs(&[Expiring]), Step::Backoff { until: NOW + 60, reason: Expiring }),
            ("a new trigger is acted on despite the backoff",
                backoff(&[Expiring]), needs(&[KeyMissing, Expiring]), Step::Act { reason: KeyMissing }),
            ("a compromise never waits for a backoff",
                backoff(&[KeyCompromised]), needs(&[KeyCompromised]), Step::Act { reason: KeyCompromised }),
            ("a backoff in the past is over",
                View { retry_at: Some(NOW), failed_with: vec![Expiring], ..idle() },
                needs(&[Expiring]), Step::Act { reason: Expiring }),
            ("pending work is resumed",
                View { pending: Some(pending(NamesChanged)), ..idle() }, healthy(),
                Step::Resume { reason: NamesChanged }),
            ("pending work keeps its own reason",
                View { pending: Some(pending(NamesChanged)), ..idle() }, needs(&[Expiring]),
                Step::Resume { reason: NamesChanged }),
            ("pending work waits out its backoff",
                View { pending: Some(pending(Expiring)), ..backoff(&[Expiring]) }, needs(&[Expiring]),
                Step::Backoff { until: NOW + 60, reason: Expiring }),
            ("a new trigger during a pending backoff is acted on",
                View { pending: Some(pending(Expiring)), ..backoff(&[Expiring]) },
                needs(&[KeyMissing, Expiring]), Step::Act { reason: KeyMissing }),
            ("a compromise overtakes pending work",
                View { pending: Some(pending(Expiring)), ..backoff(&[Expiring]) },
                needs(&[KeyCompromised]), Step::Act { reason: KeyCompromised }),
            ("pending work that answers the compromise is resumed",
                View { pending: Some(PendingView { answers_compromise: true, ..pending(KeyCompromised) }), ..idle() },
                needs(&[KeyCompromised]), Step::Resume { reason: KeyCompromised }),
            ("a human is waited for until the next reminder",
                View { pending: Some(PendingView { human: true, next_look: Some(NOW + 86_400), ..pending(Forced) }), ..idle() },
                healthy(), Step::WaitForHuman { remind_at: NOW + 86_400 }),
            ("a slow CA is polled when it said",
                View { pending: Some(PendingView { next_look: Some(NOW + 30), ..pending(Forced) }), ..idle() },
                healthy(), Step::WaitForCa { poll_at: NOW + 30 }),
            ("a wait that is over is resumed",
                View { pending: Some(PendingView { human: true, next_look: Some(NOW), ..pending(Forced) }), ..idle() },
                healthy(), Step::Resume { reason: Forced }),
            ("the hourly guard holds a new re-issue",
                View { budget: Budget::HeldUntil(NOW + 900), ..idle() }, needs(&[Expiring]),
                Step::RateLimited { until: NOW + 900, reason: Expiring }),
            ("…and a resumed one",
                View { budget: Budget::HeldUntil(NOW + 900), pending: Some(pending(Expiring)), ..idle() },
                healthy(), Step::RateLimited { until: NOW + 900, reason: Expiring }),
            ("…but not a wait",
                View { budget: Budget::HeldUntil(NOW + 900), ..idle() }, healthy(),
                Step::Idle { until: Some(NOW + 500) }),
            ("drifted permissions are fixed",
                View { permission_drift: true, ca_view: CaView::Unknown, ..idle() }, healthy(),
                Step::FixPermissions),
            ("a fix that failed backs off",
                View { permission_drift: true, ..backoff(&[]) }, healthy(),
                Step::Idle { until: Some(NOW + 60) }),
            ("a re-issue comes before a permissions fix",
                View { permission_drift: true, ..idle() }, needs(&[Expiring]), Step::Act { reason: Expiring }),
            ("the CA's view is fetched for a new serial",
                View { ca_view: CaView::Unknown, ..idle() }, healthy(), Step::Refresh),
            ("…and when due",
                View { ca_view: CaView::At(NOW), ..idle() }, healthy(), Step::Refresh),
            ("…else the earlier of the refresh and the renewal point",
                View { ca_view: CaView::At(NOW + 100), ..idle() }, healthy(), Step::Idle { until: Some(NOW + 100) }),
            ("…either way round",
                View { ca_view: CaView::At(NOW + 900), ..idle() }, healthy(), Step::Idle { until: Some(NOW + 500) }),
            ("another CA in service, only reported: nothing to do",
                idle(), Decision { noted: vec![IssuerChanged], ..healthy() }, Step::Idle { until: Some(NOW + 500) }),
            ("another CA in service, re-issue configured: acted on",
                idle(), needs(&[IssuerChanged]), Step::Act { reason: IssuerChanged }),
            ("…after the names",
                idle(), needs(&[NamesChanged, IssuerChanged, Expiring]), Step::Act { reason: NamesChanged }),
            ("no refresh for a certificate that needs a re-issue",
                View { ca_view: CaView::Unknown, ..idle() }, needs(&[Revoked]), Step::Act { reason: Revoked }),
        ];
        for (what, view, decision, want) in table {
            assert_eq!(next_step(&view, &decision, NOW), want, "{what}");
        }
    }

    #[test]
    fn work_happens_now_and_waits_name_their_time() {
        let steps = [
            (Step::FinishFlip, Some(NOW), "finish"),
            (
                Step::Act {
                    reason: Reason::Expiring,
                },
                Some(NOW),
                "reissue",
            ),
            (Step::Refresh, Some(NOW), "none"),
            (Step::FixPermissions, Some(NOW), "fix-permissions"),
            (
                Step::WaitForHuman { remind_at: NOW + 5 },
                Some(NOW + 5),
                "resume",
            ),
            (
                Step::Backoff {
                    until: NOW + 7,
                    reason: Reason::Expiring,
                },
                Some(NOW + 7),
                "reissue",
            ),
            (Step::Idle { until: None }, None, "none"),
        ];
        for (step, at, action) in steps {
            assert_eq!(step.next_look(NOW), at, "{step:?}");
            assert_eq!(step.action(), action, "{step:?}");
        }
    }
}
