//! The host dispatcher: `tdisp.GuestToHostCommand` bytes in, `tdisp.GuestToHostResponse`
//! bytes out (OpenVMM's `tdisp.proto`, see [`tdisp_proto::wire`]).
//!
//! The dispatcher knows nothing about transports: whatever carries the guest's messages (the
//! VMBus channel of [`crate::vmbus`], a test) hands each message to [`answer`] (one device) or
//! [`HostDispatcher::handle`] (a set of devices) and sends back the bytes returned. Every input
//! gets exactly one response and nothing panics: a message that does not decode is answered
//! with the result [`WireError::operation_error`] chooses and the device's unchanged state.

use crate::backend::TdiBackend;
use crate::state_machine::TdiStateMachine;
use prost::Message;
use std::collections::BTreeMap;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::WireError;
use tdisp_proto::wire::proto::GuestToHostCommand;

/// A device the dispatcher can drive: the guest trait plus a view of the state, which every
/// response carries before and after the command.
pub trait GuestDevice: TdispGuestRequestInterface + Send {
    /// The current state.
    fn tdi_state(&self) -> TdispTdiState;
}

impl<B: TdiBackend> GuestDevice for TdiStateMachine<B> {
    fn tdi_state(&self) -> TdispTdiState {
        self.state()
    }
}

impl<T: GuestDevice + ?Sized> GuestDevice for Box<T> {
    fn tdi_state(&self) -> TdispTdiState {
        (**self).tdi_state()
    }
}

/// Routes guest commands to the devices their `device_id` names (in-process use; the VMBus
/// transport gives each device its own channel and calls [`answer`]).
#[derive(Default)]
pub struct HostDispatcher {
    devices: BTreeMap<u64, Box<dyn GuestDevice>>,
}

impl std::fmt::Debug for HostDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.devices.iter().map(|(id, d)| (id, d.tdi_state())))
            .finish()
    }
}

impl HostDispatcher {
    /// A dispatcher with no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) device `device_id`; returns the replaced device.
    pub fn insert(
        &mut self,
        device_id: u64,
        device: Box<dyn GuestDevice>,
    ) -> Option<Box<dyn GuestDevice>> {
        self.devices.insert(device_id, device)
    }

    /// Removes device `device_id`.
    pub fn remove(&mut self, device_id: u64) -> Option<Box<dyn GuestDevice>> {
        self.devices.remove(&device_id)
    }

    /// The state of device `device_id`.
    pub fn tdi_state(&self, device_id: u64) -> Option<TdispTdiState> {
        self.devices.get(&device_id).map(GuestDevice::tdi_state)
    }

    /// Answers one encoded guest command with one encoded response.
    pub fn handle(&mut self, message: &[u8]) -> Vec<u8> {
        // Only the device id is needed to route; the device's own answer validates the rest.
        let device_id = match GuestToHostCommand::decode(message) {
            Ok(command) => command.device_id,
            Err(error) => {
                let error = WireError::from(error);
                tracing::info!(%error, len = message.len(), "malformed guest command");
                return error_response(TdispTdiState::Uninitialized, error.operation_error());
            }
        };
        match self.devices.get_mut(&device_id) {
            Some(device) => answer(device.as_mut(), device_id, message),
            None => {
                tracing::info!(device = device_id, "command for an unknown device");
                error_response(
                    TdispTdiState::Uninitialized,
                    TdispGuestOperationError::HostFailedToProcessCommand,
                )
            }
        }
    }
}

/// Answers one encoded command for `device`, whose host id is `device_id`.
///
/// A command naming another device is refused with `HostFailedToProcessCommand` and reaches
/// nothing: a channel's commands can only ever drive its own device.
pub fn answer<T: GuestDevice + ?Sized>(device: &mut T, device_id: u64, message: &[u8]) -> Vec<u8> {
    let command = match CommandPacket::decode(message) {
        Ok(command) => command,
        Err(error) => {
            tracing::info!(device = device_id, %error, len = message.len(), "malformed guest command");
            return error_response(device.tdi_state(), error.operation_error());
        }
    };
    if command.device_id != device_id {
        tracing::warn!(
            device = device_id,
            named = command.device_id,
            "command names another device"
        );
        return error_response(
            device.tdi_state(),
            TdispGuestOperationError::HostFailedToProcessCommand,
        );
    }
    dispatch_command(device, &command)
}

/// Runs one decoded command on `device` and encodes the response.
pub fn dispatch_command<T: GuestDevice + ?Sized>(
    device: &mut T,
    command: &CommandPacket,
) -> Vec<u8> {
    let before = device.tdi_state();
    let result = command.command.dispatch(device);
    let after = device.tdi_state();
    let response = ResponsePacket {
        state_before: before,
        state_after: after,
        result,
    };
    match response.encode() {
        Ok(bytes) => bytes,
        Err(error) => {
            // An oversize or empty report, or an implementation answering Err(Success): the
            // guest learns the host failed, with the states as they are.
            tracing::warn!(device = command.device_id, %error, "response cannot be encoded");
            let fallback = ResponsePacket {
                state_before: before,
                state_after: after,
                result: Err(TdispGuestOperationError::HostFailedToProcessCommand),
            };
            fallback.encode().unwrap_or_default()
        }
    }
}

/// An error response that changed nothing.
fn error_response(state: TdispTdiState, error: TdispGuestOperationError) -> Vec<u8> {
    let response = ResponsePacket {
        state_before: state,
        state_after: state,
        result: Err(error),
    };
    // An error response has no payload and never carries Success here, so it always
    // encodes; an empty message (all defaults: result Unknown) is the fallback.
    response.encode().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulated::EmulatedAssignment;
    use crate::state_machine::MachineConfig;
    use tdisp_proto::TdispGuestProtocolType;
    use tdisp_proto::TdispReportType;
    use tdisp_proto::wire::GuestCommand;
    use tdisp_proto::wire::GuestReply;
    use tdisp_proto::wire::proto;
    use tdisp_proto::wire::proto::guest_to_host_command::Command;

    const DEVICE: u64 = 3;

    fn dispatcher() -> HostDispatcher {
        let assignment = EmulatedAssignment::single(0x400, 0x401, DEVICE).unwrap();
        let mut dispatcher = HostDispatcher::new();
        dispatcher.insert(
            DEVICE,
            Box::new(assignment.machine(MachineConfig::new(DEVICE))),
        );
        dispatcher
    }

    fn send(dispatcher: &mut HostDispatcher, command: GuestCommand) -> ResponsePacket {
        let packet = CommandPacket {
            device_id: DEVICE,
            command,
        };
        let reply = ResponsePacket::decode(&dispatcher.handle(&packet.encode())).unwrap();
        reply.check_answers(&command).unwrap();
        reply
    }

    #[test]
    fn replies_carry_the_state_before_and_after() {
        let mut dispatcher = dispatcher();
        let reply = send(
            &mut dispatcher,
            GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        );
        assert_eq!(
            (reply.state_before, reply.state_after),
            (TdispTdiState::Uninitialized, TdispTdiState::Unlocked)
        );
        send(&mut dispatcher, GuestCommand::LockDeviceResources);
        let reply = send(&mut dispatcher, GuestCommand::LockDeviceResources);
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
        assert_eq!(
            (reply.state_before, reply.state_after),
            (TdispTdiState::Locked, TdispTdiState::Unlocked)
        );
    }

    fn raw(command: Option<Command>) -> Vec<u8> {
        GuestToHostCommand {
            device_id: DEVICE,
            command,
        }
        .encode_to_vec()
    }

    #[test]
    fn undecodable_commands_get_error_responses_and_change_nothing() {
        let mut dispatcher = dispatcher();
        let cases = [
            (raw(None), TdispGuestOperationError::InvalidGuestCommandId),
            (
                raw(Some(Command::GetTdiReport(
                    proto::TdispCommandRequestGetTdiReport {
                        report_type: 99,
                        nonce: Vec::new(),
                    },
                ))),
                TdispGuestOperationError::InvalidGuestAttestationReportType,
            ),
            (
                raw(Some(Command::GetDeviceInterfaceInfo(
                    proto::TdispCommandRequestGetDeviceInterfaceInfo {
                        guest_protocol_type: 9,
                    },
                ))),
                TdispGuestOperationError::InvalidGuestProtocolRequest,
            ),
            (
                vec![0xff; 200],
                TdispGuestOperationError::HostFailedToProcessCommand,
            ),
            (
                vec![1, 2, 3],
                TdispGuestOperationError::HostFailedToProcessCommand,
            ),
        ];
        for (message, expected) in cases {
            let reply = ResponsePacket::decode(&dispatcher.handle(&message)).unwrap();
            assert_eq!(reply.result, Err(expected));
        }
        // None of this touched the device.
        assert_eq!(
            dispatcher.tdi_state(DEVICE),
            Some(TdispTdiState::Uninitialized)
        );
    }

    #[test]
    fn unknown_device_is_answered_without_touching_others() {
        let mut dispatcher = dispatcher();
        let packet = CommandPacket {
            device_id: DEVICE + 1,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        };
        let reply = ResponsePacket::decode(&dispatcher.handle(&packet.encode())).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(
            dispatcher.tdi_state(DEVICE),
            Some(TdispTdiState::Uninitialized)
        );
        assert!(dispatcher.remove(DEVICE).is_some());
        assert_eq!(dispatcher.tdi_state(DEVICE), None);
    }

    #[test]
    fn a_device_answers_only_commands_naming_it() {
        let assignment = EmulatedAssignment::single(0x400, 0x401, DEVICE).unwrap();
        let mut machine = assignment.machine(MachineConfig::new(DEVICE));
        let other = CommandPacket {
            device_id: DEVICE + 1,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        };
        let reply = ResponsePacket::decode(&answer(&mut machine, DEVICE, &other.encode())).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), TdispTdiState::Uninitialized);
    }

    /// A device whose report does not fit in a response.
    struct Huge;

    impl TdispGuestRequestInterface for Huge {
        fn tdisp_negotiate_protocol(
            &mut self,
            _: TdispGuestProtocolType,
        ) -> Result<tdisp_proto::TdispDeviceInterfaceInfo, TdispGuestOperationError> {
            Err(TdispGuestOperationError::NotImplemented)
        }
        fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
            Ok(())
        }
        fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
            Ok(())
        }
        fn request_attestation_report(
            &mut self,
            _: TdispReportType,
        ) -> Result<Vec<u8>, TdispGuestOperationError> {
            Ok(vec![0; tdisp_proto::wire::MAX_REPORT_BUFFER + 1])
        }
        fn request_unbind(
            &mut self,
            _: tdisp_proto::TdispGuestUnbindReason,
        ) -> Result<(), TdispGuestOperationError> {
            Ok(())
        }
    }

    impl GuestDevice for Huge {
        fn tdi_state(&self) -> TdispTdiState {
            TdispTdiState::Locked
        }
    }

    #[test]
    fn oversized_reply_becomes_a_host_failure() {
        let command = CommandPacket {
            device_id: 1,
            command: GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
        };
        let reply = ResponsePacket::decode(&dispatch_command(&mut Huge, &command)).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert!(!matches!(
            reply.result,
            Ok(GuestReply::GetAttestationReport { .. })
        ));
    }
}
