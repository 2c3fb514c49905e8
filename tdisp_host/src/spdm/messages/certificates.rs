//! The device's identity: GET_DIGESTS/DIGESTS and GET_CERTIFICATE/CERTIFICATE.

use super::*;

/// DIGESTS response: one certificate-chain hash per populated slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Bit n set: slot n holds a chain.
    pub slot_mask: u8,
    /// The digests, in slot order.
    pub digests: Vec<[u8; HASH_SIZE]>,
}

impl Digests {
    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Header::with_params(SPDM_VERSION_1_2, SpdmCode::DIGESTS, 0, self.slot_mask)
            .as_bytes()
            .to_vec();
        for digest in &self.digests {
            out.extend_from_slice(digest);
        }
        out
    }

    /// Decodes and validates the response: one digest per bit of the slot mask.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, SpdmCode::DIGESTS)?;
        if header.param2 == 0 {
            return Err(invalid("SlotMask", 0u8));
        }
        let digests = (0..header.param2.count_ones())
            .map(|_| reader.array::<HASH_SIZE>())
            .collect::<Result<Vec<_>, _>>()?;
        reader.finish()?;
        Ok(Self {
            slot_mask: header.param2,
            digests,
        })
    }
}

/// GET_CERTIFICATE request: read `length` bytes of slot `slot`'s chain from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetCertificate {
    /// Slot number (0..=7).
    pub slot: u8,
    /// Offset in the chain.
    pub offset: u16,
    /// Bytes wanted.
    pub length: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct GetCertificateWire {
    header: Header,
    offset: U16,
    length: U16,
}
const _: () = assert!(size_of::<GetCertificateWire>() == 8);

impl GetCertificate {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        GetCertificateWire {
            header: Header::with_params(SPDM_VERSION_1_2, SpdmCode::GET_CERTIFICATE, self.slot, 0),
            offset: self.offset.into(),
            length: self.length.into(),
        }
        .as_bytes()
        .to_vec()
    }

    /// Decodes and validates the request.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<GetCertificateWire>()?;
        reader.finish()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::GET_CERTIFICATE,
        )?;
        if wire.header.param1 > 7 {
            return Err(invalid("SlotID", wire.header.param1));
        }
        Ok(Self {
            slot: wire.header.param1,
            offset: wire.offset.get(),
            length: wire.length.get(),
        })
    }
}

/// CERTIFICATE response: one portion of a chain and how much remains after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Slot number.
    pub slot: u8,
    /// Bytes of the chain after this portion.
    pub remainder_length: u16,
    /// The portion.
    pub portion: Vec<u8>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CertificateWire {
    header: Header,
    portion_length: U16,
    remainder_length: U16,
}
const _: () = assert!(size_of::<CertificateWire>() == 8);

impl Certificate {
    /// Encodes the response. The portion must fit the 16-bit length (the responder bounds it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = CertificateWire {
            header: Header::with_params(SPDM_VERSION_1_2, SpdmCode::CERTIFICATE, self.slot, 0),
            portion_length: u16::try_from(self.portion.len()).unwrap_or(u16::MAX).into(),
            remainder_length: self.remainder_length.into(),
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.portion);
        out
    }

    /// Decodes and validates the response.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<CertificateWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::CERTIFICATE,
        )?;
        let portion = reader.take(wire.portion_length.get().into())?.to_vec();
        reader.finish()?;
        Ok(Self {
            slot: wire.header.param1 & 0x0f,
            remainder_length: wire.remainder_length.get(),
            portion,
        })
    }
}

/// GET_MEASUREMENTS operation value "all measurement blocks".
pub const MEASUREMENT_OPERATION_ALL: u8 = 0xff;
/// GET_MEASUREMENTS attribute bit: the response must be signed.
pub const MEASUREMENT_ATTR_SIGNATURE: u8 = 1;
