//! The backend's side of the stream: sends requests for any instance and matches replies.

use super::StreamEnd;
use super::codec::Frame;
use super::codec::FrameError;
use super::codec::MAX_INSTANCE;
use super::codec::decode_control_reply;
use super::codec::encode_control;
use super::router::MuxRouter;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use futures::channel::mpsc;
use futures::channel::oneshot;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

/// Most replies one instance may owe per kind (commands, control).
const MAX_OUTSTANDING: usize = 8;

/// Per instance and kind (packet or control), the replies still owed, oldest first. The
/// seed's framing has no request ids, so replies are matched in order; a slot whose waiter
/// gave up (or never waited: posted cancels) still consumes its reply, so a late answer never
/// lands on the next request.
pub(super) type Pending =
    Arc<Mutex<HashMap<(u32, bool), VecDeque<Option<oneshot::Sender<Vec<u8>>>>>>>;

/// The backend's side of the stream: sends requests for any instance and matches replies.
#[derive(Clone, Debug)]
pub struct MuxClient {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    /// The locality each instance was last told, the one record of it on this side.
    localities: Arc<Mutex<HashMap<u32, u8>>>,
}

/// Splits the backend's stream end into a client and its router.
pub fn mux(end: StreamEnd) -> (MuxClient, MuxRouter) {
    let pending = Pending::default();
    (
        MuxClient {
            tx: end.tx,
            pending: pending.clone(),
            localities: Arc::default(),
        },
        MuxRouter::new(end.rx, pending),
    )
}

impl MuxClient {
    fn enqueue(
        &self,
        instance: u32,
        frame: Frame,
        control: bool,
        waiter: Option<oneshot::Sender<Vec<u8>>>,
    ) -> Result<(), FrameError> {
        if instance > MAX_INSTANCE {
            return Err(FrameError::BadInstance(instance));
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = pending.entry((instance, control)).or_default();
        if queue.len() >= MAX_OUTSTANDING {
            return Err(FrameError::Busy(instance));
        }
        // Sent under the lock so queue order is stream order.
        self.tx
            .unbounded_send(frame.encode())
            .map_err(|_| FrameError::Closed)?;
        queue.push_back(waiter);
        Ok(())
    }

    fn send(
        &self,
        instance: u32,
        frame: Frame,
        control: bool,
    ) -> Result<oneshot::Receiver<Vec<u8>>, FrameError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(instance, frame, control, Some(tx))?;
        Ok(rx)
    }

    /// Sends a TPM command for `instance` at `locality` and waits for the response packet.
    /// A `SetLocality` control operation goes first when the locality changed.
    pub async fn command(
        &self,
        instance: u32,
        command: Vec<u8>,
        locality: u8,
    ) -> Result<Vec<u8>, FrameError> {
        let known = self
            .localities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&instance)
            .copied();
        if known != Some(locality) {
            match self
                .control(instance, ControlOp::SetLocality(locality))
                .await
            {
                Ok(_) => {
                    self.localities
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(instance, locality);
                }
                Err(e) => tracing::warn!(instance, error = %e, "set locality failed"),
            }
        }
        let rx = self.send(
            instance,
            Frame::Packet {
                instance,
                packet: command,
            },
            false,
        )?;
        rx.await.map_err(|_| FrameError::Closed)
    }

    /// Sends a control operation for `instance` without waiting for (or routing) its reply:
    /// for a cancel, whose effect shows in the command's own response.
    pub fn post_control(&self, instance: u32, op: ControlOp) -> Result<(), FrameError> {
        let frame = Frame::Control {
            instance,
            payload: encode_control(op),
        };
        self.enqueue(instance, frame, true, None)
    }

    /// Records that `instance` already runs at `locality` (tests that play the manager).
    #[cfg(test)]
    pub(super) fn assume_locality(&self, instance: u32, locality: u8) {
        self.localities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance, locality);
    }

    /// Sends a control operation for `instance` and waits for its reply.
    pub async fn control(&self, instance: u32, op: ControlOp) -> Result<ControlReply, FrameError> {
        let rx = self.send(
            instance,
            Frame::Control {
                instance,
                payload: encode_control(op),
            },
            true,
        )?;
        if matches!(
            op,
            ControlOp::Init { .. } | ControlOp::Stop | ControlOp::Shutdown
        ) {
            // A reset engine may be back at locality 0: tell it again before the next command.
            self.localities
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&instance);
        }
        let payload = rx.await.map_err(|_| FrameError::Closed)?;
        decode_control_reply(op, &payload)
    }
}
