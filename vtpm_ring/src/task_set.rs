//! A set of futures run within one task and polled as they wake, which wakes its task only
//! when one of them needs it.
//!
//! `FuturesUnordered` wakes the task polling it again whenever one call has polled as many
//! futures as it holds (futures-rs #2333: a bound on a call that keeps meeting futures
//! which woke themselves while polled). Holding one future, as a backend serving one device
//! or a manager running one request does, that is every call that finds it pending, so the
//! task was polled once more for nothing after each: measured, one extra poll of the
//! backend's task and one of the manager's per TPM command, besides one more the manager
//! spent on the `None` of its emptied set (see the [`FusedStream`] impl).
//!
//! A [`TaskSet`] polls, in one call, the futures that woke before it, each once, and wakes
//! its task itself only when a future woke itself while being polled (it yields, as
//! `Pace` makes a busy loop do). So no future holds its task for more
//! than one of its own polls per call, and an idle set costs nothing.

use futures::Stream;
use futures::stream::FusedStream;
use futures::task::ArcWake;
use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;

/// What the slots' wakers share with the set.
#[derive(Debug, Default)]
struct Shared {
    /// Slots to poll, each at most once (its [`SlotWaker::queued`] says it is here).
    ready: Mutex<VecDeque<usize>>,
    /// The task polling the set.
    parent: AtomicWaker,
}

impl Shared {
    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker of one slot. It outlives the future in its slot and serves the next one put
/// there: a late wake from the old one costs the new one a poll, which a future allows.
#[derive(Debug)]
struct SlotWaker {
    slot: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl SlotWaker {
    /// Queues the slot to be polled, unless it already is.
    fn queue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.ready().push_back(self.slot);
        }
    }
}

impl ArcWake for SlotWaker {
    fn wake_by_ref(me: &Arc<Self>) {
        me.queue();
        me.shared.parent.wake();
    }
}

/// A slot: its waker, and the future it holds (if any), in a box the slot keeps for the
/// next one (one allocation less per future).
struct Slot<F> {
    state: Arc<SlotWaker>,
    waker: Waker,
    future: Pin<Box<Option<F>>>,
}

/// Futures run within one task, their outputs yielded as they finish.
pub(crate) struct TaskSet<F> {
    slots: Vec<Slot<F>>,
    /// Slots without a future.
    free: Vec<usize>,
    shared: Arc<Shared>,
    len: usize,
}

impl<F: Future> TaskSet<F> {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            shared: Arc::default(),
            len: 0,
        }
    }

    /// Adds `future`; it is polled at the set's next poll.
    pub(crate) fn push(&mut self, future: F) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let state = Arc::new(SlotWaker {
                    slot: self.slots.len(),
                    queued: AtomicBool::new(false),
                    shared: self.shared.clone(),
                });
                let waker = futures::task::waker(state.clone());
                self.slots.push(Slot {
                    state,
                    waker,
                    future: Box::pin(None),
                });
                self.slots.len() - 1
            }
        };
        self.slots[slot].future.set(Some(future));
        self.len += 1;
        // Not through the waker: the caller polls the set next anyway.
        self.slots[slot].state.queue();
    }

    /// The futures not finished yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<F: Future> Stream for TaskSet<F> {
    type Item = F::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.get_mut();
        if this.len == 0 {
            return Poll::Ready(None);
        }
        this.shared.parent.register(cx.waker());
        // Those that woke before this call, each once; one woken meanwhile waits for the
        // wakeup it caused.
        let due = this.shared.ready().len();
        for _ in 0..due {
            let Some(index) = this.shared.ready().pop_front() else {
                break;
            };
            let Some(slot) = this.slots.get_mut(index) else {
                continue;
            };
            // Cleared before the poll, so a wake during it queues the slot again.
            slot.state.queued.store(false, Ordering::Release);
            let Some(future) = slot.future.as_mut().as_pin_mut() else {
                continue;
            };
            match future.poll(&mut Context::from_waker(&slot.waker)) {
                Poll::Ready(output) => {
                    slot.future.set(None);
                    this.free.push(index);
                    this.len -= 1;
                    return Poll::Ready(Some(output));
                }
                // It woke itself while polled: it yields, and so does the set's task (its
                // wake already asked for the next poll).
                Poll::Pending if slot.state.queued.load(Ordering::Acquire) => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// Empty is terminated, from the moment the last output is taken: a `select!` then skips
/// the set rather than poll it for the `None` (`FuturesUnordered` says it is terminated only
/// once it has returned `None`, and `select_next_some` wakes its task again on that `None`,
/// which cost the manager one more poll per command).
impl<F: Future> FusedStream for TaskSet<F> {
    fn is_terminated(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use std::sync::atomic::AtomicUsize;

    use crate::counting_waker::counted;

    #[test]
    fn a_pending_future_polled_does_not_wake_the_task() {
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = futures::channel::oneshot::channel::<u8>();
        let mut set = TaskSet::new();
        set.push(rx);
        for _ in 0..3 {
            assert!(set.poll_next_unpin(&mut cx).is_pending());
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // The set it replaces wakes its task after each such poll.
        let (plain_count, plain_waker) = counted();
        let mut plain_cx = Context::from_waker(&plain_waker);
        let (_plain_tx, plain_rx) = futures::channel::oneshot::channel::<u8>();
        let mut plain = FuturesUnordered::new();
        plain.push(plain_rx);
        assert!(plain.poll_next_unpin(&mut plain_cx).is_pending());
        assert_eq!(plain_count.0.load(Ordering::SeqCst), 1);

        tx.send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(Ok(7))));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_future_that_wakes_itself_gets_one_poll_per_call_and_the_task_comes_back() {
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut set = TaskSet::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        set.push(futures::future::poll_fn(move |cx| {
            seen.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        for call in 1..=3 {
            assert!(set.poll_next_unpin(&mut cx).is_pending());
            assert_eq!(polls.load(Ordering::SeqCst), call);
            assert_eq!(count.0.load(Ordering::SeqCst), call);
        }
    }

    #[test]
    fn only_the_futures_that_woke_are_polled() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut set = TaskSet::new();
        let mut senders = Vec::new();
        let polls: Vec<_> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        for count in &polls {
            let (tx, mut rx) = futures::channel::oneshot::channel::<usize>();
            senders.push(Some(tx));
            let count = count.clone();
            set.push(
                futures::future::poll_fn(move |cx| {
                    count.fetch_add(1, Ordering::SeqCst);
                    rx.poll_unpin(cx).map(|r| r.unwrap_or(0))
                })
                .boxed(),
            );
        }
        assert!(set.poll_next_unpin(&mut cx).is_pending());
        senders[1].take().unwrap().send(1).unwrap();
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        let seen: Vec<_> = polls.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        assert_eq!(seen, [1, 2, 1]);
        // The freed slot serves the next future.
        set.push(futures::future::ready(9).boxed());
        assert_eq!(set.len(), 3);
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(9)));
    }

    #[test]
    fn the_set_is_terminated_once_empty_and_starts_again_on_push() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut set = TaskSet::new();
        assert!(set.is_terminated());
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(None));
        set.push(futures::future::ready(3));
        assert!(!set.is_terminated());
        assert_eq!(set.len(), 1);
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(3)));
        // Terminated as the last output is taken, before any poll says `None`.
        assert!(set.is_terminated());
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(None));
        set.push(futures::future::ready(4));
        let drained: Vec<_> = futures::executor::block_on(set.collect());
        assert_eq!(drained, [4]);
    }
}

#[cfg(test)]
mod edge_tests;
