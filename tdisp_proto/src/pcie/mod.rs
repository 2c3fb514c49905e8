//! PCIe TDISP messages (PCIe 6.1 section 11): header, requests, responses, the device
//! interface report, error codes and capabilities.
//!
//! Every message is a 16-byte [`header::TdispHeader`] followed by a body whose layout the
//! message type decides. [`TdispMessage`] joins the header with a typed body
//! ([`TdispRequest`] or [`TdispResponse`]) and is the single encoder and decoder: decoding
//! parses into wire structs and then validates version, reserved bits, code/body match and
//! every count against the bytes present.

pub mod capabilities;
mod codec;
pub mod error;
pub mod header;
mod message;
pub mod report;
pub mod request;
pub mod response;
pub mod state;
pub mod vdm;

pub use capabilities::Capabilities;
pub use capabilities::LockInterfaceFlags;
pub use capabilities::RequestBitmap;
pub use codec::DecodeError;
pub use error::TdispErrorCode;
pub use error::TdispErrorResponse;
pub use header::InterfaceId;
pub use header::TdispMessageType;
pub use message::MessageBody;
pub use message::TdispMessage;
pub use message::TdispRequestMessage;
pub use message::TdispResponseMessage;
pub use report::DeviceInterfaceReport;
pub use report::MmioRange;
pub use request::LockInterfaceParams;
pub use request::TdispRequest;
pub use response::TdispResponse;
pub use state::TdiState;
