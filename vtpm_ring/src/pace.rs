//! Fairness for loops driven by a peer's signals.
//!
//! A loop that acts on a guest's doorbells or store writes runs as long as it finds one ready.
//! A guest on another CPU that answers each of the backend's notifications with a new
//! doorbell (or keeps rewriting a watched node) can make it find one every time, and then one
//! poll of the backend's task never ends: on a single-threaded executor no other guest, timer
//! or the manager would run again. Tokio's cooperative budget, which the event channels and
//! watches draw on, stops that under tokio only; [`Pace`] bounds the loop itself, whatever
//! the executor.

use std::task::Context;
use std::task::Poll;

/// Most actions a loop takes in one poll of its task before it yields.
pub(crate) const ACTIONS_PER_POLL: u32 = 64;

/// Counts the actions a loop took since its task last waited, and makes it yield (wake itself
/// and return `Pending`) once it took [`ACTIONS_PER_POLL`] of them.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    taken: u32,
}

impl Pace {
    /// Polls `next` for the loop's next action, unless the loop is due to yield.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        next: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.taken >= ACTIONS_PER_POLL {
            self.taken = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = next(cx);
        match polled {
            Poll::Ready(_) => self.taken += 1,
            // Waiting for real: the executor may run others now.
            Poll::Pending => self.taken = 0,
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::ArcWake;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    struct Wakes(AtomicUsize);
    impl ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_loop_always_ready_yields_after_its_share_and_is_woken_again() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut pace = Pace::default();
        let mut calls = 0;
        let ready = (0..ACTIONS_PER_POLL + 1)
            .take_while(|_| {
                pace.poll(&mut cx, |_| {
                    calls += 1;
                    Poll::Ready(())
                })
                .is_ready()
            })
            .count();
        assert_eq!(ready, ACTIONS_PER_POLL as usize);
        // The refused turn did not consume an action, and asked to be polled again.
        assert_eq!(calls, ACTIONS_PER_POLL);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(pace.poll(&mut cx, |_| Poll::Ready(())).is_ready());
    }

    #[test]
    fn waiting_for_real_starts_a_new_share() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pace = Pace::default();
        for _ in 0..3 {
            for _ in 0..ACTIONS_PER_POLL - 1 {
                assert!(pace.poll(&mut cx, |_| Poll::Ready(())).is_ready());
            }
            assert!(pace.poll(&mut cx, |_| Poll::<()>::Pending).is_pending());
        }
    }
}
