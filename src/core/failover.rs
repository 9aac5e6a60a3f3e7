//! Issuer failover: which issuer of a certificate's list (`issuer = ["a", "b"]`) the
//! attempt at hand uses. Pure, like the rest of core: the journal's record of the current
//! issuer and its failures, the time and the certificate in service are arguments.

use super::{Span, Timestamp, cadence};

/// Below this much validity left, a renewal that failed even once moves on to the next
/// issuer at once, whatever `failover_after` says: the longest wait between two attempts
/// (`cadence::MAX_BACKOFF`, a day) would otherwise risk the expiry.
pub(crate) const URGENT_LEFT: i64 = cadence::MAX_BACKOFF;

/// What the journal says about the renewal in progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Current<'a> {
    /// The issuer it uses (`None`: the first of the list).
    pub(crate) issuer: Option<&'a str>,
    /// Since when its attempts with that issuer have been failing (`None`: not failing).
    pub(crate) failing_since: Option<Timestamp>,
}

/// The issuer an attempt uses.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Choice {
    /// Index in the configured list.
    pub(crate) index: usize,
    /// Set when this choice moves on from a failing issuer: its index and how long it failed.
    pub(crate) from: Option<(usize, i64)>,
}

/// The issuer of the attempt at hand: the current one (the first, unless the renewal in
/// progress already moved on), or the next of the list when the current one has been failing
/// for at least `failover_after`, or has failed at all with less than `URGENT_LEFT` of the
/// certificate in service left (`left`: seconds; `None` when nothing valid is in service).
/// The last issuer of the list stays the last (no wrapping). A current issuer that is no
/// longer in the list starts over at the first.
pub(crate) fn choose(
    issuers: &[String],
    current: &Current<'_>,
    failover_after: Span,
    left: Option<i64>,
    now: Timestamp,
) -> Choice {
    let at = current
        .issuer
        .and_then(|c| issuers.iter().position(|i| i == c));
    let Some(index) = at else {
        return Choice {
            index: 0,
            from: None,
        };
    };
    let stay = Choice { index, from: None };
    let Some(since) = current.failing_since else {
        return stay;
    };
    let failed_for = (now - since).max(0);
    let urgent = left.is_some_and(|l| l < URGENT_LEFT);
    if index + 1 < issuers.len() && (failed_for >= failover_after.0 || urgent) {
        Choice {
            index: index + 1,
            from: Some((index, failed_for)),
        }
    } else {
        stay
    }
}

/// When a renewal whose attempts with issuer `failing.0` have been failing since `failing.1`
/// moves on to the next issuer of the list: the daemon's backoff waits no longer than that.
/// `None` when that issuer is the last of the list (or not in it).
pub(crate) fn moves_on_at(
    issuers: &[String],
    failing: Option<(&str, Timestamp)>,
    failover_after: Span,
) -> Option<Timestamp> {
    let (issuer, since) = failing?;
    let at = issuers.iter().position(|i| i == issuer)?;
    (at + 1 < issuers.len()).then(|| since.saturating_add(failover_after.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_ends_when_the_next_issuer_is_due() {
        let at = moves_on_at(&list(), Some(("le", 1_000)), HOUR);
        assert_eq!(at, Some(4_600));
        assert_eq!(
            moves_on_at(&list(), Some(("zerossl", 0)), HOUR),
            Some(3_600)
        );
        // The last issuer, an unknown one, or none failing: the backoff alone decides.
        assert_eq!(moves_on_at(&list(), Some(("internal", 0)), HOUR), None);
        assert_eq!(moves_on_at(&list(), Some(("gone", 0)), HOUR), None);
        assert_eq!(moves_on_at(&list(), None, HOUR), None);
    }

    fn list() -> Vec<String> {
        vec!["le".into(), "zerossl".into(), "internal".into()]
    }

    fn failing(issuer: &str, since: Timestamp) -> Current<'_> {
        Current {
            issuer: Some(issuer),
            failing_since: Some(since),
        }
    }

    const HOUR: Span = Span::secs(3_600);
    const MONTH: i64 = 30 * 86_400;

    #[test]
    fn a_renewal_starts_with_the_first_issuer() {
        let c = choose(&list(), &Current::default(), HOUR, Some(MONTH), 1_000);
        assert_eq!(
            c,
            Choice {
                index: 0,
                from: None
            }
        );
        // An issuer no longer configured starts over at the first.
        let c = choose(&list(), &failing("gone", 0), HOUR, Some(MONTH), 10_000);
        assert_eq!(c.index, 0);
    }

    #[test]
    fn a_failing_issuer_is_kept_until_it_has_failed_for_failover_after() {
        let now = 100_000;
        let c = choose(&list(), &failing("le", now - 3_599), HOUR, Some(MONTH), now);
        assert_eq!(
            c,
            Choice {
                index: 0,
                from: None
            }
        );
        let c = choose(&list(), &failing("le", now - 3_600), HOUR, Some(MONTH), now);
        assert_eq!(
            c,
            Choice {
                index: 1,
                from: Some((0, 3_600))
            }
        );
        // "0s": every failure moves on.
        let c = choose(
            &list(),
            &failing("le", now),
            Span::secs(0),
            Some(MONTH),
            now,
        );
        assert_eq!(c.index, 1);
        // Not failing: stays where the renewal is.
        let current = Current {
            issuer: Some("zerossl"),
            failing_since: None,
        };
        assert_eq!(choose(&list(), &current, HOUR, Some(MONTH), now).index, 1);
    }

    #[test]
    fn the_last_issuer_is_kept_however_long_it_fails() {
        let c = choose(&list(), &failing("internal", 0), HOUR, Some(60), MONTH);
        assert_eq!(
            c,
            Choice {
                index: 2,
                from: None
            }
        );
        let one = vec!["le".to_string()];
        assert_eq!(choose(&one, &failing("le", 0), HOUR, None, MONTH).index, 0);
    }

    #[test]
    fn under_a_day_left_any_failure_moves_on() {
        let now = 100_000;
        let long = Span::secs(7 * 86_400);
        let c = choose(
            &list(),
            &failing("le", now - 5),
            long,
            Some(URGENT_LEFT - 1),
            now,
        );
        assert_eq!(
            c,
            Choice {
                index: 1,
                from: Some((0, 5))
            }
        );
        let c = choose(
            &list(),
            &failing("le", now - 5),
            long,
            Some(URGENT_LEFT),
            now,
        );
        assert_eq!(c.index, 0);
        // Nothing in service: failover_after alone decides.
        assert_eq!(
            choose(&list(), &failing("le", now - 5), long, None, now).index,
            0
        );
    }
}
