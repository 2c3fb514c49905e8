//! A minimal, correct in-memory model of the guest request state rules.
//!
//! It exists to prove the conformance suite (it must pass) and as an executable statement of
//! the rules for readers; it has no device behind it and returns a fixed placeholder report.
//! The rules are the host's (`tdisp_host::state_machine`), which follow OpenVMM's:
//!
//! - negotiation moves `Uninitialized` to `Unlocked`; once a protocol is negotiated, asking
//!   for another is refused with `InvalidGuestProtocolRequest` and changes nothing;
//! - before negotiation every other call fails with `InvalidDeviceState` and changes nothing;
//! - a lock or start in the wrong state fails with `InvalidDeviceState` and unbinds;
//! - a report outside `Locked`/`Run` fails with `InvalidGuestAttestationReportState` and
//!   unbinds; a report of type `Invalid` fails with `InvalidGuestAttestationReportType` and
//!   unbinds;
//! - unbind returns to `Unlocked` from any negotiated state.

use crate::interface::TdispDeviceInterfaceInfo;
use crate::interface::TdispGuestOperationError;
use crate::interface::TdispGuestProtocolType;
use crate::interface::TdispGuestRequestInterface;
use crate::interface::TdispGuestUnbindReason;
use crate::interface::TdispReportType;
use crate::interface::TdispTdiState;

/// The state rules of [`TdispGuestRequestInterface`] and nothing else.
#[derive(Debug, Clone)]
pub struct ReferenceModel {
    /// Current state.
    pub state: TdispTdiState,
    /// The protocol negotiated, once it is.
    pub protocol: Option<TdispGuestProtocolType>,
    /// Device id reported at negotiation.
    pub device_id: u64,
}

impl Default for ReferenceModel {
    fn default() -> Self {
        Self {
            state: TdispTdiState::Uninitialized,
            protocol: None,
            device_id: 1,
        }
    }
}

impl ReferenceModel {
    /// Fails a call made in the wrong state with `error`: the device is unbound unless no
    /// protocol was negotiated, in which case nothing changes and the error is
    /// `InvalidDeviceState`.
    fn wrong_state(&mut self, error: TdispGuestOperationError) -> TdispGuestOperationError {
        if self.state == TdispTdiState::Uninitialized {
            return TdispGuestOperationError::InvalidDeviceState;
        }
        self.state = TdispTdiState::Unlocked;
        error
    }
}

impl TdispGuestRequestInterface for ReferenceModel {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested_guest_protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        if requested_guest_protocol == TdispGuestProtocolType::Invalid
            || self
                .protocol
                .is_some_and(|negotiated| negotiated != requested_guest_protocol)
        {
            return Err(TdispGuestOperationError::InvalidGuestProtocolRequest);
        }
        if self.state == TdispTdiState::Uninitialized {
            self.state = TdispTdiState::Unlocked;
        }
        self.protocol = Some(requested_guest_protocol);
        Ok(TdispDeviceInterfaceInfo {
            guest_protocol_type: requested_guest_protocol,
            supported_features: 0,
            tdisp_device_id: self.device_id,
        })
    }

    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        match self.state {
            TdispTdiState::Unlocked => {
                self.state = TdispTdiState::Locked;
                Ok(())
            }
            _ => Err(self.wrong_state(TdispGuestOperationError::InvalidDeviceState)),
        }
    }

    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        match self.state {
            TdispTdiState::Locked => {
                self.state = TdispTdiState::Run;
                Ok(())
            }
            _ => Err(self.wrong_state(TdispGuestOperationError::InvalidDeviceState)),
        }
    }

    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        match (self.state, report_type) {
            (TdispTdiState::Locked | TdispTdiState::Run, TdispReportType::Invalid) => {
                Err(self.wrong_state(TdispGuestOperationError::InvalidGuestAttestationReportType))
            }
            (TdispTdiState::Locked | TdispTdiState::Run, _) => {
                Ok(vec![u32::from(report_type) as u8])
            }
            _ => {
                Err(self.wrong_state(TdispGuestOperationError::InvalidGuestAttestationReportState))
            }
        }
    }

    fn request_unbind(
        &mut self,
        _reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        match self.state {
            TdispTdiState::Uninitialized => Err(TdispGuestOperationError::InvalidDeviceState),
            _ => {
                self.state = TdispTdiState::Unlocked;
                Ok(())
            }
        }
    }
}
