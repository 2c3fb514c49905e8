//! A whole TDISP message: header plus a typed body, with the one encoder and decoder.

use super::codec::DecodeError;
use super::codec::Reader;
use super::header::InterfaceId;
use super::header::TdispHeader;
use super::header::TdispMessageType;
use super::request::TdispRequest;
use super::response::TdispResponse;
use zerocopy::IntoBytes;

/// A typed message body that knows its code; implemented by [`TdispRequest`] and
/// [`TdispResponse`].
pub trait MessageBody: Sized {
    /// The message type code of this body.
    fn message_type(&self) -> TdispMessageType;
    /// Appends the body bytes (after the 16-byte header).
    fn encode_body(&self, out: &mut Vec<u8>);
    /// Decodes a body of `message_type` that occupies all of `body`.
    fn decode_body(message_type: TdispMessageType, body: &[u8]) -> Result<Self, DecodeError>;
}

/// A TDISP message: the TDI it is about plus its typed body.
///
/// The version is always 1.0 on encode and must be 1.0 on decode; reserved fields are zero on
/// encode and must be zero on decode; the body must occupy the buffer exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdispMessage<B> {
    /// The TDI the message is about.
    pub interface_id: InterfaceId,
    /// The typed body.
    pub body: B,
}

/// A TDISP request message.
pub type TdispRequestMessage = TdispMessage<TdispRequest>;
/// A TDISP response message.
pub type TdispResponseMessage = TdispMessage<TdispResponse>;

impl<B: MessageBody> TdispMessage<B> {
    /// A message about `interface_id` carrying `body`.
    pub fn new(interface_id: InterfaceId, body: B) -> Self {
        Self { interface_id, body }
    }

    /// Appends header and body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            TdispHeader::new(self.body.message_type(), self.interface_id).as_bytes(),
        );
        self.body.encode_body(out);
    }

    /// The encoded message as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one message occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let header: TdispHeader = reader.read()?;
        let interface_id = header.validate()?;
        let body = B::decode_body(header.message_type, reader.rest())?;
        Ok(Self { interface_id, body })
    }
}

impl TdispRequest {
    /// Wraps this body in a message about `interface_id` and encodes it to `out`.
    pub fn encode(&self, interface_id: InterfaceId, out: &mut Vec<u8>) {
        out.extend_from_slice(TdispHeader::new(self.message_type(), interface_id).as_bytes());
        self.encode_body(out);
    }

    /// Decodes a whole request message, returning the interface id and the body.
    pub fn decode(bytes: &[u8]) -> Result<(InterfaceId, Self), DecodeError> {
        TdispMessage::<Self>::decode(bytes).map(|m| (m.interface_id, m.body))
    }
}

impl TdispResponse {
    /// Wraps this body in a message about `interface_id` and encodes it to `out`.
    pub fn encode(&self, interface_id: InterfaceId, out: &mut Vec<u8>) {
        out.extend_from_slice(TdispHeader::new(self.message_type(), interface_id).as_bytes());
        self.encode_body(out);
    }

    /// Decodes a whole response message, returning the interface id and the body.
    pub fn decode(bytes: &[u8]) -> Result<(InterfaceId, Self), DecodeError> {
        TdispMessage::<Self>::decode(bytes).map(|m| (m.interface_id, m.body))
    }
}
