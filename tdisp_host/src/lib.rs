//! Host-side TDISP: the state handler a guest's TDISP requests reach, the TSM that carries its
//! decisions to the device, and an emulated device security manager (DSM) to stand for a real
//! TDISP device.
//!
//! The host path is: guest `tdisp.proto` command (over the VMBus channel of [`vmbus`]) ->
//! [`dispatch::answer`] ->
//! [`state_machine::TdiStateMachine`] (the rules of `TdispGuestRequestInterface`) ->
//! [`backend::TsmBackend`] -> [`tsm::Tsm`] -> [`tsm::SecureChannel`] -> [`tsm::DoeMailbox`]
//! ([`tsm::RegisterMailbox`], driving the DOE registers one dword at a time) ->
//! [`dsm::DoeFunction`] (the device's DOE capability) -> [`dsm::EmulatedDsm`]. Each layer is
//! usable alone:
//!
//! - [`dsm`]: a TDISP responder for a configurable virtual function, answering every PCIe TDISP
//!   request as the specification says, at TDISP, SPDM or DOE level.
//! - [`tsm`]: probe/remove, connect/disconnect, bind/unbind and scope-checked guest requests,
//!   each serviced by DOE exchanges ("request + exec"), one outstanding command per device. It
//!   converges whatever the device does: state-changing requests that fail or go unanswered
//!   are followed by a state query, busy devices are retried with bounded backoff on an
//!   injectable [`tsm::Clock`], and STOP is sent only to a TDI not known to be unlocked.
//! - [`state_machine`] and [`history`]: the guest-facing machine and its diagnostics record.
//! - [`dispatch`]: command bytes in, response bytes out, independent of the transport.
//! - [`vmbus`]: the TDISP VMBus device, one channel per assigned device.
//! - [`emulated`]: the wiring of all of the above for an emulated device.
//! - [`spdm`]: SPDM 1.2 requester (in the TSM) and responder (around the emulated DSM).
//!
//! The channel between TSM and device is an SPDM 1.2 secured session ([`spdm`], behind the
//! [`tsm::SecureChannel`] seam); the insecure [`tsm::PlainChannel`] is refused unless opted in.
//! Over a session the guest is served the device's certificate chain and session evidence
//! (the `Measurements` report) that binds the interface report to the session, and the host
//! advertises [`tdisp_proto::FEATURE_SESSION_EVIDENCE`]; what a guest can and cannot conclude
//! from it is in [`spdm`]'s docs.
//!
//! A guest's whole cycle, as `tdisp.proto` messages:
//!
//! ```
//! use tdisp_host::dispatch::HostDispatcher;
//! use tdisp_host::emulated::EmulatedAssignment;
//! use tdisp_host::state_machine::MachineConfig;
//! use tdisp_proto::wire::{GuestCommand, CommandPacket, GuestReply, ResponsePacket};
//! use tdisp_proto::{TdispGuestProtocolType, TdispReportType, TdispTdiState};
//!
//! let device_id = 1;
//! let assignment = EmulatedAssignment::single(0x0100, 0x0101, device_id)?;
//! let mut dispatcher = HostDispatcher::new();
//! dispatcher.insert(device_id, Box::new(assignment.machine(MachineConfig::new(device_id))));
//!
//! let mut call = |command| {
//!     let packet = CommandPacket { device_id, command };
//!     ResponsePacket::decode(&dispatcher.handle(&packet.encode()))
//! };
//! call(GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1))?;
//! call(GuestCommand::LockDeviceResources)?;
//! let report = call(GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport))?;
//! assert!(matches!(report.result, Ok(GuestReply::GetAttestationReport { ref report, .. }) if !report.is_empty()));
//! let started = call(GuestCommand::StartTdi)?;
//! assert_eq!((started.state_before, started.state_after), (TdispTdiState::Locked, TdispTdiState::Run));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod dispatch;
pub mod dsm;
pub mod emulated;
pub mod history;
pub mod spdm;
pub mod state_machine;
pub mod tsm;
pub mod vmbus;

pub use dispatch::HostDispatcher;
pub use state_machine::TdiStateMachine;
