//! A minimal, correct in-memory model of the guest request state rules.
//!
//! It exists to prove the conformance suite (it must pass) and as an executable statement of
//! the rules for readers; it has no device behind it and returns a fixed placeholder report.

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
    /// Device id reported at negotiation.
    pub device_id: u64,
}

impl Default for ReferenceModel {
    fn default() -> Self {
        Self {
            state: TdispTdiState::Uninitialized,
            device_id: 1,
        }
    }
}

impl ReferenceModel {
    /// Fails a wrong-state call: the device is unbound unless no protocol was negotiated.
    fn wrong_state(&mut self) -> TdispGuestOperationError {
        if self.state != TdispTdiState::Uninitialized {
            self.state = TdispTdiState::Unlocked;
        }
        TdispGuestOperationError::InvalidDeviceState
    }
}

impl TdispGuestRequestInterface for ReferenceModel {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested_guest_protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        if requested_guest_protocol == TdispGuestProtocolType::Invalid {
            return Err(TdispGuestOperationError::InvalidGuestProtocolRequest);
        }
        if self.state == TdispTdiState::Uninitialized {
            self.state = TdispTdiState::Unlocked;
        }
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
            _ => Err(self.wrong_state()),
        }
    }

    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        match self.state {
            TdispTdiState::Locked => {
                self.state = TdispTdiState::Run;
                Ok(())
            }
            _ => Err(self.wrong_state()),
        }
    }

    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        match (self.state, report_type) {
            (_, TdispReportType::Invalid) => {
                Err(TdispGuestOperationError::InvalidGuestAttestationReportType)
            }
            (TdispTdiState::Locked | TdispTdiState::Run, _) => {
                Ok(vec![u32::from(report_type) as u8])
            }
            _ => Err(self.wrong_state()),
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
