//! The guest's acceptance flow: negotiate -> lock -> report -> verify -> start.
//!
//! "Verify" is the policy's checks of the report ([`InterfacePolicy::check`]) and then, when
//! the policy requires it of this host ([`crate::BindingPolicy::is_required`]), the binding of
//! the report to the SPDM session: the flow fetches the `CertificateChain`, `Measurements`
//! (session evidence, asked with a fresh nonce of the guest's unless the policy says
//! otherwise) and `GuestDeviceId` reports, in that order, and [`crate::verify_binding`]
//! decides. After the start succeeds it asks for the evidence once more and
//! [`crate::verify_running`] requires the same TDI RUN in the same session with the same
//! report; a refusal there unbinds too.

use crate::binding::BindingInputs;
use crate::binding::BindingViolation;
use crate::binding::VerifiedBinding;
use crate::binding::verify_binding;
use crate::binding::verify_running;
use crate::policy::InterfacePolicy;
use crate::policy::PolicyViolation;
use tdisp_proto::REPORT_NONCE_SIZE;
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
    /// The verified binding of the report to the SPDM session, when the policy required it:
    /// the check after the start (TDI in RUN, same session and report as the check before it,
    /// which also passed).
    pub binding: Option<VerifiedBinding>,
}

/// Why the flow stopped. Every failure after a successful negotiation, a failed lock included,
/// has already unbound the device with reason `Graceful`; a policy refusal names the check that
/// failed ([`PolicyViolation::check`]).
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
    /// The interface report is not bound to the SPDM session as the policy requires; the
    /// violation names the check ([`BindingViolation::check`]).
    #[error("interface report not bound to the SPDM session: {0}")]
    Binding(#[source] BindingViolation),
    /// Starting failed.
    #[error("start failed: {0}")]
    Start(#[source] TdispGuestOperationError),
}

/// Takes a device from assignment to `Run`, verifying its interface report on the way.
///
/// On any failure after negotiation, the device is unbound with reason `Graceful` (the guest
/// decided; best effort, an unbind failure is logged) so it never stays locked to a guest that
/// refused it. That includes a failed lock: a lock whose answer was lost or refused as
/// inconsistent may have locked the device all the same, and after a lock the host refused
/// the device is already unlocked, where an unbind sends nothing to it. Generic over the
/// interface so the same flow runs over any transport, or directly against a host state
/// machine.
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
    let verified = device
        .request_lock_device_resources()
        .map_err(FlowError::Lock)
        .and_then(|()| fetch_and_verify(device, policy, info.supported_features))
        .and_then(|(report, report_bytes, locked)| {
            device.request_start_tdi().map_err(FlowError::Start)?;
            let running = match locked {
                Some((locked, guest_device_id)) => Some(verify_after_start(
                    device,
                    policy,
                    &locked,
                    &report_bytes,
                    &guest_device_id,
                )?),
                None => None,
            };
            Ok((report, report_bytes, running))
        });
    match verified {
        Ok((report, report_bytes, binding)) => {
            tracing::info!(
                device = info.tdisp_device_id,
                bound = binding.is_some(),
                "device verified and running"
            );
            Ok(AcceptedDevice {
                info,
                report,
                report_bytes,
                binding,
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

/// What the verify step yields: the decoded report, its bytes, and, if the binding is
/// required, the binding verified before the start with the guest device id it named.
type Verified = (
    DeviceInterfaceReport,
    Vec<u8>,
    Option<(VerifiedBinding, Vec<u8>)>,
);

/// Fetches the session evidence, with a fresh nonce of the guest's when the policy says so.
fn fetch_evidence<I: TdispGuestRequestInterface + ?Sized>(
    device: &mut I,
    policy: &InterfacePolicy,
) -> Result<(Vec<u8>, Option<[u8; REPORT_NONCE_SIZE]>), FlowError> {
    let missing = |error| {
        FlowError::Binding(BindingViolation::Missing {
            report_type: TdispReportType::Measurements,
            error,
        })
    };
    if !policy.binding.guest_nonce {
        let evidence = device
            .request_attestation_report(TdispReportType::Measurements)
            .map_err(missing)?;
        return Ok((evidence, None));
    }
    let mut nonce = [0; REPORT_NONCE_SIZE];
    getrandom::fill(&mut nonce).map_err(|_| FlowError::Binding(BindingViolation::NoRandomness))?;
    let evidence = device
        .request_attestation_report_with_nonce(TdispReportType::Measurements, nonce)
        .map_err(missing)?;
    Ok((evidence, Some(nonce)))
}

fn fetch_and_verify<I: TdispGuestRequestInterface + ?Sized>(
    device: &mut I,
    policy: &InterfacePolicy,
    supported_features: u64,
) -> Result<Verified, FlowError> {
    let bytes = device
        .request_attestation_report(TdispReportType::InterfaceReport)
        .map_err(FlowError::Report)?;
    let report = DeviceInterfaceReport::decode(&bytes).map_err(FlowError::ReportDecode)?;
    policy.check(&report).map_err(FlowError::Policy)?;
    if !policy.binding.is_required(supported_features) {
        return Ok((report, bytes, None));
    }
    let mut fetch = |report_type| {
        device
            .request_attestation_report(report_type)
            .map_err(|error| FlowError::Binding(BindingViolation::Missing { report_type, error }))
    };
    let chain = fetch(TdispReportType::CertificateChain)?;
    let (evidence, nonce) = fetch_evidence(device, policy)?;
    let guest_device_id = device
        .request_attestation_report(TdispReportType::GuestDeviceId)
        .map_err(|error| {
            FlowError::Binding(BindingViolation::Missing {
                report_type: TdispReportType::GuestDeviceId,
                error,
            })
        })?;
    let binding = verify_binding(
        &policy.binding,
        BindingInputs {
            report: &bytes,
            chain: &chain,
            evidence: &evidence,
            guest_device_id: &guest_device_id,
            nonce,
        },
    )
    .map_err(FlowError::Binding)?;
    Ok((report, bytes, Some((binding, guest_device_id))))
}

/// After the start: fresh evidence must show the same TDI RUN in the same session with the
/// same report ([`verify_running`]).
fn verify_after_start<I: TdispGuestRequestInterface + ?Sized>(
    device: &mut I,
    policy: &InterfacePolicy,
    locked: &VerifiedBinding,
    report: &[u8],
    guest_device_id: &[u8],
) -> Result<VerifiedBinding, FlowError> {
    let (evidence, nonce) = fetch_evidence(device, policy)?;
    verify_running(
        &policy.binding,
        locked,
        BindingInputs {
            report,
            chain: &locked.chain,
            evidence: &evidence,
            guest_device_id,
            nonce,
        },
    )
    .map_err(FlowError::Binding)
}
