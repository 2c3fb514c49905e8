//! The guest's acceptance flow: negotiate -> lock -> report -> verify -> start.

use crate::policy::InterfacePolicy;
use crate::policy::PolicyViolation;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::pcie::DecodeError;
use tdisp_proto::pcie::report::DeviceInterfaceReport;
use thiserror::Error;

/// A device the guest has verified and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedDevice {
    /// What negotiation returned.
    pub info: TdispDeviceInterfaceInfo,
    /// The decoded interface report the device was accepted on.
    pub report: DeviceInterfaceReport,
    /// The report exactly as received, for the guest's own attestation evidence.
    pub report_bytes: Vec<u8>,
}

/// Why the flow stopped. Every failure after a successful lock has already unbound the device
/// with reason `Graceful`; a policy refusal names the check that failed
/// ([`PolicyViolation::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlowError {
    /// The host says the device is not TDISP capable.
    #[error("device is not TDISP capable")]
    NotTdispCapable,
    /// Negotiation failed.
    #[error("protocol negotiation failed: {0}")]
    Negotiate(#[source] TdispGuestOperationError),
    /// Locking failed.
    #[error("lock failed: {0}")]
    Lock(#[source] TdispGuestOperationError),
    /// The interface report could not be fetched.
    #[error("interface report request failed: {0}")]
    Report(#[source] TdispGuestOperationError),
    /// The interface report is malformed.
    #[error("interface report malformed: {0}")]
    ReportDecode(#[source] DecodeError),
    /// The interface report does not satisfy the guest's policy.
    #[error("interface report rejected: {0}")]
    Policy(#[source] PolicyViolation),
    /// Starting failed.
    #[error("start failed: {0}")]
    Start(#[source] TdispGuestOperationError),
}

/// Takes a device from assignment to `Run`, verifying its interface report on the way.
///
/// On any failure after the lock, the device is unbound with reason `Graceful` (the guest
/// decided; best effort, an unbind failure is logged) so it never stays locked to a guest that
/// refused it. Generic over the interface so the same flow runs over any transport, or
/// directly against a host state machine.
pub fn accept_device<I: TdispGuestRequestInterface + ?Sized>(
    device: &mut I,
    protocol: TdispGuestProtocolType,
    policy: &InterfacePolicy,
) -> Result<AcceptedDevice, FlowError> {
    let info = device
        .tdisp_negotiate_protocol(protocol)
        .map_err(FlowError::Negotiate)?;
    if info.guest_protocol_type == TdispGuestProtocolType::Invalid {
        return Err(FlowError::NotTdispCapable);
    }
    device
        .request_lock_device_resources()
        .map_err(FlowError::Lock)?;
    let verified = fetch_and_verify(device, policy).and_then(|(report, report_bytes)| {
        device.request_start_tdi().map_err(FlowError::Start)?;
        Ok((report, report_bytes))
    });
    match verified {
        Ok((report, report_bytes)) => {
            tracing::info!(device = info.tdisp_device_id, "device verified and running");
            Ok(AcceptedDevice {
                info,
                report,
                report_bytes,
            })
        }
        Err(error) => {
            tracing::warn!(device = info.tdisp_device_id, %error, "refusing device; unbinding");
            if let Err(unbind) = device.request_unbind(TdispGuestUnbindReason::Graceful) {
                tracing::warn!(device = info.tdisp_device_id, %unbind, "unbind after refusal failed");
            }
            Err(error)
        }
    }
}

fn fetch_and_verify<I: TdispGuestRequestInterface + ?Sized>(
    device: &mut I,
    policy: &InterfacePolicy,
) -> Result<(DeviceInterfaceReport, Vec<u8>), FlowError> {
    let bytes = device
        .request_attestation_report(TdispReportType::InterfaceReport)
        .map_err(FlowError::Report)?;
    let report = DeviceInterfaceReport::decode(&bytes).map_err(FlowError::ReportDecode)?;
    policy.check(&report).map_err(FlowError::Policy)?;
    Ok((report, bytes))
}
