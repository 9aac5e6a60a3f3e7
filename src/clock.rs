//! Wall-clock time for the shell, derived from tokio's monotonic clock so that tests can run
//! the daemon with paused time (days of schedule in milliseconds) and every part of it — the
//! scheduler, the executor, the local CA — sees the same "now".

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::core::Timestamp;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall0: i64,
    inst0: Instant,
}

impl Clock {
    /// "Now" is the system time at creation plus the monotonic time elapsed since.
    pub fn new() -> Clock {
        let wall0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Clock {
            wall0,
            inst0: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.wall0
            + Instant::now()
                .saturating_duration_since(self.inst0)
                .as_secs() as i64
    }

    /// The monotonic instant at which wall time `ts` arrives (now, if it has passed).
    pub(crate) fn instant_at(&self, ts: Timestamp) -> Instant {
        let now = Instant::now();
        let wait = ts - self.now();
        // Far-future deadlines are capped at a year: the loop looks again long before then,
        // and an `Instant` that far out would overflow.
        let wait = wait.clamp(0, 365 * 86_400);
        now + std::time::Duration::from_secs(wait as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
