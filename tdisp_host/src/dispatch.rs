//! The host dispatcher: guest command packet bytes in, reply packet bytes out.
//!
//! The dispatcher knows nothing about transports: whatever carries the guest's packets (a VMBus
//! channel, a test) hands each packet to [`HostDispatcher::handle`] and sends back the bytes it
//! returns. Every input gets exactly one reply and nothing panics: a packet that does not decode
//! is answered with the error [`GuestPacketError::operation_error`] chooses, addressed with
//! whatever of its header could be read.

use crate::backend::TdiBackend;
use crate::state_machine::TdiStateMachine;
use std::collections::BTreeMap;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispTdiState;
use tdisp_proto::guest_packet::GuestCommandHeader;
use tdisp_proto::guest_packet::GuestCommandId;
use tdisp_proto::guest_packet::GuestCommandPacket;
use tdisp_proto::guest_packet::GuestPacketError;
use tdisp_proto::guest_packet::GuestReplyPacket;
use zerocopy::FromBytes;

/// A device the dispatcher can drive: the guest trait plus a view of the state, which every
/// reply carries before and after the command.
pub trait GuestDevice: TdispGuestRequestInterface + Send {
    /// The current state.
    fn tdi_state(&self) -> TdispTdiState;
}

impl<B: TdiBackend> GuestDevice for TdiStateMachine<B> {
    fn tdi_state(&self) -> TdispTdiState {
        self.state()
    }
}

/// Routes guest command packets to the devices they name.
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
        self.devices.get(&device_id).map(|d| d.tdi_state())
    }

    /// Answers one guest command packet with one reply packet.
    pub fn handle(&mut self, packet: &[u8]) -> Vec<u8> {
        let command = match GuestCommandPacket::decode(packet) {
            Ok(command) => command,
            Err(error) => return self.reject(packet, &error),
        };
        match self.devices.get_mut(&command.device_id) {
            Some(device) => dispatch_packet(device.as_mut(), &command),
            None => {
                tracing::info!(device = command.device_id, "command for an unknown device");
                encode_error(
                    command.device_id,
                    command.command.id(),
                    TdispTdiState::Uninitialized,
                    TdispGuestOperationError::HostFailedToProcessCommand,
                )
            }
        }
    }

    /// The reply to a packet that did not decode.
    fn reject(&self, packet: &[u8], error: &GuestPacketError) -> Vec<u8> {
        tracing::info!(%error, len = packet.len(), "malformed guest command");
        let (device_id, command_id) = match GuestCommandHeader::read_from_prefix(packet) {
            Ok((header, _)) => (
                header.device_id.get(),
                GuestCommandId(header.command_id.get()),
            ),
            Err(_) => (0, GuestCommandId(0)),
        };
        let state = self
            .tdi_state(device_id)
            .unwrap_or(TdispTdiState::Uninitialized);
        encode_error(device_id, command_id, state, error.operation_error())
    }
}

/// Runs one decoded command on `device` and encodes the reply.
pub fn dispatch_packet<T: GuestDevice + ?Sized>(
    device: &mut T,
    command: &GuestCommandPacket,
) -> Vec<u8> {
    let before = device.tdi_state();
    let result = command.command.dispatch(device);
    let after = device.tdi_state();
    let reply = GuestReplyPacket::answer(command, before, after, result);
    match reply.to_bytes() {
        Ok(bytes) => bytes,
        Err(error) => {
            // Only an oversized report gets here; the guest learns the host failed.
            tracing::warn!(%error, "reply does not fit in a packet");
            encode_error(
                command.device_id,
                command.command.id(),
                after,
                TdispGuestOperationError::HostFailedToProcessCommand,
            )
        }
    }
}

fn encode_error(
    device_id: u64,
    command_id: GuestCommandId,
    state: TdispTdiState,
    error: TdispGuestOperationError,
) -> Vec<u8> {
    let reply = GuestReplyPacket {
        device_id,
        command_id,
        state_before: state,
        state_after: state,
        result: Err(error),
    };
    // An error reply has no payload, so it always encodes; an empty reply is the fallback.
    reply.to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulated::EmulatedAssignment;
    use crate::state_machine::MachineConfig;
    use tdisp_proto::TdispGuestProtocolType;
    use tdisp_proto::TdispReportType;
    use tdisp_proto::guest_packet::GuestCommand;
    use tdisp_proto::guest_packet::GuestReply;
    use zerocopy::IntoBytes;

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

    fn send(dispatcher: &mut HostDispatcher, command: GuestCommand) -> GuestReplyPacket {
        let packet = GuestCommandPacket {
            device_id: DEVICE,
            command,
        };
        let reply = GuestReplyPacket::decode(&dispatcher.handle(&packet.to_bytes())).unwrap();
        reply.check_answers(&packet).unwrap();
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

    #[test]
    fn undecodable_packets_get_addressed_error_replies() {
        let mut dispatcher = dispatcher();
        let mut unknown_command = GuestCommandPacket {
            device_id: DEVICE,
            command: GuestCommand::StartTdi,
        }
        .to_bytes();
        unknown_command[4] = 42;
        let reply = GuestReplyPacket::decode(&dispatcher.handle(&unknown_command)).unwrap();
        assert_eq!(reply.device_id, DEVICE);
        assert_eq!(reply.command_id, GuestCommandId(42));
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::InvalidGuestCommandId)
        );

        let mut bad_report_type = GuestCommandPacket {
            device_id: DEVICE,
            command: GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
        }
        .to_bytes();
        bad_report_type[24..28].copy_from_slice(99u32.as_bytes());
        let reply = GuestReplyPacket::decode(&dispatcher.handle(&bad_report_type)).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::InvalidGuestAttestationReportType)
        );

        for garbage in [&[][..], &[1, 2, 3][..], &[0xff; 200][..]] {
            let reply = GuestReplyPacket::decode(&dispatcher.handle(garbage)).unwrap();
            assert_eq!(
                reply.result,
                Err(TdispGuestOperationError::HostFailedToProcessCommand)
            );
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
        let packet = GuestCommandPacket {
            device_id: DEVICE + 1,
            command: GuestCommand::LockDeviceResources,
        };
        let reply = GuestReplyPacket::decode(&dispatcher.handle(&packet.to_bytes())).unwrap();
        reply.check_answers(&packet).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert!(dispatcher.remove(DEVICE).is_some());
        assert_eq!(dispatcher.tdi_state(DEVICE), None);
    }

    /// A device whose report does not fit in a reply packet.
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
            Ok(vec![0; tdisp_proto::guest_packet::MAX_REPLY_PAYLOAD + 1])
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
        let command = GuestCommandPacket {
            device_id: 1,
            command: GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
        };
        let reply = GuestReplyPacket::decode(&dispatch_packet(&mut Huge, &command)).unwrap();
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert!(!matches!(
            reply.result,
            Ok(GuestReply::GetAttestationReport(_))
        ));
    }
}
