//! Which of a loop's sources woke it.
//!
//! A loop that waits on several sources at once (a `select!` over an event channel, store
//! watches, a timer, a reply) polls every one of them each time any one fires, and each poll
//! registers a waker again. On the command path that was a sizeable share of the backend's
//! work: a store watch that fires about once per connection was polled twice per command. A
//! [`WakeSet`] gives each source a waker of its own, which marks the source and wakes the
//! loop, so the loop polls only the sources that woke it (and those it marks itself after
//! changing what they wait for).
//!
//! It pays where several sources rarely fire, as in a backend connection. Over a set of
//! futures (`TaskSet`), which already tracks which of its futures woke, the second layer of
//! wakers cost more than the polls it saved (measured on the backend's and the manager's
//! top-level loops, and dropped there).

use futures::task::ArcWake;
use futures::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Waker;

/// Sources that woke the loop, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Woken(u32);

impl Woken {
    /// Whether `source` is among them.
    pub(crate) fn has(self, source: usize) -> bool {
        self.0 & (1 << source) != 0
    }
}

#[derive(Debug)]
struct Shared {
    woken: AtomicU32,
    /// The loop's own waker.
    parent: AtomicWaker,
}

#[derive(Debug)]
struct Source {
    shared: Arc<Shared>,
    bit: u32,
}

impl ArcWake for Source {
    fn wake_by_ref(source: &Arc<Self>) {
        source.shared.woken.fetch_or(source.bit, Ordering::AcqRel);
        source.shared.parent.wake();
    }
}

/// Per-source wakers for one loop (at most 32 sources).
#[derive(Debug)]
pub(crate) struct WakeSet {
    shared: Arc<Shared>,
    wakers: Vec<Waker>,
}

impl WakeSet {
    /// A set of `sources` sources, all marked: the first poll looks at every one.
    pub(crate) fn new(sources: usize) -> Self {
        assert!(sources <= 32, "a wake set has at most 32 sources");
        let all = u32::MAX.checked_shr(32 - sources as u32).unwrap_or(0);
        let shared = Arc::new(Shared {
            woken: AtomicU32::new(all),
            parent: AtomicWaker::new(),
        });
        let wakers = (0..sources)
            .map(|i| {
                futures::task::waker(Arc::new(Source {
                    shared: shared.clone(),
                    bit: 1 << i,
                }))
            })
            .collect();
        Self { shared, wakers }
    }

    /// Registers the loop's waker and takes the sources marked since the last call.
    pub(crate) fn take(&self, cx: &Context<'_>) -> Woken {
        self.shared.parent.register(cx.waker());
        Woken(self.shared.woken.swap(0, Ordering::AcqRel))
    }

    /// Marks `source` to be polled at the next [`WakeSet::take`] (the loop changed what it
    /// waits for, or it stopped before polling it).
    pub(crate) fn mark(&self, source: usize) {
        self.shared.woken.fetch_or(1 << source, Ordering::AcqRel);
    }

    /// Marks again every source of `woken` from `source` on: the loop returns at `source`
    /// before polling the rest, and `source` itself may have more to give.
    pub(crate) fn defer_from(&self, woken: Woken, source: usize) {
        let rest = woken.0 & (u32::MAX << source);
        self.shared.woken.fetch_or(rest, Ordering::AcqRel);
    }

    /// The context to poll `source` with.
    pub(crate) fn context(&self, source: usize) -> Context<'_> {
        Context::from_waker(&self.wakers[source])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl ArcWake for Count {
        fn wake_by_ref(c: &Arc<Self>) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_source_waker_marks_its_source_and_wakes_the_loop() {
        let set = WakeSet::new(3);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let parent = futures::task::waker(count.clone());
        let cx = Context::from_waker(&parent);
        // Everything is marked at first.
        let first = set.take(&cx);
        assert!((0..3).all(|s| first.has(s)));
        assert!(!first.has(3));
        assert_eq!(set.take(&cx), Woken(0));
        set.context(2).waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        let woken = set.take(&cx);
        assert!(woken.has(2) && !woken.has(0) && !woken.has(1));
        // Deferred sources come back at the next take; marked ones too.
        set.defer_from(first, 1);
        set.mark(0);
        let again = set.take(&cx);
        assert!((0..3).all(|s| again.has(s)));
    }
}
