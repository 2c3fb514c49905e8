//! The SPDM 1.2 MEASUREMENTS response (DSP0274 1.2, layout as libspdm's `spdm.h`) and the DMTF
//! measurement blocks of its record.
//!
//! This is the one parser of these bytes: the host's SPDM requester decodes a device's answer
//! with it, and the guest's verifier walks the answer a host served inside session evidence
//! ([`super::bundle`]). Each caller decides only what follows the opaque data (the host: the
//! signature it asked for; the verifier: nothing).
//!
//! Layout:
//!
//! | field | size |
//! |---|---|
//! | SPDMVersion (0x12), code (0x60), Param1, Param2 | 4 |
//! | NumberOfBlocks | 1 |
//! | MeasurementRecordLength, u24 LE | 3 |
//! | measurement record | MeasurementRecordLength |
//! | responder nonce | 32 |
//! | OpaqueDataLength, u16 LE | 2 |
//! | opaque data | OpaqueDataLength |
//! | signature, when the request asked for one | (the caller's) |
//!
//! The record is a run of blocks `Index u8 | MeasurementSpecification u8 (DMTF) |
//! MeasurementSize u16 LE | measurement`, each DMTF measurement being
//! `DMTFSpecMeasurementValueType u8 | DMTFSpecMeasurementValueSize u16 LE | value`, with nothing
//! after the value.

use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// SPDM 1.2's SPDMVersion byte.
pub const SPDM_VERSION_1_2: u8 = 0x12;
/// The MEASUREMENTS response code.
pub const MEASUREMENTS_CODE: u8 = 0x60;
/// MeasurementSpecification bit of the DMTF format.
pub const MEAS_SPEC_DMTF: u8 = 0x01;
/// Size of the responder's nonce.
pub const MEASUREMENTS_NONCE_SIZE: usize = 32;
/// Largest measurement record the 24-bit length field can describe.
pub const MAX_MEASUREMENT_RECORD: usize = (1 << 24) - 1;

/// The fixed start of a MEASUREMENTS response.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MeasurementsHeader {
    /// SPDMVersion.
    pub version: u8,
    /// Response code.
    pub code: u8,
    /// Param1: the number of measurement indices (answer to operation 0), else 0.
    pub param1: u8,
    /// Param2: slot id of the signing key (bits 3:0) and content-changed bits (5:4).
    pub param2: u8,
    /// NumberOfBlocks.
    pub number_of_blocks: u8,
    /// MeasurementRecordLength, u24 LE.
    pub record_length: [u8; 3],
}
const _: () = assert!(size_of::<MeasurementsHeader>() == 8);

impl MeasurementsHeader {
    /// MeasurementRecordLength.
    pub fn record_length(&self) -> usize {
        let [a, b, c] = self.record_length;
        // A u24 fits every usize this crate builds for; saturating keeps 16-bit targets safe.
        usize::try_from(u32::from_le_bytes([a, b, c, 0])).unwrap_or(usize::MAX)
    }

    /// An SPDM 1.2 MEASUREMENTS header; `record_length` is clamped to
    /// [`MAX_MEASUREMENT_RECORD`].
    pub fn new(param1: u8, param2: u8, number_of_blocks: u8, record_length: usize) -> Self {
        let length = u32::try_from(record_length.min(MAX_MEASUREMENT_RECORD))
            .unwrap_or(0)
            .to_le_bytes();
        Self {
            version: SPDM_VERSION_1_2,
            code: MEASUREMENTS_CODE,
            param1,
            param2,
            number_of_blocks,
            record_length: [length[0], length[1], length[2]],
        }
    }
}

/// Why a MEASUREMENTS response or a measurement record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MeasurementsError {
    /// A field runs past the bytes that hold it (the message, the record or a block).
    #[error("{what}: need {needed} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Which field, as a phrase.
        what: &'static str,
        /// Offset of the field in the bytes that hold it.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left from the offset.
        have: usize,
    },
    /// The response code is not MEASUREMENTS.
    #[error("SPDM code {0:#04x} is not MEASUREMENTS")]
    Code(u8),
    /// The SPDMVersion is not 1.2.
    #[error("SPDM version {0:#04x} is not 1.2")]
    Version(u8),
    /// A block is in another measurement specification than DMTF's.
    #[error("block {index:#04x} is in measurement specification {spec:#04x}, not DMTF")]
    NotDmtf {
        /// The block's index.
        index: u8,
        /// Its MeasurementSpecification.
        spec: u8,
    },
    /// Bytes follow the value inside a block.
    #[error("{extra} bytes follow the value of block {index:#04x}")]
    BlockTrailing {
        /// The block's index.
        index: u8,
        /// How many.
        extra: usize,
    },
    /// NumberOfBlocks disagrees with the blocks the record holds.
    #[error("NumberOfBlocks {declared} disagrees with the {found} blocks of the record")]
    BlockCount {
        /// NumberOfBlocks.
        declared: u8,
        /// Blocks in the record.
        found: usize,
    },
}

impl MeasurementsError {
    /// A short fixed phrase for the error, for error types that carry a `&'static str`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { what, .. } => what,
            Self::Code(_) | Self::Version(_) => "not an SPDM 1.2 MEASUREMENTS response",
            Self::NotDmtf { .. } => "block is not in the DMTF format",
            Self::BlockTrailing { .. } => "bytes follow a block's value",
            Self::BlockCount { .. } => "NumberOfBlocks disagrees with the record",
        }
    }
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    /// Index.
    pub index: u8,
    /// DMTFSpecMeasurementValueType.
    pub value_type: u8,
    /// The value.
    pub value: &'a [u8],
}

impl Block<'_> {
    /// Appends the block (MeasurementSpecification DMTF) to `out`. A value longer than the
    /// u16 size field can describe is cut to what it describes, so the block stays parseable.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let value_size = u16::try_from(self.value.len()).unwrap_or(u16::MAX);
        out.push(self.index);
        out.push(MEAS_SPEC_DMTF);
        out.extend_from_slice(&value_size.saturating_add(3).to_le_bytes());
        out.push(self.value_type);
        out.extend_from_slice(&value_size.to_le_bytes());
        out.extend_from_slice(self.value.get(..value_size.into()).unwrap_or(self.value));
    }
}

/// A parsed MEASUREMENTS response, borrowing the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementsResponse<'a> {
    /// The fixed start.
    pub header: MeasurementsHeader,
    /// The measurement record.
    pub record: &'a [u8],
    /// The record's blocks; as many as NumberOfBlocks says.
    pub blocks: Vec<Block<'a>>,
    /// The responder's nonce.
    pub nonce: [u8; MEASUREMENTS_NONCE_SIZE],
    /// The opaque data.
    pub opaque: &'a [u8],
    /// Length of the response up to the end of the opaque data: the part a signature covers.
    pub signed_length: usize,
    /// The bytes after the opaque data, for the caller to judge (a signature or nothing).
    pub rest: &'a [u8],
}

/// A bounds-checked cursor: no length read from the input is trusted.
struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    fn take(&mut self, needed: usize, what: &'static str) -> Result<&'a [u8], MeasurementsError> {
        let rest = self.rest();
        let field = rest.get(..needed).ok_or(MeasurementsError::Truncated {
            what,
            offset: self.offset,
            needed,
            have: rest.len(),
        })?;
        self.offset += needed;
        Ok(field)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], MeasurementsError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, MeasurementsError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.offset..).unwrap_or_default()
    }
}

impl<'a> MeasurementsResponse<'a> {
    /// Parses a response: header (SPDM 1.2 MEASUREMENTS), record, its blocks against
    /// NumberOfBlocks, nonce and opaque data. What follows is returned in
    /// [`rest`](Self::rest), unjudged.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MeasurementsError> {
        let (header, _) = MeasurementsHeader::read_from_prefix(bytes).map_err(|_| {
            MeasurementsError::Truncated {
                what: "truncated header",
                offset: 0,
                needed: size_of::<MeasurementsHeader>(),
                have: bytes.len(),
            }
        })?;
        let mut cursor = Cursor {
            bytes,
            offset: size_of::<MeasurementsHeader>(),
        };
        if header.code != MEASUREMENTS_CODE {
            return Err(MeasurementsError::Code(header.code));
        }
        if header.version != SPDM_VERSION_1_2 {
            return Err(MeasurementsError::Version(header.version));
        }
        let record = cursor.take(header.record_length(), "record runs past the message")?;
        let blocks = parse_record(record)?;
        if blocks.len() != usize::from(header.number_of_blocks) {
            return Err(MeasurementsError::BlockCount {
                declared: header.number_of_blocks,
                found: blocks.len(),
            });
        }
        let nonce = cursor.array("truncated nonce")?;
        let opaque_length = cursor.u16("truncated opaque length")?;
        let opaque = cursor.take(opaque_length.into(), "opaque data runs past the message")?;
        Ok(Self {
            header,
            record,
            blocks,
            nonce,
            opaque,
            signed_length: cursor.offset,
            rest: cursor.rest(),
        })
    }
}

/// Splits a measurement record into its blocks (every block DMTF, nothing after a value).
pub fn parse_record(record: &[u8]) -> Result<Vec<Block<'_>>, MeasurementsError> {
    let mut cursor = Cursor::new(record);
    let mut blocks = Vec::new();
    while !cursor.rest().is_empty() {
        let [index, spec] = cursor.array("truncated block header")?;
        let size = cursor.u16("truncated block header")?;
        let mut body = Cursor::new(cursor.take(size.into(), "block runs past the record")?);
        if spec != MEAS_SPEC_DMTF {
            return Err(MeasurementsError::NotDmtf { index, spec });
        }
        let [value_type] = body.array("truncated DMTF value header")?;
        let value_size = body.u16("truncated DMTF value header")?;
        let value = body.take(value_size.into(), "value runs past its block")?;
        if !body.rest().is_empty() {
            return Err(MeasurementsError::BlockTrailing {
                index,
                extra: body.rest().len(),
            });
        }
        blocks.push(Block {
            index,
            value_type,
            value,
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One DMTF block (index 1, firmware digest type 0x01, 4-byte value), then a 32-byte nonce
    /// and no opaque data: the layout libspdm's `spdm_measurements_response_t` describes.
    fn golden() -> Vec<u8> {
        let block = [1, 1, 7, 0, 0x01, 4, 0, 0xde, 0xad, 0xbe, 0xef];
        let mut bytes = vec![0x12, 0x60, 0, 0x03, 1, 11, 0, 0];
        bytes.extend_from_slice(&block);
        bytes.extend_from_slice(&[0x22; 32]);
        bytes.extend_from_slice(&[0, 0]);
        bytes
    }

    fn encode(blocks: &[Block<'_>], nonce: [u8; 32], opaque: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        for block in blocks {
            block.encode(&mut record);
        }
        let count = u8::try_from(blocks.len()).unwrap();
        let mut out = MeasurementsHeader::new(0, 0, count, record.len())
            .as_bytes()
            .to_vec();
        out.extend_from_slice(&record);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&u16::try_from(opaque.len()).unwrap().to_le_bytes());
        out.extend_from_slice(opaque);
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn golden_response_parses_into_its_fields() {
        let bytes = golden();
        let response = MeasurementsResponse::parse(&bytes).unwrap();
        assert_eq!(response.header.param2, 0x03);
        assert_eq!(
            response.blocks,
            [Block {
                index: 1,
                value_type: 0x01,
                value: &[0xde, 0xad, 0xbe, 0xef]
            }]
        );
        assert_eq!(response.nonce, [0x22; 32]);
        assert_eq!(response.signed_length, bytes.len());
        assert!(response.rest.is_empty());
    }

    #[test]
    fn each_malformation_is_refused_by_name() {
        type Edit = dyn Fn(&mut Vec<u8>);
        let cases: [(&Edit, MeasurementsError); 6] = [
            (&|b| b[1] = 0x61, MeasurementsError::Code(0x61)),
            (&|b| b[0] = 0x11, MeasurementsError::Version(0x11)),
            (
                &|b| b[4] = 2,
                MeasurementsError::BlockCount {
                    declared: 2,
                    found: 1,
                },
            ),
            (
                &|b| b[9] = 2,
                MeasurementsError::NotDmtf { index: 1, spec: 2 },
            ),
            // The block claims one byte more than its value holds: that byte is the nonce's.
            (
                &|b| {
                    b[10] = 8;
                    b[5] = 12;
                },
                MeasurementsError::BlockTrailing { index: 1, extra: 1 },
            ),
            (
                &|b| b.truncate(8 + 11 + 31),
                MeasurementsError::Truncated {
                    what: "truncated nonce",
                    offset: 19,
                    needed: 32,
                    have: 31,
                },
            ),
        ];
        for (edit, expected) in cases {
            let mut bytes = golden();
            edit(&mut bytes);
            assert_eq!(MeasurementsResponse::parse(&bytes), Err(expected));
        }
    }

    #[test]
    fn bytes_after_the_opaque_data_are_left_to_the_caller() {
        let mut bytes = golden();
        let signed = bytes.len();
        bytes.extend_from_slice(&[0x33; 96]);
        let response = MeasurementsResponse::parse(&bytes).unwrap();
        assert_eq!(response.signed_length, signed);
        assert_eq!(response.rest, &[0x33; 96][..]);
    }

    proptest! {
        #[test]
        fn encoded_responses_parse_back(
            values in prop::collection::vec(
                (any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)),
                0..6,
            ),
            nonce in any::<[u8; 32]>(),
            opaque in prop::collection::vec(any::<u8>(), 0..16),
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let blocks: Vec<Block<'_>> = values
                .iter()
                .map(|(index, value_type, value)| Block { index: *index, value_type: *value_type, value })
                .collect();
            let bytes = encode(&blocks, nonce, &opaque, &tail);
            let response = MeasurementsResponse::parse(&bytes).unwrap();
            prop_assert_eq!(response.blocks, blocks);
            prop_assert_eq!(response.nonce, nonce);
            prop_assert_eq!(response.opaque, &opaque[..]);
            prop_assert_eq!(response.rest, &tail[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_what_parses_reencodes(
            bytes in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(response) = MeasurementsResponse::parse(&bytes) {
                let again = encode(&response.blocks, response.nonce, response.opaque, response.rest);
                // Param1 and Param2 are carried, not checked; the rest must come back byte for byte.
                prop_assert_eq!(&again[4..], &bytes[4..]);
            }
            let _ = parse_record(&bytes);
        }
    }
}
