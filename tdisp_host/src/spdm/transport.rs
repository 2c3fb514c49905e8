//! SPDM over a PCIe DOE mailbox: plain messages travel as data object type 1, secured
//! records as type 2, and DOE discovery as type 0.
//!
//! A DOE object pads its payload to whole dwords and SPDM messages carry no length of their
//! own, so a plain message may arrive with up to three zero bytes after it.
//! [`decode_padded`] decodes such a payload and returns the exact message bytes, which are
//! what the transcripts hash.

use super::messages::CodecError;
use crate::tsm::doe::MAX_DOE_OBJECT_SIZE;
use crate::tsm::doe::MailboxError;
use tdisp_proto::framing::doe::DoeError;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;

/// Wraps `payload` in a PCI-SIG DOE data object of `object_type`.
pub fn encode_object(object_type: DoeObjectType, payload: &[u8]) -> Result<Vec<u8>, MailboxError> {
    let object = DoeObject::new(object_type, payload);
    if object.encoded_len() > MAX_DOE_OBJECT_SIZE {
        return Err(MailboxError::TooLarge(object.encoded_len()));
    }
    let mut out = Vec::with_capacity(object.encoded_len());
    object.encode(&mut out);
    Ok(out)
}

/// Decodes a whole DOE data object (bounded by [`MAX_DOE_OBJECT_SIZE`]).
pub fn decode_object(bytes: &[u8]) -> Result<(DoeObjectType, &[u8]), DoeError> {
    if bytes.len() > MAX_DOE_OBJECT_SIZE {
        return Err(DoeError::TrailingBytes {
            extra: bytes.len() - MAX_DOE_OBJECT_SIZE,
        });
    }
    let object = DoeObject::decode(bytes)?;
    Ok((object.object_type, object.payload))
}

/// Decodes a plain SPDM message that may be followed by up to three zero bytes of DOE
/// padding; returns the message and its exact bytes.
pub fn decode_padded<T>(
    payload: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, CodecError>,
) -> Result<(T, &[u8]), CodecError> {
    match decode(payload) {
        Ok(message) => Ok((message, payload)),
        Err(CodecError::TrailingBytes(extra)) if extra <= 3 => {
            let (exact, padding) = payload.split_at(payload.len() - extra);
            if padding.iter().any(|&b| b != 0) {
                return Err(CodecError::TrailingBytes(extra));
            }
            decode(exact).map(|message| (message, exact))
        }
        Err(e) => Err(e),
    }
}
