//! Routes the manager's replies to the [`MuxClient`](super::MuxClient) calls waiting for them.
//!
//! The ordering rule of the stream is enforced here: a reply goes to the one request whose
//! tag, instance and kind (command or control) it carries, whatever order replies arrive in.
//! Nothing is matched by arrival order, so an engine may answer in any order, and a reply
//! nobody waits for any more (abandoned, timed out, posted cancel) is dropped. The first frame
//! with a request's tag settles it, as the reply or (wrong instance or kind) as a failure;
//! later frames with that tag are dropped, so a duplicate can neither replace a delivered
//! reply nor undo a failure.

use super::client::Pending;
use super::client::lock;
use super::codec::Frame;
use super::stream::FrameRx;
use futures::StreamExt;

/// Routes replies from the manager to the waiting [`MuxClient`](super::MuxClient) calls; run
/// it alongside.
#[derive(Debug)]
pub struct MuxRouter {
    rx: FrameRx,
    pending: Pending,
}

impl MuxRouter {
    pub(super) fn new(rx: FrameRx, pending: Pending) -> Self {
        Self { rx, pending }
    }

    /// Delivers replies until the manager closes the stream; then every waiter fails.
    pub async fn run(mut self) {
        while let Some(bytes) = self.rx.next().await {
            let (instance, tag, control, body) = match Frame::into_reply(bytes) {
                Ok(Frame::Response {
                    instance,
                    tag,
                    response,
                }) => (instance, tag, false, response),
                Ok(Frame::Control {
                    instance,
                    tag,
                    payload,
                }) => (instance, tag, true, payload),
                Ok(Frame::Command { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed frame from the vTPM manager");
                    continue;
                }
            };
            let mut table = lock(&self.pending);
            let waker = match table.slots.get_mut(&tag) {
                // Already settled: the first frame for a tag decides, as when the slot was
                // removed on delivery (`settle` keeps the first outcome; this arm only says
                // so in the log).
                Some(slot) if slot.outcome.is_some() => {
                    tracing::debug!(tag, instance, "second reply for a settled request; dropped");
                    None
                }
                Some(slot) if slot.instance == instance && slot.control == control => {
                    // The waiter takes it from the slot; one that gave up has removed the
                    // slot, and the reply is dropped.
                    slot.settle(Some(body))
                }
                Some(slot) => {
                    // That request fails: it learns of the failure instead of getting a reply
                    // meant for someone else.
                    tracing::warn!(
                        tag,
                        instance,
                        expected = slot.instance,
                        "reply does not match its request"
                    );
                    slot.settle(None)
                }
                None => {
                    tracing::debug!(tag, instance, "reply nobody waits for; dropped");
                    None
                }
            };
            drop(table);
            if let Some(w) = waker {
                w.wake();
            }
        }
        let wakers: Vec<_> = {
            let mut table = lock(&self.pending);
            table.closed = true;
            table
                .slots
                .values_mut()
                // A reply already delivered stays for its waiter to take (see `settle`).
                .filter_map(|s| s.settle(None))
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::Frame;
    use super::super::mux;
    use super::super::stream_pair;
    use futures::StreamExt;

    /// The manager's end: reads one request frame.
    async fn next_request(man: &mut super::super::StreamEnd) -> Frame {
        Frame::decode_request(&man.rx.next().await.unwrap()).unwrap()
    }

    fn reply(man: &super::super::StreamEnd, frame: Frame) {
        man.tx.send(frame.encode()).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn replies_in_any_order_reach_their_own_requests(
            instances in proptest::collection::vec(0u32..4, 1..=8),
            order in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 8),
        ) {
            let (back, mut man) = stream_pair();
            let (client, router) = mux(back);
            let n = instances.len();
            let requests = futures::future::join_all(instances.iter().enumerate().map(|(i, &inst)| {
                // Each command's body names its request, so its answer can be checked (at most
                // 8 requests: an instance may have no more outstanding).
                client.command(inst, vec![i as u8], 0)
            }));
            let manager = async move {
                let mut frames = Vec::new();
                for _ in 0..n {
                    frames.push(next_request(&mut man).await);
                }
                // Answer in a random order: the echo of each command body.
                while !frames.is_empty() {
                    let i = order[frames.len() - 1].index(frames.len());
                    let Frame::Command { instance, tag, command, .. } = frames.swap_remove(i) else {
                        panic!("not a command");
                    };
                    reply(&man, Frame::Response { instance, tag, response: command });
                }
                drop(man);
            };
            let (answers, (), ()) = futures::executor::block_on(futures::future::join3(requests, manager, router.run()));
            for (i, answer) in answers.into_iter().enumerate() {
                proptest::prop_assert_eq!(answer.unwrap(), vec![i as u8]);
            }
        }
    }

    #[tokio::test]
    async fn replies_in_reverse_order_reach_their_own_requests() {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        let first = client.command(1, vec![1], 0);
        let second = client.command(1, vec![2], 0);
        futures::pin_mut!(first, second);
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(second.as_mut()).is_pending());
        let a = next_request(&mut man).await;
        let b = next_request(&mut man).await;
        assert_ne!(a.tag(), b.tag());
        for (req, answer) in [(&b, 0xbb), (&a, 0xaa)] {
            reply(
                &man,
                Frame::Response {
                    instance: 1,
                    tag: req.tag(),
                    response: vec![answer],
                },
            );
        }
        assert_eq!(first.await.unwrap(), vec![0xaa]);
        assert_eq!(second.await.unwrap(), vec![0xbb]);
        routing.abort();
    }

    #[tokio::test]
    async fn abandoned_request_reply_never_reaches_the_next_request() {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        // The first command's waiter gives up before the manager answers.
        let mut first = Box::pin(client.command(1, vec![1], 0));
        assert!(futures::poll!(first.as_mut()).is_pending());
        drop(first);
        assert_eq!(client.outstanding(), 0);
        let second = client.command(1, vec![2], 0);
        futures::pin_mut!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        let a = next_request(&mut man).await;
        let b = next_request(&mut man).await;
        // The abandoned command's answer comes first, then the second's.
        for (req, answer) in [(&a, 0xaa), (&b, 0xbb)] {
            reply(
                &man,
                Frame::Response {
                    instance: 1,
                    tag: req.tag(),
                    response: vec![answer],
                },
            );
        }
        assert_eq!(second.await.unwrap(), vec![0xbb]);
        routing.abort();
    }

    #[tokio::test]
    async fn a_reply_for_another_instance_or_kind_is_never_delivered() {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        let mine = client.command(1, vec![1], 0);
        futures::pin_mut!(mine);
        assert!(futures::poll!(mine.as_mut()).is_pending());
        let req = next_request(&mut man).await;
        // Right tag, wrong instance: the request fails rather than take it.
        reply(
            &man,
            Frame::Response {
                instance: 2,
                tag: req.tag(),
                response: vec![0xee],
            },
        );
        assert!(mine.await.is_err());
        let control = client.control(1, crate::engine::ControlOp::Stop);
        futures::pin_mut!(control);
        assert!(futures::poll!(control.as_mut()).is_pending());
        let req = next_request(&mut man).await;
        // Right tag and instance, but a response where a control reply is due.
        reply(
            &man,
            Frame::Response {
                instance: 1,
                tag: req.tag(),
                response: vec![0, 0, 0, 0],
            },
        );
        assert!(control.await.is_err());
        routing.abort();
    }

    /// One command answered by two frames with its tag, from `first` and `second` (instance,
    /// body), both routed before the caller looks: what the caller gets.
    async fn answered_twice(
        first: (u32, u8),
        second: (u32, u8),
    ) -> Result<Vec<u8>, super::super::FrameError> {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = router.run();
        futures::pin_mut!(routing);
        let mine = client.command(1, vec![1], 0);
        futures::pin_mut!(mine);
        assert!(futures::poll!(mine.as_mut()).is_pending());
        let tag = next_request(&mut man).await.tag();
        for (instance, body) in [first, second] {
            let response = vec![body];
            reply(
                &man,
                Frame::Response {
                    instance,
                    tag,
                    response,
                },
            );
        }
        assert!(futures::poll!(routing.as_mut()).is_pending());
        mine.await
    }

    #[tokio::test]
    async fn the_first_frame_for_a_tag_settles_its_request() {
        // A later frame for another instance does not take the delivered reply away.
        assert_eq!(answered_twice((1, 0xaa), (2, 0xee)).await.unwrap(), [0xaa]);
        // A duplicate does not replace it.
        assert_eq!(answered_twice((1, 0xaa), (1, 0xbb)).await.unwrap(), [0xaa]);
        // A mismatch fails the request even when the right reply follows.
        assert!(answered_twice((2, 0xee), (1, 0xaa)).await.is_err());
    }
}
