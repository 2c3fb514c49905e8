//! Shared by the host fuzz targets: a guest command from two fuzzer bytes, covering every
//! command, protocol, report type (`Invalid` included), report with a guest nonce, and unbind
//! reason; and a host configuration change from a fuzzer byte and word.

use tdisp_host::dsm::ConfigChange;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::wire::GuestCommand;

/// The guest command `kind` selects, with `argument` choosing its parameter.
pub fn command(kind: u8, argument: u8) -> GuestCommand {
    let protocol = match argument % 3 {
        0 => TdispGuestProtocolType::Invalid,
        1 => TdispGuestProtocolType::AmdSevTioV1,
        _ => TdispGuestProtocolType::IntelTdxConnectV1,
    };
    let report = match argument % 6 {
        0 => TdispReportType::Invalid,
        1 => TdispReportType::GuestDeviceId,
        2 => TdispReportType::InterfaceReport,
        3 => TdispReportType::CertificateChain,
        4 => TdispReportType::Measurements,
        _ => TdispReportType::IsRegistered,
    };
    match kind % 6 {
        0 => GuestCommand::NegotiateProtocol(protocol),
        1 => GuestCommand::LockDeviceResources,
        2 => GuestCommand::StartTdi,
        3 => GuestCommand::GetAttestationReport(report),
        4 => GuestCommand::GetFreshAttestationReport {
            report_type: report,
            nonce: [argument; 32],
        },
        _ => GuestCommand::Unbind(if argument % 2 == 0 {
            TdispGuestUnbindReason::Unknown
        } else {
            TdispGuestUnbindReason::Graceful
        }),
    }
}

/// The configuration change `kind` selects for the function `requester_id`, with `value`
/// choosing its parameter; BAR moves pick one of the first `bars` BARs.
pub fn change(requester_id: u16, bars: u32, kind: u8, value: u32) -> ConfigChange {
    match kind % 4 {
        0 => ConfigChange::MoveBar {
            requester_id,
            bar: (value % bars) as u8,
            new_address: u64::from(value) << 12,
        },
        1 => ConfigChange::SetMsixControl {
            requester_id,
            message_control: value as u16,
        },
        2 => ConfigChange::SetMemorySpaceEnable {
            requester_id,
            enabled: value % 2 == 0,
        },
        _ => ConfigChange::FirmwareUpdate { new_version: value },
    }
}
