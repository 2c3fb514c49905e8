//! SPDM 1.2 code spaces (DSP0274 1.2): request and response codes, error codes, capability
//! flags and algorithm bits, as DMTF's libspdm `spdm.h` names them.

use bitfield_struct::bitfield;
use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// SPDMVersion byte of SPDM 1.0, which GET_VERSION and VERSION always carry.
pub const SPDM_VERSION_1_0: u8 = 0x10;
/// SPDMVersion byte of SPDM 1.2, the only version this implementation negotiates.
pub const SPDM_VERSION_1_2: u8 = 0x12;
/// The VERSION entry for SPDM 1.2 (major 15:12, minor 11:8, update 7:4, alpha 3:0).
pub const VERSION_ENTRY_1_2: u16 = 0x1200;

/// SPDM request and response codes (byte 1 of every message).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum SpdmCode {
    /// DIGESTS response.
    DIGESTS = 0x01,
    /// CERTIFICATE response.
    CERTIFICATE = 0x02,
    /// VERSION response.
    VERSION = 0x04,
    /// MEASUREMENTS response.
    MEASUREMENTS = 0x60,
    /// CAPABILITIES response.
    CAPABILITIES = 0x61,
    /// ALGORITHMS response.
    ALGORITHMS = 0x63,
    /// KEY_EXCHANGE_RSP response.
    KEY_EXCHANGE_RSP = 0x64,
    /// FINISH_RSP response.
    FINISH_RSP = 0x65,
    /// END_SESSION_ACK response.
    END_SESSION_ACK = 0x6c,
    /// VENDOR_DEFINED_RESPONSE.
    VENDOR_DEFINED_RESPONSE = 0x7e,
    /// ERROR response.
    ERROR = 0x7f,
    /// GET_DIGESTS request.
    GET_DIGESTS = 0x81,
    /// GET_CERTIFICATE request.
    GET_CERTIFICATE = 0x82,
    /// CHALLENGE request (not implemented here).
    CHALLENGE = 0x83,
    /// GET_VERSION request.
    GET_VERSION = 0x84,
    /// GET_MEASUREMENTS request.
    GET_MEASUREMENTS = 0xe0,
    /// GET_CAPABILITIES request.
    GET_CAPABILITIES = 0xe1,
    /// NEGOTIATE_ALGORITHMS request.
    NEGOTIATE_ALGORITHMS = 0xe3,
    /// KEY_EXCHANGE request.
    KEY_EXCHANGE = 0xe4,
    /// FINISH request.
    FINISH = 0xe5,
    /// END_SESSION request.
    END_SESSION = 0xec,
    /// VENDOR_DEFINED_REQUEST.
    VENDOR_DEFINED_REQUEST = 0xfe,
    /// RESPOND_IF_READY request.
    RESPOND_IF_READY = 0xff,
}

/// SPDM ERROR codes (param1 of ERROR).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum SpdmErrorCode {
    /// The request is malformed.
    INVALID_REQUEST = 0x01,
    /// The responder is busy; retry later.
    BUSY = 0x03,
    /// The request is not expected in the current state.
    UNEXPECTED_REQUEST = 0x04,
    /// Unspecified failure.
    UNSPECIFIED = 0x05,
    /// A secured message failed to decrypt or authenticate.
    DECRYPT_ERROR = 0x06,
    /// The request is not supported.
    UNSUPPORTED_REQUEST = 0x07,
    /// The responder cannot open another session.
    SESSION_LIMIT_EXCEEDED = 0x0a,
    /// The request is only accepted inside a session.
    SESSION_REQUIRED = 0x0b,
    /// The requested SPDM version is not supported.
    VERSION_MISMATCH = 0x41,
    /// The response is not ready; ask again with RESPOND_IF_READY.
    RESPONSE_NOT_READY = 0x42,
    /// The responder asks the requester to start over with GET_VERSION.
    REQUEST_RESYNCH = 0x43,
}

/// GET_CAPABILITIES / CAPABILITIES flags (DSP0274 1.2 tables 11 and 12).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct CapabilityFlags {
    /// Responder: supports negotiated-state caching.
    pub cache: bool,
    /// Supports GET_DIGESTS and GET_CERTIFICATE.
    pub cert: bool,
    /// Supports CHALLENGE.
    pub chal: bool,
    /// Responder measurement capability: 0 none, 1 unsigned, 2 signed.
    #[bits(2)]
    pub meas: u8,
    /// Responder: measurements are fresh after reset.
    pub meas_fresh: bool,
    /// Supports encryption in sessions.
    pub encrypt: bool,
    /// Supports message authentication in sessions.
    pub mac: bool,
    /// Supports mutual authentication.
    pub mut_auth: bool,
    /// Supports KEY_EXCHANGE.
    pub key_ex: bool,
    /// Pre-shared key capability.
    #[bits(2)]
    pub psk: u8,
    /// Supports encapsulated requests.
    pub encap: bool,
    /// Supports HEARTBEAT.
    pub hbeat: bool,
    /// Supports KEY_UPDATE.
    pub key_upd: bool,
    /// Sends the handshake (FINISH) in the clear.
    pub handshake_in_the_clear: bool,
    /// Uses a provisioned public key instead of certificates.
    pub pub_key_id: bool,
    /// Supports chunking.
    pub chunk: bool,
    /// Certificates are alias certificates.
    pub alias_cert: bool,
    /// Reserved.
    #[bits(13)]
    _reserved: u16,
}

/// Measurement capability value "signed measurements" of [`CapabilityFlags::meas`].
pub const MEAS_CAP_SIGNED: u8 = 2;

/// BaseHashAlgo bit for SHA-384.
pub const BASE_HASH_SHA_384: u32 = 1 << 1;
/// BaseAsymAlgo bit for ECDSA P-384.
pub const BASE_ASYM_ECDSA_P384: u32 = 1 << 7;
/// MeasurementHashAlgo bit for SHA-384.
pub const MEAS_HASH_SHA_384: u32 = 1 << 2;
/// MeasurementSpecification bit for the DMTF measurement format.
pub const MEAS_SPEC_DMTF: u8 = 1;
/// DHE group bit for secp384r1.
pub const DHE_SECP384R1: u16 = 1 << 4;
/// AEAD bit for AES-256-GCM.
pub const AEAD_AES_256_GCM: u16 = 1 << 1;
/// KeySchedule bit for the SPDM key schedule.
pub const KEY_SCHEDULE_SPDM: u16 = 1;
/// ReqBaseAsymAlg bit for ECDSA P-384 (same bit as BaseAsymAlgo, 16 bits wide).
pub const REQ_ASYM_ECDSA_P384: u16 = 1 << 7;
/// OtherParams bit: opaque data format 1 (DSP0274 1.2 general opaque data).
pub const OPAQUE_DATA_FMT1: u8 = 1 << 1;

/// Algorithm structure types of NEGOTIATE_ALGORITHMS / ALGORITHMS.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum AlgType {
    /// DHE group.
    DHE = 2,
    /// AEAD cipher suite.
    AEAD = 3,
    /// Requester base asymmetric algorithm (mutual authentication).
    REQ_BASE_ASYM_ALG = 4,
    /// Key schedule.
    KEY_SCHEDULE = 5,
}

/// Hash size of SHA-384, the only negotiated hash.
pub const HASH_SIZE: usize = 48;
/// ECDSA P-384 signature size (r || s).
pub const SIGNATURE_SIZE: usize = 96;
/// secp384r1 exchange data size (X || Y).
pub const DHE_SIZE: usize = 96;
/// Nonce and random data size.
pub const NONCE_SIZE: usize = 32;
