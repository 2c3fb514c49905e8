//! TDISP_ERROR codes and the error response body.

use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;

/// Error codes carried in a TDISP_ERROR response.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TdispErrorCode {
    /// The request is malformed or not valid for the target.
    INVALID_REQUEST = 0x1,
    /// The device is busy; retry later.
    BUSY = 0x3,
    /// The TDI is in a state where the request is not allowed.
    INVALID_INTERFACE_STATE = 0x4,
    /// An error not otherwise specified.
    UNSPECIFIED = 0x5,
    /// The request is not supported.
    UNSUPPORTED_REQUEST = 0x7,
    /// The requested TDISP version is not supported.
    VERSION_MISMATCH = 0x41,
    /// Vendor-specific error; details in the extended error data.
    VENDOR_SPECIFIC_ERROR = 0xff,
    /// The interface id does not name a TDI of this device.
    INVALID_INTERFACE = 0x101,
    /// START_INTERFACE carried a nonce that does not match LOCK_INTERFACE's.
    INVALID_NONCE = 0x102,
    /// The device could not generate enough entropy for a nonce.
    INSUFFICIENT_ENTROPY = 0x103,
    /// The device configuration does not allow the request (for example at lock time).
    INVALID_DEVICE_CONFIGURATION = 0x104,
}

/// The fixed part of a TDISP_ERROR body as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ErrorBodyWire {
    /// [`TdispErrorCode`] value.
    pub error_code: U32,
    /// Code-specific data (zero for most codes).
    pub error_data: U32,
}
const _: () = assert!(size_of::<ErrorBodyWire>() == 8);

/// A decoded TDISP_ERROR body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdispErrorResponse {
    /// What went wrong.
    pub code: TdispErrorCode,
    /// Code-specific data.
    pub data: u32,
    /// Extended error data (for VENDOR_SPECIFIC_ERROR: registry id, vendor id length, vendor
    /// id, vendor data), kept as bytes.
    pub extended: Vec<u8>,
}

impl TdispErrorResponse {
    /// An error with no data and no extended data.
    ///
    /// ```
    /// use tdisp_proto::pcie::{TdispErrorCode, TdispErrorResponse, TdispResponse};
    /// let busy = TdispResponse::Error(TdispErrorResponse::new(TdispErrorCode::BUSY));
    /// assert!(matches!(busy, TdispResponse::Error(e) if e.data == 0));
    /// ```
    pub fn new(code: TdispErrorCode) -> Self {
        Self {
            code,
            data: 0,
            extended: Vec::new(),
        }
    }
}
