//! PCIe Data Object Exchange (DOE) data objects (PCIe 6.1 section 6.30).
//!
//! A data object is a two-dword header (vendor id, object type, length in dwords including the
//! header) followed by the payload, padded to a whole number of dwords.

use open_enum::open_enum;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;

/// The PCI-SIG vendor id, owner of the discovery and CMA/SPDM object types.
pub const PCI_SIG_VENDOR_ID: u16 = 0x0001;

/// Size of the DOE header in bytes.
pub const DOE_HEADER_SIZE: usize = 8;

/// The DOE length field is 18 bits of dwords; 0 encodes the maximum (2^18 dwords).
const LENGTH_FIELD_MASK: u32 = 0x3_ffff;
const MAX_OBJECT_DWORDS: usize = 1 << 18;

/// DOE data object types defined by PCI-SIG (vendor id 0x0001).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum DoeObjectType {
    /// DOE discovery.
    DISCOVERY = 0,
    /// Component measurement and authentication: a plain SPDM message.
    SPDM = 1,
    /// A secured SPDM message (inside an SPDM session).
    SECURED_SPDM = 2,
}

/// The 8-byte DOE data object header as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DoeHeader {
    /// Vendor id owning `object_type`.
    pub vendor_id: U16,
    /// Data object type.
    pub object_type: DoeObjectType,
    /// Reserved, zero.
    pub reserved: u8,
    /// Length of the whole object in dwords, header included (bits 17:0; 0 means 2^18).
    pub length: U32,
}
const _: () = assert!(size_of::<DoeHeader>() == DOE_HEADER_SIZE);

/// Errors decoding a DOE data object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DoeError {
    /// The buffer is shorter than a header or than the length it announces.
    #[error("DOE object truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the header announces (or the header size).
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The buffer holds more bytes than the header announces.
    #[error("DOE object has {extra} trailing bytes beyond its length")]
    TrailingBytes {
        /// Bytes past the announced length.
        extra: usize,
    },
    /// Reserved header bits are set.
    #[error("DOE header reserved bits set")]
    ReservedBits,
    /// The announced length is smaller than the header itself.
    #[error("DOE length of {0} dwords is shorter than the header")]
    LengthTooSmall(u32),
    /// The object is not a PCI-SIG object.
    #[error("DOE vendor id {0:#06x} is not PCI-SIG")]
    UnknownVendor(u16),
}

/// A decoded DOE data object, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoeObject<'a> {
    /// Data object type.
    pub object_type: DoeObjectType,
    /// The payload, including any zero padding up to the dword boundary.
    pub payload: &'a [u8],
}

impl<'a> DoeObject<'a> {
    /// A PCI-SIG data object of `object_type` around `payload`.
    pub fn new(object_type: DoeObjectType, payload: &'a [u8]) -> Self {
        Self {
            object_type,
            payload,
        }
    }

    /// The encoded size in bytes: header plus the payload padded to a dword.
    pub fn encoded_len(&self) -> usize {
        DOE_HEADER_SIZE + self.payload.len().next_multiple_of(4)
    }

    /// Appends the encoded object to `out`.
    ///
    /// Payloads longer than the DOE maximum (1 MiB minus the header) cannot be represented; the
    /// length field then wraps as the 18-bit field does, so callers bound their payloads first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let dwords = self.encoded_len() / 4;
        let length = if dwords == MAX_OBJECT_DWORDS {
            0
        } else {
            u32::try_from(dwords).unwrap_or(u32::MAX) & LENGTH_FIELD_MASK
        };
        let header = DoeHeader {
            vendor_id: PCI_SIG_VENDOR_ID.into(),
            object_type: self.object_type,
            reserved: 0,
            length: length.into(),
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(self.payload);
        out.resize(
            out.len() + (self.payload.len().next_multiple_of(4) - self.payload.len()),
            0,
        );
    }

    /// Decodes exactly one data object occupying all of `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DoeError> {
        let (header, _) = DoeHeader::read_from_prefix(bytes).map_err(|_| DoeError::Truncated {
            needed: DOE_HEADER_SIZE,
            have: bytes.len(),
        })?;
        if header.vendor_id.get() != PCI_SIG_VENDOR_ID {
            return Err(DoeError::UnknownVendor(header.vendor_id.get()));
        }
        let raw_length = header.length.get();
        if header.reserved != 0 || raw_length & !LENGTH_FIELD_MASK != 0 {
            return Err(DoeError::ReservedBits);
        }
        let dwords = match raw_length {
            0 => MAX_OBJECT_DWORDS,
            n => n as usize,
        };
        if dwords * 4 < DOE_HEADER_SIZE {
            return Err(DoeError::LengthTooSmall(raw_length));
        }
        let needed = dwords * 4;
        if bytes.len() < needed {
            return Err(DoeError::Truncated {
                needed,
                have: bytes.len(),
            });
        }
        if bytes.len() > needed {
            return Err(DoeError::TrailingBytes {
                extra: bytes.len() - needed,
            });
        }
        Ok(Self {
            object_type: header.object_type,
            payload: &bytes[DOE_HEADER_SIZE..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spdm_object_matches_spec_layout() {
        // Vendor 0x0001 LE, type 1, reserved 0, length 3 dwords LE, 4 payload bytes.
        let golden = [
            0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x84, 0x00, 0x00,
        ];
        let obj = DoeObject::decode(&golden).unwrap();
        assert_eq!(obj.object_type, DoeObjectType::SPDM);
        assert_eq!(obj.payload, &[0x10, 0x84, 0, 0]);
        let mut out = Vec::new();
        obj.encode(&mut out);
        assert_eq!(out, golden);
    }

    #[test]
    fn payload_is_padded_to_dword() {
        let mut out = Vec::new();
        DoeObject::new(DoeObjectType::SECURED_SPDM, &[0xaa; 5]).encode(&mut out);
        assert_eq!(out.len(), 16);
        assert_eq!(&out[4..8], &4u32.to_le_bytes());
        assert_eq!(&out[13..], &[0, 0, 0]);
    }

    #[test]
    fn decode_rejects_length_mismatch_in_both_directions() {
        let mut wire = Vec::new();
        DoeObject::new(DoeObjectType::SPDM, &[0; 8]).encode(&mut wire);
        assert!(matches!(
            DoeObject::decode(&wire[..wire.len() - 4]),
            Err(DoeError::Truncated { .. })
        ));
        wire.extend_from_slice(&[0; 4]);
        assert_eq!(
            DoeObject::decode(&wire),
            Err(DoeError::TrailingBytes { extra: 4 })
        );
    }

    #[test]
    fn decode_rejects_bad_header_fields() {
        let good = [0x01, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00];
        let mut vendor = good;
        vendor[0] = 0x86;
        assert_eq!(
            DoeObject::decode(&vendor),
            Err(DoeError::UnknownVendor(0x86))
        );
        let mut reserved = good;
        reserved[3] = 1;
        assert_eq!(DoeObject::decode(&reserved), Err(DoeError::ReservedBits));
        let mut high_length = good;
        high_length[6] = 0x04;
        assert_eq!(DoeObject::decode(&high_length), Err(DoeError::ReservedBits));
        let mut short = good;
        short[4] = 1;
        assert_eq!(DoeObject::decode(&short), Err(DoeError::LengthTooSmall(1)));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(ty: u8, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut wire = Vec::new();
            DoeObject::new(DoeObjectType(ty), &payload).encode(&mut wire);
            let obj = DoeObject::decode(&wire).unwrap();
            prop_assert_eq!(obj.object_type, DoeObjectType(ty));
            prop_assert_eq!(&obj.payload[..payload.len()], &payload[..]);
            prop_assert!(obj.payload[payload.len()..].iter().all(|&b| b == 0));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = DoeObject::decode(&bytes);
        }
    }
}
