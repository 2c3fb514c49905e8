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
//!   against an [`InterfacePolicy`] and unbinds the device when any step fails; "verify"
//!   includes the report's binding to the SPDM session ([`binding`]).
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
//! # The report's binding to the SPDM session
//!
//! The host's TSM talks to the device inside an SPDM 1.2 secured session; the guest cannot see
//! into it (the session keys stay with the host). What the guest can check itself is
//! device-signed: the flow fetches the `CertificateChain` report (the device's chain), the
//! `Measurements` report (session evidence: the session's signed key exchange and
//! measurements the device signed inside that session, one of them a *TDI binding block*
//! holding SHA-384 of the interface report and the session's TH1) and the `GuestDeviceId`
//! report, and [`verify_binding`] decides ([`binding`] lists the checks; each refusal names
//! its [`BindingCheck`] and the flow unbinds with `Graceful`). [`BindingPolicy`] says when the
//! binding is required (by default: when the host advertises
//! [`tdisp_proto::FEATURE_SESSION_EVIDENCE`]) and which roots the guest trusts (none by default,
//! so a required binding is refused until the guest configures them).
//!
//! ## What a guest can and cannot conclude
//!
//! When [`accept_device`] returns a [`VerifiedBinding`], the guest **can** conclude that the
//! holder of the private key of a leaf certificate, whose chain leads to one of its trusted
//! roots R:
//!
//! - signed the key exchange of an SPDM 1.2 session S (S is named by its TH1,
//!   [`VerifiedBinding::session_th1`], a hash over the negotiation, the chain, both key
//!   exchange messages and that signature), and
//! - inside a connection with the same negotiation, signed measurements containing a TDI
//!   binding block that names S, the interface [`VerifiedBinding::interface`], the state
//!   CONFIG_LOCKED and SHA-384 of exactly the interface report bytes the guest received and
//!   checked against its [`InterfacePolicy`];
//! - with [`BindingPolicy::guest_nonce`] (the default; [`VerifiedBinding::fresh`]), signed
//!   those measurements over the nonce the guest drew for this request, so **after** the
//!   guest asked: the device was then in session S, with that TDI CONFIG_LOCKED and serving
//!   exactly these report bytes. The nonce travels in this project's extension of
//!   `tdisp.proto` ([`tdisp_proto::TdispGuestRequestInterface::request_attestation_report_with_nonce`]).
//!
//! So, if the device keeps its key secret and reports binding blocks truthfully, the device,
//! in session S and with that TDI CONFIG_LOCKED, was serving exactly these report bytes at a
//! time after the guest's request. Mixing or replaying evidence is refused: measurements not
//! signed over the guest's nonce (older evidence, a whole older session), measurements bound
//! to another session than the key exchange shown, a report other than the bound one, a
//! signature by another key, a chain to another root, a binding for another interface or for
//! a TDI already RUN.
//!
//! The guest **cannot** conclude:
//!
//! - anything after the last evidence was signed. The flow narrows the gap around its start:
//!   after the start succeeds it asks again with a new nonce and requires the same TDI RUN in
//!   the same session with the same report ([`verify_running`]), so a host that stopped,
//!   reconfigured and re-locked the TDI behind the start is refused (tested). What the device
//!   does later is the device's to enforce (TDISP moves a TDI whose locked configuration
//!   changes to ERROR); the host holds the session keys and could, for one, stop the TDI at
//!   any time;
//! - freshness when [`BindingPolicy::guest_nonce`] is off: the GET_MEASUREMENTS nonce is then
//!   the host's, and a host can replay a whole older session's evidence with that session's
//!   report while the bytes are identical (`tests/binding.rs` shows both cases);
//! - that the host relays anything else faithfully;
//! - which interface is the guest's: the `GuestDeviceId` report is the host's word; the device
//!   vouches for the (interface, report) pair only;
//! - anything from TDISP 1.0 itself: it does not sign the interface report, and SPDM 1.2
//!   measurement signatures do not cover the session's key exchange. The binding block is this
//!   project's own measurement format (see [`tdisp_proto::evidence::binding`]), produced by the
//!   emulated DSM; a device without it (DMTF spdm-emu, real devices today) cannot satisfy a
//!   required binding;
//! - that the certificates are unrevoked (never checked), or within their validity dates
//!   unless the policy gives a [`BindingPolicy::validity_time`] (then the root and every
//!   certificate must be valid at that time, which is only as trustworthy as the guest's
//!   clock: in a confidential VM the ordinary wall clock is the host's), or that the leaf
//!   names any particular device model: any key under R passes;
//! - anything about the other measurement blocks: they are signed and returned in the evidence
//!   for the guest's own appraisal, but the flow compares them with nothing;
//! - anything about the host's VMM beyond that (its MMIO and DMA mappings, IOMMU, IDE link
//!   protection, which this stack does not have);
//! - under the default [`BindingRequirement::WhenAdvertised`], anything from a host that does
//!   not advertise the feature: hiding it opts the guest out. A guest that must not depend on
//!   the host's word sets [`BindingRequirement::Always`]. A host over a plain channel cannot
//!   produce the evidence at all.

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
pub use binding::verify_running;
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
