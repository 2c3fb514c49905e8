//! Watches: a bounded queue of changed paths per watch, and the registry the store fires
//! them from.
//!
//! Each watch queues at most [`MAX_WATCH_EVENTS`] events (XSA-349: a guest writing nodes must
//! not grow the memory of whoever watches them). Events past that collapse: the watch yields
//! its own path once its queue is drained.

use super::MAX_WATCH_EVENTS;
use super::MAX_WATCHES_PER_DOMAIN;
use super::Store;
use super::StoreError;
use super::is_at_or_below;
use crate::domain::DomainId;
use futures::Stream;
use futures::channel::mpsc;
use futures::task::AtomicWaker;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;

/// The store's side of one watch.
struct WatchReg {
    id: u64,
    domain: DomainId,
    path: String,
    tx: mpsc::Sender<String>,
    overflow: Arc<Overflow>,
}

/// A watch's lost events: set when an event was dropped because the queue was full, with the
/// watch's waiter to wake then. The queue's own wakeup cannot stand in for it: the waiter may
/// drain the queue and find no flag between the full send and the flag being set, and then
/// nothing would wake it for that change.
#[derive(Default)]
struct Overflow {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl WatchReg {
    /// Queues `path`; a full queue drops it and marks the watch overflowed instead.
    fn queue(&mut self, path: &str) {
        if let Err(e) = self.tx.try_send(path.to_string())
            && e.is_full()
        {
            if !self.overflow.flag.swap(true, Ordering::AcqRel) {
                tracing::debug!(domain = %self.domain, watch = self.path, "watch queue full; events collapse");
            }
            self.overflow.waker.wake();
        }
    }
}

/// Every registered watch (kept in the store's state, under its lock).
#[derive(Default)]
pub(super) struct Watches {
    watches: Vec<WatchReg>,
    next_id: u64,
}

impl Watches {
    /// Registers a watch of `path` (resolved) for `domain`, within its quota, with the initial
    /// event Xen sends.
    pub(super) fn register(
        &mut self,
        domain: DomainId,
        path: String,
        store: Store,
    ) -> Result<Watch, StoreError> {
        self.watches.retain(|w| !w.tx.is_closed());
        if domain != DomainId::DOM0
            && self.watches.iter().filter(|w| w.domain == domain).count() >= MAX_WATCHES_PER_DOMAIN
        {
            return Err(StoreError::Quota(domain));
        }
        // The channel holds its buffer plus one slot per sender.
        let (tx, rx) = mpsc::channel(MAX_WATCH_EVENTS - 1);
        let overflow = Arc::new(Overflow::default());
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut reg = WatchReg {
            id,
            domain,
            path: path.clone(),
            tx,
            overflow: overflow.clone(),
        };
        reg.queue(&path);
        self.watches.push(reg);
        Ok(Watch {
            rx,
            id,
            path,
            overflow,
            store,
        })
    }

    /// Queues `changed` to every watch at or above it whose domain could read it.
    pub(super) fn fire(&mut self, changed: &str, readable_by: impl Fn(DomainId) -> bool) {
        self.watches.retain(|w| !w.tx.is_closed());
        for w in &mut self.watches {
            if is_at_or_below(changed, &w.path) && readable_by(w.domain) {
                w.queue(changed);
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
/// below changed: read again". Consumers therefore treat events as hints, never as a log.
pub struct Watch {
    rx: mpsc::Receiver<String>,
    id: u64,
    path: String,
    overflow: Arc<Overflow>,
    store: Store,
}

impl Stream for Watch {
    type Item = String;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        // A domain writing nodes from another thread can keep this stream ready forever; the
        // cooperative budget makes its consumer yield now and then (see `EventChannel::wait`).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        // Registered before the flag is looked at (see `Overflow`).
        self.overflow.waker.register(cx.waker());
        let next = match Pin::new(&mut self.rx).poll_next(cx) {
            Poll::Pending if self.overflow.flag.swap(false, Ordering::AcqRel) => {
                Poll::Ready(Some(self.path.clone()))
            }
            other => other,
        };
        if next.is_ready() {
            coop.made_progress();
        }
        next
    }
}

impl futures::stream::FusedStream for Watch {
    fn is_terminated(&self) -> bool {
        self.rx.is_terminated()
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
    use crate::store::tests::setup;
    use futures::StreamExt;

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

    #[test]
    fn an_event_dropped_for_a_full_queue_wakes_the_watch() {
        let (_, dom0, a, _) = setup();
        let mut w = dom0.watch("/local/domain/1").unwrap();
        for i in 0..MAX_WATCH_EVENTS {
            a.write(&format!("k{i}"), "v").unwrap();
        }
        // The waiter takes one event (a poll that finds one registers no queue waker),
        // the queue fills again, and the next event is dropped.
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll_next(&mut cx).is_ready());
        a.write("fills", "v").unwrap();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        a.write("dropped", "v").unwrap();
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "the dropped event woke nobody"
        );
    }

    struct Wakes(std::sync::atomic::AtomicUsize);
    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    use futures::FutureExt;
}
