//! Waiting for an ACME order: ready after validation, valid after finalization.
//!
//! The CA's `Retry-After` (RFC 8555 §7.4: on a `processing` order, a challenge, a finalize
//! answer) wins whenever it sends one; our HTTP client keeps it, as instant-acme's own polling
//! does not carry it across calls. Otherwise the first look is after 10 ms and the wait
//! doubles up to 10 s, then stays there: a CA that is ready at once (Pebble, a local step-ca)
//! is not made to look slow by a 100 ms first wait, and a slow one is asked about as often as
//! before (see the test).

use std::time::Duration;

use instant_acme::{Order, OrderStatus};
use tokio::time::Instant;

use crate::http::Http;

/// The first wait.
pub(super) const FIRST: Duration = Duration::from_millis(10);
/// The longest wait without a `Retry-After`.
pub(super) const CAP: Duration = Duration::from_secs(10);

/// What to wait for.
#[derive(Clone, Copy)]
pub(super) enum Until {
    /// The order is `ready` (or `invalid`): validation is over.
    Ready,
    /// The order is `valid` (or `invalid`): the certificate can be downloaded.
    Valid,
}

/// The wait after `prev` (zero before the first look) without a `Retry-After`.
pub(super) fn next_wait(prev: Duration) -> Duration {
    if prev.is_zero() {
        FIRST
    } else {
        (prev * 2).min(CAP)
    }
}

/// Looks at `order` until `until`, for at most `timeout`; the order's status at the end.
/// An order that carries an error is that error.
pub(super) async fn poll(
    order: &mut Order,
    http: &Http,
    until: Until,
    timeout: Duration,
) -> Result<OrderStatus, instant_acme::Error> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::ZERO;
    loop {
        let status = order.state().status;
        let done = match until {
            Until::Ready => matches!(status, OrderStatus::Ready | OrderStatus::Invalid),
            Until::Valid => matches!(status, OrderStatus::Valid | OrderStatus::Invalid),
        };
        if done {
            return Ok(status);
        }
        wait = next_wait(wait);
        let pause = http
            .take_poll_after()
            .map_or(wait, |secs| Duration::from_secs(secs).max(FIRST));
        if Instant::now() + pause > deadline {
            return Err(instant_acme::Error::Timeout(None));
        }
        tokio::time::sleep(pause).await;
        let state = order.refresh().await?;
        if let Some(error) = &state.error {
            return Err(instant_acme::Error::Api(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many looks a CA that is done after `done` gets, with waits from `next`.
    fn looks(done: Duration, mut next: impl FnMut(Duration) -> Duration) -> u32 {
        let (mut t, mut wait, mut n) = (Duration::ZERO, Duration::ZERO, 0);
        while t < done {
            wait = next(wait);
            t += wait;
            n += 1;
        }
        n
    }

    /// The schedule before: 100 ms, growing by half each time, without a cap.
    fn before(prev: Duration) -> Duration {
        if prev.is_zero() {
            Duration::from_millis(100)
        } else {
            prev.mul_f32(1.5)
        }
    }

    #[test]
    fn a_fast_ca_is_seen_ready_within_10_ms_and_a_slow_one_is_not_asked_much_more_often() {
        // Ready at once: one look, after 10 ms instead of 100.
        assert_eq!(looks(Duration::from_millis(1), next_wait), 1);
        assert_eq!(next_wait(Duration::ZERO), Duration::from_millis(10));
        // Ready after ~30 ms: two looks, 30 ms waited, against one look after 100 ms.
        assert_eq!(looks(Duration::from_millis(30), next_wait), 2);
        // A CA that takes 3 s to finalize: 9 looks against 7; 60 s: 15 against 15; 10 min:
        // 69 against 20 (the cap keeps it from sleeping up to half the time past readiness).
        for (done, now, then) in [(3, 9, 7), (60, 15, 15), (600, 69, 20)] {
            let done = Duration::from_secs(done);
            assert_eq!(
                (looks(done, next_wait), looks(done, before)),
                (now, then),
                "{done:?}"
            );
        }
    }
}
