//! The frame queue's ends under concurrency: last sender, clones on threads, receiver gone
//! (written by the review of wave 9b, which found no defect there).

use super::*;
use futures::StreamExt;

#[test]
fn frames_queued_before_the_last_sender_drops_all_arrive_then_the_end() {
    let (tx, mut rx) = frame_queue();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(rx.poll_next_unpin(&mut cx).is_pending());
    for i in 0..10u8 {
        tx.clone().send(vec![i]).unwrap();
    }
    drop(tx);
    for i in 0..10u8 {
        assert_eq!(rx.poll_next_unpin(&mut cx), Poll::Ready(Some(vec![i])));
    }
    assert_eq!(rx.poll_next_unpin(&mut cx), Poll::Ready(None));
    assert!(rx.is_terminated());
}

#[test]
fn senders_cloned_and_dropped_on_threads_end_the_stream_exactly_once_all_sent() {
    for _ in 0..50 {
        let (tx, rx) = frame_queue();
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..100u8 {
                        let c = tx.clone();
                        c.send(vec![t, i]).unwrap();
                        drop(c);
                    }
                })
            })
            .collect();
        drop(tx);
        let got: Vec<Vec<u8>> = futures::executor::block_on(rx.collect());
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(got.len(), 400);
    }
}

#[test]
fn a_receiver_dropped_while_threads_send_fails_their_later_sends_and_keeps_nothing() {
    let (tx, rx) = frame_queue();
    let keep = tx.clone();
    let h = std::thread::spawn(move || {
        let mut failed = false;
        for _ in 0..10_000 {
            match tx.send(vec![0; 64]) {
                Ok(()) => assert!(!failed, "a send succeeded after one failed"),
                Err(Closed) => failed = true,
            }
        }
        failed
    });
    drop(rx);
    assert!(h.join().unwrap());
    assert!(keep.queue.state().frames.is_empty());
}
