//! The stream between the backend and the vTPM manager, multiplexing every instance.
//!
//! Seed 004: the backend prepends the 4-byte vTPM instance id (network byte order) to each TPM
//! packet and the manager routes by it; responses come back with the same prefix, which the
//! backend strips. Each stream message is one frame (as each read/write of `/dev/vtpm` was).
//!
//! Extension for control operations (not in the seed): bit 31 of the prefix marks a control
//! frame. Its payload is swtpm's control-channel request, byte for byte ([`crate::engine::ctrl`]);
//! the reply is swtpm's reply to it (result first, GET_CAPABILITY's bare `u64` aside). Instance ids therefore
//! stay below 2^31. Locality travels as a `SetLocality` control frame sent before a command
//! when it changes, the way QEMU drives swtpm. As the seed's frames carry no request id, the
//! backend matches replies per instance and kind in order.

use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use crate::engine::TpmEngine;
use crate::engine::TpmReply;
use crate::engine::TpmRequest;
use crate::engine::ctrl;
use crate::engine::ctrl::CtrlCmd;
use crate::engine::ctrl::CtrlError;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::channel::oneshot;
use futures::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use thiserror::Error;

/// Bit of the prefix word marking a control frame.
pub const CONTROL_FLAG: u32 = 0x8000_0000;
/// Largest instance id.
pub const MAX_INSTANCE: u32 = CONTROL_FLAG - 1;

/// One end of the message stream.
#[derive(Debug)]
pub struct StreamEnd {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// A connected pair of stream ends (backend side, manager side).
pub fn stream_pair() -> (StreamEnd, StreamEnd) {
    let (atx, arx) = mpsc::unbounded();
    let (btx, brx) = mpsc::unbounded();
    (
        StreamEnd { tx: atx, rx: brx },
        StreamEnd { tx: btx, rx: arx },
    )
}

/// Errors decoding frames or talking over the stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Shorter than its fixed part.
    #[error("frame of {0} bytes is truncated")]
    Truncated(usize),
    /// Unknown control command number.
    #[error("unknown control command {0}")]
    UnknownControl(u32),
    /// A control reply reported failure.
    #[error("control operation failed with result {0:#x}")]
    ControlFailed(u32),
    /// The stream is closed.
    #[error("stream to the vTPM manager is closed")]
    Closed,
    /// Too many replies for this instance are still outstanding.
    #[error("instance {0} has too many requests outstanding")]
    Busy(u32),
    /// The instance id does not fit below the control flag.
    #[error("instance {0} is out of range")]
    BadInstance(u32),
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A TPM command or response packet.
    Packet {
        /// Instance.
        instance: u32,
        /// The packet.
        packet: Vec<u8>,
    },
    /// A control request or reply payload.
    Control {
        /// Instance.
        instance: u32,
        /// The payload (command number or result first).
        payload: Vec<u8>,
    },
}

impl Frame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let (word, body) = match self {
            Frame::Packet { instance, packet } => (*instance, packet),
            Frame::Control { instance, payload } => (*instance | CONTROL_FLAG, payload),
        };
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Decodes a frame.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let (word, body) = bytes
            .split_first_chunk::<4>()
            .ok_or(FrameError::Truncated(bytes.len()))?;
        let word = u32::from_be_bytes(*word);
        let instance = word & !CONTROL_FLAG;
        Ok(if word & CONTROL_FLAG != 0 {
            Frame::Control {
                instance,
                payload: body.to_vec(),
            }
        } else {
            Frame::Packet {
                instance,
                packet: body.to_vec(),
            }
        })
    }
}

// The control payloads are swtpm's control-channel bytes: `engine::ctrl` owns that format.

/// Encodes a control request payload (swtpm's control-channel request bytes).
pub fn encode_control(op: &ControlOp) -> Vec<u8> {
    ctrl::encode_request(op)
}

/// Decodes a control request payload.
pub fn decode_control(payload: &[u8]) -> Result<ControlOp, FrameError> {
    ctrl::decode_request(payload).map_err(|e| match e {
        CtrlError::Unknown(cmd) | CtrlError::NotCarried(cmd) => FrameError::UnknownControl(cmd.0),
        _ => FrameError::Truncated(payload.len()),
    })
}

/// Encodes the reply payload to control command `cmd` (swtpm's reply bytes: result first,
/// then the reply's data; failures carry the engine's swtpm result code).
pub fn encode_control_reply(cmd: CtrlCmd, reply: Result<ControlReply, EngineError>) -> Vec<u8> {
    ctrl::encode_reply(cmd, &reply)
}

/// Decodes a control reply payload for `op`.
pub fn decode_control_reply(op: &ControlOp, payload: &[u8]) -> Result<ControlReply, FrameError> {
    match ctrl::decode_reply(op.cmd(), payload) {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(rc)) => Err(FrameError::ControlFailed(rc.0)),
        Err(_) => Err(FrameError::Truncated(payload.len())),
    }
}

/// Most replies one instance may owe per kind (commands, control).
const MAX_OUTSTANDING: usize = 8;

/// Per instance and kind (packet or control), the replies still owed, oldest first. The
/// seed's framing has no request ids, so replies are matched in order; a slot whose waiter
/// gave up (or never waited: posted cancels) still consumes its reply, so a late answer never
/// lands on the next request.
type Pending = Arc<Mutex<HashMap<(u32, bool), VecDeque<Option<oneshot::Sender<Vec<u8>>>>>>>;

/// The backend's side of the stream: sends requests for any instance and matches replies.
#[derive(Clone, Debug)]
pub struct MuxClient {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
}

/// Routes replies from the manager to the waiting [`MuxClient`] calls; run it alongside.
#[derive(Debug)]
pub struct MuxRouter {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Pending,
}

/// Splits the backend's stream end into a client and its router.
pub fn mux(end: StreamEnd) -> (MuxClient, MuxRouter) {
    let pending = Pending::default();
    (
        MuxClient {
            tx: end.tx,
            pending: pending.clone(),
        },
        MuxRouter {
            rx: end.rx,
            pending,
        },
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

    /// Sends a TPM command for `instance` and waits for the response packet.
    pub async fn command(&self, instance: u32, command: Vec<u8>) -> Result<Vec<u8>, FrameError> {
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
            payload: encode_control(&op),
        };
        self.enqueue(instance, frame, true, None)
    }

    /// Sends a control operation for `instance` and waits for its reply.
    pub async fn control(&self, instance: u32, op: ControlOp) -> Result<ControlReply, FrameError> {
        let rx = self.send(
            instance,
            Frame::Control {
                instance,
                payload: encode_control(&op),
            },
            true,
        )?;
        let payload = rx.await.map_err(|_| FrameError::Closed)?;
        decode_control_reply(&op, &payload)
    }
}

impl MuxRouter {
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

/// The vTPM manager: owns one engine per instance and serves the multiplexed stream.
#[derive(Default)]
pub struct VtpmManager {
    engines: BTreeMap<u32, Arc<dyn TpmEngine>>,
}

impl VtpmManager {
    /// A manager without instances.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the engine of `instance`.
    pub fn add_instance(&mut self, instance: u32, engine: Arc<dyn TpmEngine>) {
        self.engines.insert(instance, engine);
    }

    /// Serves frames until the backend closes the stream. Requests run concurrently, so a
    /// cancel for an instance is not stuck behind that instance's command.
    pub async fn serve(self, end: StreamEnd) {
        let StreamEnd { tx, mut rx } = end;
        let localities: Arc<Mutex<HashMap<u32, u8>>> = Arc::default();
        let mut running = FuturesUnordered::new();
        loop {
            futures::select! {
                frame = rx.next() => {
                    let Some(bytes) = frame else { break };
                    let engines = self.engines.clone();
                    let localities = localities.clone();
                    running.push(async move { handle_frame(&engines, &localities, &bytes).await });
                }
                reply = running.select_next_some() => {
                    if let Some(reply) = reply
                        && tx.unbounded_send(reply).is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Finish what was accepted; replies to a closed stream are dropped.
        while let Some(reply) = running.next().await {
            if let Some(reply) = reply {
                let _ = tx.unbounded_send(reply);
            }
        }
    }
}

async fn handle_frame(
    engines: &BTreeMap<u32, Arc<dyn TpmEngine>>,
    localities: &Mutex<HashMap<u32, u8>>,
    bytes: &[u8],
) -> Option<Vec<u8>> {
    let frame = match Frame::decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "malformed frame from the backend");
            return None;
        }
    };
    match frame {
        Frame::Packet { instance, packet } => {
            let response = match engines.get(&instance) {
                Some(engine) => {
                    let locality = localities
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&instance)
                        .copied()
                        .unwrap_or(0);
                    match engine
                        .execute(TpmRequest::Command {
                            command: packet,
                            locality,
                        })
                        .await
                    {
                        Ok(TpmReply::Response(r)) => r,
                        Ok(TpmReply::Control(_)) | Err(_) => error_response(TpmRc::FAILURE),
                    }
                }
                None => {
                    tracing::warn!(instance, "command for unknown vTPM instance");
                    error_response(TpmRc::FAILURE)
                }
            };
            Some(
                Frame::Packet {
                    instance,
                    packet: response,
                }
                .encode(),
            )
        }
        Frame::Control { instance, payload } => {
            let cmd = payload
                .first_chunk::<4>()
                .map_or(CtrlCmd(0), |c| CtrlCmd(u32::from_be_bytes(*c)));
            let reply = match (ctrl::decode_request(&payload), engines.get(&instance)) {
                (Ok(op), Some(engine)) => {
                    let locality = match op {
                        ControlOp::SetLocality(l) => Some(l),
                        _ => None,
                    };
                    let result = engine.control(op).await;
                    if let (Some(l), Ok(_)) = (locality, &result) {
                        localities
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(instance, l);
                    }
                    encode_control_reply(cmd, result)
                }
                (Err(e), _) => {
                    tracing::warn!(instance, error = %e, "bad control frame");
                    encode_control_reply(cmd, Err(EngineError::Refused(e.result_code())))
                }
                (_, None) => encode_control_reply(cmd, Err(EngineError::NotRunning)),
            };
            Some(
                Frame::Control {
                    instance,
                    payload: reply,
                }
                .encode(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SimTpm;
    use proptest::prelude::*;

    const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

    #[test]
    fn packet_frame_is_instance_in_network_order_then_packet() {
        let f = Frame::Packet {
            instance: 0x0102_0304,
            packet: vec![0xaa, 0xbb],
        };
        assert_eq!(f.encode(), [1, 2, 3, 4, 0xaa, 0xbb]);
        assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        assert_eq!(
            Frame::decode(&[1, 2]).unwrap_err(),
            FrameError::Truncated(2)
        );
    }

    #[test]
    fn control_ops_round_trip() {
        for op in [
            ControlOp::Init {
                delete_volatile: true,
            },
            ControlOp::Shutdown,
            ControlOp::Stop,
            ControlOp::SetLocality(3),
            ControlOp::CancelCommand,
            ControlOp::GetTpmEstablished,
            ControlOp::ResetTpmEstablished(4),
        ] {
            assert_eq!(decode_control(&encode_control(&op)).unwrap(), op);
        }
        assert_eq!(
            decode_control(&[0, 0, 0, 0x42]).unwrap_err(),
            FrameError::UnknownControl(0x42)
        );
    }

    #[tokio::test]
    async fn manager_routes_by_instance_and_locality_follows_control() {
        let (back, man) = stream_pair();
        let mut manager = VtpmManager::new();
        let a = Arc::new(SimTpm::started());
        let b = Arc::new(SimTpm::new());
        manager.add_instance(1, a.clone());
        manager.add_instance(2, b);
        let server = tokio::spawn(manager.serve(man));
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        let ra = client.command(1, GET_RANDOM_8.to_vec()).await.unwrap();
        let rb = client.command(2, GET_RANDOM_8.to_vec()).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&ra), Some(TpmRc::SUCCESS));
        assert_eq!(
            crate::tpm_header::response_code(&rb),
            Some(TpmRc::INITIALIZE)
        );
        let rc = client.command(9, GET_RANDOM_8.to_vec()).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&rc), Some(TpmRc::FAILURE));
        client.control(1, ControlOp::SetLocality(2)).await.unwrap();
        client.command(1, GET_RANDOM_8.to_vec()).await.unwrap();
        assert_eq!(a.last_locality(), 2);
        assert!(client.control(1, ControlOp::SetLocality(9)).await.is_err());
        assert_eq!(
            client
                .control(1, ControlOp::GetTpmEstablished)
                .await
                .unwrap(),
            ControlReply::TpmEstablished(false)
        );
        drop(client);
        server.abort();
        routing.abort();
    }

    #[tokio::test]
    async fn abandoned_request_reply_never_reaches_the_next_request() {
        let (back, mut man) = stream_pair();
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        // The first command's waiter gives up before the manager answers.
        let mut first = Box::pin(client.command(1, vec![1]));
        assert!(futures::poll!(first.as_mut()).is_pending());
        drop(first);
        // The next command is registered before any answer arrives.
        let second = client.command(1, vec![2]);
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn frames_round_trip(instance in 0..=MAX_INSTANCE, control in any::<bool>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = if control {
                Frame::Control { instance, payload: body }
            } else {
                Frame::Packet { instance, packet: body }
            };
            prop_assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }

        #[test]
        fn control_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_control(&bytes);
        }
    }
}
