//! GET_MEASUREMENTS/MEASUREMENTS and the measurement record's blocks.

use super::*;

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

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct MeasurementsWire {
    header: Header,
    number_of_blocks: u8,
    record_length: [u8; 3],
}
const _: () = assert!(size_of::<MeasurementsWire>() == 8);

/// Largest measurement record the 24-bit length field can describe.
pub const MAX_MEASUREMENT_RECORD: usize = (1 << 24) - 1;

impl Measurements {
    /// Encodes the response up to (excluding) the signature: the bytes the signature covers.
    pub fn encode_unsigned(&self) -> Vec<u8> {
        let length = u32::try_from(self.record.len().min(MAX_MEASUREMENT_RECORD))
            .unwrap_or(0)
            .to_le_bytes();
        let mut out = MeasurementsWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::MEASUREMENTS,
                self.total_indices,
                self.param2,
            ),
            number_of_blocks: self.number_of_blocks,
            record_length: [length[0], length[1], length[2]],
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.record);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(
            &u16::try_from(self.opaque.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.opaque);
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
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<MeasurementsWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::MEASUREMENTS,
        )?;
        let [a, b, c] = wire.record_length;
        let record_length = u32::from_le_bytes([a, b, c, 0]) as usize;
        let record = reader.take(record_length)?.to_vec();
        validate_measurement_record(&record, wire.number_of_blocks)?;
        let nonce = reader.array::<NONCE_SIZE>()?;
        let opaque_length = reader.u16()?;
        let opaque = reader.take(opaque_length.into())?.to_vec();
        let signed_length = reader.offset();
        let signature = if signed {
            Some(reader.array::<SIGNATURE_SIZE>()?)
        } else {
            None
        };
        reader.finish()?;
        Ok((
            Self {
                total_indices: wire.header.param1,
                param2: wire.header.param2,
                number_of_blocks: wire.number_of_blocks,
                record,
                nonce,
                opaque,
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
        let value_size = u16::try_from(self.value.len()).unwrap_or(u16::MAX);
        out.push(self.index);
        out.push(MEAS_SPEC_DMTF);
        out.extend_from_slice(&(value_size.saturating_add(3)).to_le_bytes());
        out.push(self.value_type);
        out.extend_from_slice(&value_size.to_le_bytes());
        out.extend_from_slice(&self.value[..value_size.into()]);
    }

    /// Splits a measurement record into its blocks.
    pub fn parse_record(record: &[u8]) -> Result<Vec<Self>, CodecError> {
        let mut reader = Reader::new(record);
        let mut blocks = Vec::new();
        while reader.offset() < record.len() {
            let [index, spec] = reader.array::<2>()?;
            let size = reader.u16()?;
            let mut body = Reader::new(reader.take(size.into())?);
            if spec != MEAS_SPEC_DMTF {
                return Err(invalid("MeasurementSpecification", spec));
            }
            let [value_type] = body.array::<1>()?;
            let value_size = body.u16()?;
            let value = body.take(value_size.into())?.to_vec();
            body.finish()?;
            blocks.push(Self {
                index,
                value_type,
                value,
            });
        }
        Ok(blocks)
    }
}

fn validate_measurement_record(record: &[u8], blocks: u8) -> Result<(), CodecError> {
    let parsed = MeasurementBlock::parse_record(record)?;
    if parsed.len() != usize::from(blocks) {
        return Err(invalid("NumberOfBlocks", blocks));
    }
    Ok(())
}
