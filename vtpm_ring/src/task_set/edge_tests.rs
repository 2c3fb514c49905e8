//! TaskSet at its edges: wakeups during a poll, slot reuse, fairness, many futures woken from
//! other threads (written by the review of wave 9b, which found no defect there).

use super::*;
use futures::FutureExt;
use futures::StreamExt;

use crate::counting_waker::counted;

type Slot = Arc<Mutex<Option<Waker>>>;

/// Future 0 wakes future 1 (stored waker) while it is polled; future 1 must be polled at
/// the next call, and the task woken for it.
#[test]
fn a_wake_of_another_slot_during_a_poll_is_not_lost() {
    let (count, waker) = counted();
    let mut cx = Context::from_waker(&waker);
    let stored: Slot = Arc::default();
    let go = Arc::new(AtomicBool::new(false));
    let mut set: TaskSet<futures::future::BoxFuture<'static, u8>> = TaskSet::new();
    {
        let stored = stored.clone();
        let mut first = true;
        set.push(
            futures::future::poll_fn(move |_| {
                if first {
                    first = false;
                    return Poll::Pending;
                }
                Poll::Pending
            })
            .boxed(),
        );
        let _ = stored;
    }
    {
        let stored = stored.clone();
        let go = go.clone();
        set.push(
            futures::future::poll_fn(move |cx| {
                if go.load(Ordering::SeqCst) {
                    return Poll::Ready(1);
                }
                *stored.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            })
            .boxed(),
        );
    }
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    // A third future that, polled, releases and wakes the second.
    {
        let stored = stored.clone();
        let go = go.clone();
        set.push(
            futures::future::poll_fn(move |_| {
                go.store(true, Ordering::SeqCst);
                if let Some(w) = stored.lock().unwrap().take() {
                    w.wake();
                }
                Poll::Pending
            })
            .boxed(),
        );
    }
    let before = count.0.load(Ordering::SeqCst);
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    assert!(
        count.0.load(Ordering::SeqCst) > before,
        "the task was not woken for the slot woken meanwhile"
    );
    assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
}

/// A finished future's waker, woken late, only costs the next future of its slot a poll;
/// that future's own wake still reaches it.
#[test]
fn a_stale_waker_after_slot_reuse_loses_nothing() {
    let (_count, waker) = counted();
    let mut cx = Context::from_waker(&waker);
    let stale: Slot = Arc::default();
    let mut set: TaskSet<futures::future::BoxFuture<'static, u8>> = TaskSet::new();
    {
        let stale = stale.clone();
        set.push(
            futures::future::poll_fn(move |cx| {
                *stale.lock().unwrap() = Some(cx.waker().clone());
                Poll::Ready(0)
            })
            .boxed(),
        );
    }
    assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(0)));
    let (tx, rx) = futures::channel::oneshot::channel::<u8>();
    set.push(rx.map(|r| r.unwrap_or(99)).boxed());
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    stale.lock().unwrap().take().unwrap().wake();
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    tx.send(5).unwrap();
    assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(5)));
    assert!(set.is_terminated());
}

/// A future that wakes itself and then finishes, over and over in the same slot: the ready
/// queue stays bounded by the slots.
#[test]
fn self_wake_then_ready_never_grows_the_queue() {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut set: TaskSet<futures::future::BoxFuture<'static, u32>> = TaskSet::new();
    for i in 0..10_000u32 {
        set.push(
            futures::future::poll_fn(move |cx| {
                cx.waker().wake_by_ref();
                cx.waker().wake_by_ref();
                Poll::Ready(i)
            })
            .boxed(),
        );
        assert_eq!(set.poll_next_unpin(&mut cx), Poll::Ready(Some(i)));
        assert!(set.shared.ready().len() <= set.slots.len());
    }
    assert_eq!(set.slots.len(), 1);
}

/// After an output, the futures already due come out on the next polls, with no new wake.
#[test]
fn outputs_due_together_all_come_out_without_new_wakes() {
    let (_count, waker) = counted();
    let mut cx = Context::from_waker(&waker);
    let mut set = TaskSet::new();
    let mut senders = Vec::new();
    for _ in 0..5 {
        let (tx, rx) = futures::channel::oneshot::channel::<u8>();
        senders.push(tx);
        set.push(rx);
    }
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    for (i, tx) in senders.into_iter().enumerate() {
        tx.send(i as u8).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        match set.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(v))) => got.push(v),
            other => panic!("{other:?} after {got:?}"),
        }
    }
    got.sort();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert!(set.is_terminated());
}

/// A busy future that always wakes itself does not starve one that is ready.
#[test]
fn a_self_waking_future_does_not_starve_the_others() {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut set: TaskSet<futures::future::BoxFuture<'static, u8>> = TaskSet::new();
    set.push(
        futures::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .boxed(),
    );
    let (tx, rx) = futures::channel::oneshot::channel::<u8>();
    set.push(rx.map(|r| r.unwrap_or(99)).boxed());
    assert!(set.poll_next_unpin(&mut cx).is_pending());
    tx.send(7).unwrap();
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(polls <= 3, "the ready future starved");
        if let Poll::Ready(v) = set.poll_next_unpin(&mut cx) {
            assert_eq!(v, Some(7));
            break;
        }
    }
}

/// Many futures woken from many threads while the set is polled: every output arrives.
#[test]
fn many_futures_woken_from_threads_all_finish() {
    const N: usize = 2000;
    let mut set = TaskSet::new();
    let mut senders = Vec::new();
    for _ in 0..N {
        let (tx, rx) = futures::channel::oneshot::channel::<usize>();
        senders.push(tx);
        set.push(rx);
    }
    let threads: Vec<_> = senders
        .chunks(N / 4)
        .map(|_| ())
        .collect::<Vec<_>>()
        .into_iter()
        .enumerate()
        .map(|_| ())
        .collect();
    drop(threads);
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut it = senders.into_iter().enumerate();
    for _ in 0..4 {
        chunks.push(it.by_ref().take(N / 4).collect());
    }
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                for (i, tx) in chunk {
                    tx.send(i).unwrap();
                }
            })
        })
        .collect();
    let mut got: Vec<usize> = futures::executor::block_on(set.map(|r| r.unwrap()).collect());
    for h in handles {
        h.join().unwrap();
    }
    got.sort();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}
