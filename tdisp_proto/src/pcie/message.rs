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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcie::DecodeError;

    fn get_version() -> Vec<u8> {
        TdispMessage::new(InterfaceId::from_requester_id(1), TdispRequest::GetVersion).to_bytes()
    }

    fn decode_request(bytes: &[u8]) -> Result<TdispRequestMessage, DecodeError> {
        TdispMessage::<TdispRequest>::decode(bytes)
    }

    #[test]
    fn other_versions_are_a_version_mismatch() {
        let mut wire = get_version();
        wire[0] = 0x20;
        assert_eq!(
            decode_request(&wire),
            Err(DecodeError::UnsupportedVersion(0x20))
        );
        wire[0] = 0x11;
        assert_eq!(
            decode_request(&wire),
            Err(DecodeError::UnsupportedVersion(0x11))
        );
    }

    #[test]
    fn header_reserved_fields_are_rejected() {
        for (index, value) in [(2, 1), (3, 0x80), (7, 0x02), (8, 1), (15, 0x80)] {
            let mut wire = get_version();
            wire[index] = value;
            assert!(
                matches!(decode_request(&wire), Err(DecodeError::ReservedBits(_))),
                "byte {index}"
            );
        }
    }

    #[test]
    fn codes_of_the_other_direction_are_rejected() {
        let mut wire = get_version();
        wire[1] = 0x01;
        assert_eq!(
            decode_request(&wire),
            Err(DecodeError::WrongDirection(0x01))
        );
        wire[1] = 0x81;
        assert_eq!(
            TdispMessage::<TdispResponse>::decode(&wire),
            Err(DecodeError::WrongDirection(0x81))
        );
    }

    #[test]
    fn unknown_codes_are_rejected() {
        for code in [0x00, 0x0d, 0x7e, 0x80, 0x8d, 0xff] {
            let mut wire = get_version();
            wire[1] = code;
            assert_eq!(
                decode_request(&wire),
                Err(DecodeError::UnknownMessageType(code))
            );
            assert_eq!(
                TdispMessage::<TdispResponse>::decode(&wire),
                Err(DecodeError::UnknownMessageType(code))
            );
        }
    }

    #[test]
    fn truncated_header_is_rejected() {
        let wire = get_version();
        assert_eq!(
            decode_request(&wire[..15]),
            Err(DecodeError::Truncated {
                needed: 16,
                have: 15
            })
        );
    }

    #[test]
    fn body_on_a_bodiless_request_is_rejected() {
        let mut wire = get_version();
        wire.push(0);
        assert_eq!(
            decode_request(&wire),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn lock_interface_reserved_flag_bits_and_byte_are_rejected() {
        let params = crate::pcie::LockInterfaceParams::default();
        let id = InterfaceId::default();
        let wire = TdispMessage::new(id, TdispRequest::LockInterface(params)).to_bytes();
        let mut bad_flags = wire.clone();
        bad_flags[16] = 0x20;
        assert!(matches!(
            decode_request(&bad_flags),
            Err(DecodeError::ReservedBits(_))
        ));
        let mut bad_reserved = wire;
        bad_reserved[19] = 1;
        assert!(matches!(
            decode_request(&bad_reserved),
            Err(DecodeError::ReservedBits(_))
        ));
    }

    #[test]
    fn version_response_needs_a_matching_nonzero_count() {
        let id = InterfaceId::default();
        let mut wire = TdispMessage::new(
            id,
            TdispResponse::Version {
                versions: vec![0x10],
            },
        )
        .to_bytes();
        wire[16] = 0;
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&wire),
            Err(DecodeError::InvalidValue { .. })
        ));
        wire[16] = 2;
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&wire),
            Err(DecodeError::CountMismatch { .. })
        ));
    }

    #[test]
    fn unknown_tdi_state_is_rejected() {
        let id = InterfaceId::default();
        let mut wire = TdispMessage::new(
            id,
            TdispResponse::DeviceInterfaceState {
                state: crate::pcie::TdiState::Run,
            },
        )
        .to_bytes();
        wire[16] = 4;
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&wire),
            Err(DecodeError::InvalidValue { .. })
        ));
    }

    #[test]
    fn report_portion_must_match_its_length_and_stay_under_the_cap() {
        let id = InterfaceId::default();
        let wire = TdispMessage::new(
            id,
            TdispResponse::DeviceInterfaceReport {
                remainder_length: 0,
                portion: vec![0; 8],
            },
        )
        .to_bytes();
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&wire[..wire.len() - 1]),
            Err(DecodeError::CountMismatch { .. })
        ));
        let mut huge = wire;
        huge[18..20].copy_from_slice(&0xfffcu16.to_le_bytes());
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn capabilities_reserved_bytes_are_rejected() {
        let caps = crate::pcie::Capabilities {
            dsm_caps: Default::default(),
            req_msg_supported: Default::default(),
            lock_interface_flags_supported: Default::default(),
            dev_addr_width: 52,
            num_req_this: 1,
            num_req_all: 1,
        };
        let mut wire =
            TdispMessage::new(InterfaceId::default(), TdispResponse::Capabilities(caps)).to_bytes();
        wire[16 + 22] = 1;
        assert!(matches!(
            TdispMessage::<TdispResponse>::decode(&wire),
            Err(DecodeError::ReservedBits(_))
        ));
    }

    #[test]
    fn response_code_is_request_code_without_bit_7() {
        assert_eq!(
            TdispMessageType::LOCK_INTERFACE_REQUEST.response_code(),
            Some(TdispMessageType::LOCK_INTERFACE_RESPONSE)
        );
        assert_eq!(TdispMessageType::TDISP_ERROR.response_code(), None);
        assert!(TdispMessageType::TDISP_ERROR.is_response());
        assert!(!TdispMessageType(0x8d).is_request());
    }
}
