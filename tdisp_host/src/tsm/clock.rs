//! Time for the TSM: the backoff between retries of a busy device and the DOE mailbox timeout.
//!
//! Time sits behind [`Clock`] so tests decide when it passes: a [`ManualClock`] moves only when
//! something sleeps on it or a test advances it, and records every sleep, so a test can check
//! the backoff without waiting for it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

/// A monotonic clock the TSM and the DOE mailbox wait on.
pub trait Clock: Send {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
    /// Waits for `duration`.
    fn sleep(&mut self, duration: Duration);
}

impl<T: Clock + ?Sized> Clock for Box<T> {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn sleep(&mut self, duration: Duration) {
        (**self).sleep(duration);
    }
}

/// The real clock: [`Instant`] and [`std::thread::sleep`].
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

#[derive(Debug, Default)]
struct ManualTime {
    now: Duration,
    sleeps: Vec<Duration>,
}

/// A clock that moves only when it is slept on or advanced. Clones share one time line, so a
/// test keeps a clone to read the sleeps and move time while the TSM or a device holds another.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    time: Arc<Mutex<ManualTime>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut ManualTime) -> T) -> T {
        f(&mut self.time.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Moves time forward by `duration` without recording a sleep.
    pub fn advance(&self, duration: Duration) {
        self.with(|t| t.now = t.now.saturating_add(duration));
    }

    /// Every sleep so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.with(|t| t.sleeps.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.with(|t| t.now)
    }
    fn sleep(&mut self, duration: Duration) {
        self.with(|t| {
            t.now = t.now.saturating_add(duration);
            t.sleeps.push(duration);
        });
    }
}

/// How often and how patiently the TSM repeats a request the device could not take yet
/// (TDISP `BUSY`, SPDM `ResponseNotReady`): exponential backoff, bounded in count and delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt before the TSM gives up.
    pub max_retries: u32,
    /// The wait before the first retry.
    pub initial_delay: Duration,
    /// No single wait is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six retries from 1 ms doubling up to 32 ms: about 63 ms in all, well inside the DOE
    /// timeout a caller already tolerates.
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(32),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default();
        let delays: Vec<_> = (0..8).map(|r| policy.delay(r).as_millis()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(policy.delay(u32::MAX), policy.max_delay);
    }

    #[test]
    fn manual_clock_moves_only_when_slept_on_or_advanced() {
        let clock = ManualClock::new();
        let mut shared = clock.clone();
        assert_eq!(clock.now(), Duration::ZERO);
        shared.sleep(Duration::from_millis(3));
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now(), Duration::from_millis(5));
        assert_eq!(clock.sleeps(), [Duration::from_millis(3)]);
    }
}
