//! Guest-side TDISP: the guest's half of the device-assignment conversation.
//!
//! - [`GuestTransport`] is the seam to whatever carries messages to the host: the TDISP VMBus
//!   channel of [`vmbus`] (transaction ids, per-command timeout, cancellation) in the full
//!   stack; anything that moves bytes in tests.
//! - [`TdispGuestClient`] implements [`tdisp_proto::TdispGuestRequestInterface`] over a
//!   transport: each call becomes a `tdisp.GuestToHostCommand` of OpenVMM's `tdisp.proto`
//!   ([`tdisp_proto::wire::CommandPacket`]), and each response is decoded and checked before the
//!   guest believes it. The host is not trusted: a
//!   malformed, mismatched or state-inconsistent reply is an error, never a panic.
//! - [`accept_device`] runs the guest's flow, negotiate -> lock -> report -> verify -> start,
//!   against an [`InterfacePolicy`] and unbinds the device when any step fails.
//!
//! ```
//! use tdisp_guest::{GuestTransport, TdispGuestClient, TransportError};
//! use tdisp_proto::{TdispGuestOperationError, TdispGuestRequestInterface};
//!
//! /// A transport whose host always answers with garbage.
//! struct Garbage;
//! impl GuestTransport for Garbage {
//!     fn exchange(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
//!         Ok(vec![0xff; 7])
//!     }
//! }
//!
//! let mut client = TdispGuestClient::new(Garbage, 1);
//! assert_eq!(
//!     client.request_lock_device_resources(),
//!     Err(TdispGuestOperationError::HostFailedToProcessCommand)
//! );
//! ```
//!
//! Over VMBus (see `examples/vmbus_devices.rs`): find the host's TDISP offers with
//! [`vmbus::tdisp_offers`], open each with [`vmbus::open_tdisp_client`], run the returned
//! worker on an executor thread, and use the client from another thread.
//!
//! Scope today: the interface report is checked against the guest's expectations (ranges,
//! attributes, interface flags), but its authenticity rests on the host path delivering it; the
//! SPDM-session binding that lets a guest verify the device's signature arrives with the
//! secured-session work and is not claimed here.

#![forbid(unsafe_code)]

pub mod binding;
mod client;
mod flow;
mod policy;
mod transport;
pub mod vmbus;

pub use binding::BindingCheck;
pub use binding::BindingInputs;
pub use binding::BindingPolicy;
pub use binding::BindingRequirement;
pub use binding::BindingViolation;
pub use binding::VerifiedBinding;
pub use binding::decode_guest_device_id;
pub use binding::verify_binding;
pub use client::TdispGuestClient;
pub use flow::AcceptedDevice;
pub use flow::FlowError;
pub use flow::accept_device;
pub use policy::AssignedBar;
pub use policy::InterfacePolicy;
pub use policy::PolicyCheck;
pub use policy::PolicyViolation;
pub use transport::GuestTransport;
pub use transport::TransportError;
