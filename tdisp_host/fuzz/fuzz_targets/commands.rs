//! Shared by the host fuzz targets: a guest command from two fuzzer bytes, covering every
//! command, protocol, report type (`Invalid` included), report with a guest nonce, and unbind
//! reason.

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
