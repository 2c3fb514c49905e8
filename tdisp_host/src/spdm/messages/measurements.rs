//! GET_MEASUREMENTS/MEASUREMENTS and the measurement record's blocks.
//!
//! The MEASUREMENTS layout belongs to `tdisp_proto::evidence::measurements`, whose parser the
//! guest's verifier runs on the same bytes; this module wraps it in the owned message type,
//! checks the signature that follows, and maps its errors to [`CodecError`].

use super::*;
use tdisp_proto::evidence::measurements::Block;
use tdisp_proto::evidence::measurements::MeasurementsError;
use tdisp_proto::evidence::measurements::MeasurementsHeader;
use tdisp_proto::evidence::measurements::MeasurementsResponse;
use tdisp_proto::evidence::measurements::parse_record;

/// GET_MEASUREMENTS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetMeasurements {
    /// The operation: 0 count, 1..=0xFE one index, 0xFF all.
    pub operation: u8,
    /// With a signature: the requester's nonce and the slot whose key signs.
    pub signed: Option<([u8; NONCE_SIZE], u8)>,
}

impl GetMeasurements {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let attributes = if self.signed.is_some() {
            MEASUREMENT_ATTR_SIGNATURE
        } else {
            0
        };
        let mut out = Header::with_params(
            SPDM_VERSION_1_2,
            SpdmCode::GET_MEASUREMENTS,
            attributes,
            self.operation,
        )
        .as_bytes()
        .to_vec();
        if let Some((nonce, slot)) = self.signed {
            out.extend_from_slice(&nonce);
            out.push(slot);
        }
        out
    }

    /// Decodes and validates the request.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, SpdmCode::GET_MEASUREMENTS)?;
        if header.param1 & !MEASUREMENT_ATTR_SIGNATURE != 0 {
            return Err(invalid("Param1 (attributes)", header.param1));
        }
        let signed = if header.param1 & MEASUREMENT_ATTR_SIGNATURE != 0 {
            let nonce = reader.array::<NONCE_SIZE>()?;
            let [slot] = reader.array::<1>()?;
            if slot > 7 {
                return Err(invalid("SlotIDParam", slot));
            }
            Some((nonce, slot))
        } else {
            None
        };
        reader.finish()?;
        Ok(Self {
            operation: header.param2,
            signed,
        })
    }
}

/// MEASUREMENTS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurements {
    /// Param1: the number of measurement indices (answer to operation 0), else 0.
    pub total_indices: u8,
    /// Param2: slot id of the signing key (bits 3:0) and content-changed bits (5:4).
    pub param2: u8,
    /// NumberOfBlocks.
    pub number_of_blocks: u8,
    /// The measurement record (concatenated blocks).
    pub record: Vec<u8>,
    /// The responder's nonce.
    pub nonce: [u8; NONCE_SIZE],
    /// Opaque data.
    pub opaque: Vec<u8>,
    /// The signature, when the request asked for one.
    pub signature: Option<[u8; SIGNATURE_SIZE]>,
}

pub use tdisp_proto::evidence::measurements::MAX_MEASUREMENT_RECORD;

impl Measurements {
    /// Encodes the response up to (excluding) the signature: the bytes the signature covers.
    pub fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = MeasurementsHeader::new(
            self.total_indices,
            self.param2,
            self.number_of_blocks,
            self.record.len(),
        )
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.record);
        out.extend_from_slice(&self.nonce);
        put_opaque(&mut out, &self.opaque);
        out
    }

    /// Encodes the whole response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_unsigned();
        if let Some(signature) = &self.signature {
            out.extend_from_slice(signature);
        }
        out
    }

    /// Decodes and validates a response; `signed` says whether the request asked for a
    /// signature. Returns the message and the length of its signed part.
    pub fn decode(bytes: &[u8], signed: bool) -> Result<(Self, usize), CodecError> {
        let response = MeasurementsResponse::parse(bytes).map_err(measurements_error)?;
        let signed_length = response.signed_length;
        let mut reader = Reader::new(bytes);
        reader.take(signed_length)?;
        let signature = if signed {
            Some(reader.array::<SIGNATURE_SIZE>()?)
        } else {
            None
        };
        reader.finish()?;
        Ok((
            Self {
                total_indices: response.header.param1,
                param2: response.header.param2,
                number_of_blocks: response.header.number_of_blocks,
                record: response.record.to_vec(),
                nonce: response.nonce,
                opaque: response.opaque.to_vec(),
                signature,
            },
            signed_length,
        ))
    }
}

/// One measurement block in the DMTF format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Index (1..=0xFE).
    pub index: u8,
    /// DMTFSpecMeasurementValueType.
    pub value_type: u8,
    /// The value (a digest or raw bit stream).
    pub value: Vec<u8>,
}

impl MeasurementBlock {
    /// Appends the block (MeasurementSpecification DMTF) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Block {
            index: self.index,
            value_type: self.value_type,
            value: &self.value,
        }
        .encode(out);
    }

    /// Splits a measurement record into its blocks.
    pub fn parse_record(record: &[u8]) -> Result<Vec<Self>, CodecError> {
        let blocks = parse_record(record).map_err(measurements_error)?;
        Ok(blocks
            .into_iter()
            .map(|block| Self {
                index: block.index,
                value_type: block.value_type,
                value: block.value.to_vec(),
            })
            .collect())
    }
}

/// The codec's errors for the shared parser's: the same variants this codec reports for every
/// other message.
fn measurements_error(error: MeasurementsError) -> CodecError {
    match error {
        MeasurementsError::Truncated {
            offset,
            needed,
            have,
            ..
        } => CodecError::Truncated {
            offset,
            needed,
            have,
        },
        MeasurementsError::Code(found) => CodecError::UnexpectedCode {
            found,
            expected: SpdmCode::MEASUREMENTS.0,
        },
        MeasurementsError::Version(found) => CodecError::UnexpectedVersion {
            found,
            expected: SPDM_VERSION_1_2,
        },
        MeasurementsError::NotDmtf { spec, .. } => invalid("MeasurementSpecification", spec),
        MeasurementsError::BlockTrailing { extra, .. } => CodecError::TrailingBytes(extra),
        MeasurementsError::BlockCount { declared, .. } => invalid("NumberOfBlocks", declared),
    }
}
