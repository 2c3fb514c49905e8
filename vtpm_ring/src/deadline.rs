//! Bounded waits, on any executor (the timer runs on its own thread).

use futures::FutureExt;
use futures::future::Either;
use std::future::Future;
use std::time::Duration;

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
    match futures::future::select(future, futures_timer::Delay::new(limit).fuse()).await {
        Either::Left((value, _)) => Ok(value),
        Either::Right(((), _)) => Err(Elapsed),
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
}
