//! How often certagent acts, measured against the certificate's own lifetime, so that the
//! same rules hold for Let's Encrypt's `shortlived` (160 hours), `tlsserver` (45 days) and
//! `classic` (90 days) profiles alike: the ceiling of the backoff after failures, the point
//! at which a failure needs a human, and how often ARI is asked. Pure, like the rest of core.

use super::Timestamp;

/// The longest backoff there is: a day.
pub(crate) const MAX_BACKOFF: i64 = 86_400;
/// The shortest ceiling: a minute, so a certificate about to expire is not hammered.
const MIN_CEILING: i64 = 60;
/// ARI is asked at least twice a day (Let's Encrypt's advice for short-lived certificates).
pub(crate) const ARI_POLL_MAX: i64 = 12 * 3_600;
/// …and every six hours when the CA says nothing (no Retry-After).
const ARI_POLL_DEFAULT: i64 = 6 * 3_600;
/// Never more often than once a minute, whatever the CA says.
const ARI_POLL_MIN: i64 = 60;

/// The ceiling of the wait before the next attempt at re-issuing a certificate that has
/// `left` seconds of validity (`None`, or not positive: none in service, or expired).
///
/// Definition: a day, but never more than a third of what is left (and never under a
/// minute). So an attempt started after the wait finds at least two thirds of the time that
/// was left still left, and the attempt after it (under its own, smaller ceiling) at least
/// four ninths: at least two more attempts always fit before notAfter, however many have
/// failed — for a 160-hour certificate renewed at half its life the waits shrink from the
/// day cap to minutes as expiry nears, instead of one day-long wait jumping past it.
pub(crate) fn backoff_ceiling(left: Option<i64>) -> i64 {
    match left {
        Some(l) if l > 0 => (l / 3).clamp(MIN_CEILING, MAX_BACKOFF),
        _ => MAX_BACKOFF,
    }
}

/// Whether a failed renewal needs a human now (the log says ERROR, not WARN): when less than a
/// quarter of the certificate's lifetime (`not_after - not_before`) is left. The renewal
/// window opens with a third (or, under ten days of lifetime, a half) left, so retries have
/// had at least a twelfth of the lifetime to succeed on their own before anyone is paged:
/// 40 hours for 160-hour certificates, 11 days for 45-day ones, 22 days for 90-day ones.
pub(crate) fn renewal_failure_is_urgent(
    not_before: Timestamp,
    not_after: Timestamp,
    now: Timestamp,
) -> bool {
    let lifetime = (not_after - not_before).max(0);
    not_after - now < lifetime / 4
}

/// How long to wait before asking ARI again (RFC 9773 §4.3): what the CA's Retry-After says,
/// but at most twelve hours (a window the CA moves, e.g. for a mass revocation, is seen the
/// same day) and at least a minute; six hours when it says nothing.
pub(crate) fn ari_poll_interval(retry_after: Option<i64>) -> i64 {
    retry_after
        .unwrap_or(ARI_POLL_DEFAULT)
        .clamp(ARI_POLL_MIN, ARI_POLL_MAX)
}

#[cfg(test)]
mod tests {
    use super::super::{renewal_time, retry_delay};
    use super::*;

    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;
    const NOT_BEFORE: Timestamp = 1_800_000_000;
    /// Let's Encrypt's profiles: shortlived, tlsserver, classic.
    const PROFILES: [(&str, i64); 3] = [
        ("shortlived", 160 * HOUR),
        ("tlsserver", 45 * DAY),
        ("classic", 90 * DAY),
    ];

    #[test]
    fn renewal_starts_at_two_thirds_of_the_lifetime_or_half_under_ten_days() {
        for (profile, lifetime, elapsed) in [
            ("shortlived", 160 * HOUR, 80 * HOUR),
            ("tlsserver", 45 * DAY, 30 * DAY),
            ("classic", 90 * DAY, 60 * DAY),
        ] {
            let at = renewal_time(NOT_BEFORE, NOT_BEFORE + lifetime, None);
            assert_eq!(at - NOT_BEFORE, elapsed, "{profile}");
        }
        // An explicit renew_before wins, whatever the lifetime.
        assert_eq!(
            renewal_time(
                NOT_BEFORE,
                NOT_BEFORE + 160 * HOUR,
                Some(super::super::Span(HOUR))
            ),
            NOT_BEFORE + 159 * HOUR
        );
    }

    /// Every attempt fails, each waits as long as the jitter allows (the worst case): the
    /// attempts stay inside the lifetime, there are many of them, and the waits near the end
    /// leave room for two more.
    #[test]
    fn the_backoff_after_failures_stays_inside_the_lifetime() {
        for (profile, lifetime) in PROFILES {
            let not_after = NOT_BEFORE + lifetime;
            let mut t = renewal_time(NOT_BEFORE, not_after, None);
            let mut attempts = Vec::new();
            for attempt in 1..=200u32 {
                attempts.push(t);
                let left = not_after - t;
                let wait = retry_delay(attempt, 0.999, None, backoff_ceiling(Some(left)));
                assert!(wait <= MAX_BACKOFF, "{profile}: {wait}");
                if left >= 3 * MIN_CEILING {
                    assert!(
                        3 * wait <= left,
                        "{profile}: waits {wait}s with {left}s left"
                    );
                }
                t += wait;
                if t >= not_after - 3 * MIN_CEILING {
                    break;
                }
            }
            assert!(
                t < not_after,
                "{profile}: the backoff jumped past expiry (attempts at {attempts:?})"
            );
            let in_last_quarter = attempts
                .iter()
                .filter(|&&a| renewal_failure_is_urgent(NOT_BEFORE, not_after, a))
                .count();
            assert!(
                in_last_quarter >= 2,
                "{profile}: {in_last_quarter} attempts in the last quarter: {attempts:?}"
            );
        }
        // Without the lifetime ceiling a 160-hour certificate would see day-long waits: the
        // ceiling is what keeps them inside (day cap reached after 11 failures).
        assert_eq!(retry_delay(12, 0.5, None, MAX_BACKOFF), MAX_BACKOFF);
        assert_eq!(
            retry_delay(12, 0.5, None, backoff_ceiling(Some(30 * HOUR))),
            10 * HOUR
        );
    }

    #[test]
    fn the_ceiling_is_a_third_of_what_is_left_between_a_minute_and_a_day() {
        assert_eq!(backoff_ceiling(Some(80 * HOUR)), DAY);
        assert_eq!(backoff_ceiling(Some(30 * HOUR)), 10 * HOUR);
        assert_eq!(backoff_ceiling(Some(90)), 60);
        assert_eq!(backoff_ceiling(Some(0)), DAY);
        assert_eq!(backoff_ceiling(None), DAY);
        // A CA's Retry-After is honoured above the ceiling (asking sooner only meets the same
        // refusal), still within a day.
        assert_eq!(
            retry_delay(1, 0.5, Some(2 * HOUR), backoff_ceiling(Some(3 * HOUR))),
            2 * HOUR
        );
    }

    #[test]
    fn a_failure_is_an_error_with_less_than_a_quarter_of_the_lifetime_left() {
        for (profile, lifetime, quarter) in [
            ("shortlived", 160 * HOUR, 40 * HOUR),
            ("tlsserver", 45 * DAY, 45 * DAY / 4),
            ("classic", 90 * DAY, 90 * DAY / 4),
        ] {
            let not_after = NOT_BEFORE + lifetime;
            let at = not_after - quarter;
            assert!(
                !renewal_failure_is_urgent(NOT_BEFORE, not_after, at),
                "{profile}"
            );
            assert!(
                renewal_failure_is_urgent(NOT_BEFORE, not_after, at + 1),
                "{profile}"
            );
            // Where renewal starts, a failure is only a warning.
            let start = renewal_time(NOT_BEFORE, not_after, None);
            assert!(
                !renewal_failure_is_urgent(NOT_BEFORE, not_after, start),
                "{profile}"
            );
        }
        // A 160-hour certificate is under seven days old from the start: that is no longer
        // what makes a failure an error.
        assert!(!renewal_failure_is_urgent(
            NOT_BEFORE,
            NOT_BEFORE + 160 * HOUR,
            NOT_BEFORE + 80 * HOUR
        ));
    }

    #[test]
    fn ari_is_polled_at_least_twice_a_day_and_as_the_ca_asks_below_that() {
        assert_eq!(ari_poll_interval(None), 6 * HOUR);
        assert_eq!(ari_poll_interval(Some(2 * HOUR)), 2 * HOUR);
        assert_eq!(ari_poll_interval(Some(12 * HOUR)), 12 * HOUR);
        assert_eq!(ari_poll_interval(Some(3 * DAY)), 12 * HOUR);
        assert_eq!(ari_poll_interval(Some(5)), 60);
    }
}
