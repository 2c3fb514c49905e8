//! The 16-byte TDISP message header, message type codes and the interface id.

use super::codec::DecodeError;
use bitfield_struct::bitfield;
use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// TDISP version 1.0 (major version in the high nibble), the only version this crate speaks.
pub const TDISP_VERSION_1_0: u8 = 0x10;

/// Size of [`TdispHeader`] in bytes.
pub const TDISP_HEADER_SIZE: usize = 16;

/// TDISP message type codes: requests have bit 7 set, responses are `request & 0x7f`.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum TdispMessageType {
    /// Response to GET_TDISP_VERSION.
    TDISP_VERSION = 0x01,
    /// Response to GET_TDISP_CAPABILITIES.
    TDISP_CAPABILITIES = 0x02,
    /// Response to LOCK_INTERFACE_REQUEST.
    LOCK_INTERFACE_RESPONSE = 0x03,
    /// Response to GET_DEVICE_INTERFACE_REPORT.
    DEVICE_INTERFACE_REPORT = 0x04,
    /// Response to GET_DEVICE_INTERFACE_STATE.
    DEVICE_INTERFACE_STATE = 0x05,
    /// Response to START_INTERFACE_REQUEST.
    START_INTERFACE_RESPONSE = 0x06,
    /// Response to STOP_INTERFACE_REQUEST.
    STOP_INTERFACE_RESPONSE = 0x07,
    /// Response to BIND_P2P_STREAM_REQUEST.
    BIND_P2P_STREAM_RESPONSE = 0x08,
    /// Response to UNBIND_P2P_STREAM_REQUEST.
    UNBIND_P2P_STREAM_RESPONSE = 0x09,
    /// Response to SET_MMIO_ATTRIBUTE_REQUEST.
    SET_MMIO_ATTRIBUTE_RESPONSE = 0x0a,
    /// Response to VDM_REQUEST.
    VDM_RESPONSE = 0x0b,
    /// Response to SET_TDISP_CONFIG_REQUEST.
    SET_TDISP_CONFIG_RESPONSE = 0x0c,
    /// Error response to any request.
    TDISP_ERROR = 0x7f,
    /// Ask for the TDISP versions the device supports.
    GET_TDISP_VERSION = 0x81,
    /// Exchange TSM and DSM capabilities.
    GET_TDISP_CAPABILITIES = 0x82,
    /// Move a TDI from CONFIG_UNLOCKED to CONFIG_LOCKED.
    LOCK_INTERFACE_REQUEST = 0x83,
    /// Read (a portion of) the device interface report.
    GET_DEVICE_INTERFACE_REPORT = 0x84,
    /// Read the TDI state.
    GET_DEVICE_INTERFACE_STATE = 0x85,
    /// Move a TDI from CONFIG_LOCKED to RUN.
    START_INTERFACE_REQUEST = 0x86,
    /// Move a TDI back to CONFIG_UNLOCKED.
    STOP_INTERFACE_REQUEST = 0x87,
    /// Bind a peer-to-peer stream.
    BIND_P2P_STREAM_REQUEST = 0x88,
    /// Unbind a peer-to-peer stream.
    UNBIND_P2P_STREAM_REQUEST = 0x89,
    /// Update the attributes of an MMIO range.
    SET_MMIO_ATTRIBUTE_REQUEST = 0x8a,
    /// Vendor-defined message.
    VDM_REQUEST = 0x8b,
    /// Set DSM configuration.
    SET_TDISP_CONFIG_REQUEST = 0x8c,
}

impl TdispMessageType {
    /// Whether this code is one of the twelve request codes (0x81..=0x8c).
    pub fn is_request(self) -> bool {
        (0x81..=0x8c).contains(&self.0)
    }

    /// Whether this code is one of the response codes (0x01..=0x0c or TDISP_ERROR).
    pub fn is_response(self) -> bool {
        (0x01..=0x0c).contains(&self.0) || self == Self::TDISP_ERROR
    }

    /// The response code answering this request code (`request & 0x7f`), if this is a request.
    pub fn response_code(self) -> Option<Self> {
        self.is_request().then_some(Self(self.0 & 0x7f))
    }
}

/// The function id inside a TDISP interface id: which PCIe function the message is about.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct FunctionId {
    /// Requester id (bus/device/function) of the function hosting the TDI.
    pub requester_id: u16,
    /// PCIe segment of the function; meaningful only if `segment_valid`.
    pub segment: u8,
    /// Whether `segment` is valid.
    pub segment_valid: bool,
    /// Reserved, zero.
    #[bits(7)]
    __: u8,
}

impl FunctionId {
    /// Bits of the function id that carry meaning; the rest are reserved.
    pub const DEFINED_BITS: u32 = 0x01ff_ffff;
}

/// Identifies the TDI a message targets: the function id plus 8 reserved bytes.
///
/// The reserved bytes must be zero; the decoder rejects anything else, so this type only holds
/// the function id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct InterfaceId {
    /// The function hosting the TDI.
    pub function_id: FunctionId,
}

impl InterfaceId {
    /// The interface id of the function at `requester_id` with no segment.
    pub fn from_requester_id(requester_id: u16) -> Self {
        Self {
            function_id: FunctionId::new().with_requester_id(requester_id),
        }
    }
}

/// The 16-byte TDISP header as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdispHeader {
    /// Protocol version, [`TDISP_VERSION_1_0`].
    pub version: u8,
    /// Message type code.
    pub message_type: TdispMessageType,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// Interface id: function id.
    pub function_id: U32,
    /// Interface id: reserved, zero.
    pub interface_reserved: U64,
}
const _: () = assert!(size_of::<TdispHeader>() == TDISP_HEADER_SIZE);

impl TdispHeader {
    /// A version 1.0 header for `message_type` addressed to `interface_id`.
    pub fn new(message_type: TdispMessageType, interface_id: InterfaceId) -> Self {
        Self {
            version: TDISP_VERSION_1_0,
            message_type,
            reserved: [0; 2],
            function_id: interface_id.function_id.into_bits().into(),
            interface_reserved: 0.into(),
        }
    }

    /// Validates version and reserved fields and returns the interface id.
    pub fn validate(&self) -> Result<InterfaceId, DecodeError> {
        if self.version != TDISP_VERSION_1_0 {
            return Err(DecodeError::UnsupportedVersion(self.version));
        }
        if self.reserved != [0; 2] {
            return Err(DecodeError::ReservedBits("header reserved"));
        }
        let function_id = self.function_id.get();
        if function_id & !FunctionId::DEFINED_BITS != 0 {
            return Err(DecodeError::ReservedBits("function_id"));
        }
        if self.interface_reserved.get() != 0 {
            return Err(DecodeError::ReservedBits("interface_id reserved"));
        }
        Ok(InterfaceId {
            function_id: FunctionId::from_bits(function_id),
        })
    }
}
