//! The frame around each message on a TDISP VMBus channel.
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
