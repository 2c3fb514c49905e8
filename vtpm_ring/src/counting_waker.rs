//! A waker that counts its wakeups, for tests that drive futures by hand and check who woke
//! whom.

use futures::task::ArcWake;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Waker;

/// Counts the wakeups of the wakers made from it.
#[derive(Debug, Default)]
pub(crate) struct Count(pub(crate) AtomicUsize);

impl ArcWake for Count {
    fn wake_by_ref(c: &Arc<Self>) {
        c.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A counter and a waker that counts into it.
pub(crate) fn counted() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    let waker = futures::task::waker(count.clone());
    (count, waker)
}
