//! The tdisp_proto conformance suite against the host state machine, driving the emulated DSM
//! through the TSM, called directly and through the packet dispatcher.

#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use tdisp_host::TdiStateMachine;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::guest_packet::GuestCommand;
use tdisp_proto::guest_packet::GuestCommandPacket;
use tdisp_proto::guest_packet::GuestReply;
use tdisp_proto::guest_packet::GuestReplyPacket;
use tdisp_proto::testing::ConformanceConfig;
use tdisp_proto::testing::check_names;
use tdisp_proto::testing::run_conformance;

const DEVICE: u64 = 11;

fn machine() -> TdiStateMachine<TsmBackend> {
    EmulatedAssignment::single(0x0200, 0x0201, DEVICE)
        .unwrap()
        .machine(MachineConfig::new(DEVICE))
}

fn config() -> ConformanceConfig {
    ConformanceConfig {
        protocol: TdispGuestProtocolType::IntelTdxConnectV1,
        report_types: vec![
            TdispReportType::InterfaceReport,
            TdispReportType::GuestDeviceId,
            TdispReportType::IsRegistered,
        ],
    }
}

#[test]
fn host_state_machine_passes_the_conformance_suite() {
    let report = run_conformance(&config(), machine);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.passed, check_names());
}

/// The trait carried over packets through the dispatcher, as a guest transport would.
struct OverPackets {
    dispatcher: HostDispatcher,
}

impl OverPackets {
    fn call(&mut self, command: GuestCommand) -> Result<GuestReply, TdispGuestOperationError> {
        let packet = GuestCommandPacket {
            device_id: DEVICE,
            command,
        };
        let reply = GuestReplyPacket::decode(&self.dispatcher.handle(&packet.to_bytes())).unwrap();
        reply.check_answers(&packet).unwrap();
        reply.result
    }
}

impl TdispGuestRequestInterface for OverPackets {
    fn tdisp_negotiate_protocol(
        &mut self,
        protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        match self.call(GuestCommand::NegotiateProtocol(protocol))? {
            GuestReply::NegotiateProtocol(info) => Ok(info),
            _ => Err(TdispGuestOperationError::Unknown),
        }
    }

    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::LockDeviceResources).map(drop)
    }

    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::StartTdi).map(drop)
    }

    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        match self.call(GuestCommand::GetAttestationReport(report_type))? {
            GuestReply::GetAttestationReport(report) => Ok(report),
            _ => Err(TdispGuestOperationError::Unknown),
        }
    }

    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::Unbind(reason)).map(drop)
    }
}

#[test]
fn dispatcher_passes_the_conformance_suite() {
    let report = run_conformance(&config(), || {
        let mut dispatcher = HostDispatcher::new();
        dispatcher.insert(DEVICE, Box::new(machine()));
        OverPackets { dispatcher }
    });
    assert!(report.is_ok(), "{report}");
}
