//! Negotiating the connection: GET_VERSION/VERSION, GET_CAPABILITIES/CAPABILITIES,
//! NEGOTIATE_ALGORITHMS/ALGORITHMS.

use super::*;

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

/// The fields NEGOTIATE_ALGORITHMS and ALGORITHMS share before ALGORITHMS'
/// MeasurementHashAlgo.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct AlgHead {
    header: Header,
    length: U16,
    measurement_spec: u8,
    other_params: u8,
}
const _: () = assert!(size_of::<AlgHead>() == 8);

/// The fields NEGOTIATE_ALGORITHMS and ALGORITHMS share after ALGORITHMS' MeasurementHashAlgo,
/// up to the algorithm structures.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct AlgTail {
    base_asym: U32,
    base_hash: U32,
    reserved: [u8; 12],
    ext_asym_count: u8,
    ext_hash_count: u8,
    reserved2: [u8; 2],
}
const _: () = assert!(size_of::<AlgTail>() == 24);

impl AlgTail {
    fn new(base_asym: u32, base_hash: u32) -> Self {
        Self {
            base_asym: base_asym.into(),
            base_hash: base_hash.into(),
            reserved: [0; 12],
            ext_asym_count: 0,
            ext_hash_count: 0,
            reserved2: [0; 2],
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NegotiateAlgorithmsWire {
    head: AlgHead,
    tail: AlgTail,
}
const _: () = assert!(size_of::<NegotiateAlgorithmsWire>() == 32);

const ALG_STRUCT_COUNT: u8 = 4;

/// The fixed part of NEGOTIATE_ALGORITHMS or ALGORITHMS: the two differ only in
/// MeasurementHashAlgo, so one encoder and one decoder serve both.
trait AlgMessage: FromBytes + IntoBytes + Immutable + KnownLayout + Sized {
    const CODE: SpdmCode;
    /// The spec's name of the extended-algorithm counts, for errors.
    const EXT_COUNTS: &'static str;
    fn parts(&self) -> (&AlgHead, &AlgTail);
}

impl AlgMessage for NegotiateAlgorithmsWire {
    const CODE: SpdmCode = SpdmCode::NEGOTIATE_ALGORITHMS;
    const EXT_COUNTS: &'static str = "ExtAsymCount/ExtHashCount";
    fn parts(&self) -> (&AlgHead, &AlgTail) {
        (&self.head, &self.tail)
    }
}

/// Encodes an SPDM 1.2 algorithms message: the fixed part `build` makes from its head, then
/// every algorithm structure of `algs`.
fn encode_alg_message<W: AlgMessage>(
    measurement_spec: u8,
    other_params: u8,
    algs: &AlgSet,
    build: impl FnOnce(AlgHead) -> W,
) -> Vec<u8> {
    let structs = algs.structs();
    let length = size_of::<W>() + structs.len() * size_of::<AlgStruct>();
    let head = AlgHead {
        header: Header::with_params(SPDM_VERSION_1_2, W::CODE, ALG_STRUCT_COUNT, 0),
        length: u16::try_from(length).unwrap_or(u16::MAX).into(),
        measurement_spec,
        other_params,
    };
    let mut out = build(head).as_bytes().to_vec();
    for entry in structs {
        out.extend_from_slice(entry.as_bytes());
    }
    out
}

/// Decodes an SPDM 1.2 algorithms message's fixed part and structures, checking the length,
/// that no external algorithm is listed (none supported) and the structure count.
fn decode_alg_message<W: AlgMessage>(bytes: &[u8]) -> Result<(W, AlgSet), CodecError> {
    let mut reader = Reader::new(bytes);
    let wire = reader.fixed::<W>()?;
    let (head, tail) = wire.parts();
    expect_header(
        &mut Reader::new(head.header.as_bytes()),
        SPDM_VERSION_1_2,
        W::CODE,
    )?;
    if usize::from(head.length.get()) != bytes.len() {
        return Err(invalid("Length", head.length.get()));
    }
    if tail.ext_asym_count != 0 || tail.ext_hash_count != 0 {
        return Err(invalid(W::EXT_COUNTS, tail.ext_asym_count));
    }
    if head.header.param1 > ALG_STRUCT_COUNT {
        return Err(invalid("Param1 (AlgStruct count)", head.header.param1));
    }
    let algs = AlgSet::read(&mut reader, head.header.param1)?;
    reader.finish()?;
    Ok((wire, algs))
}

impl NegotiateAlgorithms {
    /// Encodes the request (SPDM 1.2).
    pub fn encode(&self) -> Vec<u8> {
        encode_alg_message(
            self.measurement_spec,
            self.other_params,
            &self.algs,
            |head| NegotiateAlgorithmsWire {
                head,
                tail: AlgTail::new(self.base_asym, self.base_hash),
            },
        )
    }

    /// Decodes and validates the request. External algorithms are refused (none supported).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (wire, algs) = decode_alg_message::<NegotiateAlgorithmsWire>(bytes)?;
        Ok(Self {
            measurement_spec: wire.head.measurement_spec,
            other_params: wire.head.other_params,
            base_asym: wire.tail.base_asym.get(),
            base_hash: wire.tail.base_hash.get(),
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
    head: AlgHead,
    measurement_hash: U32,
    tail: AlgTail,
}
const _: () = assert!(size_of::<AlgorithmsWire>() == 36);

impl AlgMessage for AlgorithmsWire {
    const CODE: SpdmCode = SpdmCode::ALGORITHMS;
    const EXT_COUNTS: &'static str = "ExtAsymSelCount/ExtHashSelCount";
    fn parts(&self) -> (&AlgHead, &AlgTail) {
        (&self.head, &self.tail)
    }
}

impl Algorithms {
    /// Encodes the response (SPDM 1.2).
    pub fn encode(&self) -> Vec<u8> {
        encode_alg_message(
            self.measurement_spec,
            self.other_params,
            &self.algs,
            |head| AlgorithmsWire {
                head,
                measurement_hash: self.measurement_hash.into(),
                tail: AlgTail::new(self.base_asym, self.base_hash),
            },
        )
    }

    /// Decodes and validates the response: every selection is at most one bit.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (wire, algs) = decode_alg_message::<AlgorithmsWire>(bytes)?;
        let selections = [
            ("MeasurementHashAlgo", wire.measurement_hash.get()),
            ("BaseAsymSel", wire.tail.base_asym.get()),
            ("BaseHashSel", wire.tail.base_hash.get()),
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
            measurement_spec: wire.head.measurement_spec,
            other_params: wire.head.other_params,
            measurement_hash: wire.measurement_hash.get(),
            base_asym: wire.tail.base_asym.get(),
            base_hash: wire.tail.base_hash.get(),
            algs,
        })
    }
}
