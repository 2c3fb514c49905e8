//! Decode errors shared by every PCIe TDISP decoder, and the bounds-checked reader they use.

use thiserror::Error;

/// Why a TDISP byte sequence was rejected.
///
/// Decoders parse first and validate second; every rejection names what was wrong so a
/// responder can choose the matching `TDISP_ERROR` code (for example
/// [`DecodeError::UnsupportedVersion`] maps to `VERSION_MISMATCH`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ends before a field the format requires.
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes needed to hold the field.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// Bytes remain after the last field the format defines.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// The TDISP version byte is not 0x10.
    #[error("unsupported TDISP version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The message type is not a known TDISP code.
    #[error("unknown TDISP message type {0:#04x}")]
    UnknownMessageType(u8),
    /// The message type is a response where a request was expected, or the reverse.
    #[error("TDISP message type {0:#04x} is not valid in this direction")]
    WrongDirection(u8),
    /// A reserved field or reserved bits are not zero.
    #[error("reserved bits set in {0}")]
    ReservedBits(&'static str),
    /// A field holds a value the format does not define.
    #[error("invalid value {value:#x} in {field}")]
    InvalidValue {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// A count or length field disagrees with the bytes that follow.
    #[error("{field} says {claimed} but {actual} are present")]
    CountMismatch {
        /// The count or length field.
        field: &'static str,
        /// What the field claims (in bytes or entries, as the field counts).
        claimed: u64,
        /// What the buffer actually holds (same unit).
        actual: u64,
    },
    /// A length exceeds a hard cap of this crate.
    #[error("{field} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// The length field.
        field: &'static str,
        /// The claimed length.
        len: u64,
        /// The cap.
        max: u64,
    },
}

impl DecodeError {
    /// The TDISP_ERROR code a responder answers an undecodable request with: the one place
    /// that decides it. A wrong version is VERSION_MISMATCH, an unknown or misdirected code is
    /// UNSUPPORTED_REQUEST, anything else malformed is INVALID_REQUEST.
    pub fn tdisp_error_code(&self) -> super::TdispErrorCode {
        use super::TdispErrorCode;
        match self {
            Self::UnsupportedVersion(_) => TdispErrorCode::VERSION_MISMATCH,
            Self::UnknownMessageType(_) | Self::WrongDirection(_) => {
                TdispErrorCode::UNSUPPORTED_REQUEST
            }
            _ => TdispErrorCode::INVALID_REQUEST,
        }
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked and nothing is read twice.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                have: self.bytes.len(),
            });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// Reads a zerocopy wire struct by value.
    pub(crate) fn read<T: zerocopy::FromBytes>(&mut self) -> Result<T, DecodeError> {
        let (value, tail) =
            T::read_from_prefix(self.bytes).map_err(|_| DecodeError::Truncated {
                needed: size_of::<T>(),
                have: self.bytes.len(),
            })?;
        self.bytes = tail;
        Ok(value)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.read::<u8>()
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                extra: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcie::TdispErrorCode;

    #[test]
    fn decode_errors_map_to_tdisp_error_codes() {
        assert_eq!(
            DecodeError::UnsupportedVersion(0x20).tdisp_error_code(),
            TdispErrorCode::VERSION_MISMATCH
        );
        assert_eq!(
            DecodeError::UnknownMessageType(0x8d).tdisp_error_code(),
            TdispErrorCode::UNSUPPORTED_REQUEST
        );
        assert_eq!(
            DecodeError::TrailingBytes { extra: 1 }.tdisp_error_code(),
            TdispErrorCode::INVALID_REQUEST
        );
    }
}
