//! The host state machine behind [`TdispGuestRequestInterface`] for one assigned device.
//!
//! [`transition`] is the whole rule set as one table. [`TdiStateMachine`] asks it, performs the
//! device-side work through its [`TdiBackend`] when the table allows the call, and records the
//! outcome in its [`History`]:
//!
//! - negotiation comes first; a device that is not TDISP capable answers `Invalid`; once a
//!   protocol is negotiated, asking for another is refused and changes nothing (switching after
//!   lock would break the attestation chain the guest relies on); the first negotiation makes
//!   sure the TDI is CONFIG_UNLOCKED (stopping one an earlier guest left locked) before it
//!   reports `Unlocked`;
//! - lock only from `Unlocked`, start only from `Locked`, reports only in `Locked` or `Run`;
//! - unbind from any negotiated state back to `Unlocked` whenever the TDI ends up
//!   CONFIG_UNLOCKED, even when the device's STOP fails (DMTF spdm-emu refuses STOP in
//!   CONFIG_UNLOCKED; the TSM asks the state and counts that as done). Only when the device
//!   shows the TDI is still locked, running or in error (or cannot say) does the unbind fail
//!   and the machine report `Error`: the host never claims `Unlocked` for a TDI that is not,
//!   and the next unbind tries again;
//! - a lock or start in the wrong state fails with `InvalidDeviceState`, a report in the wrong
//!   state with `InvalidGuestAttestationReportState`, a report of type `Invalid` with
//!   `InvalidGuestAttestationReportType`; each of them **unbinds the device**.
//!
//! Device failures: a TDI the device reports in ERROR puts the machine in `Error` (the guest
//! must unbind); any other failure unbinds; report types the device cannot produce answer
//! `NotImplemented` and change nothing. An unbind after a failure asks the backend to stop the
//! TDI whatever the machine believes its state is: the TSM knows whether the TDI is
//! CONFIG_UNLOCKED (then nothing is sent) and the machine never claims `Unlocked` unless the
//! stop succeeded; when it fails the machine is in `Error`.

use crate::backend::BackendError;
use crate::backend::TdiBackend;
use crate::history::GuestCall;
use crate::history::History;
use crate::history::HistorySnapshot;
use crate::history::UnbindCause;
use serde::Deserialize;
use serde::Serialize;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;

/// The five guest calls, without arguments: the columns of the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallKind {
    /// `tdisp_negotiate_protocol`.
    Negotiate,
    /// `request_lock_device_resources`.
    Lock,
    /// `request_start_tdi`.
    Start,
    /// `request_attestation_report`.
    Report,
    /// `request_unbind`.
    Unbind,
}

impl GuestCall {
    /// The call without its argument.
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Negotiate(_) => CallKind::Negotiate,
            Self::Lock => CallKind::Lock,
            Self::Start => CallKind::Start,
            Self::Report(_) => CallKind::Report,
            Self::Unbind(_) => CallKind::Unbind,
        }
    }
}

/// What the table says about a call in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The call proceeds; if the device work succeeds the state becomes `to`.
    Allowed {
        /// The state after success.
        to: TdispTdiState,
    },
    /// The call fails with this error; nothing changes (no protocol negotiated).
    Refused(TdispGuestOperationError),
    /// The call fails with this error and the device is unbound.
    RefusedAndUnbound(TdispGuestOperationError),
}

/// The transition table of the guest-facing machine.
pub fn transition(from: TdispTdiState, call: CallKind) -> Transition {
    use CallKind as C;
    use TdispGuestOperationError as E;
    use TdispTdiState::*;
    use Transition::*;
    match (from, call) {
        (Uninitialized, C::Negotiate) => Allowed { to: Unlocked },
        (state, C::Negotiate) => Allowed { to: state },
        (Uninitialized, C::Lock | C::Start | C::Report | C::Unbind) => {
            Refused(E::InvalidDeviceState)
        }
        (Unlocked | Locked | Run | Error, C::Unbind) => Allowed { to: Unlocked },
        (Unlocked, C::Lock) => Allowed { to: Locked },
        (Locked, C::Start) => Allowed { to: Run },
        (Locked, C::Report) => Allowed { to: Locked },
        (Run, C::Report) => Allowed { to: Run },
        (Unlocked | Error, C::Report) => RefusedAndUnbound(E::InvalidGuestAttestationReportState),
        (Unlocked, C::Start)
        | (Locked, C::Lock)
        | (Run, C::Lock | C::Start)
        | (Error, C::Lock | C::Start) => RefusedAndUnbound(E::InvalidDeviceState),
    }
}

/// Host-side settings of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// The host's id for the device (reported at negotiation, used in guest packets).
    pub device_id: u64,
    /// Guest protocols this host offers.
    pub supported_protocols: Vec<TdispGuestProtocolType>,
    /// Feature bits reported at negotiation; [`tdisp_proto::FEATURE_SESSION_EVIDENCE`] is added
    /// to them when the backend serves session evidence
    /// ([`crate::backend::TdiBackend::serves_session_evidence`]).
    pub supported_features: u64,
    /// History entries kept.
    pub history_capacity: usize,
}

impl MachineConfig {
    /// Device `device_id` offering both guest protocols, no features, default history.
    pub fn new(device_id: u64) -> Self {
        Self {
            device_id,
            supported_protocols: vec![
                TdispGuestProtocolType::AmdSevTioV1,
                TdispGuestProtocolType::IntelTdxConnectV1,
            ],
            supported_features: 0,
            history_capacity: crate::history::DEFAULT_HISTORY_CAPACITY,
        }
    }
}

/// A diagnostic snapshot of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    /// The device id.
    pub device_id: u64,
    /// The current state.
    pub state: TdispTdiState,
    /// The negotiated protocol.
    pub protocol: Option<TdispGuestProtocolType>,
    /// The recent calls.
    pub history: HistorySnapshot,
}

impl MachineSnapshot {
    /// The snapshot as JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The host's TDISP state handler for one assigned device.
#[derive(Debug)]
pub struct TdiStateMachine<B> {
    config: MachineConfig,
    backend: B,
    state: TdispTdiState,
    protocol: Option<TdispGuestProtocolType>,
    history: History,
}

impl<B: TdiBackend> TdiStateMachine<B> {
    /// A machine in `Uninitialized` for the device behind `backend`.
    pub fn new(config: MachineConfig, backend: B) -> Self {
        let history = History::new(config.history_capacity);
        Self {
            config,
            backend,
            state: TdispTdiState::Uninitialized,
            protocol: None,
            history,
        }
    }

    /// The current state.
    pub fn state(&self) -> TdispTdiState {
        self.state
    }

    /// The host's id for the device.
    pub fn device_id(&self) -> u64 {
        self.config.device_id
    }

    /// The recent calls.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A serializable snapshot for diagnostics.
    pub fn snapshot(&self) -> MachineSnapshot {
        MachineSnapshot {
            device_id: self.config.device_id,
            state: self.state,
            protocol: self.protocol,
            history: self.history.snapshot(),
        }
    }

    /// Runs `call`: asks the table, does `work` on the device if allowed, applies the result
    /// and records it.
    fn execute<T>(
        &mut self,
        call: GuestCall,
        work: impl FnOnce(&mut B) -> Result<T, BackendError>,
    ) -> Result<T, TdispGuestOperationError> {
        let from = self.state;
        let (result, unbind) = match transition(from, call.kind()) {
            Transition::Refused(error) => (Err(error), None),
            Transition::RefusedAndUnbound(error) => {
                self.unbind_device();
                (Err(error), Some(UnbindCause::WrongState))
            }
            Transition::Allowed { to } => match work(&mut self.backend) {
                Ok(value) => {
                    self.state = to;
                    let unbind = match call {
                        GuestCall::Unbind(reason) => Some(UnbindCause::Guest(reason)),
                        _ => None,
                    };
                    (Ok(value), unbind)
                }
                Err(error) => {
                    let (error, unbind) = self.device_failed(call, error);
                    (Err(error), unbind)
                }
            },
        };
        self.finish(call, from, result, unbind)
    }

    /// Logs and records a finished call.
    fn finish<T>(
        &mut self,
        call: GuestCall,
        from: TdispTdiState,
        result: Result<T, TdispGuestOperationError>,
        unbind: Option<UnbindCause>,
    ) -> Result<T, TdispGuestOperationError> {
        let to = self.state;
        match &result {
            Ok(_) => tracing::debug!(
                device = self.config.device_id,
                ?call,
                ?from,
                ?to,
                "guest call"
            ),
            Err(error) => tracing::info!(
                device = self.config.device_id,
                ?call,
                ?from,
                ?to,
                %error,
                ?unbind,
                "guest call failed"
            ),
        }
        let recorded = result.as_ref().map(drop).map_err(|e| *e);
        self.history.record(call, from, to, recorded, unbind);
        result
    }

    /// Unbinds after a refused or failed call. The backend is always asked: the machine's
    /// state may be stale after a failure, and the TSM behind it knows whether STOP is needed.
    /// `Unlocked` only when the stop succeeded; otherwise `Error`, never a guess.
    fn unbind_device(&mut self) {
        self.state = match self.backend.stop() {
            Ok(()) => TdispTdiState::Unlocked,
            Err(error) => {
                tracing::error!(device = self.config.device_id, %error, "unbind failed: device in error");
                TdispTdiState::Error
            }
        };
    }

    /// Decides what a failed device operation does to the machine.
    fn device_failed(
        &mut self,
        call: GuestCall,
        error: BackendError,
    ) -> (TdispGuestOperationError, Option<UnbindCause>) {
        match (call, error) {
            // The backend already counted a STOP that failed on a CONFIG_UNLOCKED TDI as done;
            // a failure here means the TDI is demonstrably not unlocked (or its state is
            // unknown), and saying `Unlocked` would be a lie. `Error` is left by unbinding.
            (GuestCall::Unbind(_), error) => {
                tracing::error!(device = self.config.device_id, %error, "unbind failed: the TDI is not unlocked");
                self.state = TdispTdiState::Error;
                (TdispGuestOperationError::HostFailedToProcessCommand, None)
            }
            (_, BackendError::NotSupported(_)) => (TdispGuestOperationError::NotImplemented, None),
            (_, BackendError::TdiInError) => {
                self.state = TdispTdiState::Error;
                (TdispGuestOperationError::HostFailedToProcessCommand, None)
            }
            (_, BackendError::Failed(_)) => {
                self.unbind_device();
                (
                    TdispGuestOperationError::HostFailedToProcessCommand,
                    Some(UnbindCause::DeviceFailure),
                )
            }
        }
    }
}

impl<B: TdiBackend> TdiStateMachine<B> {
    /// A report of `report_type`, with the guest's nonce when it sent one.
    fn report(
        &mut self,
        report_type: TdispReportType,
        nonce: Option<[u8; tdisp_proto::REPORT_NONCE_SIZE]>,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        let call = GuestCall::Report(report_type);
        let from = self.state;
        if report_type == TdispReportType::Invalid
            && let Transition::Allowed { .. } = transition(from, CallKind::Report)
        {
            // As OpenVMM: a report of no type is a guest error that costs it the device.
            self.unbind_device();
            let refused = Err(TdispGuestOperationError::InvalidGuestAttestationReportType);
            return self.finish(call, from, refused, Some(UnbindCause::InvalidReportType));
        }
        self.execute(call, |backend| match nonce {
            Some(nonce) => backend.fresh_report(report_type, nonce),
            None => backend.report(report_type),
        })
    }
}

impl<B: TdiBackend> TdispGuestRequestInterface for TdiStateMachine<B> {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested_guest_protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        let call = GuestCall::Negotiate(requested_guest_protocol);
        let from = self.state;
        if let Some(negotiated) = self.protocol
            && negotiated != requested_guest_protocol
        {
            tracing::warn!(device = self.config.device_id, ?negotiated, requested = ?requested_guest_protocol, "refusing a protocol switch");
            let refused = Err(TdispGuestOperationError::InvalidGuestProtocolRequest);
            return self.finish(call, from, refused, None);
        }
        if requested_guest_protocol == TdispGuestProtocolType::Invalid
            || !self
                .config
                .supported_protocols
                .contains(&requested_guest_protocol)
        {
            let refused = Err(TdispGuestOperationError::InvalidGuestProtocolRequest);
            return self.finish(call, from, refused, None);
        }
        let evidence = if self.backend.serves_session_evidence() {
            tdisp_proto::FEATURE_SESSION_EVIDENCE
        } else {
            0
        };
        let mut info = TdispDeviceInterfaceInfo {
            guest_protocol_type: requested_guest_protocol,
            supported_features: self.config.supported_features | evidence,
            tdisp_device_id: self.config.device_id,
        };
        if !self.backend.is_tdisp_capable() {
            // Not an error: the guest learns the device cannot do TDISP, and nothing changes.
            info.guest_protocol_type = TdispGuestProtocolType::Invalid;
            info.supported_features = 0;
            return self.finish(call, from, Ok(info), None);
        }
        // The first negotiation claims `Unlocked`: a TDI an earlier guest left locked or running
        // (its machine gone without an unbind) is stopped, its data scrubbed, before this guest
        // is told so. The TSM sends nothing for a TDI it knows is CONFIG_UNLOCKED.
        let fresh = from == TdispTdiState::Uninitialized;
        let result = self.execute(call, |backend| {
            if fresh {
                backend.stop()?;
            }
            Ok(info)
        });
        if result.is_ok() {
            self.protocol = Some(requested_guest_protocol);
        }
        result
    }

    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        self.execute(GuestCall::Lock, TdiBackend::lock)
    }

    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        self.execute(GuestCall::Start, TdiBackend::start)
    }

    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        self.report(report_type, None)
    }

    /// As a report without a nonce; the backend puts the nonce into the evidence it serves
    /// as `Measurements` ([`TdiBackend::fresh_report`]).
    fn request_attestation_report_with_nonce(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; tdisp_proto::REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        self.report(report_type, Some(nonce))
    }

    /// Unbinds: the TDI goes back to CONFIG_UNLOCKED and the machine to `Unlocked`.
    ///
    /// The backend stops the TDI unless the TSM knows it is CONFIG_UNLOCKED already (then
    /// nothing is sent). When STOP fails (refused, busy through every retry, answer lost) the
    /// TSM asks the device its state: CONFIG_UNLOCKED counts as done (DMTF spdm-emu answers STOP
    /// there with INVALID_INTERFACE_STATE) and the unbind succeeds. When the device shows the
    /// TDI still CONFIG_LOCKED, RUN or ERROR, or does not answer, the unbind fails with
    /// `HostFailedToProcessCommand` and the machine is in `Error` (sent to the guest as the
    /// schema's indeterminate `UNINITIALIZED`): the host never reports `Unlocked` while the
    /// device is locked. The binding is kept, so the next unbind sends STOP again and, once
    /// the device takes it, ends in `Unlocked`.
    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        self.execute(GuestCall::Unbind(reason), TdiBackend::stop)
    }
}

#[cfg(test)]
mod tests;
