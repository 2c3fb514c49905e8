//! The request/exec engine: one outstanding command per device, checked against the one table
//! of what each device state allows ([`TsmDevice::first_phase`]), then serviced one exchange at
//! a time by [`TsmDevice::step`].
//!
//! Convergence rules the engine keeps, whatever the device does:
//!
//! - STOP is never sent to a TDI known to be CONFIG_UNLOCKED; unbinding it only releases it.
//! - After a state-changing request (LOCK, START, STOP) fails or goes unanswered, the engine
//!   asks GET_DEVICE_INTERFACE_STATE and takes the device's word for the TDI's state; if that
//!   question goes unanswered too, the state is [`TsmDeviceState::Unknown`], never a guess.
//! - A STOP refused or unanswered while the device turns out to be CONFIG_UNLOCKED counts as
//!   done (DMTF spdm-emu answers STOP in CONFIG_UNLOCKED with INVALID_INTERFACE_STATE).
//! - TDISP BUSY and SPDM ResponseNotReady are retried with bounded backoff
//!   ([`super::clock::RetryPolicy`]) inside one exchange step.

use super::BindParams;
use super::MAX_DISCOVERY_ENTRIES;
use super::PciAddress;
use super::REPORT_REQUEST_LENGTH;
use super::Tsm;
use super::TsmDeviceState;
use super::TsmError;
use super::binding::Binding;
use super::binding::check_capabilities;
use super::device::TsmDevice;
use super::exchange::Timing;
use serde::Deserialize;
use serde::Serialize;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::doe::PCI_SIG_VENDOR_ID;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::header::TDISP_VERSION_1_0;
use tdisp_proto::pcie::report::ReportAssembler;

/// Scopes of guest requests (Linux `enum pci_tsm_req_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestRequestScope {
    /// Read-only information: version, capabilities, state, interface report.
    Info,
    /// UNLOCKED -> LOCKED and LOCKED -> RUN, nothing else.
    StateChange,
    /// Debug reads (no request qualifies on this TSM).
    DebugRead,
    /// Debug writes (no request qualifies on this TSM).
    DebugWrite,
}

/// A guest request the TSM passes to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRequest {
    /// One TDISP request, one response.
    Tdisp(TdispRequest),
    /// The whole device interface report, read in as many portions as the device needs.
    ReadInterfaceReport,
}

impl GuestRequest {
    /// The scope this request needs; `None` if no guest may send it.
    pub fn required_scope(&self) -> Option<GuestRequestScope> {
        match self {
            Self::ReadInterfaceReport
            | Self::Tdisp(
                TdispRequest::GetVersion
                | TdispRequest::GetCapabilities { .. }
                | TdispRequest::GetDeviceInterfaceReport { .. }
                | TdispRequest::GetDeviceInterfaceState,
            ) => Some(GuestRequestScope::Info),
            Self::Tdisp(TdispRequest::LockInterface(_) | TdispRequest::StartInterface { .. }) => {
                Some(GuestRequestScope::StateChange)
            }
            Self::Tdisp(_) => None,
        }
    }
}

/// A command for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsmOperation {
    /// DOE discovery and secure channel setup.
    Connect,
    /// Version, capabilities and state checks of a TDI, then the binding.
    Bind(BindParams),
    /// STOP_INTERFACE, then the binding is released.
    Unbind,
    /// STOP_INTERFACE; the TDI stays bound (back to CONFIG_UNLOCKED).
    Stop,
    /// A guest request under `scope`, from `guest`.
    Guest {
        /// The guest sending it (must be the bound guest).
        guest: u64,
        /// The scope the request is made under.
        scope: GuestRequestScope,
        /// The request.
        request: GuestRequest,
    },
}

/// What a completed operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsmOutcome {
    /// Connected.
    Connected,
    /// Bound; the TDI's capabilities.
    Bound(Capabilities),
    /// Unbound.
    Unbound,
    /// Stopped.
    Stopped,
    /// The device's response to a guest TDISP request.
    Response(TdispResponse),
    /// The whole interface report.
    Report(Vec<u8>),
}

/// Progress of the outstanding command after one [`Tsm::exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// More exchanges are needed.
    Pending,
    /// The command completed.
    Done(TsmOutcome),
}

/// The steps of an outstanding command.
#[derive(Debug)]
pub(super) enum Phase {
    Discover {
        index: u8,
        seen: usize,
        spdm: bool,
    },
    Establish,
    Version,
    Capabilities,
    BindState(Capabilities),
    /// Unbind or stop a TDI known to be CONFIG_UNLOCKED: no exchange.
    Release,
    /// STOP_INTERFACE.
    Stop,
    /// One guest TDISP request.
    Single(TdispRequest),
    /// The interface report, one portion per step.
    Report(ReportAssembler),
    /// GET_DEVICE_INTERFACE_STATE after a state-changing request failed or went unanswered.
    Resync(AfterResync),
}

/// What a resynchronisation finishes.
#[derive(Debug)]
pub(super) enum AfterResync {
    /// A STOP failed: done if the TDI is CONFIG_UNLOCKED after all.
    Stop(TsmError),
    /// A LOCK or START failed: the command fails with this error, the state now truthful.
    StateChange(TsmError),
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) op: TsmOperation,
    pub(super) phase: Phase,
}

impl Tsm {
    /// Queues `op` as the device's one outstanding command, after checking that it is allowed
    /// now. [`Tsm::exec`] then services it.
    pub fn submit(&mut self, address: PciAddress, op: TsmOperation) -> Result<(), TsmError> {
        let device = self.device_mut(address)?;
        if device.pending.is_some() {
            return Err(TsmError::Busy);
        }
        let phase = device.first_phase(&op)?;
        tracing::debug!(address, ?op, "TSM submit");
        device.pending = Some(Pending { op, phase });
        Ok(())
    }

    /// Services the outstanding command with one exchange (a busy device's retries included).
    /// On completion or failure the command is no longer outstanding. A failure leaves the
    /// device state as it was, except after a failed state-changing request, where it is the
    /// state the device reported when asked (or [`TsmDeviceState::Unknown`]).
    pub fn exec(&mut self, address: PciAddress) -> Result<ExecStatus, TsmError> {
        let Tsm {
            devices,
            clock,
            retry,
        } = self;
        let device = devices
            .get_mut(&address)
            .ok_or(TsmError::UnknownDevice(address))?;
        let Some(mut pending) = device.pending.take() else {
            return Err(TsmError::NothingPending);
        };
        let mut timing = Timing {
            clock: clock.as_mut(),
            retry: *retry,
        };
        match device.step(&mut pending, &mut timing) {
            Ok(None) => {
                device.pending = Some(pending);
                Ok(ExecStatus::Pending)
            }
            Ok(Some(outcome)) => Ok(ExecStatus::Done(outcome)),
            Err(e) => {
                tracing::warn!(address, op = ?pending.op, error = %e, state = ?device.state, "TSM command failed");
                Err(e)
            }
        }
    }

    /// Submits `op` and executes it to completion.
    pub fn run(&mut self, address: PciAddress, op: TsmOperation) -> Result<TsmOutcome, TsmError> {
        self.submit(address, op)?;
        loop {
            if let ExecStatus::Done(outcome) = self.exec(address)? {
                return Ok(outcome);
            }
        }
    }

    /// Passes a guest request to the device under `scope`; returns the device's response
    /// (TDISP_ERROR answers become [`TsmError::Device`]).
    pub fn guest_request(
        &mut self,
        address: PciAddress,
        guest: u64,
        scope: GuestRequestScope,
        request: GuestRequest,
    ) -> Result<TsmOutcome, TsmError> {
        self.run(
            address,
            TsmOperation::Guest {
                guest,
                scope,
                request,
            },
        )
    }
}

pub(super) fn unexpected_outcome(outcome: &TsmOutcome) -> TsmError {
    TsmError::InvalidResponse(format!("unexpected outcome {outcome:?}"))
}

impl TsmDevice {
    /// The one table of what each device state allows: checks that `op` is allowed now and
    /// returns its first step.
    pub(super) fn first_phase(&self, op: &TsmOperation) -> Result<Phase, TsmError> {
        use TsmDeviceState as S;
        let phase = match (self.state, op) {
            (S::Init, TsmOperation::Connect) => Phase::Discover {
                index: 0,
                seen: 0,
                spdm: false,
            },
            (S::Connected, TsmOperation::Bind(_)) => Phase::Version,
            (S::Bound, TsmOperation::Unbind | TsmOperation::Stop) => Phase::Release,
            (
                S::Locked | S::Run | S::Error | S::Unknown,
                TsmOperation::Unbind | TsmOperation::Stop,
            ) => Phase::Stop,
            (
                S::Bound | S::Locked | S::Run | S::Error | S::Unknown,
                TsmOperation::Guest {
                    guest,
                    scope,
                    request,
                },
            ) => {
                if self.binding.as_ref().map(|b| b.params.guest) != Some(*guest) {
                    return Err(TsmError::NotBoundGuest(*guest));
                }
                if request.required_scope() != Some(*scope) {
                    return Err(TsmError::ScopeViolation(*scope));
                }
                // STATE_CHANGE covers UNLOCKED->LOCKED and LOCKED->RUN only.
                match (self.state, request) {
                    (S::Bound, GuestRequest::Tdisp(TdispRequest::LockInterface(_)))
                    | (S::Locked, GuestRequest::Tdisp(TdispRequest::StartInterface { .. })) => {}
                    (
                        _,
                        GuestRequest::Tdisp(
                            TdispRequest::LockInterface(_) | TdispRequest::StartInterface { .. },
                        ),
                    ) => {
                        return Err(TsmError::WrongState(self.state));
                    }
                    _ => {}
                }
                match request {
                    GuestRequest::Tdisp(request) => Phase::Single(request.clone()),
                    GuestRequest::ReadInterfaceReport => Phase::Report(ReportAssembler::new()),
                }
            }
            (state, _) => return Err(TsmError::WrongState(state)),
        };
        Ok(phase)
    }

    fn interface(&self, op: &TsmOperation) -> InterfaceId {
        match op {
            TsmOperation::Bind(params) => params.interface,
            _ => self
                .binding
                .as_ref()
                .map(|b| b.params.interface)
                .unwrap_or_default(),
        }
    }

    /// Runs one step of `pending`; `Some` once the command completed (its effects applied).
    pub(super) fn step(
        &mut self,
        pending: &mut Pending,
        timing: &mut Timing<'_>,
    ) -> Result<Option<TsmOutcome>, TsmError> {
        let interface = self.interface(&pending.op);
        match &mut pending.phase {
            Phase::Discover { index, seen, spdm } => {
                let entry = self.discover(*index)?;
                *seen += 1;
                if entry.vendor_id.get() == PCI_SIG_VENDOR_ID
                    && entry.object_type == DoeObjectType::SPDM.0
                {
                    *spdm = true;
                }
                if entry.next_index != 0 && *seen < MAX_DISCOVERY_ENTRIES {
                    *index = entry.next_index;
                } else if *spdm {
                    pending.phase = Phase::Establish;
                } else {
                    return Err(TsmError::NoSpdm);
                }
                Ok(None)
            }
            Phase::Establish => {
                self.channel.establish(self.mailbox.as_mut())?;
                self.state = TsmDeviceState::Connected;
                tracing::info!(
                    address = self.info.address,
                    secure = self.channel.is_secure(),
                    "TSM connected"
                );
                Ok(Some(TsmOutcome::Connected))
            }
            Phase::Version => match self.tdisp(timing, interface, &TdispRequest::GetVersion)? {
                TdispResponse::Version { versions } if versions.contains(&TDISP_VERSION_1_0) => {
                    pending.phase = Phase::Capabilities;
                    Ok(None)
                }
                TdispResponse::Version { versions } => Err(TsmError::VersionMismatch(versions)),
                other => Err(mismatch(&other)),
            },
            Phase::Capabilities => {
                let request = TdispRequest::GetCapabilities { tsm_caps: 0 };
                match self.tdisp(timing, interface, &request)? {
                    TdispResponse::Capabilities(caps) => {
                        if let TsmOperation::Bind(params) = &pending.op {
                            check_capabilities(&caps, params)?;
                        }
                        pending.phase = Phase::BindState(caps);
                        Ok(None)
                    }
                    other => Err(mismatch(&other)),
                }
            }
            Phase::BindState(caps) => {
                let caps = *caps;
                let request = TdispRequest::GetDeviceInterfaceState;
                match self.tdisp(timing, interface, &request)? {
                    TdispResponse::DeviceInterfaceState {
                        state: TdiState::ConfigUnlocked,
                    } => {
                        let TsmOperation::Bind(params) = pending.op else {
                            return Err(TsmError::InvalidResponse("bind state".into()));
                        };
                        self.binding = Some(Binding {
                            params,
                            nonce: None,
                        });
                        self.capabilities = Some(caps);
                        self.state = TsmDeviceState::Bound;
                        Ok(Some(TsmOutcome::Bound(caps)))
                    }
                    TdispResponse::DeviceInterfaceState { state } => {
                        Err(TsmError::TdiNotUnlocked(state))
                    }
                    other => Err(mismatch(&other)),
                }
            }
            Phase::Release => Ok(Some(self.stopped(&pending.op))),
            Phase::Stop => match self.tdisp(timing, interface, &TdispRequest::StopInterface) {
                Ok(_) => Ok(Some(self.stopped(&pending.op))),
                Err(error) => {
                    tracing::warn!(%error, "STOP_INTERFACE failed; asking the device its state");
                    pending.phase = Phase::Resync(AfterResync::Stop(error));
                    Ok(None)
                }
            },
            Phase::Resync(_) => {
                let known =
                    match self.tdisp(timing, interface, &TdispRequest::GetDeviceInterfaceState) {
                        Ok(TdispResponse::DeviceInterfaceState { state }) => Some(state),
                        Ok(_) | Err(_) => None,
                    };
                self.state = known.map_or(TsmDeviceState::Unknown, TsmDeviceState::of_bound_tdi);
                tracing::info!(?known, "TDI state resynchronised from the device");
                let Phase::Resync(after) = std::mem::replace(&mut pending.phase, Phase::Release)
                else {
                    return Err(TsmError::InvalidResponse("resync phase".into()));
                };
                match (after, known) {
                    (AfterResync::Stop(_), Some(TdiState::ConfigUnlocked)) => {
                        Ok(Some(self.stopped(&pending.op)))
                    }
                    (AfterResync::Stop(cause), state) => Err(TsmError::StopFailed {
                        state,
                        cause: Box::new(cause),
                    }),
                    (AfterResync::StateChange(error), _) => Err(error),
                }
            }
            Phase::Single(request) => {
                let request = request.clone();
                match self.tdisp(timing, interface, &request) {
                    Ok(response) => Ok(Some(self.complete_single(&request, response))),
                    Err(error) if changes_state(&request) => {
                        pending.phase = Phase::Resync(AfterResync::StateChange(error));
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            }
            Phase::Report(assembler) => {
                let offset = assembler
                    .next_offset()
                    .ok_or_else(|| TsmError::InvalidResponse("report already complete".into()))?;
                let request = TdispRequest::GetDeviceInterfaceReport {
                    offset,
                    length: REPORT_REQUEST_LENGTH,
                };
                match self.tdisp(timing, interface, &request)? {
                    TdispResponse::DeviceInterfaceReport {
                        remainder_length,
                        portion,
                    } => {
                        assembler.push(&portion, remainder_length)?;
                        if assembler.is_complete() {
                            let report = std::mem::take(assembler).finish().unwrap_or_default();
                            Ok(Some(TsmOutcome::Report(report)))
                        } else {
                            Ok(None)
                        }
                    }
                    other => Err(mismatch(&other)),
                }
            }
        }
    }

    /// The TDI is CONFIG_UNLOCKED: a stop keeps the binding, an unbind releases it.
    fn stopped(&mut self, op: &TsmOperation) -> TsmOutcome {
        match op {
            TsmOperation::Unbind => {
                self.binding = None;
                self.state = TsmDeviceState::Connected;
                TsmOutcome::Unbound
            }
            _ => {
                if let Some(binding) = &mut self.binding {
                    binding.nonce = None;
                }
                self.state = TsmDeviceState::Bound;
                TsmOutcome::Stopped
            }
        }
    }

    /// Applies the effect of a guest request the device answered.
    fn complete_single(&mut self, request: &TdispRequest, response: TdispResponse) -> TsmOutcome {
        match (request, &response) {
            (TdispRequest::LockInterface(_), TdispResponse::LockInterface { nonce }) => {
                if let Some(binding) = &mut self.binding {
                    binding.nonce = Some(*nonce);
                }
                self.state = TsmDeviceState::Locked;
            }
            (TdispRequest::StartInterface { .. }, TdispResponse::StartInterface) => {
                if let Some(binding) = &mut self.binding {
                    binding.nonce = None;
                }
                self.state = TsmDeviceState::Run;
            }
            (_, TdispResponse::DeviceInterfaceState { state }) => {
                self.state = TsmDeviceState::of_bound_tdi(*state);
            }
            _ => {}
        }
        TsmOutcome::Response(response)
    }
}

/// Requests whose failure leaves the TDI's state in doubt.
fn changes_state(request: &TdispRequest) -> bool {
    matches!(
        request,
        TdispRequest::LockInterface(_)
            | TdispRequest::StartInterface { .. }
            | TdispRequest::StopInterface
    )
}

pub(super) fn mismatch(response: &TdispResponse) -> TsmError {
    use tdisp_proto::pcie::MessageBody;
    TsmError::InvalidResponse(format!("unexpected response {:?}", response.message_type()))
}
