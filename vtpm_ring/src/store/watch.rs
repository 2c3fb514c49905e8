//! Watches: a bounded queue of changed paths per watch, and the registry the store fires
//! them from.
//!
//! Each watch queues at most [`MAX_WATCH_EVENTS`] events (XSA-349: a guest writing nodes must
//! not grow the memory of whoever watches them). Events past that collapse: the watch yields
//! its own path once its queue is drained.
//!
//! Firing only queues. The wakeups are handed back to the store, which runs them once it has
//! released its lock: a waker is the watcher's code (a guest's, for a guest's watch), and one
//! that touched the store from inside the lock would deadlock every domain's store calls.

use super::MAX_WATCH_EVENTS;
use super::Store;
use super::StoreError;
use super::is_at_or_below;
use crate::domain::DomainId;
use futures::Stream;
use futures::task::AtomicWaker;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;

/// One watch's queue, shared by the store (which fills it) and the [`Watch`] (which drains it).
#[derive(Default)]
struct Queue {
    events: Mutex<Events>,
    /// Whether `events` has anything to deliver (kept with it, under its lock): a watcher
    /// polled for another reason (the backend's device loop is polled for every command)
    /// finds out without taking the lock.
    ready: AtomicBool,
    waker: AtomicWaker,
}

#[derive(Default)]
struct Events {
    paths: VecDeque<String>,
    /// Events were dropped because the queue was full: once drained, the watch says so.
    overflowed: bool,
}

impl Queue {
    /// Queues `path`, or drops it and marks the queue overflowed when full.
    fn push(&self, domain: DomainId, watch: &str, path: &str) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.paths.len() < MAX_WATCH_EVENTS {
            events.paths.push_back(path.to_string());
        } else if !events.overflowed {
            events.overflowed = true;
            tracing::debug!(%domain, watch, "watch queue full; events collapse");
        }
        self.ready.store(true, Ordering::Release);
    }

    /// The next event: a queued path, then the watched path once if events were dropped.
    fn pop(&self, watched: &str) -> Option<String> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match events.paths.pop_front() {
            Some(p) => Some(p),
            None if events.overflowed => {
                events.overflowed = false;
                Some(watched.to_string())
            }
            None => None,
        };
        if events.paths.is_empty() && !events.overflowed {
            self.ready.store(false, Ordering::Release);
        }
        next
    }
}

/// The store's side of one watch.
struct WatchReg {
    id: u64,
    domain: DomainId,
    path: String,
    queue: Arc<Queue>,
}

/// Watches that got events and must be woken, once the store's lock is released.
#[must_use = "the watchers are woken only by `wake`, after the store's lock is released"]
#[derive(Default)]
pub(super) struct Wakes(BTreeMap<u64, Arc<Queue>>);

impl Wakes {
    /// Wakes every watcher that got an event. Call it without the store's lock held.
    pub(super) fn wake(self) {
        for q in self.0.into_values() {
            q.waker.wake();
        }
    }

    /// Notes watch `id` once, however many of the change's nodes it got (a removal fires
    /// every node of the subtree, under the store's lock).
    fn add(&mut self, id: u64, queue: &Arc<Queue>) {
        self.0.entry(id).or_insert_with(|| queue.clone());
    }
}

/// Every registered watch (kept in the store's state, under its lock).
#[derive(Default)]
pub(super) struct Watches {
    watches: Vec<WatchReg>,
    next_id: u64,
}

impl Watches {
    /// Registers a watch of `path` (resolved) for `domain`, within its quota of `limit`
    /// watches (none for dom0), with the initial event Xen sends (queued; nobody waits on a
    /// new watch yet, so there is nobody to wake).
    pub(super) fn register(
        &mut self,
        domain: DomainId,
        path: String,
        store: Store,
        limit: usize,
    ) -> Result<Watch, StoreError> {
        if domain != DomainId::DOM0
            && self.watches.iter().filter(|w| w.domain == domain).count() >= limit
        {
            tracing::debug!(%domain, limit, path, "store watch quota reached");
            return Err(StoreError::Quota(domain));
        }
        let queue = Arc::new(Queue::default());
        queue.push(domain, &path, &path);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.watches.push(WatchReg {
            id,
            domain,
            path: path.clone(),
            queue: queue.clone(),
        });
        Ok(Watch {
            queue,
            id,
            path,
            store,
        })
    }

    /// Queues `changed` to every watch at or above it whose domain could read it, and notes
    /// in `wakes` whom to wake.
    pub(super) fn fire(
        &self,
        changed: &str,
        readable_by: impl Fn(DomainId) -> bool,
        wakes: &mut Wakes,
    ) {
        for w in &self.watches {
            if is_at_or_below(changed, &w.path) && readable_by(w.domain) {
                w.queue.push(w.domain, &w.path, changed);
                wakes.add(w.id, &w.queue);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        self.watches.retain(|w| w.id != id);
    }
}

/// A registered watch: a stream of changed paths. Dropping it unregisters.
///
/// At most [`MAX_WATCH_EVENTS`] events wait in its queue; events beyond that are dropped, and
/// once the queue is drained the watch yields its own path once, meaning "something at or
/// below changed: read again". Consumers therefore treat events as hints, never as a log. The
/// stream never ends while the watch exists.
pub struct Watch {
    queue: Arc<Queue>,
    id: u64,
    path: String,
    store: Store,
}

impl Stream for Watch {
    type Item = String;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        // A domain writing nodes from another thread can keep this stream ready forever; the
        // cooperative budget makes its consumer yield now and then (see `EventChannel::wait`).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        // Checked before registering too: a watcher woken by an event (the usual case) then
        // takes it without touching the waker.
        let next = match self.queue.pop(&self.path) {
            Some(p) => Some(p),
            None => {
                // Registered before looking again, so an event queued in between wakes us.
                self.queue.waker.register(cx.waker());
                self.queue.pop(&self.path)
            }
        };
        match next {
            Some(p) => {
                coop.made_progress();
                Poll::Ready(Some(p))
            }
            None => Poll::Pending,
        }
    }
}

impl futures::stream::FusedStream for Watch {
    fn is_terminated(&self) -> bool {
        false
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.store.lock().watches.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Perm;
    use crate::store::Perms;
    use crate::store::StoreHandle;
    use crate::store::tests::setup;
    use futures::StreamExt;
    use std::sync::atomic::Ordering;

    #[test]
    fn watch_fires_initially_and_on_changes_below() {
        let (_, _, a, _) = setup();
        let mut w = a.watch("dev").unwrap();
        assert_eq!(
            w.next().now_or_never().flatten().as_deref(),
            Some("/local/domain/1/dev")
        );
        a.write("dev/state", "1").unwrap();
        assert_eq!(
            w.next().now_or_never().flatten().as_deref(),
            Some("/local/domain/1/dev")
        );
        assert_eq!(
            w.next().now_or_never().flatten().as_deref(),
            Some("/local/domain/1/dev/state")
        );
        a.write("devil", "x").unwrap();
        assert!(w.next().now_or_never().is_none());
    }

    #[test]
    fn watch_does_not_leak_unreadable_changes() {
        let (_, _, a, b) = setup();
        let mut w = b.watch("/local/domain/1").unwrap();
        let _initial = w.next().now_or_never();
        a.write("private", "p").unwrap();
        assert!(w.next().now_or_never().is_none());
    }

    #[test]
    fn removal_fires_watch() {
        let (_, _, a, _) = setup();
        a.write("n", "1").unwrap();
        let mut w = a.watch("n").unwrap();
        let _initial = w.next().now_or_never();
        a.rm("n").unwrap();
        assert_eq!(
            w.next().now_or_never().flatten().as_deref(),
            Some("/local/domain/1/n")
        );
    }

    #[test]
    fn a_guest_writing_nodes_cannot_grow_a_watchers_queue() {
        let (_, dom0, a, _) = setup();
        let mut w = dom0.watch("/local/domain/1").unwrap();
        for i in 0..20 * MAX_WATCH_EVENTS {
            a.write("n", &i.to_string()).unwrap();
        }
        let mut queued = 0;
        while let Some(Some(_)) = w.next().now_or_never() {
            queued += 1;
        }
        // The bound, plus one event standing for everything dropped.
        assert!(queued <= MAX_WATCH_EVENTS + 1, "{queued} events queued");
        // Drained, the watch delivers again.
        a.write("n", "again").unwrap();
        assert_eq!(
            w.next().now_or_never().flatten().as_deref(),
            Some("/local/domain/1/n")
        );
    }

    /// A domain writing nodes between every two polls (as one on another thread can) would
    /// otherwise keep the watch ready forever, and its consumer's runtime thread with it.
    #[tokio::test]
    async fn a_domain_writing_without_pause_cannot_keep_the_watcher_from_yielding() {
        let (_, dom0, a, _) = setup();
        let mut w = dom0.watch("/local/domain/1").unwrap();
        let mut taken = 0;
        let refused = loop {
            a.write("busy", &taken.to_string()).unwrap();
            if w.next().now_or_never().is_none() {
                break true;
            }
            taken += 1;
            if taken == 10_000 {
                break false;
            }
        };
        assert!(refused, "{taken} events taken without yielding");
        tokio::task::yield_now().await;
        assert!(w.next().now_or_never().flatten().is_some());
    }

    #[test]
    fn an_overflowing_watch_still_reports_a_change() {
        let (_, dom0, a, _) = setup();
        let mut w = dom0.watch("/local/domain/1").unwrap();
        for i in 0..2 * MAX_WATCH_EVENTS {
            a.write(&format!("k{i}"), "v").unwrap();
        }
        let mut events = Vec::new();
        while let Some(Some(e)) = w.next().now_or_never() {
            events.push(e);
        }
        // Events were lost, so the last one names the watched path: re-read everything.
        assert_eq!(events.last().map(String::as_str), Some("/local/domain/1"));
    }

    /// Whatever happens to an event (queued, or dropped for a full queue), a watcher that
    /// waits is woken for it, and then finds the change.
    #[test]
    fn a_waiting_watcher_is_woken_for_queued_and_dropped_events() {
        let (_, dom0, a, _) = setup();
        let mut w = dom0.watch("/local/domain/1").unwrap();
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        while Pin::new(&mut w).poll_next(&mut cx).is_ready() {}
        a.write("queued", "v").unwrap();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        for i in 0..MAX_WATCH_EVENTS {
            a.write(&format!("k{i}"), "v").unwrap();
        }
        let mut last = None;
        while let Poll::Ready(e) = Pin::new(&mut w).poll_next(&mut cx) {
            last = e;
        }
        assert_eq!(last.as_deref(), Some("/local/domain/1"));
        // Waiting again with a full history behind it: a dropped event still wakes.
        for i in 0..=MAX_WATCH_EVENTS {
            a.write(&format!("k{i}"), "w").unwrap();
        }
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        let mut last = None;
        while let Poll::Ready(e) = Pin::new(&mut w).poll_next(&mut cx) {
            last = e;
        }
        assert_eq!(last.as_deref(), Some("/local/domain/1"));
    }

    /// A watcher's waker is the watcher's code: it runs after the store's lock is released,
    /// so one that uses the store (here, a guest's reading its own node) deadlocks nothing.
    #[test]
    fn a_watchers_waker_may_use_the_store() {
        let (_, dom0, a, _) = setup();
        a.write("x", "1").unwrap();
        let mut w = a.watch("").unwrap();
        struct Reenter(StoreHandle, std::sync::atomic::AtomicUsize);
        impl futures::task::ArcWake for Reenter {
            fn wake_by_ref(me: &Arc<Self>) {
                assert_eq!(me.0.read("x").as_deref(), Ok("1"));
                me.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        let hook = Arc::new(Reenter(a.clone(), std::sync::atomic::AtomicUsize::new(0)));
        let waker = futures::task::waker(hook.clone());
        let mut cx = Context::from_waker(&waker);
        while Pin::new(&mut w).poll_next(&mut cx).is_ready() {}
        // Each writer, on a thread of its own so that a deadlock fails the test instead of
        // hanging it: dom0 writing into the guest's home, the guest's own write, a removal
        // and a change of permissions.
        let ops: [Box<dyn FnOnce() -> Result<(), StoreError> + Send>; 4] = [
            Box::new({
                let dom0 = dom0.clone();
                move || dom0.write("/local/domain/1/device", "")
            }),
            Box::new({
                let a = a.clone();
                move || a.write("y", "2")
            }),
            Box::new({
                let a = a.clone();
                move || a.rm("y")
            }),
            Box::new({
                let dom0 = dom0.clone();
                move || {
                    dom0.set_perms(
                        "/local/domain/1/device",
                        Perms::private(DomainId(1)).with(DomainId(2), Perm::Read),
                    )
                }
            }),
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(op()));
            let done = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(done, Ok(Ok(())), "store call {i} did not return");
            assert_eq!(hook.1.load(Ordering::SeqCst), i + 1);
            while Pin::new(&mut w).poll_next(&mut cx).is_ready() {}
        }
    }

    struct Wakes(std::sync::atomic::AtomicUsize);
    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    use futures::FutureExt;
}
