//! The VMBus channel-management protocol on the wire: every control message the guest's
//! `hv_vmbus` driver and the host exchange, byte for byte.
//!
//! Layouts follow Linux `include/linux/hyperv.h` (`enum vmbus_channel_message_type` and the
//! `vmbus_channel_*` structs) and OpenVMM's `vmbus_core::protocol`. A message is an 8-byte
//! [`MessageHeader`] (type, padding) followed by a body; a message is at most
//! [`MAX_MESSAGE_SIZE`] bytes (the payload of one synthetic interrupt controller message).
//! Every body struct is `zerocopy` with its size asserted beside it; all fields are
//! little-endian and byte-aligned, so the structs have no padding of their own.
//!
//! This module has no I/O: [`Message::parse`] turns bytes into a typed message (only checking
//! sizes), [`Message::encode`] turns a message into bytes. Whether a message is acceptable in
//! the current state is decided by the server and client, not here. [`gpadl`] splits a large
//! GPADL over header and body messages and reassembles it.

pub mod gpadl;

use crate::protocol::OfferWire;
use crate::protocol::UserDefinedData;
use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::I32;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Largest control message, header included (`HV_MESSAGE_PAYLOAD_BYTE_COUNT`).
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Size of [`MessageHeader`].
pub const HEADER_SIZE: usize = 8;
/// The connection id the guest posts control messages to (`VMBUS_MESSAGE_CONNECTION_ID_4`),
/// reported back in [`VersionResponse::selected_version_or_connection_id`] from version 5.0.
pub const MESSAGE_CONNECTION_ID: u32 = 4;

/// Success status in open results, GPADL creation and modify responses.
pub const STATUS_SUCCESS: i32 = 0;
/// Generic failure status (`STATUS_UNSUCCESSFUL`).
pub const STATUS_UNSUCCESSFUL: i32 = 0x8000_ffff_u32.cast_signed();
/// Failure status of a refused hvsocket connection (`STATUS_CONNECTION_REFUSED`).
pub const STATUS_CONNECTION_REFUSED: i32 = 0xc000_0236_u32.cast_signed();

/// Message type codes (`enum vmbus_channel_message_type`).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MessageType {
    /// Never valid.
    INVALID = 0,
    /// Host: a channel offer.
    OFFER_CHANNEL = 1,
    /// Host: an offer was withdrawn.
    RESCIND_CHANNEL_OFFER = 2,
    /// Guest: send me the offers.
    REQUEST_OFFERS = 3,
    /// Host: every current offer has been sent.
    ALL_OFFERS_DELIVERED = 4,
    /// Guest: open a channel.
    OPEN_CHANNEL = 5,
    /// Host: result of an open.
    OPEN_CHANNEL_RESULT = 6,
    /// Guest: close a channel.
    CLOSE_CHANNEL = 7,
    /// Guest: first part of a GPADL.
    GPADL_HEADER = 8,
    /// Guest: further page numbers of a GPADL.
    GPADL_BODY = 9,
    /// Host: result of a GPADL creation.
    GPADL_CREATED = 10,
    /// Guest: tear down a GPADL.
    GPADL_TEARDOWN = 11,
    /// Host: the GPADL is torn down.
    GPADL_TORNDOWN = 12,
    /// Guest: it released a rescinded channel id.
    REL_ID_RELEASED = 13,
    /// Guest: connect with a protocol version.
    INITIATE_CONTACT = 14,
    /// Host: answer to a connect.
    VERSION_RESPONSE = 15,
    /// Guest: disconnect.
    UNLOAD = 16,
    /// Host: disconnected.
    UNLOAD_COMPLETE = 17,
    /// Guest: connect an hvsocket to a host service.
    TL_CONNECT_REQUEST = 21,
    /// Guest: move a channel's interrupts to another VP.
    MODIFY_CHANNEL = 22,
    /// Host: result of an hvsocket connect.
    TL_CONNECT_RESULT = 23,
    /// Host: result of a modify.
    MODIFY_CHANNEL_RESPONSE = 24,
}

/// Protocol versions this code speaks, `major << 16 | minor`.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Version {
    /// 3.0, Windows 8.1 / Server 2012 R2.
    WIN8_1 = 0x0003_0000,
    /// 4.0, Windows 10.
    WIN10 = 0x0004_0000,
    /// 4.1, Windows 10 RS3 (adds MODIFY_CHANNEL).
    WIN10_RS3_0 = 0x0004_0001,
    /// 5.0 (messages go to connection id 4).
    WIN10_RS3_1 = 0x0005_0000,
    /// 5.1, Windows 10 RS4.
    WIN10_RS4 = 0x0005_0001,
    /// 5.2, Windows Server 2019 (hvsocket silo ids).
    WIN10_RS5 = 0x0005_0002,
    /// 5.3, Windows Server 2022 ("Iron"; MODIFY_CHANNEL_RESPONSE).
    IRON = 0x0005_0003,
    /// 6.0 ("Copper"; feature flags, client id, confidential channels).
    COPPER = 0x0006_0000,
}

impl Version {
    /// Every version the server accepts, newest first (the order a client tries them).
    pub const SUPPORTED: [Version; 8] = [
        Version::COPPER,
        Version::IRON,
        Version::WIN10_RS5,
        Version::WIN10_RS4,
        Version::WIN10_RS3_1,
        Version::WIN10_RS3_0,
        Version::WIN10,
        Version::WIN8_1,
    ];

    /// True if this code speaks the version.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// True if connections at this version negotiate feature flags.
    pub fn has_feature_flags(self) -> bool {
        self >= Version::COPPER
    }
}

/// The header of every control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MessageHeader {
    /// A [`MessageType`].
    pub message_type: U32,
    /// Zero.
    pub padding: U32,
}
const _: () = assert!(size_of::<MessageHeader>() == HEADER_SIZE);

/// INITIATE_CONTACT body (`vmbus_channel_initiate_contact` without its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitiateContact {
    /// The [`Version`] the guest asks for.
    pub version_requested: U32,
    /// The VP the host sends control messages to.
    pub target_message_vp: U32,
    /// Before 5.0 the interrupt page GPA; from 5.0 a [`TargetInfo`] (SINT, VTL, and from 6.0
    /// the requested feature flags in the upper half).
    pub interrupt_page_or_target_info: U64,
    /// GPA of the host-to-guest monitor page (0 = none).
    pub parent_to_child_monitor_page_gpa: U64,
    /// GPA of the guest-to-host monitor page (0 = none).
    pub child_to_parent_monitor_page_gpa: U64,
}
const _: () = assert!(size_of::<InitiateContact>() == 32);

/// INITIATE_CONTACT body with a client id (6.0 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitiateContact2 {
    /// The 5.x fields.
    pub base: InitiateContact,
    /// A GUID naming the client (wire order), zero if unspecified.
    pub client_id: [u8; 16],
}
const _: () = assert!(size_of::<InitiateContact2>() == 48);

/// The meaning of [`InitiateContact::interrupt_page_or_target_info`] from version 5.0.
#[bitfield_struct::bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct TargetInfo {
    /// The SINT the host sends messages to.
    pub sint: u8,
    /// The VTL the host sends messages to.
    pub vtl: u8,
    #[bits(16)]
    _reserved: u16,
    /// The feature flags the guest asks for (6.0 and later).
    pub feature_flags: u32,
}

/// Values of [`VersionResponse::connection_state`].
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionState {
    /// Connected.
    SUCCESSFUL = 0,
    /// The host is out of resources.
    FAILED_LOW_RESOURCES = 1,
    /// Any other failure.
    FAILED_UNKNOWN_FAILURE = 2,
}

/// VERSION_RESPONSE body (`vmbus_channel_version_response` without its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VersionResponse {
    /// Non-zero if the requested version is accepted.
    pub version_supported: u8,
    /// A [`ConnectionState`].
    pub connection_state: u8,
    /// Zero.
    pub padding: U16,
    /// From 5.0: the connection id for further messages ([`MESSAGE_CONNECTION_ID`]).
    pub selected_version_or_connection_id: U32,
}
const _: () = assert!(size_of::<VersionResponse>() == 8);

/// VERSION_RESPONSE body with the host's feature flags (sent when 6.0 or later is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VersionResponse2 {
    /// The base response.
    pub base: VersionResponse,
    /// The features the host grants (a subset of those asked for).
    pub supported_features: U32,
}
const _: () = assert!(size_of::<VersionResponse2>() == 12);

/// OFFER_CHANNEL body (`vmbus_channel_offer_channel` without its header).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OfferChannel {
    /// The 176-byte offer (`vmbus_channel_offer`).
    pub offer: OfferWire,
    /// The channel id (`child_relid`) the guest uses in every later message.
    pub channel_id: U32,
    /// Monitor id (unused: monitor pages are not implemented).
    pub monitor_id: u8,
    /// Bit 0: the monitor id is valid.
    pub monitor_allocated: u8,
    /// Bit 0: the channel has a dedicated interrupt.
    pub is_dedicated: U16,
    /// The connection id the guest signals the host with.
    pub connection_id: U32,
}
const _: () = assert!(size_of::<OfferChannel>() == 188);

/// A body that is just a channel id: RESCIND_CHANNEL_OFFER, CLOSE_CHANNEL, REL_ID_RELEASED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ChannelIdBody {
    /// The channel id.
    pub channel_id: U32,
}
const _: () = assert!(size_of::<ChannelIdBody>() == 4);

/// OPEN_CHANNEL body (`vmbus_channel_open_channel` without its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenChannel {
    /// The channel to open.
    pub channel_id: U32,
    /// Echoed in the result.
    pub open_id: U32,
    /// The GPADL holding both rings.
    pub ring_buffer_gpadl_id: U32,
    /// The VP the host interrupts.
    pub target_vp: U32,
    /// Page offset of the host-to-guest ring within the GPADL.
    pub downstream_ring_buffer_page_offset: U32,
    /// Opener's data for the device.
    pub user_data: UserDefinedData,
}
const _: () = assert!(size_of::<OpenChannel>() == 140);

/// OPEN_CHANNEL body with guest-chosen signal parameters (6.0 with the feature flags
/// `guest_specified_signal_parameters` or `channel_interrupt_redirection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenChannel2 {
    /// The base open.
    pub base: OpenChannel,
    /// The connection id the guest will signal the host with.
    pub connection_id: U32,
    /// The event flag the host signals the guest with.
    pub event_flag: U16,
    /// Bit 0: redirect interrupts.
    pub flags: U16,
}
const _: () = assert!(size_of::<OpenChannel2>() == 148);

/// OPEN_CHANNEL_RESULT body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenResult {
    /// The channel.
    pub channel_id: U32,
    /// The open request's id.
    pub open_id: U32,
    /// [`STATUS_SUCCESS`] or a failure status.
    pub status: U32,
}
const _: () = assert!(size_of::<OpenResult>() == 12);

/// GPADL_HEADER body; up to [`GpadlHeader::MAX_WORDS`] u64 words of the range buffer follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlHeader {
    /// The channel the GPADL belongs to.
    pub channel_id: U32,
    /// The guest-chosen GPADL id.
    pub gpadl_id: U32,
    /// Byte length of the whole range buffer (all messages).
    pub len: U16,
    /// Number of ranges.
    pub count: U16,
}
const _: () = assert!(size_of::<GpadlHeader>() == 12);

impl GpadlHeader {
    /// Range-buffer words that fit after the header (27).
    pub const MAX_WORDS: usize = (MAX_MESSAGE_SIZE - HEADER_SIZE - size_of::<Self>()) / 8;
}

/// GPADL_BODY body; up to [`GpadlBody::MAX_WORDS`] u64 page numbers follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlBody {
    /// Message number (`msgnumber`; Linux fills it, hosts ignore it).
    pub message_number: U32,
    /// The GPADL being continued.
    pub gpadl_id: U32,
}
const _: () = assert!(size_of::<GpadlBody>() == 8);

impl GpadlBody {
    /// Page numbers that fit after the header (28).
    pub const MAX_WORDS: usize = (MAX_MESSAGE_SIZE - HEADER_SIZE - size_of::<Self>()) / 8;
}

/// GPADL_CREATED body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlCreated {
    /// The channel.
    pub channel_id: U32,
    /// The GPADL.
    pub gpadl_id: U32,
    /// [`STATUS_SUCCESS`] or a failure status.
    pub status: I32,
}
const _: () = assert!(size_of::<GpadlCreated>() == 12);

/// GPADL_TEARDOWN body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlTeardown {
    /// The channel.
    pub channel_id: U32,
    /// The GPADL.
    pub gpadl_id: U32,
}
const _: () = assert!(size_of::<GpadlTeardown>() == 8);

/// GPADL_TORNDOWN body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlTorndown {
    /// The GPADL.
    pub gpadl_id: U32,
}
const _: () = assert!(size_of::<GpadlTorndown>() == 4);

/// MODIFY_CHANNEL body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModifyChannel {
    /// The channel.
    pub channel_id: U32,
    /// The new target VP.
    pub target_vp: U32,
}
const _: () = assert!(size_of::<ModifyChannel>() == 8);

/// MODIFY_CHANNEL_RESPONSE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModifyChannelResponse {
    /// The channel.
    pub channel_id: U32,
    /// [`STATUS_SUCCESS`] or a failure status.
    pub status: I32,
}
const _: () = assert!(size_of::<ModifyChannelResponse>() == 8);

/// TL_CONNECT_REQUEST body (hvsocket connect from the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TlConnectRequest {
    /// The guest's endpoint GUID (wire order).
    pub endpoint_id: [u8; 16],
    /// The host service GUID (wire order).
    pub service_id: [u8; 16],
}
const _: () = assert!(size_of::<TlConnectRequest>() == 32);

/// TL_CONNECT_REQUEST body with a silo id (5.2 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TlConnectRequest2 {
    /// The base request.
    pub base: TlConnectRequest,
    /// The silo GUID (wire order), zero for none.
    pub silo_id: [u8; 16],
}
const _: () = assert!(size_of::<TlConnectRequest2>() == 48);

/// TL_CONNECT_RESULT body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TlConnectResult {
    /// The guest's endpoint GUID (wire order).
    pub endpoint_id: [u8; 16],
    /// The host service GUID (wire order).
    pub service_id: [u8; 16],
    /// [`STATUS_SUCCESS`] or e.g. [`STATUS_CONNECTION_REFUSED`].
    pub status: I32,
}
const _: () = assert!(size_of::<TlConnectResult>() == 36);

/// A control message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than one synthetic interrupt controller message.
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_SIZE}")]
    TooLong(usize),
    /// Shorter than the header.
    #[error("message of {0} bytes has no header")]
    NoHeader(usize),
    /// Shorter than its type's body.
    #[error("{message_type:?} message of {len} bytes is too short")]
    TooShort {
        /// The type.
        message_type: MessageType,
        /// The message's length.
        len: usize,
    },
    /// The variable part is not whole u64 words.
    #[error("{message_type:?} message has {0} trailing bytes", .trailing)]
    PartialWord {
        /// The type.
        message_type: MessageType,
        /// Bytes beyond the last whole word.
        trailing: usize,
    },
    /// A type code this protocol does not define.
    #[error("unknown message type {0:?}")]
    UnknownType(MessageType),
}

/// A parsed control message. Variable-length parts borrow from the input.
///
/// Where the protocol has a short and a long form of a message, both are variants, so that
/// a message re-encodes to the bytes it was parsed from.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// OFFER_CHANNEL.
    OfferChannel(OfferChannel),
    /// RESCIND_CHANNEL_OFFER.
    RescindChannelOffer(ChannelIdBody),
    /// REQUEST_OFFERS.
    RequestOffers,
    /// ALL_OFFERS_DELIVERED.
    AllOffersDelivered,
    /// OPEN_CHANNEL, short form.
    OpenChannel(OpenChannel),
    /// OPEN_CHANNEL with signal parameters.
    OpenChannel2(OpenChannel2),
    /// OPEN_CHANNEL_RESULT.
    OpenResult(OpenResult),
    /// CLOSE_CHANNEL.
    CloseChannel(ChannelIdBody),
    /// GPADL_HEADER and the range-buffer words it carries.
    GpadlHeader(GpadlHeader, &'a [U64]),
    /// GPADL_BODY and the page numbers it carries.
    GpadlBody(GpadlBody, &'a [U64]),
    /// GPADL_CREATED.
    GpadlCreated(GpadlCreated),
    /// GPADL_TEARDOWN.
    GpadlTeardown(GpadlTeardown),
    /// GPADL_TORNDOWN.
    GpadlTorndown(GpadlTorndown),
    /// REL_ID_RELEASED.
    RelIdReleased(ChannelIdBody),
    /// INITIATE_CONTACT, short form (before 6.0).
    InitiateContact(InitiateContact),
    /// INITIATE_CONTACT with a client id.
    InitiateContact2(InitiateContact2),
    /// VERSION_RESPONSE, short form.
    VersionResponse(VersionResponse),
    /// VERSION_RESPONSE with feature flags.
    VersionResponse2(VersionResponse2),
    /// UNLOAD.
    Unload,
    /// UNLOAD_COMPLETE.
    UnloadComplete,
    /// TL_CONNECT_REQUEST, short form.
    TlConnectRequest(TlConnectRequest),
    /// TL_CONNECT_REQUEST with a silo id.
    TlConnectRequest2(TlConnectRequest2),
    /// MODIFY_CHANNEL.
    ModifyChannel(ModifyChannel),
    /// TL_CONNECT_RESULT.
    TlConnectResult(TlConnectResult),
    /// MODIFY_CHANNEL_RESPONSE.
    ModifyChannelResponse(ModifyChannelResponse),
}

/// One encoded control message: at most [`MAX_MESSAGE_SIZE`] bytes, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageBuf {
    data: [u8; MAX_MESSAGE_SIZE],
    len: u8,
}

impl std::fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageBuf(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl MessageBuf {
    /// Copies raw bytes (e.g. received from a port); `None` if longer than a message.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut buf = Self {
            data: [0; MAX_MESSAGE_SIZE],
            len: u8::try_from(bytes.len())
                .ok()
                .filter(|&l| usize::from(l) <= MAX_MESSAGE_SIZE)?,
        };
        buf.data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(buf)
    }

    /// The message bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }

    fn new(message_type: MessageType, parts: &[&[u8]]) -> Self {
        let mut buf = Self {
            data: [0; MAX_MESSAGE_SIZE],
            len: 0,
        };
        let header = MessageHeader {
            message_type: message_type.0.into(),
            padding: 0.into(),
        };
        buf.push(header.as_bytes());
        for part in parts {
            buf.push(part);
        }
        buf
    }

    /// Appends bytes; anything beyond the message limit is dropped (encoders never produce
    /// that, see the size assertions and `MAX_WORDS`).
    fn push(&mut self, bytes: &[u8]) {
        let start = usize::from(self.len);
        let end = (start + bytes.len()).min(MAX_MESSAGE_SIZE);
        if let (Some(dst), Some(src)) = (self.data.get_mut(start..end), bytes.get(..end - start)) {
            dst.copy_from_slice(src);
        }
        self.len = end as u8;
    }
}

fn body<T: FromBytes + KnownLayout + Immutable + Copy>(
    message_type: MessageType,
    bytes: &[u8],
    len: usize,
) -> Result<T, ParseError> {
    // Messages may be padded beyond their struct (hosts pad to fixed sizes); only a short
    // one is an error.
    T::read_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| ParseError::TooShort { message_type, len })
}

fn body_with_words<T: FromBytes + KnownLayout + Immutable + Copy>(
    message_type: MessageType,
    bytes: &[u8],
    len: usize,
) -> Result<(T, &[U64]), ParseError> {
    let (fixed, rest) =
        T::read_from_prefix(bytes).map_err(|_| ParseError::TooShort { message_type, len })?;
    let words = <[U64]>::ref_from_bytes(rest).map_err(|_| ParseError::PartialWord {
        message_type,
        trailing: rest.len() % 8,
    })?;
    Ok((fixed, words))
}

impl<'a> Message<'a> {
    /// Parses one message. Only sizes are checked here; what the values mean is up to the
    /// receiver.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let len = bytes.len();
        if len > MAX_MESSAGE_SIZE {
            return Err(ParseError::TooLong(len));
        }
        let (header, b) =
            MessageHeader::read_from_prefix(bytes).map_err(|_| ParseError::NoHeader(len))?;
        let t = MessageType(header.message_type.get());
        // Long forms are recognised by length, as the protocol's peers do.
        let at_least = |n: usize| b.len() >= n;
        Ok(match t {
            MessageType::OFFER_CHANNEL => Self::OfferChannel(body(t, b, len)?),
            MessageType::RESCIND_CHANNEL_OFFER => Self::RescindChannelOffer(body(t, b, len)?),
            MessageType::REQUEST_OFFERS => Self::RequestOffers,
            MessageType::ALL_OFFERS_DELIVERED => Self::AllOffersDelivered,
            MessageType::OPEN_CHANNEL if at_least(size_of::<OpenChannel2>()) => {
                Self::OpenChannel2(body(t, b, len)?)
            }
            MessageType::OPEN_CHANNEL => Self::OpenChannel(body(t, b, len)?),
            MessageType::OPEN_CHANNEL_RESULT => Self::OpenResult(body(t, b, len)?),
            MessageType::CLOSE_CHANNEL => Self::CloseChannel(body(t, b, len)?),
            MessageType::GPADL_HEADER => {
                let (h, w) = body_with_words(t, b, len)?;
                Self::GpadlHeader(h, w)
            }
            MessageType::GPADL_BODY => {
                let (h, w) = body_with_words(t, b, len)?;
                Self::GpadlBody(h, w)
            }
            MessageType::GPADL_CREATED => Self::GpadlCreated(body(t, b, len)?),
            MessageType::GPADL_TEARDOWN => Self::GpadlTeardown(body(t, b, len)?),
            MessageType::GPADL_TORNDOWN => Self::GpadlTorndown(body(t, b, len)?),
            MessageType::REL_ID_RELEASED => Self::RelIdReleased(body(t, b, len)?),
            MessageType::INITIATE_CONTACT if at_least(size_of::<InitiateContact2>()) => {
                Self::InitiateContact2(body(t, b, len)?)
            }
            MessageType::INITIATE_CONTACT => Self::InitiateContact(body(t, b, len)?),
            MessageType::VERSION_RESPONSE if at_least(size_of::<VersionResponse2>()) => {
                Self::VersionResponse2(body(t, b, len)?)
            }
            MessageType::VERSION_RESPONSE => Self::VersionResponse(body(t, b, len)?),
            MessageType::UNLOAD => Self::Unload,
            MessageType::UNLOAD_COMPLETE => Self::UnloadComplete,
            MessageType::TL_CONNECT_REQUEST if at_least(size_of::<TlConnectRequest2>()) => {
                Self::TlConnectRequest2(body(t, b, len)?)
            }
            MessageType::TL_CONNECT_REQUEST => Self::TlConnectRequest(body(t, b, len)?),
            MessageType::MODIFY_CHANNEL => Self::ModifyChannel(body(t, b, len)?),
            MessageType::TL_CONNECT_RESULT => Self::TlConnectResult(body(t, b, len)?),
            MessageType::MODIFY_CHANNEL_RESPONSE => Self::ModifyChannelResponse(body(t, b, len)?),
            _ => return Err(ParseError::UnknownType(t)),
        })
    }

    /// The message's type code.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::OfferChannel(_) => MessageType::OFFER_CHANNEL,
            Self::RescindChannelOffer(_) => MessageType::RESCIND_CHANNEL_OFFER,
            Self::RequestOffers => MessageType::REQUEST_OFFERS,
            Self::AllOffersDelivered => MessageType::ALL_OFFERS_DELIVERED,
            Self::OpenChannel(_) | Self::OpenChannel2(_) => MessageType::OPEN_CHANNEL,
            Self::OpenResult(_) => MessageType::OPEN_CHANNEL_RESULT,
            Self::CloseChannel(_) => MessageType::CLOSE_CHANNEL,
            Self::GpadlHeader(..) => MessageType::GPADL_HEADER,
            Self::GpadlBody(..) => MessageType::GPADL_BODY,
            Self::GpadlCreated(_) => MessageType::GPADL_CREATED,
            Self::GpadlTeardown(_) => MessageType::GPADL_TEARDOWN,
            Self::GpadlTorndown(_) => MessageType::GPADL_TORNDOWN,
            Self::RelIdReleased(_) => MessageType::REL_ID_RELEASED,
            Self::InitiateContact(_) | Self::InitiateContact2(_) => MessageType::INITIATE_CONTACT,
            Self::VersionResponse(_) | Self::VersionResponse2(_) => MessageType::VERSION_RESPONSE,
            Self::Unload => MessageType::UNLOAD,
            Self::UnloadComplete => MessageType::UNLOAD_COMPLETE,
            Self::TlConnectRequest(_) | Self::TlConnectRequest2(_) => {
                MessageType::TL_CONNECT_REQUEST
            }
            Self::ModifyChannel(_) => MessageType::MODIFY_CHANNEL,
            Self::TlConnectResult(_) => MessageType::TL_CONNECT_RESULT,
            Self::ModifyChannelResponse(_) => MessageType::MODIFY_CHANNEL_RESPONSE,
        }
    }

    /// Encodes the message. Word lists longer than the message can hold are cut at the
    /// limit; [`gpadl::GpadlMessages`] never builds such a message.
    pub fn encode(&self) -> MessageBuf {
        let t = self.message_type();
        match self {
            Self::OfferChannel(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::RescindChannelOffer(m) | Self::CloseChannel(m) | Self::RelIdReleased(m) => {
                MessageBuf::new(t, &[m.as_bytes()])
            }
            Self::RequestOffers
            | Self::AllOffersDelivered
            | Self::Unload
            | Self::UnloadComplete => MessageBuf::new(t, &[]),
            Self::OpenChannel(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::OpenChannel2(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::OpenResult(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::GpadlHeader(m, w) => MessageBuf::new(t, &[m.as_bytes(), w.as_bytes()]),
            Self::GpadlBody(m, w) => MessageBuf::new(t, &[m.as_bytes(), w.as_bytes()]),
            Self::GpadlCreated(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::GpadlTeardown(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::GpadlTorndown(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::InitiateContact(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::InitiateContact2(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::VersionResponse(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::VersionResponse2(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::TlConnectRequest(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::TlConnectRequest2(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::ModifyChannel(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::TlConnectResult(m) => MessageBuf::new(t, &[m.as_bytes()]),
            Self::ModifyChannelResponse(m) => MessageBuf::new(t, &[m.as_bytes()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn field_offsets_match_linux_structs() {
        use std::mem::offset_of;
        // Offsets in the Linux structs include the 8-byte header; these bodies start after it.
        // vmbus_channel_offer_channel: child_relid at 184, monitorid 188, connection_id 192.
        assert_eq!(HEADER_SIZE + offset_of!(OfferChannel, channel_id), 184);
        assert_eq!(HEADER_SIZE + offset_of!(OfferChannel, monitor_id), 188);
        assert_eq!(HEADER_SIZE + offset_of!(OfferChannel, connection_id), 192);
        // vmbus_channel_open_channel: userdata at 28.
        assert_eq!(HEADER_SIZE + offset_of!(OpenChannel, user_data), 28);
        assert_eq!(
            HEADER_SIZE + offset_of!(OpenChannel, downstream_ring_buffer_page_offset),
            24
        );
        // vmbus_channel_gpadl_header: range_buflen at 16, rangecount 18, ranges at 20.
        assert_eq!(HEADER_SIZE + offset_of!(GpadlHeader, len), 16);
        assert_eq!(HEADER_SIZE + size_of::<GpadlHeader>(), 20);
        // vmbus_channel_gpadl_body: pfn[] at 16.
        assert_eq!(HEADER_SIZE + size_of::<GpadlBody>(), 16);
        // vmbus_channel_initiate_contact: interrupt_page 16, monitor pages 24 and 32.
        assert_eq!(
            HEADER_SIZE + offset_of!(InitiateContact, interrupt_page_or_target_info),
            16
        );
        assert_eq!(
            HEADER_SIZE + offset_of!(InitiateContact, child_to_parent_monitor_page_gpa),
            32
        );
        // vmbus_channel_version_response: msg_conn_id at 12.
        assert_eq!(
            HEADER_SIZE + offset_of!(VersionResponse, selected_version_or_connection_id),
            12
        );
        // vmbus_channel_open_result: status at 16; gpadl_created: creation_status at 16.
        assert_eq!(HEADER_SIZE + offset_of!(OpenResult, status), 16);
        assert_eq!(HEADER_SIZE + offset_of!(GpadlCreated, status), 16);
        // vmbus_channel_modifychannel_response: status at 12.
        assert_eq!(HEADER_SIZE + offset_of!(ModifyChannelResponse, status), 12);
    }

    #[test]
    fn gpadl_word_limits_match_linux() {
        // Linux: (240 - sizeof(gpadl_header) = 20) / 8 words in the header, of which one is
        // the first range's header; (240 - 16) / 8 page numbers per body.
        assert_eq!(GpadlHeader::MAX_WORDS, 27);
        assert_eq!(GpadlBody::MAX_WORDS, 28);
    }

    #[test]
    fn short_and_long_forms_are_told_apart_by_length() {
        let open = OpenChannel::new_zeroed();
        let short = Message::OpenChannel(open).encode();
        assert_eq!(short.as_bytes().len(), 148);
        assert!(matches!(
            Message::parse(short.as_bytes()),
            Ok(Message::OpenChannel(_))
        ));
        let long = Message::OpenChannel2(OpenChannel2::new_zeroed()).encode();
        assert_eq!(long.as_bytes().len(), 156);
        assert!(matches!(
            Message::parse(long.as_bytes()),
            Ok(Message::OpenChannel2(_))
        ));
    }

    #[test]
    fn malformed_messages_get_typed_errors() {
        assert_eq!(
            Message::parse(&[0; 7]).unwrap_err(),
            ParseError::NoHeader(7)
        );
        assert_eq!(
            Message::parse(&[0; 241]).unwrap_err(),
            ParseError::TooLong(241)
        );
        let mut close = Message::CloseChannel(ChannelIdBody {
            channel_id: 1.into(),
        })
        .encode()
        .as_bytes()
        .to_vec();
        close.pop();
        assert_eq!(
            Message::parse(&close).unwrap_err(),
            ParseError::TooShort {
                message_type: MessageType::CLOSE_CHANNEL,
                len: 11
            }
        );
        let mut unknown = [0u8; 8];
        unknown[0] = 18;
        assert_eq!(
            Message::parse(&unknown).unwrap_err(),
            ParseError::UnknownType(MessageType(18))
        );
        let mut body = Message::GpadlBody(GpadlBody::new_zeroed(), &[]).encode();
        body.push(&[1, 2, 3]);
        assert!(matches!(
            Message::parse(body.as_bytes()),
            Err(ParseError::PartialWord { trailing: 3, .. })
        ));
    }

    #[test]
    fn target_info_puts_features_in_the_upper_half() {
        let info = TargetInfo::new()
            .with_sint(2)
            .with_vtl(0)
            .with_feature_flags(0x10);
        assert_eq!(info.into_bits(), 0x0000_0010_0000_0002);
    }

    proptest::proptest! {
        /// Any bytes either fail to parse or parse into a message whose encoding parses to
        /// the same type again; nothing panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..260)) {
            if let Ok(m) = Message::parse(&bytes) {
                let again = m.encode();
                let back = Message::parse(again.as_bytes()).unwrap();
                proptest::prop_assert_eq!(back.message_type(), m.message_type());
            }
        }
    }
}
