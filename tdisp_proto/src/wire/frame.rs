//! The TDISP VMBus channel: its interface id, how an offer names its device, and the frame
//! around each message.
//!
//! The host offers one channel per assigned device, with interface id
//! [`TDISP_VMBUS_INTERFACE_ID`] and an instance id from [`instance_id_for`] (the fixed
//! [`TDISP_VMBUS_INSTANCE_PREFIX`] in the high 64 bits, the host's device id in the low 64), so a
//! guest learns each channel's device id from the offer ([`device_id_of_instance`]). These ids
//! are this project's: OpenVMM carries the same messages inside its VPCI protocol instead.
//!
//! Each guest command is an in-band packet asking for a completion; the host answers with a
//! completion carrying the same transaction id.
//!
//! VMBus pads every ring payload to a multiple of 8 bytes, and protobuf does not record a
//! message's length, so each message travels behind an 8-byte [`FrameHeader`] that does:
//! `message_length u32 LE | reserved u32 (zero)`, then the protobuf bytes, then at most 7
//! bytes of ring padding. [`frame`] builds one, [`unframe`] checks one and returns the message.

use super::MAX_MESSAGE_SIZE;
use super::WireError;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;

/// Interface id of a TDISP channel (`7d15b1a5-0000-4d1c-8a5d-7d15b1a5c0de`), as a `u128` in
/// the RFC 4122 byte order of `uuid::Uuid::from_u128`.
pub const TDISP_VMBUS_INTERFACE_ID: u128 = 0x7d15b1a5_0000_4d1c_8a5d_7d15b1a5c0de;
/// High 64 bits of every TDISP channel's instance id.
pub const TDISP_VMBUS_INSTANCE_PREFIX: u64 = 0x7d15_b1a5_1d00_4000;

/// The instance id of the channel for device `device_id`.
pub fn instance_id_for(device_id: u64) -> u128 {
    (u128::from(TDISP_VMBUS_INSTANCE_PREFIX) << 64) | u128::from(device_id)
}

/// The device id an instance id names, if it is a TDISP instance id.
pub fn device_id_of_instance(instance_id: u128) -> Option<u64> {
    let prefix = (instance_id >> 64) as u64;
    (prefix == TDISP_VMBUS_INSTANCE_PREFIX).then_some(instance_id as u64)
}

/// Size of [`FrameHeader`].
pub const FRAME_HEADER_SIZE: usize = 8;
/// Most padding a VMBus ring adds after a payload.
pub const MAX_RING_PADDING: usize = 7;

/// The frame header as it appears on the channel.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FrameHeader {
    /// Bytes of protobuf message after the header.
    pub message_length: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_SIZE);

/// `message` behind its frame header.
pub fn frame(message: &[u8]) -> Result<Vec<u8>, WireError> {
    if message.len() > MAX_MESSAGE_SIZE {
        return Err(WireError::OversizeMessage {
            len: message.len(),
            max: MAX_MESSAGE_SIZE,
        });
    }
    let header = FrameHeader {
        // Bounded by MAX_MESSAGE_SIZE above.
        message_length: u32::try_from(message.len()).unwrap_or(u32::MAX).into(),
        reserved: 0.into(),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_SIZE + message.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// The message inside one received frame (`payload` as read from the ring, padding included).
pub fn unframe(payload: &[u8]) -> Result<&[u8], WireError> {
    let (header, rest) =
        FrameHeader::read_from_prefix(payload).map_err(|_| WireError::FrameTruncated {
            have: payload.len(),
        })?;
    if header.reserved.get() != 0 {
        return Err(WireError::FrameReserved(header.reserved.get()));
    }
    let claimed = header.message_length.get();
    let len = usize::try_from(claimed)
        .ok()
        .filter(|&len| len <= MAX_MESSAGE_SIZE)
        .ok_or(WireError::OversizeMessage {
            len: claimed as usize,
            max: MAX_MESSAGE_SIZE,
        })?;
    let (message, padding) = rest.split_at_checked(len).ok_or(WireError::FrameLength {
        claimed,
        available: rest.len(),
    })?;
    if padding.len() > MAX_RING_PADDING {
        return Err(WireError::FrameTrailing(padding.len()));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_carry_the_device_id() {
        for id in [0, 7, u64::MAX] {
            assert_eq!(device_id_of_instance(instance_id_for(id)), Some(id));
        }
        assert_eq!(device_id_of_instance(7), None);
    }

    #[test]
    fn frame_survives_ring_padding() {
        let framed = frame(b"hello").unwrap();
        assert_eq!(&framed[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
        let mut padded = framed.clone();
        padded.resize(16, 0);
        assert_eq!(unframe(&padded).unwrap(), b"hello");
        assert_eq!(unframe(&framed).unwrap(), b"hello");
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(
            unframe(&[1, 2, 3]),
            Err(WireError::FrameTruncated { have: 3 })
        );
        assert_eq!(
            unframe(&[0, 0, 0, 0, 1, 0, 0, 0]),
            Err(WireError::FrameReserved(1))
        );
        assert_eq!(
            unframe(&[9, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(WireError::FrameLength {
                claimed: 9,
                available: 1
            })
        );
        assert!(matches!(
            unframe(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Err(WireError::OversizeMessage { .. })
        ));
        let mut long = frame(b"x").unwrap();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(unframe(&long), Err(WireError::FrameTrailing(8)));
        assert!(matches!(
            frame(&vec![0; MAX_MESSAGE_SIZE + 1]),
            Err(WireError::OversizeMessage { .. })
        ));
    }
}
