//! Bounded waits, on any executor (the timer runs on its own thread).
//!
//! [`within`] arms a timer for one wait: fine for rare waits (handshakes, resets). A
//! futures-timer registration is not free, though: creating and dropping a `Delay` each wake
//! the timer thread, which on a small machine costs two context switches per wait. The
//! command path therefore uses a [`Watchdog`]: one timer per connection, re-armed only when
//! it fires, so starting and ending an operation costs a clock read.

use futures::FutureExt;
use futures::future::Either;
use futures_timer::Delay;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

/// The wait ended before the future did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `future` for at most `limit` (forever when `None`).
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    future: impl Future<Output = T>,
) -> Result<T, Elapsed> {
    let Some(limit) = limit else {
        return Ok(future.await);
    };
    let future = std::pin::pin!(future);
    match futures::future::select(future, Delay::new(limit).fuse()).await {
        Either::Left((value, _)) => Ok(value),
        Either::Right(((), _)) => Err(Elapsed),
    }
}

/// The time limit of one operation at a time (a command), with a lazily re-armed timer.
///
/// [`Watchdog::start`] only records the operation's deadline. The one timer is armed the
/// first time [`Watchdog::expired`] waits, and stays armed across operations: when it fires
/// before the deadline of the operation then under way (it was armed for an earlier one), it
/// is moved to that deadline. So an operation expires exactly `limit` after it started, and
/// the timer thread is woken about once per `limit`, not twice per operation.
#[derive(Debug)]
pub(crate) struct Watchdog {
    limit: Option<Duration>,
    /// When the operation under way expires.
    due: Option<Instant>,
    /// The timer and the instant it fires at (never later than any deadline it serves).
    timer: Option<(Delay, Instant)>,
}

impl Watchdog {
    /// A watchdog allowing each operation `limit` (`None`: no limit).
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Self {
            limit,
            due: None,
            timer: None,
        }
    }

    /// Starts timing an operation: it expires `limit` from now.
    pub(crate) fn start(&mut self) {
        self.due = self.limit.and_then(|l| Instant::now().checked_add(l));
    }

    /// The operation ended: nothing expires until the next [`Watchdog::start`].
    pub(crate) fn stop(&mut self) {
        self.due = None;
    }

    /// Completes once the operation under way has run past its limit (and stops timing it);
    /// never while no operation is timed.
    pub(crate) async fn expired(&mut self) {
        std::future::poll_fn(|cx| self.poll_expired(cx)).await;
    }

    /// [`Watchdog::expired`] as a poll.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Nothing to time: only `start` changes that, and it needs `&mut self`, so whoever
        // waits here drops this wait first.
        let Some(due) = self.due else {
            return Poll::Pending;
        };
        loop {
            // Armed no later than the deadline and not fired: nothing can have expired (and
            // no clock read is needed).
            if let Some((delay, at)) = &mut self.timer
                && *at <= due
                && Pin::new(&mut *delay).poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= due {
                self.due = None;
                return Poll::Ready(());
            }
            match &mut self.timer {
                // It fired for an earlier operation: move it to this one's deadline.
                Some((delay, at)) if *at <= due => {
                    delay.reset(due - now);
                    *at = due;
                }
                // None yet, or armed for later than this deadline.
                _ => self.timer = Some((Delay::new(due - now), due)),
            }
        }
    }

    /// Runs `future` as one timed operation.
    pub(crate) async fn within<T>(
        &mut self,
        future: impl Future<Output = T>,
    ) -> Result<T, Elapsed> {
        if self.limit.is_none() {
            return Ok(future.await);
        }
        self.start();
        let future = std::pin::pin!(future);
        let result = {
            let expired = std::pin::pin!(self.expired());
            match futures::future::select(future, expired).await {
                Either::Left((value, _)) => Ok(value),
                Either::Right(((), _)) => Err(Elapsed),
            }
        };
        self.stop();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_beats_the_deadline_and_a_pending_one_does_not() {
        let quick = within(Some(Duration::from_secs(5)), async { 7 });
        assert_eq!(futures::executor::block_on(quick), Ok(7));
        let never = within(
            Some(Duration::from_millis(10)),
            std::future::pending::<()>(),
        );
        assert_eq!(futures::executor::block_on(never), Err(Elapsed));
        let unbounded = within(None, async { 1 });
        assert_eq!(futures::executor::block_on(unbounded), Ok(1));
    }

    #[test]
    fn a_watchdog_times_each_operation_from_its_own_start() {
        let mut dog = Watchdog::new(Some(Duration::from_millis(40)));
        // Quick operations never wait on the timer: none is armed.
        for i in 0..1000 {
            assert_eq!(futures::executor::block_on(dog.within(async { i })), Ok(i));
        }
        assert!(dog.timer.is_none());
        // A pending operation arms it once; the operations after it keep that timer.
        let mut slow = Box::pin(dog.within(futures::future::pending::<()>()));
        assert!((&mut slow).now_or_never().is_none());
        drop(slow);
        let armed = dog.timer.as_ref().map(|(_, at)| *at);
        assert!(armed.is_some());
        for i in 0..1000 {
            let mut op = Box::pin(dog.within(async {
                futures::pending!();
                i
            }));
            assert!((&mut op).now_or_never().is_none());
            assert_eq!(futures::executor::block_on(op), Ok(i));
        }
        assert_eq!(dog.timer.as_ref().map(|(_, at)| *at), armed);
        // That timer fires while a later operation runs: the later one still gets its full
        // limit, counted from its own start.
        std::thread::sleep(Duration::from_millis(30));
        let started = Instant::now();
        assert_eq!(
            futures::executor::block_on(dog.within(std::future::pending::<()>())),
            Err(Elapsed)
        );
        assert!(started.elapsed() >= Duration::from_millis(40));
        // After an expiry the next operation is timed afresh.
        assert_eq!(futures::executor::block_on(dog.within(async { 3 })), Ok(3));
        let started = Instant::now();
        assert_eq!(
            futures::executor::block_on(dog.within(std::future::pending::<()>())),
            Err(Elapsed)
        );
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn a_stopped_watchdog_never_expires_and_an_unlimited_one_never_arms() {
        let mut dog = Watchdog::new(Some(Duration::from_millis(1)));
        dog.start();
        dog.stop();
        std::thread::sleep(Duration::from_millis(5));
        assert!(dog.expired().now_or_never().is_none());
        let mut unlimited = Watchdog::new(None);
        unlimited.start();
        assert!(unlimited.expired().now_or_never().is_none());
        assert_eq!(
            futures::executor::block_on(unlimited.within(async { 2 })),
            Ok(2)
        );
        assert!(unlimited.timer.is_none());
    }
}
