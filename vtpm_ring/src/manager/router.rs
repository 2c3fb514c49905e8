//! Routes the manager's replies to the [`MuxClient`](super::MuxClient) calls waiting for them.

use super::client::Pending;
use super::codec::Frame;
use futures::StreamExt;
use futures::channel::mpsc;
use std::collections::VecDeque;
use std::sync::PoisonError;

/// Routes replies from the manager to the waiting [`MuxClient`] calls; run it alongside.
#[derive(Debug)]
pub struct MuxRouter {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Pending,
}

impl MuxRouter {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<Vec<u8>>, pending: Pending) -> Self {
        Self { rx, pending }
    }

    /// Delivers replies until the manager closes the stream; then every waiter fails.
    pub async fn run(mut self) {
        while let Some(bytes) = self.rx.next().await {
            let (key, body) = match Frame::decode(&bytes) {
                Ok(Frame::Packet { instance, packet }) => ((instance, false), packet),
                Ok(Frame::Control { instance, payload }) => ((instance, true), payload),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed frame from the vTPM manager");
                    continue;
                }
            };
            let slot = self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&key)
                .and_then(VecDeque::pop_front);
            match slot {
                Some(Some(waiter)) => {
                    // The waiter may have given up; the reply is consumed either way.
                    let _ = waiter.send(body);
                }
                Some(None) => {}
                None => tracing::warn!(instance = key.0, "unsolicited reply from the manager"),
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::Frame;
    use super::super::mux;
    use super::super::stream_pair;
    use futures::StreamExt;

    #[tokio::test]
    async fn abandoned_request_reply_never_reaches_the_next_request() {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        // The locality is told once, before the first command.
        let prime = client.control(1, crate::engine::ControlOp::SetLocality(0));
        futures::pin_mut!(prime);
        assert!(futures::poll!(prime.as_mut()).is_pending());
        man.rx.next().await.unwrap();
        man.tx
            .unbounded_send(
                Frame::Control {
                    instance: 1,
                    payload: vec![0; 4],
                }
                .encode(),
            )
            .unwrap();
        prime.await.unwrap();
        client.assume_locality(1, 0);
        // The first command's waiter gives up before the manager answers.
        let mut first = Box::pin(client.command(1, vec![1], 0));
        assert!(futures::poll!(first.as_mut()).is_pending());
        drop(first);
        // The next command is registered before any answer arrives.
        let second = client.command(1, vec![2], 0);
        futures::pin_mut!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        for answer in [0xaa, 0xbb] {
            let req = man.rx.next().await.unwrap();
            assert!(matches!(
                Frame::decode(&req).unwrap(),
                Frame::Packet { instance: 1, .. }
            ));
            man.tx
                .unbounded_send(
                    Frame::Packet {
                        instance: 1,
                        packet: vec![answer],
                    }
                    .encode(),
                )
                .unwrap();
        }
        assert_eq!(second.await.unwrap(), vec![0xbb]);
        routing.abort();
    }
}
