//! The 10-byte TPM 2.0 command/response header (big-endian) and the codes this crate uses.

use open_enum::open_enum;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::big_endian::U16;
use zerocopy::big_endian::U32;

/// Size of the header.
pub const TPM_HEADER_SIZE: usize = 10;

/// Largest TPM command or response the transports carry (the usual `MAX_COMMAND_SIZE`).
pub const TPM_MAX_PACKET: usize = 4096;

/// `TPM_ST` structure tags.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u16)]
pub enum TpmSt {
    /// TPM 1.2 request tag, answered with `TPM_RC_BAD_TAG` by a TPM 2.0.
    RQU_COMMAND = 0x00c1,
    /// No authorization sessions.
    NO_SESSIONS = 0x8001,
    /// Authorization sessions present.
    SESSIONS = 0x8002,
}

/// `TPM_CC` command codes this crate knows by name.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum TpmCc {
    /// TPM2_Startup.
    STARTUP = 0x0144,
    /// TPM2_Shutdown.
    SHUTDOWN = 0x0145,
    /// TPM2_GetRandom.
    GET_RANDOM = 0x017b,
    /// TPM2_PCR_Read.
    PCR_READ = 0x017e,
    /// TPM2_PCR_Extend.
    PCR_EXTEND = 0x0182,
    /// TPM2_ReadClock (QEMU's version probe).
    READ_CLOCK = 0x0181,
}

/// `TPM_RC` response codes this crate produces.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum TpmRc {
    /// Success.
    SUCCESS = 0x000,
    /// Tag is not a TPM 2.0 tag.
    BAD_TAG = 0x01e,
    /// TPM2_Startup not yet run (or run twice).
    INITIALIZE = 0x100,
    /// The TPM (or the path to it) failed.
    FAILURE = 0x101,
    /// Sessions present where none are allowed.
    AUTH_CONTEXT = 0x145,
    /// A required authorization is missing.
    AUTH_MISSING = 0x125,
    /// Command size field does not match the bytes received.
    COMMAND_SIZE = 0x142,
    /// Command code not supported.
    COMMAND_CODE = 0x143,
    /// Hash algorithm not supported (format 1, parameter 1).
    HASH_P1 = 0x1c3,
    /// Value out of range (format 1, parameter 1).
    VALUE_P1 = 0x1c4,
    /// Value out of range (format 1, handle 1).
    VALUE_H1 = 0x184,
    /// Structure is the wrong size (format 1, parameter 1).
    SIZE_P1 = 0x1d5,
    /// Input too short for the structure (format 1, parameter 1).
    INSUFFICIENT_P1 = 0x1da,
    /// Authorization failed (format 1, session 1).
    AUTH_FAIL_S1 = 0x98e,
    /// Handle is not a valid session (format 1, session 1).
    HANDLE_S1 = 0x98b,
    /// Command was canceled (warning).
    CANCELED = 0x909,
    /// Command not allowed at this locality (warning).
    LOCALITY = 0x907,
}

/// The header on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TpmHeader {
    /// Structure tag.
    pub tag: U16,
    /// Size of the whole packet, header included.
    pub size: U32,
    /// Command code (commands) or response code (responses).
    pub code: U32,
}
const _: () = assert!(size_of::<TpmHeader>() == TPM_HEADER_SIZE);

/// Why a command is not well formed, and the response code a TPM would give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("{0} bytes is shorter than a TPM header")]
    Short(usize),
    /// The header size does not equal the bytes received.
    #[error("header says {claimed} bytes, received {received}")]
    SizeMismatch {
        /// The size field.
        claimed: u32,
        /// Bytes actually received.
        received: usize,
    },
    /// Larger than [`TPM_MAX_PACKET`].
    #[error("{0} bytes exceeds the largest TPM command")]
    TooLarge(usize),
    /// Not a TPM 2.0 command tag.
    #[error("tag {0:#06x} is not a TPM 2.0 command tag")]
    BadTag(u16),
}

impl HeaderError {
    /// The response code a TPM answers this with.
    pub fn response_code(self) -> TpmRc {
        match self {
            HeaderError::Short(_) | HeaderError::SizeMismatch { .. } | HeaderError::TooLarge(_) => {
                TpmRc::COMMAND_SIZE
            }
            HeaderError::BadTag(_) => TpmRc::BAD_TAG,
        }
    }
}

/// Parses and validates the header of a received command: the size field must equal the
/// bytes received, the tag must be a TPM 2.0 command tag.
pub fn validate_command(bytes: &[u8]) -> Result<TpmHeader, HeaderError> {
    if bytes.len() > TPM_MAX_PACKET {
        return Err(HeaderError::TooLarge(bytes.len()));
    }
    let (header, _) =
        TpmHeader::read_from_prefix(bytes).map_err(|_| HeaderError::Short(bytes.len()))?;
    if usize::try_from(header.size.get()) != Ok(bytes.len()) {
        return Err(HeaderError::SizeMismatch {
            claimed: header.size.get(),
            received: bytes.len(),
        });
    }
    let tag = TpmSt(header.tag.get());
    if tag != TpmSt::NO_SESSIONS && tag != TpmSt::SESSIONS {
        return Err(HeaderError::BadTag(tag.0));
    }
    Ok(header)
}

/// A bare 10-byte error response with `rc`.
pub fn error_response(rc: TpmRc) -> Vec<u8> {
    TpmHeader {
        tag: U16::new(TpmSt::NO_SESSIONS.0),
        size: U32::new(TPM_HEADER_SIZE as u32),
        code: U32::new(rc.0),
    }
    .as_bytes()
    .to_vec()
}

impl TpmHeader {
    /// Whether `bytes` start with a header whose size field equals `bytes.len()`.
    pub fn read_from_prefix_checked(bytes: &[u8]) -> bool {
        TpmHeader::read_from_prefix(bytes)
            .is_ok_and(|(h, _)| usize::try_from(h.size.get()) == Ok(bytes.len()))
    }
}

/// The response code of a response, if it has a header.
pub fn response_code(bytes: &[u8]) -> Option<TpmRc> {
    TpmHeader::read_from_prefix(bytes)
        .ok()
        .map(|(h, _)| TpmRc(h.code.get()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// TPM2_GetRandom(8) as in the TPM 2.0 spec part 3 / every trace: 80 01 00 00 00 0c 00 00 01 7b 00 08.
    const GET_RANDOM_8: [u8; 12] = [
        0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08,
    ];

    #[test]
    fn well_formed_command_validates() {
        let h = validate_command(&GET_RANDOM_8).unwrap();
        assert_eq!(TpmCc(h.code.get()), TpmCc::GET_RANDOM);
    }

    #[test]
    fn size_lies_give_command_size() {
        let mut c = GET_RANDOM_8;
        c[5] = 0x20;
        let e = validate_command(&c).unwrap_err();
        assert_eq!(e.response_code(), TpmRc::COMMAND_SIZE);
        assert_eq!(
            validate_command(&c[..5]).unwrap_err().response_code(),
            TpmRc::COMMAND_SIZE
        );
    }

    #[test]
    fn tpm12_tag_gives_bad_tag() {
        let mut c = GET_RANDOM_8;
        c[0] = 0x00;
        c[1] = 0xc1;
        assert_eq!(
            validate_command(&c).unwrap_err(),
            HeaderError::BadTag(0x00c1)
        );
    }

    #[test]
    fn error_response_is_a_bare_header() {
        assert_eq!(
            error_response(TpmRc::COMMAND_SIZE),
            [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x42]
        );
        assert_eq!(
            response_code(&error_response(TpmRc::FAILURE)),
            Some(TpmRc::FAILURE)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn validation_accepts_exactly_consistent_packets(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = validate_command(&bytes);
            let consistent = bytes.len() >= 10
                && u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize == bytes.len()
                && matches!(u16::from_be_bytes([bytes[0], bytes[1]]), 0x8001 | 0x8002);
            prop_assert_eq!(r.is_ok(), consistent);
        }
    }
}
