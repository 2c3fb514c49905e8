//! SPDM 1.2 message codecs (DSP0274 1.2, layouts as DMTF's libspdm `spdm.h` lays them out).
//!
//! Each message has a typed form with `encode` (to bytes) and `decode` (parse the bytes, then
//! validate every field). Fixed parts are `zerocopy` structs with their size asserted beside
//! them; variable parts are read through a bounds-checked cursor, so no length from the wire is
//! trusted. Sizes that depend on the negotiated algorithms use this implementation's only suite
//! (SHA-384, ECDSA P-384, secp384r1): [`HASH_SIZE`], [`SIGNATURE_SIZE`], [`DHE_SIZE`].

use super::codes::*;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;

/// Why an SPDM message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The message ends before a field it needs.
    #[error("SPDM message truncated: need {needed} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes available from the offset.
        have: usize,
    },
    /// Bytes follow the end of the message.
    #[error("{0} trailing bytes after the SPDM message")]
    TrailingBytes(usize),
    /// The code byte is not the one expected.
    #[error("SPDM code {found:#04x}, expected {expected:#04x}")]
    UnexpectedCode {
        /// Code found.
        found: u8,
        /// Code expected.
        expected: u8,
    },
    /// The SPDMVersion byte is not the one expected.
    #[error("SPDM version {found:#04x}, expected {expected:#04x}")]
    UnexpectedVersion {
        /// Version found.
        found: u8,
        /// Version expected.
        expected: u8,
    },
    /// A field holds a value the protocol forbids.
    #[error("invalid SPDM field {field}: {value:#x}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// The 4-byte header of every SPDM message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// SPDMVersion (major in the high nibble).
    pub version: u8,
    /// Request or response code.
    pub code: SpdmCode,
    /// Param1.
    pub param1: u8,
    /// Param2.
    pub param2: u8,
}
const _: () = assert!(size_of::<Header>() == 4);

impl Header {
    /// A header of `version` and `code` with both params zero.
    pub fn new(version: u8, code: SpdmCode) -> Self {
        Self::with_params(version, code, 0, 0)
    }

    /// A header with params.
    pub fn with_params(version: u8, code: SpdmCode, param1: u8, param2: u8) -> Self {
        Self {
            version,
            code,
            param1,
            param2,
        }
    }

    /// Reads the header of any SPDM message, checking only that it is there.
    pub fn peek(bytes: &[u8]) -> Result<Self, CodecError> {
        Reader::new(bytes).fixed::<Header>()
    }
}

/// A bounds-checked cursor over an untrusted message.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    pub(crate) fn take(&mut self, needed: usize) -> Result<&'a [u8], CodecError> {
        let rest = &self.bytes[self.offset..];
        if rest.len() < needed {
            return Err(CodecError::Truncated {
                offset: self.offset,
                needed,
                have: rest.len(),
            });
        }
        let (field, _) = rest.split_at(needed);
        self.offset += needed;
        Ok(field)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn fixed<T: FromBytes + KnownLayout + Immutable>(
        &mut self,
    ) -> Result<T, CodecError> {
        let field = self.take(size_of::<T>())?;
        T::read_from_bytes(field).map_err(|_| CodecError::Truncated {
            offset: self.offset,
            needed: size_of::<T>(),
            have: field.len(),
        })
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.offset..];
        self.offset = self.bytes.len();
        rest
    }

    pub(crate) fn finish(self) -> Result<(), CodecError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            extra => Err(CodecError::TrailingBytes(extra)),
        }
    }
}

fn expect_header(
    reader: &mut Reader<'_>,
    version: u8,
    code: SpdmCode,
) -> Result<Header, CodecError> {
    let header = reader.fixed::<Header>()?;
    if header.code != code {
        return Err(CodecError::UnexpectedCode {
            found: header.code.0,
            expected: code.0,
        });
    }
    if header.version != version {
        return Err(CodecError::UnexpectedVersion {
            found: header.version,
            expected: version,
        });
    }
    Ok(header)
}

fn invalid(field: &'static str, value: impl Into<u64>) -> CodecError {
    CodecError::InvalidField {
        field,
        value: value.into(),
    }
}

/// A message that is only its header (GET_VERSION, GET_DIGESTS, FINISH_RSP, END_SESSION,
/// END_SESSION_ACK, RESPOND_IF_READY): decoded with the code and version it must have.
pub fn decode_header_only(bytes: &[u8], version: u8, code: SpdmCode) -> Result<Header, CodecError> {
    let mut reader = Reader::new(bytes);
    let header = expect_header(&mut reader, version, code)?;
    reader.finish()?;
    Ok(header)
}

/// VERSION response: the versions the responder supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Version entries (major 15:12, minor 11:8, update 7:4, alpha 3:0).
    pub entries: Vec<u16>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct VersionWire {
    header: Header,
    reserved: u8,
    count: u8,
}
const _: () = assert!(size_of::<VersionWire>() == 6);

impl Version {
    /// Encodes the response (SPDMVersion 1.0, as DSP0274 requires).
    pub fn encode(&self) -> Vec<u8> {
        let count = u8::try_from(self.entries.len()).unwrap_or(u8::MAX);
        let wire = VersionWire {
            header: Header::new(SPDM_VERSION_1_0, SpdmCode::VERSION),
            reserved: 0,
            count,
        };
        let mut out = wire.as_bytes().to_vec();
        for entry in self.entries.iter().take(count.into()) {
            out.extend_from_slice(&entry.to_le_bytes());
        }
        out
    }

    /// Decodes and validates a VERSION response.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<VersionWire>()?;
        let mut header_reader = Reader::new(wire.header.as_bytes());
        expect_header(&mut header_reader, SPDM_VERSION_1_0, SpdmCode::VERSION)?;
        if wire.count == 0 {
            return Err(invalid("VersionNumberEntryCount", 0u8));
        }
        let entries = (0..wire.count)
            .map(|_| reader.u16())
            .collect::<Result<Vec<_>, _>>()?;
        reader.finish()?;
        Ok(Self { entries })
    }
}

/// GET_CAPABILITIES request or CAPABILITIES response (same 20-byte layout in SPDM 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// SPDMVersion.
    pub version: u8,
    /// CTExponent: the crypto timeout is 2^ct_exponent microseconds.
    pub ct_exponent: u8,
    /// Capability flags.
    pub flags: CapabilityFlags,
    /// Largest message the sender can receive in one transfer.
    pub data_transfer_size: u32,
    /// Largest message the sender can assemble.
    pub max_spdm_msg_size: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CapabilitiesWire {
    header: Header,
    reserved: u8,
    ct_exponent: u8,
    reserved2: U16,
    flags: U32,
    data_transfer_size: U32,
    max_spdm_msg_size: U32,
}
const _: () = assert!(size_of::<CapabilitiesWire>() == 20);

/// The smallest DataTransferSize SPDM 1.2 allows.
pub const MIN_DATA_TRANSFER_SIZE: u32 = 42;

impl Capabilities {
    /// Encodes as GET_CAPABILITIES (`code` = [`SpdmCode::GET_CAPABILITIES`]) or CAPABILITIES.
    pub fn encode(&self, code: SpdmCode) -> Vec<u8> {
        CapabilitiesWire {
            header: Header::new(self.version, code),
            reserved: 0,
            ct_exponent: self.ct_exponent,
            reserved2: 0.into(),
            flags: self.flags.into_bits().into(),
            data_transfer_size: self.data_transfer_size.into(),
            max_spdm_msg_size: self.max_spdm_msg_size.into(),
        }
        .as_bytes()
        .to_vec()
    }

    /// Decodes and validates a GET_CAPABILITIES or CAPABILITIES message of `version`.
    pub fn decode(bytes: &[u8], version: u8, code: SpdmCode) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<CapabilitiesWire>()?;
        reader.finish()?;
        expect_header(&mut Reader::new(wire.header.as_bytes()), version, code)?;
        let data_transfer_size = wire.data_transfer_size.get();
        let max_spdm_msg_size = wire.max_spdm_msg_size.get();
        if data_transfer_size < MIN_DATA_TRANSFER_SIZE {
            return Err(invalid("DataTransferSize", data_transfer_size));
        }
        if max_spdm_msg_size < data_transfer_size {
            return Err(invalid("MaxSPDMmsgSize", max_spdm_msg_size));
        }
        Ok(Self {
            version: wire.header.version,
            ct_exponent: wire.ct_exponent,
            flags: CapabilityFlags::from_bits(wire.flags.get()),
            data_transfer_size,
            max_spdm_msg_size,
        })
    }
}

/// One algorithm structure of NEGOTIATE_ALGORITHMS / ALGORITHMS (no external algorithms).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AlgStruct {
    /// Which algorithm family.
    pub alg_type: AlgType,
    /// Bits 7:4: bytes of the fixed bitmap (2); bits 3:0: external algorithm count (0).
    pub alg_count: u8,
    /// The bitmap of algorithms offered or the one selected.
    pub alg_supported: U16,
}
const _: () = assert!(size_of::<AlgStruct>() == 4);

/// AlgCount of every algorithm structure: a 2-byte bitmap and no external algorithms.
const ALG_COUNT_FIXED_2: u8 = 0x20;

impl AlgStruct {
    /// A structure of `alg_type` offering or selecting `bits`.
    pub fn new(alg_type: AlgType, bits: u16) -> Self {
        Self {
            alg_type,
            alg_count: ALG_COUNT_FIXED_2,
            alg_supported: bits.into(),
        }
    }
}

/// The algorithm families negotiated besides hash and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet {
    /// DHE group bits.
    pub dhe: u16,
    /// AEAD bits.
    pub aead: u16,
    /// Requester asymmetric algorithm bits.
    pub req_base_asym: u16,
    /// Key schedule bits.
    pub key_schedule: u16,
}

impl AlgSet {
    fn structs(&self) -> Vec<AlgStruct> {
        [
            (AlgType::DHE, self.dhe),
            (AlgType::AEAD, self.aead),
            (AlgType::REQ_BASE_ASYM_ALG, self.req_base_asym),
            (AlgType::KEY_SCHEDULE, self.key_schedule),
        ]
        .into_iter()
        .map(|(t, bits)| AlgStruct::new(t, bits))
        .collect()
    }

    fn read(reader: &mut Reader<'_>, count: u8) -> Result<Self, CodecError> {
        let mut set = Self::default();
        let mut previous: Option<u8> = None;
        for _ in 0..count {
            let entry = reader.fixed::<AlgStruct>()?;
            if entry.alg_count != ALG_COUNT_FIXED_2 {
                return Err(invalid("AlgCount", entry.alg_count));
            }
            // Structures come in increasing type order, each at most once.
            if previous.is_some_and(|p| p >= entry.alg_type.0) {
                return Err(invalid("AlgType order", entry.alg_type.0));
            }
            previous = Some(entry.alg_type.0);
            let bits = entry.alg_supported.get();
            match entry.alg_type {
                AlgType::DHE => set.dhe = bits,
                AlgType::AEAD => set.aead = bits,
                AlgType::REQ_BASE_ASYM_ALG => set.req_base_asym = bits,
                AlgType::KEY_SCHEDULE => set.key_schedule = bits,
                other => return Err(invalid("AlgType", other.0)),
            }
        }
        Ok(set)
    }
}

/// NEGOTIATE_ALGORITHMS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateAlgorithms {
    /// MeasurementSpecification bits.
    pub measurement_spec: u8,
    /// OtherParamsSupport bits.
    pub other_params: u8,
    /// BaseAsymAlgo bits.
    pub base_asym: u32,
    /// BaseHashAlgo bits.
    pub base_hash: u32,
    /// DHE, AEAD, requester asymmetric and key schedule bits.
    pub algs: AlgSet,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NegotiateAlgorithmsWire {
    header: Header,
    length: U16,
    measurement_spec: u8,
    other_params: u8,
    base_asym: U32,
    base_hash: U32,
    reserved: [u8; 12],
    ext_asym_count: u8,
    ext_hash_count: u8,
    reserved2: [u8; 2],
}
const _: () = assert!(size_of::<NegotiateAlgorithmsWire>() == 32);

const ALG_STRUCT_COUNT: u8 = 4;

impl NegotiateAlgorithms {
    /// Encodes the request (SPDM 1.2).
    pub fn encode(&self) -> Vec<u8> {
        let structs = self.algs.structs();
        let length = size_of::<NegotiateAlgorithmsWire>() + structs.len() * size_of::<AlgStruct>();
        let mut out = NegotiateAlgorithmsWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::NEGOTIATE_ALGORITHMS,
                ALG_STRUCT_COUNT,
                0,
            ),
            length: u16::try_from(length).unwrap_or(u16::MAX).into(),
            measurement_spec: self.measurement_spec,
            other_params: self.other_params,
            base_asym: self.base_asym.into(),
            base_hash: self.base_hash.into(),
            reserved: [0; 12],
            ext_asym_count: 0,
            ext_hash_count: 0,
            reserved2: [0; 2],
        }
        .as_bytes()
        .to_vec();
        for entry in structs {
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    /// Decodes and validates the request. External algorithms are refused (none supported).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<NegotiateAlgorithmsWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::NEGOTIATE_ALGORITHMS,
        )?;
        if usize::from(wire.length.get()) != bytes.len() {
            return Err(invalid("Length", wire.length.get()));
        }
        if wire.ext_asym_count != 0 || wire.ext_hash_count != 0 {
            return Err(invalid("ExtAsymCount/ExtHashCount", wire.ext_asym_count));
        }
        if wire.header.param1 > ALG_STRUCT_COUNT {
            return Err(invalid("Param1 (AlgStruct count)", wire.header.param1));
        }
        let algs = AlgSet::read(&mut reader, wire.header.param1)?;
        reader.finish()?;
        Ok(Self {
            measurement_spec: wire.measurement_spec,
            other_params: wire.other_params,
            base_asym: wire.base_asym.get(),
            base_hash: wire.base_hash.get(),
            algs,
        })
    }
}

/// ALGORITHMS response: one selected bit per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Algorithms {
    /// MeasurementSpecificationSel.
    pub measurement_spec: u8,
    /// OtherParamsSelection.
    pub other_params: u8,
    /// MeasurementHashAlgo.
    pub measurement_hash: u32,
    /// BaseAsymSel.
    pub base_asym: u32,
    /// BaseHashSel.
    pub base_hash: u32,
    /// Selected DHE, AEAD, requester asymmetric and key schedule.
    pub algs: AlgSet,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct AlgorithmsWire {
    header: Header,
    length: U16,
    measurement_spec: u8,
    other_params: u8,
    measurement_hash: U32,
    base_asym: U32,
    base_hash: U32,
    reserved: [u8; 12],
    ext_asym_count: u8,
    ext_hash_count: u8,
    reserved2: [u8; 2],
}
const _: () = assert!(size_of::<AlgorithmsWire>() == 36);

impl Algorithms {
    /// Encodes the response (SPDM 1.2).
    pub fn encode(&self) -> Vec<u8> {
        let structs = self.algs.structs();
        let length = size_of::<AlgorithmsWire>() + structs.len() * size_of::<AlgStruct>();
        let mut out = AlgorithmsWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::ALGORITHMS,
                ALG_STRUCT_COUNT,
                0,
            ),
            length: u16::try_from(length).unwrap_or(u16::MAX).into(),
            measurement_spec: self.measurement_spec,
            other_params: self.other_params,
            measurement_hash: self.measurement_hash.into(),
            base_asym: self.base_asym.into(),
            base_hash: self.base_hash.into(),
            reserved: [0; 12],
            ext_asym_count: 0,
            ext_hash_count: 0,
            reserved2: [0; 2],
        }
        .as_bytes()
        .to_vec();
        for entry in structs {
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    /// Decodes and validates the response: every selection is at most one bit.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<AlgorithmsWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::ALGORITHMS,
        )?;
        if usize::from(wire.length.get()) != bytes.len() {
            return Err(invalid("Length", wire.length.get()));
        }
        if wire.ext_asym_count != 0 || wire.ext_hash_count != 0 {
            return Err(invalid(
                "ExtAsymSelCount/ExtHashSelCount",
                wire.ext_asym_count,
            ));
        }
        if wire.header.param1 > ALG_STRUCT_COUNT {
            return Err(invalid("Param1 (AlgStruct count)", wire.header.param1));
        }
        let algs = AlgSet::read(&mut reader, wire.header.param1)?;
        reader.finish()?;
        let selections = [
            ("MeasurementHashAlgo", wire.measurement_hash.get()),
            ("BaseAsymSel", wire.base_asym.get()),
            ("BaseHashSel", wire.base_hash.get()),
            ("DHE", algs.dhe.into()),
            ("AEAD", algs.aead.into()),
            ("ReqBaseAsymAlg", algs.req_base_asym.into()),
            ("KeySchedule", algs.key_schedule.into()),
        ];
        for (field, bits) in selections {
            if bits.count_ones() > 1 {
                return Err(invalid(field, bits));
            }
        }
        Ok(Self {
            measurement_spec: wire.measurement_spec,
            other_params: wire.other_params,
            measurement_hash: wire.measurement_hash.get(),
            base_asym: wire.base_asym.get(),
            base_hash: wire.base_hash.get(),
            algs,
        })
    }
}

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

/// KEY_EXCHANGE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// Param1: measurement summary hash type (0 none, 1 TCB, 0xFF all).
    pub measurement_summary_hash_type: u8,
    /// Param2: slot of the responder's certificate chain.
    pub slot: u8,
    /// ReqSessionID.
    pub req_session_id: u16,
    /// SessionPolicy.
    pub session_policy: u8,
    /// RandomData.
    pub random: [u8; NONCE_SIZE],
    /// ExchangeData: the requester's secp384r1 public key, X || Y.
    pub exchange_data: [u8; DHE_SIZE],
    /// OpaqueData.
    pub opaque: Vec<u8>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct KeyExchangeWire {
    header: Header,
    session_id: U16,
    policy_or_mut_auth: u8,
    reserved_or_slot: u8,
    random: [u8; NONCE_SIZE],
}
const _: () = assert!(size_of::<KeyExchangeWire>() == 40);

/// Measurement summary hash types of KEY_EXCHANGE param1.
const MEASUREMENT_SUMMARY_NONE: u8 = 0;

impl KeyExchange {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = KeyExchangeWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::KEY_EXCHANGE,
                self.measurement_summary_hash_type,
                self.slot,
            ),
            session_id: self.req_session_id.into(),
            policy_or_mut_auth: self.session_policy,
            reserved_or_slot: 0,
            random: self.random,
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.exchange_data);
        out.extend_from_slice(
            &u16::try_from(self.opaque.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.opaque);
        out
    }

    /// Decodes and validates the request.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<KeyExchangeWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::KEY_EXCHANGE,
        )?;
        match wire.header.param1 {
            MEASUREMENT_SUMMARY_NONE | 1 | 0xff => {}
            other => return Err(invalid("Param1 (measurement summary hash type)", other)),
        }
        if wire.header.param2 > 7 && wire.header.param2 != 0xff {
            return Err(invalid("SlotID", wire.header.param2));
        }
        let exchange_data = reader.array::<DHE_SIZE>()?;
        let opaque_length = reader.u16()?;
        let opaque = reader.take(opaque_length.into())?.to_vec();
        reader.finish()?;
        Ok(Self {
            measurement_summary_hash_type: wire.header.param1,
            slot: wire.header.param2,
            req_session_id: wire.session_id.get(),
            session_policy: wire.policy_or_mut_auth,
            random: wire.random,
            exchange_data,
            opaque,
        })
    }
}

/// KEY_EXCHANGE_RSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchangeRsp {
    /// Param1: heartbeat period.
    pub heartbeat_period: u8,
    /// RspSessionID.
    pub rsp_session_id: u16,
    /// MutAuthRequested.
    pub mut_auth_requested: u8,
    /// ReqSlotIDParam.
    pub req_slot: u8,
    /// RandomData.
    pub random: [u8; NONCE_SIZE],
    /// ExchangeData: the responder's secp384r1 public key, X || Y.
    pub exchange_data: [u8; DHE_SIZE],
    /// MeasurementSummaryHash, present when the request asked for one.
    pub measurement_summary_hash: Option<[u8; HASH_SIZE]>,
    /// OpaqueData.
    pub opaque: Vec<u8>,
    /// Signature over the transcript up to the opaque data.
    pub signature: [u8; SIGNATURE_SIZE],
    /// ResponderVerifyData (HMAC with the responder's finished key).
    pub verify_data: [u8; HASH_SIZE],
}

/// Where the parts of a KEY_EXCHANGE_RSP end, for the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyExchangeRspSplit {
    /// Bytes before the signature.
    pub before_signature: usize,
    /// Bytes before the verify data.
    pub before_verify_data: usize,
}

impl KeyExchangeRsp {
    /// Encodes the bytes before the signature (what the signature covers).
    pub fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = KeyExchangeWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::KEY_EXCHANGE_RSP,
                self.heartbeat_period,
                0,
            ),
            session_id: self.rsp_session_id.into(),
            policy_or_mut_auth: self.mut_auth_requested,
            reserved_or_slot: self.req_slot,
            random: self.random,
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.exchange_data);
        if let Some(hash) = &self.measurement_summary_hash {
            out.extend_from_slice(hash);
        }
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
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.verify_data);
        out
    }

    /// Decodes and validates the response; `with_summary_hash` says whether the request asked
    /// for a measurement summary hash.
    pub fn decode(
        bytes: &[u8],
        with_summary_hash: bool,
    ) -> Result<(Self, KeyExchangeRspSplit), CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<KeyExchangeWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::KEY_EXCHANGE_RSP,
        )?;
        let exchange_data = reader.array::<DHE_SIZE>()?;
        let measurement_summary_hash = if with_summary_hash {
            Some(reader.array::<HASH_SIZE>()?)
        } else {
            None
        };
        let opaque_length = reader.u16()?;
        let opaque = reader.take(opaque_length.into())?.to_vec();
        let before_signature = reader.offset();
        let signature = reader.array::<SIGNATURE_SIZE>()?;
        let before_verify_data = reader.offset();
        let verify_data = reader.array::<HASH_SIZE>()?;
        reader.finish()?;
        Ok((
            Self {
                heartbeat_period: wire.header.param1,
                rsp_session_id: wire.session_id.get(),
                mut_auth_requested: wire.policy_or_mut_auth,
                req_slot: wire.reserved_or_slot,
                random: wire.random,
                exchange_data,
                measurement_summary_hash,
                opaque,
                signature,
                verify_data,
            },
            KeyExchangeRspSplit {
                before_signature,
                before_verify_data,
            },
        ))
    }
}

/// FINISH request without mutual authentication: the header and RequesterVerifyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// RequesterVerifyData (HMAC with the requester's finished key).
    pub verify_data: [u8; HASH_SIZE],
}

/// The FINISH header without a signature, the part RequesterVerifyData covers.
pub fn finish_header() -> Header {
    Header::new(SPDM_VERSION_1_2, SpdmCode::FINISH)
}

impl Finish {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = finish_header().as_bytes().to_vec();
        out.extend_from_slice(&self.verify_data);
        out
    }

    /// Decodes and validates the request; a signature (mutual authentication) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, SpdmCode::FINISH)?;
        if header.param1 != 0 {
            return Err(invalid("Param1 (signature included)", header.param1));
        }
        let verify_data = reader.array::<HASH_SIZE>()?;
        reader.finish()?;
        Ok(Self { verify_data })
    }
}

/// END_SESSION attribute bit: keep the negotiated state cached.
pub const END_SESSION_PRESERVE_STATE: u8 = 1;

/// VENDOR_DEFINED_REQUEST or VENDOR_DEFINED_RESPONSE, for any standards body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorDefined {
    /// Request or response.
    pub code: SpdmCode,
    /// StandardID (3 = PCI-SIG).
    pub standard_id: u16,
    /// VendorID bytes.
    pub vendor_id: Vec<u8>,
    /// The vendor payload.
    pub payload: Vec<u8>,
}

impl VendorDefined {
    /// Encodes the message; fails when the vendor id or payload exceeds its length field.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let vendor_len = u8::try_from(self.vendor_id.len())
            .map_err(|_| invalid("Len (vendor id)", self.vendor_id.len() as u64))?;
        let payload_len = u16::try_from(self.payload.len())
            .map_err(|_| invalid("ReqLength", self.payload.len() as u64))?;
        let mut out = Header::new(SPDM_VERSION_1_2, self.code).as_bytes().to_vec();
        out.extend_from_slice(&self.standard_id.to_le_bytes());
        out.push(vendor_len);
        out.extend_from_slice(&self.vendor_id);
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes and validates a vendor-defined message of `code`.
    pub fn decode(bytes: &[u8], code: SpdmCode) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, code)?;
        if header.param1 != 0 || header.param2 != 0 {
            return Err(invalid("Param1/Param2", header.param1));
        }
        let standard_id = reader.u16()?;
        let [vendor_len] = reader.array::<1>()?;
        let vendor_id = reader.take(vendor_len.into())?.to_vec();
        let payload_len = reader.u16()?;
        let payload = reader.take(payload_len.into())?.to_vec();
        reader.finish()?;
        Ok(Self {
            code,
            standard_id,
            vendor_id,
            payload,
        })
    }
}

/// ERROR response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// SPDMVersion of the error (1.0 before VERSION is known).
    pub version: u8,
    /// ErrorCode.
    pub code: SpdmErrorCode,
    /// ErrorData.
    pub data: u8,
    /// ExtendedErrorData.
    pub extended: Vec<u8>,
}

/// ExtendedErrorData of ResponseNotReady.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ResponseNotReady {
    /// The responder needs 2^rdt_exponent microseconds.
    pub rdt_exponent: u8,
    /// The request code being processed.
    pub request_code: u8,
    /// The token to echo in RESPOND_IF_READY.
    pub token: u8,
    /// RDTM multiplier for the worst case.
    pub rdtm: u8,
}
const _: () = assert!(size_of::<ResponseNotReady>() == 4);

impl ErrorResponse {
    /// An error without extended data.
    pub fn new(version: u8, code: SpdmErrorCode, data: u8) -> Self {
        Self {
            version,
            code,
            data,
            extended: Vec::new(),
        }
    }

    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Header::with_params(self.version, SpdmCode::ERROR, self.code.0, self.data)
            .as_bytes()
            .to_vec();
        out.extend_from_slice(&self.extended);
        out
    }

    /// Decodes an ERROR response of any SPDM 1.x version.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = reader.fixed::<Header>()?;
        if header.code != SpdmCode::ERROR {
            return Err(CodecError::UnexpectedCode {
                found: header.code.0,
                expected: SpdmCode::ERROR.0,
            });
        }
        if header.version >> 4 != 1 {
            return Err(invalid("SPDMVersion", header.version));
        }
        let extended = reader.rest().to_vec();
        if header.param1 == SpdmErrorCode::RESPONSE_NOT_READY.0
            && extended.len() != size_of::<ResponseNotReady>()
        {
            return Err(invalid(
                "ResponseNotReady data length",
                extended.len() as u64,
            ));
        }
        Ok(Self {
            version: header.version,
            code: SpdmErrorCode(header.param1),
            data: header.param2,
            extended,
        })
    }

    /// The ResponseNotReady data, when this is that error.
    pub fn not_ready(&self) -> Option<ResponseNotReady> {
        if self.code != SpdmErrorCode::RESPONSE_NOT_READY {
            return None;
        }
        ResponseNotReady::read_from_bytes(&self.extended).ok()
    }
}

/// RESPOND_IF_READY request: ask again for the response to `request_code` with `token`.
pub fn respond_if_ready(request_code: u8, token: u8) -> Vec<u8> {
    Header::with_params(
        SPDM_VERSION_1_2,
        SpdmCode::RESPOND_IF_READY,
        request_code,
        token,
    )
    .as_bytes()
    .to_vec()
}
