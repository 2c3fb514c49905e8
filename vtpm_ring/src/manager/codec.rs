//! The frames on the stream between the backend and the vTPM manager (both in this crate).
//!
//! Seed 004's `/dev/vtpm` prefixed each packet with the 4-byte vTPM instance id (network byte
//! order) and matched responses by arrival order. That order is not a guarantee once engines
//! run concurrently, a guest goes away mid-command or an instance is handed to the next guest,
//! so every frame here also carries a tag that its reply echoes. All fields big-endian:
//!
//! ```text
//! word   u32   instance id (bits 0..=30) | CONTROL_FLAG (bit 31) for control frames
//! tag    u32   chosen by the backend per request, echoed by the reply
//! body:
//!   command  (backend -> manager)  locality u8, then the TPM command
//!   response (manager -> backend)  the TPM response
//!   control request                swtpm control command number u32, then its fixed body
//!   control reply                  result u32 (0 = success), then the reply body
//! ```
//!
//! The locality travels with its command, so nothing on either side tracks a "current"
//! locality of an instance; an engine that needs one (swtpm's SET_LOCALITY) derives it.

use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use crate::engine::ctrl;
use crate::engine::ctrl::CtrlCmd;
use crate::engine::ctrl::CtrlError;
use thiserror::Error;

/// Bit of the first word marking a control frame.
pub const CONTROL_FLAG: u32 = 0x8000_0000;
/// Largest instance id.
pub const MAX_INSTANCE: u32 = CONTROL_FLAG - 1;
/// Bytes before the body: word and tag.
pub const FRAME_HEADER_SIZE: usize = 8;

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
    /// Backend to manager: a TPM command sent at `locality`.
    Command {
        /// Instance.
        instance: u32,
        /// Request tag.
        tag: u32,
        /// Locality (0..=4) the frontend sent it at.
        locality: u8,
        /// The command.
        command: Vec<u8>,
    },
    /// Manager to backend: the response to the command with the same tag.
    Response {
        /// Instance.
        instance: u32,
        /// Tag of the command answered.
        tag: u32,
        /// The response.
        response: Vec<u8>,
    },
    /// A control request or reply payload.
    Control {
        /// Instance.
        instance: u32,
        /// Request tag (echoed by the reply).
        tag: u32,
        /// The payload (command number or result first).
        payload: Vec<u8>,
    },
}

impl Frame {
    /// The instance the frame is for.
    pub fn instance(&self) -> u32 {
        match self {
            Frame::Command { instance, .. }
            | Frame::Response { instance, .. }
            | Frame::Control { instance, .. } => *instance,
        }
    }

    /// The frame's tag.
    pub fn tag(&self) -> u32 {
        match self {
            Frame::Command { tag, .. }
            | Frame::Response { tag, .. }
            | Frame::Control { tag, .. } => *tag,
        }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let (word, tag, prefix, body): (u32, u32, &[u8], &[u8]) = match self {
            Frame::Command {
                instance,
                tag,
                locality,
                command,
            } => (*instance, *tag, std::slice::from_ref(locality), command),
            Frame::Response {
                instance,
                tag,
                response,
            } => (*instance, *tag, &[], response),
            Frame::Control {
                instance,
                tag,
                payload,
            } => (*instance | CONTROL_FLAG, *tag, &[], payload),
        };
        let mut out = Vec::with_capacity(FRAME_HEADER_SIZE + prefix.len() + body.len());
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(body);
        out
    }

    fn split(bytes: &[u8]) -> Result<(u32, bool, u32), FrameError> {
        let truncated = FrameError::Truncated(bytes.len());
        let (word, rest) = bytes.split_first_chunk::<4>().ok_or(truncated.clone())?;
        let (tag, _) = rest.split_first_chunk::<4>().ok_or(truncated)?;
        let word = u32::from_be_bytes(*word);
        Ok((
            word & !CONTROL_FLAG,
            word & CONTROL_FLAG != 0,
            u32::from_be_bytes(*tag),
        ))
    }

    /// The frame's bytes from `at` on, in the frame's own buffer (no copy into a new one).
    fn body_from(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
        bytes.drain(..at);
        bytes
    }

    /// Decodes a frame the backend sent (a command or a control request).
    pub fn decode_request(bytes: &[u8]) -> Result<Frame, FrameError> {
        Self::into_request(bytes.to_vec())
    }

    /// [`Frame::decode_request`] of a frame taken by value: its body keeps the frame's buffer.
    pub fn into_request(bytes: Vec<u8>) -> Result<Frame, FrameError> {
        let (instance, control, tag) = Self::split(&bytes)?;
        if control {
            return Ok(Frame::Control {
                instance,
                tag,
                payload: Self::body_from(bytes, FRAME_HEADER_SIZE),
            });
        }
        let locality = *bytes
            .get(FRAME_HEADER_SIZE)
            .ok_or(FrameError::Truncated(bytes.len()))?;
        Ok(Frame::Command {
            instance,
            tag,
            locality,
            command: Self::body_from(bytes, FRAME_HEADER_SIZE + 1),
        })
    }

    /// Decodes a frame the manager sent (a response or a control reply).
    pub fn decode_reply(bytes: &[u8]) -> Result<Frame, FrameError> {
        Self::into_reply(bytes.to_vec())
    }

    /// [`Frame::decode_reply`] of a frame taken by value: its body keeps the frame's buffer.
    pub fn into_reply(bytes: Vec<u8>) -> Result<Frame, FrameError> {
        let (instance, control, tag) = Self::split(&bytes)?;
        let body = Self::body_from(bytes, FRAME_HEADER_SIZE);
        Ok(if control {
            Frame::Control {
                instance,
                tag,
                payload: body,
            }
        } else {
            Frame::Response {
                instance,
                tag,
                response: body,
            }
        })
    }
}

// Control payloads are swtpm's control-channel bytes, which `engine::ctrl` owns; these wrap
// it in the stream's error type.

/// Encodes a control request payload (swtpm's request bytes for `op`).
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

/// Encodes the reply payload to control command `cmd`: swtpm's reply bytes (result first,
/// then the reply's data; GET_CAPABILITY's bare `u64`); a failure carries the engine's swtpm
/// result code.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_frames() {
        let command = Frame::Command {
            instance: 0x0102_0304,
            tag: 0x0a0b_0c0d,
            locality: 3,
            command: vec![0xaa, 0xbb],
        };
        assert_eq!(
            command.encode(),
            [1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 3, 0xaa, 0xbb]
        );
        assert_eq!(Frame::decode_request(&command.encode()).unwrap(), command);
        let response = Frame::Response {
            instance: 7,
            tag: 9,
            response: vec![0xcc],
        };
        assert_eq!(response.encode(), [0, 0, 0, 7, 0, 0, 0, 9, 0xcc]);
        assert_eq!(Frame::decode_reply(&response.encode()).unwrap(), response);
        let control = Frame::Control {
            instance: 7,
            tag: 1,
            payload: encode_control(&ControlOp::SetLocality(2)),
        };
        assert_eq!(
            control.encode(),
            [0x80, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 5, 2, 0, 0, 0]
        );
        assert_eq!(Frame::decode_request(&control.encode()).unwrap(), control);
        assert_eq!(Frame::decode_reply(&control.encode()).unwrap(), control);
    }

    #[test]
    fn short_frames_are_truncated() {
        for bytes in [&[1u8, 2][..], &[0, 0, 0, 1, 0, 0, 0][..]] {
            assert_eq!(
                Frame::decode_reply(bytes).unwrap_err(),
                FrameError::Truncated(bytes.len())
            );
        }
        // A command frame needs its locality byte.
        assert_eq!(
            Frame::decode_request(&[0, 0, 0, 1, 0, 0, 0, 2]).unwrap_err(),
            FrameError::Truncated(8)
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn frames_round_trip(instance in 0..=MAX_INSTANCE, tag in any::<u32>(), control in any::<bool>(), locality in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (request, reply) = if control {
                let f = Frame::Control { instance, tag, payload: body };
                (f.clone(), f)
            } else {
                (
                    Frame::Command { instance, tag, locality, command: body.clone() },
                    Frame::Response { instance, tag, response: body },
                )
            };
            prop_assert_eq!(Frame::decode_request(&request.encode()).unwrap(), request);
            prop_assert_eq!(Frame::decode_reply(&reply.encode()).unwrap(), reply);
        }

        #[test]
        fn frame_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = Frame::decode_request(&bytes);
            let _ = Frame::decode_reply(&bytes);
        }

        #[test]
        fn control_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_control(&bytes);
        }
    }
}
