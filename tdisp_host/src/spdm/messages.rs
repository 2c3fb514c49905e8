//! SPDM 1.2 message codecs (DSP0274 1.2, layouts as DMTF's libspdm `spdm.h` lays them out).
//!
//! Each message has a typed form with `encode` (to bytes) and `decode` (parse the bytes, then
//! validate every field). Fixed parts are `zerocopy` structs with their size asserted beside
//! them; variable parts are read through a bounds-checked cursor, so no length from the wire is
//! trusted. Sizes that depend on the negotiated algorithms use this implementation's only suite
//! (SHA-384, ECDSA P-384, secp384r1): [`HASH_SIZE`], [`SIGNATURE_SIZE`], [`DHE_SIZE`].
//!
//! This module holds the header, the cursor and the errors; the codecs sit beside it by phase
//! of the protocol (`negotiation`, `certificates`, `measurements`, `session`, `vendor`,
//! `error`), all re-exported here.

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

    /// OpaqueDataLength (u16 LE) and the opaque data it announces.
    pub(crate) fn opaque(&mut self) -> Result<&'a [u8], CodecError> {
        let length = self.u16()?;
        self.take(length.into())
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

/// Appends OpaqueDataLength (u16 LE) and the opaque data, as [`Reader::opaque`] reads them.
fn put_opaque(out: &mut Vec<u8>, opaque: &[u8]) {
    out.extend_from_slice(
        &u16::try_from(opaque.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(opaque);
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

mod certificates;
mod error;
mod measurements;
mod negotiation;
mod session;
mod vendor;

pub use certificates::*;
pub use error::*;
pub use measurements::*;
pub use negotiation::*;
pub use session::*;
pub use vendor::*;
