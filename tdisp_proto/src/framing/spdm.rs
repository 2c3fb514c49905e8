//! SPDM VENDOR_DEFINED_REQUEST / VENDOR_DEFINED_RESPONSE framing for PCI-SIG protocols.
//!
//! Layout (SPDM 1.2 VENDOR_DEFINED_REQUEST/RESPONSE with the PCI-SIG vendor id, as PCIe
//! uses it for IDE_KM and TDISP):
//! `SPDMVersion u8 | code u8 (0xFE request, 0x7E response) | param1 u8 | param2 u8 |
//! StandardID u16 (3 = PCI-SIG) | Len u8 (2) | VendorID u16 (0x0001) | payload length u16 |
//! payload`, where the PCI-SIG payload starts with a protocol id byte (0x01 = TDISP).
//!
//! Param1 and param2 are reserved and must be zero; SPDM 1.3 "large" vendor messages (which
//! use param1 and a 32-bit length) are therefore rejected, not supported.

use super::doe::PCI_SIG_VENDOR_ID;
use crate::pcie::DecodeError;
use crate::pcie::MessageBody;
use crate::pcie::TdispMessage;
use open_enum::open_enum;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;

/// SPDM request code VENDOR_DEFINED_REQUEST.
pub const SPDM_VENDOR_DEFINED_REQUEST: u8 = 0xfe;
/// SPDM response code VENDOR_DEFINED_RESPONSE.
pub const SPDM_VENDOR_DEFINED_RESPONSE: u8 = 0x7e;
/// DMTF registry id (SPDM "StandardID") of PCI-SIG.
pub const SPDM_STANDARD_ID_PCI_SIG: u16 = 3;
/// SPDM version 1.2, the default this crate writes.
pub const SPDM_VERSION_1_2: u8 = 0x12;
/// Size of [`VendorDefinedHeader`].
pub const VENDOR_DEFINED_HEADER_SIZE: usize = 11;
/// Largest vendor payload (protocol id included): the payload length field is 16 bits.
pub const MAX_VENDOR_PAYLOAD: usize = u16::MAX as usize;

/// PCI-SIG protocol ids carried as the first byte of the vendor payload.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum PciProtocolId {
    /// IDE key management.
    IDE_KM = 0x00,
    /// TDISP.
    TDISP = 0x01,
}

/// The 11-byte vendor-defined message header as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VendorDefinedHeader {
    /// SPDM version (major in the high nibble).
    pub spdm_version: u8,
    /// [`SPDM_VENDOR_DEFINED_REQUEST`] or [`SPDM_VENDOR_DEFINED_RESPONSE`].
    pub code: u8,
    /// Reserved, zero.
    pub param1: u8,
    /// Reserved, zero.
    pub param2: u8,
    /// Registry of the vendor id; [`SPDM_STANDARD_ID_PCI_SIG`].
    pub standard_id: U16,
    /// Length of the vendor id; 2.
    pub vendor_id_len: u8,
    /// The vendor id; [`PCI_SIG_VENDOR_ID`].
    pub vendor_id: U16,
    /// Bytes of vendor payload that follow.
    pub payload_length: U16,
}
const _: () = assert!(size_of::<VendorDefinedHeader>() == VENDOR_DEFINED_HEADER_SIZE);

/// Which way a vendor-defined message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// VENDOR_DEFINED_REQUEST, requester to responder.
    Request,
    /// VENDOR_DEFINED_RESPONSE, responder to requester.
    Response,
}

impl Direction {
    /// The SPDM code of this direction.
    pub fn code(self) -> u8 {
        match self {
            Self::Request => SPDM_VENDOR_DEFINED_REQUEST,
            Self::Response => SPDM_VENDOR_DEFINED_RESPONSE,
        }
    }
}

/// Errors of the SPDM vendor-defined framing, and of the TDISP message inside it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpdmFramingError {
    /// The buffer is shorter than the header.
    #[error("SPDM vendor message truncated: {0} bytes")]
    Truncated(usize),
    /// The SPDM major version is not 1.
    #[error("unsupported SPDM version {0:#04x}")]
    UnsupportedSpdmVersion(u8),
    /// The SPDM code is not the vendor-defined code of the expected direction.
    #[error("SPDM code {found:#04x}, expected {expected:#04x}")]
    UnexpectedCode {
        /// Code found.
        found: u8,
        /// Code expected.
        expected: u8,
    },
    /// Param1 or param2 is not zero.
    #[error("SPDM vendor message reserved params set")]
    ReservedParams,
    /// The vendor is not PCI-SIG (standard id 3, 2-byte vendor id 0x0001).
    #[error(
        "not a PCI-SIG vendor message (standard id {standard_id}, vendor id length {vendor_id_len})"
    )]
    NotPciSig {
        /// Standard id found.
        standard_id: u16,
        /// Vendor id length found.
        vendor_id_len: u8,
    },
    /// The payload length field disagrees with the bytes present.
    #[error("payload length {claimed} but {actual} bytes present")]
    LengthMismatch {
        /// The payload length field.
        claimed: usize,
        /// Bytes present after the header.
        actual: usize,
    },
    /// The payload is empty: no protocol id.
    #[error("vendor payload has no protocol id")]
    MissingProtocolId,
    /// The payload does not fit the 16-bit length field.
    #[error("vendor payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
    /// The protocol id is not the one expected.
    #[error("protocol id {0:#04x} is not TDISP")]
    NotTdisp(u8),
    /// The TDISP message inside is invalid.
    #[error("invalid TDISP message")]
    Tdisp(#[from] DecodeError),
}

/// A PCI-SIG vendor-defined SPDM message, borrowing its protocol payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpdmVendorMessage<'a> {
    /// SPDM version byte (0x10..=0x1f).
    pub spdm_version: u8,
    /// Request or response.
    pub direction: Direction,
    /// The PCI-SIG protocol carried.
    pub protocol_id: PciProtocolId,
    /// The protocol message after the protocol id byte.
    pub payload: &'a [u8],
}

impl<'a> SpdmVendorMessage<'a> {
    /// Appends the encoded message to `out`; fails if the payload does not fit the length field.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SpdmFramingError> {
        let total = self.payload.len() + 1;
        let payload_length =
            u16::try_from(total).map_err(|_| SpdmFramingError::PayloadTooLarge(total))?;
        let header = VendorDefinedHeader {
            spdm_version: self.spdm_version,
            code: self.direction.code(),
            param1: 0,
            param2: 0,
            standard_id: SPDM_STANDARD_ID_PCI_SIG.into(),
            vendor_id_len: 2,
            vendor_id: PCI_SIG_VENDOR_ID.into(),
            payload_length: payload_length.into(),
        };
        out.reserve(VENDOR_DEFINED_HEADER_SIZE + total);
        out.extend_from_slice(header.as_bytes());
        out.push(self.protocol_id.0);
        out.extend_from_slice(self.payload);
        Ok(())
    }

    /// Decodes a message of `direction` occupying all of `bytes`.
    pub fn decode(bytes: &'a [u8], direction: Direction) -> Result<Self, SpdmFramingError> {
        let (header, rest) = VendorDefinedHeader::read_from_prefix(bytes)
            .map_err(|_| SpdmFramingError::Truncated(bytes.len()))?;
        if header.spdm_version >> 4 != 1 {
            return Err(SpdmFramingError::UnsupportedSpdmVersion(
                header.spdm_version,
            ));
        }
        if header.code != direction.code() {
            return Err(SpdmFramingError::UnexpectedCode {
                found: header.code,
                expected: direction.code(),
            });
        }
        if header.param1 != 0 || header.param2 != 0 {
            return Err(SpdmFramingError::ReservedParams);
        }
        if header.standard_id.get() != SPDM_STANDARD_ID_PCI_SIG
            || header.vendor_id_len != 2
            || header.vendor_id.get() != PCI_SIG_VENDOR_ID
        {
            return Err(SpdmFramingError::NotPciSig {
                standard_id: header.standard_id.get(),
                vendor_id_len: header.vendor_id_len,
            });
        }
        let claimed = usize::from(header.payload_length.get());
        if claimed != rest.len() {
            return Err(SpdmFramingError::LengthMismatch {
                claimed,
                actual: rest.len(),
            });
        }
        let (&protocol_id, payload) = rest
            .split_first()
            .ok_or(SpdmFramingError::MissingProtocolId)?;
        Ok(Self {
            spdm_version: header.spdm_version,
            direction,
            protocol_id: PciProtocolId(protocol_id),
            payload,
        })
    }
}

/// The SPDM vendor message at the start of a DOE payload, without the DOE padding.
///
/// DOE pads objects to whole dwords, so a plain (type 1) DOE payload may end with up to three
/// zero bytes after the SPDM message; the SPDM payload length field says where it ends.
/// Fails if the padding is longer than three bytes or not zero.
pub fn strip_doe_padding(doe_payload: &[u8]) -> Result<&[u8], SpdmFramingError> {
    let (header, _) = VendorDefinedHeader::read_from_prefix(doe_payload)
        .map_err(|_| SpdmFramingError::Truncated(doe_payload.len()))?;
    let len = VENDOR_DEFINED_HEADER_SIZE + usize::from(header.payload_length.get());
    let (message, padding) =
        doe_payload
            .split_at_checked(len)
            .ok_or(SpdmFramingError::LengthMismatch {
                claimed: len,
                actual: doe_payload.len(),
            })?;
    if padding.len() >= 4 || padding.iter().any(|&b| b != 0) {
        return Err(SpdmFramingError::LengthMismatch {
            claimed: len,
            actual: doe_payload.len(),
        });
    }
    Ok(message)
}

/// Encodes a TDISP message (request or response) inside a PCI-SIG vendor-defined SPDM message.
pub fn encode_tdisp<B: MessageBody>(
    spdm_version: u8,
    direction: Direction,
    message: &TdispMessage<B>,
    out: &mut Vec<u8>,
) -> Result<(), SpdmFramingError> {
    let tdisp = message.to_bytes();
    SpdmVendorMessage {
        spdm_version,
        direction,
        protocol_id: PciProtocolId::TDISP,
        payload: &tdisp,
    }
    .encode(out)
}

/// Decodes a PCI-SIG vendor-defined SPDM message of `direction` that must carry TDISP, and
/// the TDISP message inside it. Returns the SPDM version with the message.
pub fn decode_tdisp<B: MessageBody>(
    bytes: &[u8],
    direction: Direction,
) -> Result<(u8, TdispMessage<B>), SpdmFramingError> {
    let vendor = SpdmVendorMessage::decode(bytes, direction)?;
    if vendor.protocol_id != PciProtocolId::TDISP {
        return Err(SpdmFramingError::NotTdisp(vendor.protocol_id.0));
    }
    Ok((vendor.spdm_version, TdispMessage::decode(vendor.payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Vec<u8> {
        let mut out = Vec::new();
        SpdmVendorMessage {
            spdm_version: SPDM_VERSION_1_2,
            direction: Direction::Request,
            protocol_id: PciProtocolId::TDISP,
            payload: &[0xaa, 0xbb],
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    type Expectation = fn(&SpdmFramingError) -> bool;

    #[test]
    fn header_fields_are_validated() {
        let cases: [(usize, u8, Expectation); 6] = [
            (0, 0x20, |e| {
                matches!(e, SpdmFramingError::UnsupportedSpdmVersion(0x20))
            }),
            (1, 0x81, |e| {
                matches!(e, SpdmFramingError::UnexpectedCode { .. })
            }),
            (2, 1, |e| matches!(e, SpdmFramingError::ReservedParams)),
            (4, 4, |e| matches!(e, SpdmFramingError::NotPciSig { .. })),
            (6, 4, |e| matches!(e, SpdmFramingError::NotPciSig { .. })),
            (7, 0x86, |e| matches!(e, SpdmFramingError::NotPciSig { .. })),
        ];
        for (index, value, expected) in cases {
            let mut wire = message();
            wire[index] = value;
            let error = SpdmVendorMessage::decode(&wire, Direction::Request).unwrap_err();
            assert!(expected(&error), "byte {index}: {error:?}");
        }
    }

    #[test]
    fn payload_length_must_match_and_include_a_protocol_id() {
        let wire = message();
        assert!(matches!(
            SpdmVendorMessage::decode(&wire[..wire.len() - 1], Direction::Request),
            Err(SpdmFramingError::LengthMismatch { .. })
        ));
        let mut empty = wire[..VENDOR_DEFINED_HEADER_SIZE].to_vec();
        empty[9] = 0;
        assert_eq!(
            SpdmVendorMessage::decode(&empty, Direction::Request),
            Err(SpdmFramingError::MissingProtocolId)
        );
        assert_eq!(
            SpdmVendorMessage::decode(&wire[..5], Direction::Request),
            Err(SpdmFramingError::Truncated(5))
        );
    }

    #[test]
    fn doe_padding_is_stripped_only_if_short_and_zero() {
        let wire = message(); // 14 bytes: DOE pads it with two zeros
        let mut padded = wire.clone();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(strip_doe_padding(&padded), Ok(&wire[..]));
        assert_eq!(strip_doe_padding(&wire), Ok(&wire[..]));
        let mut nonzero = wire.clone();
        nonzero.extend_from_slice(&[0, 1]);
        assert!(strip_doe_padding(&nonzero).is_err());
        let mut long = wire.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(strip_doe_padding(&long).is_err());
        assert!(strip_doe_padding(&wire[..wire.len() - 1]).is_err());
    }

    #[test]
    fn ide_km_payload_is_not_tdisp() {
        let mut wire = message();
        wire[VENDOR_DEFINED_HEADER_SIZE] = PciProtocolId::IDE_KM.0;
        assert_eq!(
            decode_tdisp::<crate::pcie::TdispRequest>(&wire, Direction::Request),
            Err(SpdmFramingError::NotTdisp(0))
        );
    }

    #[test]
    fn oversized_payload_is_refused() {
        let payload = vec![0; MAX_VENDOR_PAYLOAD];
        let mut out = Vec::new();
        let result = SpdmVendorMessage {
            spdm_version: SPDM_VERSION_1_2,
            direction: Direction::Response,
            protocol_id: PciProtocolId::TDISP,
            payload: &payload,
        }
        .encode(&mut out);
        assert_eq!(
            result,
            Err(SpdmFramingError::PayloadTooLarge(MAX_VENDOR_PAYLOAD + 1))
        );
        assert!(out.is_empty());
    }
}
