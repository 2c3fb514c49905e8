//! The frames on the stream between the backend and the vTPM manager.
//!
//! Seed 004: the backend prepends the 4-byte vTPM instance id (network byte order) to each TPM
//! packet and the manager routes by it; responses come back with the same prefix, which the
//! backend strips. Each stream message is one frame (as each read/write of `/dev/vtpm` was).
//!
//! Extension for control operations (not in the seed): bit 31 of the prefix marks a control
//! frame. Its payload is the big-endian swtpm control command number plus its fixed body;
//! the reply is a big-endian result (0 = success) plus the reply body. Instance ids therefore
//! stay below 2^31.

use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use crate::tpm_header::TpmRc;
use thiserror::Error;

/// Bit of the prefix word marking a control frame.
pub const CONTROL_FLAG: u32 = 0x8000_0000;
/// Largest instance id.
pub const MAX_INSTANCE: u32 = CONTROL_FLAG - 1;

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

fn be32(bytes: &[u8], at: usize) -> Result<u32, FrameError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(FrameError::Truncated(bytes.len()))
}

/// Encodes a control request payload.
pub fn encode_control(op: ControlOp) -> Vec<u8> {
    let mut out = op.code().to_be_bytes().to_vec();
    match op {
        ControlOp::Init { delete_volatile } => {
            out.extend_from_slice(&u32::from(delete_volatile).to_be_bytes());
        }
        ControlOp::SetLocality(l) | ControlOp::ResetTpmEstablished(l) => {
            out.extend_from_slice(&[l, 0, 0, 0]);
        }
        ControlOp::Shutdown
        | ControlOp::Stop
        | ControlOp::CancelCommand
        | ControlOp::GetTpmEstablished => {}
    }
    out
}

/// Decodes a control request payload.
pub fn decode_control(payload: &[u8]) -> Result<ControlOp, FrameError> {
    let code = be32(payload, 0)?;
    let byte = || {
        payload
            .get(4)
            .copied()
            .ok_or(FrameError::Truncated(payload.len()))
    };
    Ok(match code {
        2 => ControlOp::Init {
            delete_volatile: be32(payload, 4)? & 1 != 0,
        },
        3 => ControlOp::Shutdown,
        4 => ControlOp::GetTpmEstablished,
        5 => ControlOp::SetLocality(byte()?),
        9 => ControlOp::CancelCommand,
        0xb => ControlOp::ResetTpmEstablished(byte()?),
        0xe => ControlOp::Stop,
        other => return Err(FrameError::UnknownControl(other)),
    })
}

/// Encodes a control reply payload (`result` 0 on success).
pub fn encode_control_reply(reply: Result<ControlReply, EngineError>) -> Vec<u8> {
    match reply {
        Ok(ControlReply::Done) => 0u32.to_be_bytes().to_vec(),
        Ok(ControlReply::TpmEstablished(b)) => {
            let mut out = 0u32.to_be_bytes().to_vec();
            out.extend_from_slice(&[u8::from(b), 0, 0, 0]);
            out
        }
        // TPM_FAIL, as swtpm reports a failed control command.
        Err(_) => TpmRc::FAILURE.0.to_be_bytes().to_vec(),
    }
}

/// Decodes a control reply payload for `op`.
pub fn decode_control_reply(op: ControlOp, payload: &[u8]) -> Result<ControlReply, FrameError> {
    let result = be32(payload, 0)?;
    if result != 0 {
        return Err(FrameError::ControlFailed(result));
    }
    Ok(match op {
        ControlOp::GetTpmEstablished => ControlReply::TpmEstablished(
            payload
                .get(4)
                .copied()
                .ok_or(FrameError::Truncated(payload.len()))?
                & 1
                != 0,
        ),
        _ => ControlReply::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            assert_eq!(decode_control(&encode_control(op)).unwrap(), op);
        }
        assert_eq!(
            decode_control(&[0, 0, 0, 0x42]).unwrap_err(),
            FrameError::UnknownControl(0x42)
        );
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
