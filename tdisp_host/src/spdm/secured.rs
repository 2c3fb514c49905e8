//! Secured SPDM messages (DSP0277 1.2, PCI DOE binding): the record that carries one SPDM
//! message inside a session, as DOE data object type 2.
//!
//! Layout: `SessionID u32 LE | Length u16 LE | AES-256-GCM ciphertext of {ApplicationDataLength
//! u16 LE | SPDM message | padding} | tag [16]`. The 6-byte header is the additional
//! authenticated data; `Length` counts the ciphertext and tag. The PCI DOE binding sends no
//! sequence number on the wire: each side counts records per direction and per phase, and the
//! nonce is the direction's IV with that count mixed in ([`DirectionKeys::nonce`]). A record
//! is padded with up to three zero bytes to fill its last DOE dword.

use super::crypto::DirectionKeys;
use aes_gcm::Aes256Gcm;
use aes_gcm::KeyInit;
use aes_gcm::Nonce;
use aes_gcm::aead::Aead;
use aes_gcm::aead::Payload;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;

/// AES-GCM tag size.
pub const TAG_SIZE: usize = 16;
/// Size of [`RecordHeader`].
pub const RECORD_HEADER_SIZE: usize = 6;
/// Size of the encrypted ApplicationDataLength field.
const APP_LENGTH_SIZE: usize = 2;

/// The cleartext header of a secured message, also its AAD.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RecordHeader {
    /// The session id (RspSessionID << 16 | ReqSessionID).
    pub session_id: U32,
    /// Bytes of ciphertext and tag that follow.
    pub length: U16,
}
const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_SIZE);

/// Why a secured message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecuredError {
    /// The record is shorter than its header, its length, or the smallest sealed payload.
    #[error("secured message truncated")]
    Truncated,
    /// Bytes other than at most three zero bytes of DOE padding follow the record.
    #[error("{0} unexpected bytes after the secured message")]
    TrailingBytes(usize),
    /// The record belongs to another session.
    #[error("secured message for session {found:#010x}, expected {expected:#010x}")]
    WrongSession {
        /// Session id found.
        found: u32,
        /// Session id of this session.
        expected: u32,
    },
    /// Authentication failed: tampered, replayed, reordered or under the wrong key.
    #[error("secured message failed authentication")]
    Authentication,
    /// The decrypted ApplicationDataLength exceeds the plaintext.
    #[error("application data length {0} exceeds the record")]
    BadApplicationLength(usize),
    /// The message does not fit a record.
    #[error("message of {0} bytes is too large for a secured record")]
    TooLarge(usize),
    /// The sequence number is exhausted; the session must end.
    #[error("sequence number exhausted")]
    SequenceExhausted,
}

/// A parsed, still encrypted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The header (AAD).
    pub header: RecordHeader,
    /// Ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

impl<'a> Record<'a> {
    /// Parses a record (with up to three zero bytes of DOE padding after it).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SecuredError> {
        let (header, rest) =
            RecordHeader::read_from_prefix(bytes).map_err(|_| SecuredError::Truncated)?;
        let length = usize::from(header.length.get());
        if length < APP_LENGTH_SIZE + TAG_SIZE {
            return Err(SecuredError::Truncated);
        }
        let (sealed, padding) = rest
            .split_at_checked(length)
            .ok_or(SecuredError::Truncated)?;
        if padding.len() > 3 || padding.iter().any(|&b| b != 0) {
            return Err(SecuredError::TrailingBytes(padding.len()));
        }
        Ok(Self { header, sealed })
    }
}

fn cipher(keys: &DirectionKeys) -> Aes256Gcm {
    Aes256Gcm::new(keys.key().into())
}

/// Seals `message` for `session_id` with the next sequence number of `keys`.
pub fn seal(
    keys: &mut DirectionKeys,
    session_id: u32,
    message: &[u8],
) -> Result<Vec<u8>, SecuredError> {
    let too_large = || SecuredError::TooLarge(message.len());
    let app_length = u16::try_from(message.len()).map_err(|_| too_large())?;
    let length =
        u16::try_from(APP_LENGTH_SIZE + message.len() + TAG_SIZE).map_err(|_| too_large())?;
    let sequence = keys.sequence;
    let next = sequence
        .checked_add(1)
        .ok_or(SecuredError::SequenceExhausted)?;
    let header = RecordHeader {
        session_id: session_id.into(),
        length: length.into(),
    };
    let mut plaintext = Vec::with_capacity(APP_LENGTH_SIZE + message.len());
    plaintext.extend_from_slice(&app_length.to_le_bytes());
    plaintext.extend_from_slice(message);
    let sealed = cipher(keys)
        .encrypt(
            &Nonce::from(keys.nonce(sequence)),
            Payload {
                msg: &plaintext,
                aad: header.as_bytes(),
            },
        )
        .map_err(|_| too_large())?;
    keys.sequence = next;
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a record of `session_id` with the next sequence number of `keys` and returns the
/// SPDM message inside. The sequence number advances only when the record authenticates, so a
/// refused record changes nothing.
pub fn open(
    keys: &mut DirectionKeys,
    session_id: u32,
    bytes: &[u8],
) -> Result<Vec<u8>, SecuredError> {
    let record = Record::parse(bytes)?;
    let found = record.header.session_id.get();
    if found != session_id {
        return Err(SecuredError::WrongSession {
            found,
            expected: session_id,
        });
    }
    let sequence = keys.sequence;
    let next = sequence
        .checked_add(1)
        .ok_or(SecuredError::SequenceExhausted)?;
    let plaintext = cipher(keys)
        .decrypt(
            &Nonce::from(keys.nonce(sequence)),
            Payload {
                msg: record.sealed,
                aad: record.header.as_bytes(),
            },
        )
        .map_err(|_| SecuredError::Authentication)?;
    let (length, rest) = plaintext
        .split_at_checked(APP_LENGTH_SIZE)
        .ok_or(SecuredError::Truncated)?;
    let app_length = usize::from(u16::from_le_bytes([length[0], length[1]]));
    let message = rest
        .get(..app_length)
        .ok_or(SecuredError::BadApplicationLength(app_length))?;
    keys.sequence = next;
    Ok(message.to_vec())
}
