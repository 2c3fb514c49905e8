//! The request/exec engine: one outstanding command per device, checked against the one table
//! of what each device state allows ([`TsmDevice::first_phase`]), then serviced one DOE exchange
//! at a time.

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
use super::doe::trim_vendor_defined_padding;
use serde::Deserialize;
use serde::Serialize;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::doe::PCI_SIG_VENDOR_ID;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispMessage;
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
    Discover { index: u8, seen: usize, spdm: bool },
    Establish,
    Version,
    Capabilities,
    BindState(Capabilities),
    Single(TdispRequest),
    Report(ReportAssembler),
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

    /// Services the outstanding command with one exchange. On completion or failure the
    /// command is no longer outstanding; a failure leaves the device state as it was.
    pub fn exec(&mut self, address: PciAddress) -> Result<ExecStatus, TsmError> {
        let device = self.device_mut(address)?;
        let Some(mut pending) = device.pending.take() else {
            return Err(TsmError::NothingPending);
        };
        match device.step(&mut pending) {
            Ok(None) => {
                device.pending = Some(pending);
                Ok(ExecStatus::Pending)
            }
            Ok(Some(outcome)) => Ok(ExecStatus::Done(outcome)),
            Err(e) => {
                tracing::warn!(address, op = ?pending.op, error = %e, "TSM command failed");
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
    /// Checks that `op` is allowed now and returns its first step.
    pub(super) fn first_phase(&self, op: &TsmOperation) -> Result<Phase, TsmError> {
        use TsmDeviceState as S;
        let phase = match (self.state, op) {
            (S::Init, TsmOperation::Connect) => Phase::Discover {
                index: 0,
                seen: 0,
                spdm: false,
            },
            (S::Connected, TsmOperation::Bind(_)) => Phase::Version,
            (
                S::Bound | S::Locked | S::Run | S::Error,
                TsmOperation::Unbind | TsmOperation::Stop,
            ) => Phase::Single(TdispRequest::StopInterface),
            (
                S::Bound | S::Locked | S::Run | S::Error,
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
    pub(super) fn step(&mut self, pending: &mut Pending) -> Result<Option<TsmOutcome>, TsmError> {
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
            Phase::Version => match self.tdisp(interface, &TdispRequest::GetVersion)? {
                TdispResponse::Version { versions } if versions.contains(&TDISP_VERSION_1_0) => {
                    pending.phase = Phase::Capabilities;
                    Ok(None)
                }
                TdispResponse::Version { versions } => Err(TsmError::VersionMismatch(versions)),
                other => Err(mismatch(&other)),
            },
            Phase::Capabilities => {
                match self.tdisp(interface, &TdispRequest::GetCapabilities { tsm_caps: 0 })? {
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
                match self.tdisp(interface, &TdispRequest::GetDeviceInterfaceState)? {
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
            Phase::Single(request) => {
                let request = request.clone();
                let response = self.tdisp(interface, &request)?;
                Ok(Some(self.complete_single(&pending.op, &request, response)))
            }
            Phase::Report(assembler) => {
                let offset = assembler
                    .next_offset()
                    .ok_or_else(|| TsmError::InvalidResponse("report already complete".into()))?;
                let request = TdispRequest::GetDeviceInterfaceReport {
                    offset,
                    length: REPORT_REQUEST_LENGTH,
                };
                match self.tdisp(interface, &request)? {
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

    /// Applies the effect of a successful single-exchange command.
    fn complete_single(
        &mut self,
        op: &TsmOperation,
        request: &TdispRequest,
        response: TdispResponse,
    ) -> TsmOutcome {
        match op {
            TsmOperation::Unbind => {
                self.binding = None;
                self.state = TsmDeviceState::Connected;
                TsmOutcome::Unbound
            }
            TsmOperation::Stop => {
                if let Some(binding) = &mut self.binding {
                    binding.nonce = None;
                }
                self.state = TsmDeviceState::Bound;
                TsmOutcome::Stopped
            }
            _ => {
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
                        self.state = match state {
                            TdiState::ConfigUnlocked => TsmDeviceState::Bound,
                            TdiState::ConfigLocked => TsmDeviceState::Locked,
                            TdiState::Run => TsmDeviceState::Run,
                            TdiState::Error => TsmDeviceState::Error,
                        };
                    }
                    _ => {}
                }
                TsmOutcome::Response(response)
            }
        }
    }

    /// One TDISP request/response over the channel, validated: the response must be about
    /// the same TDI and carry the request's response code; TDISP_ERROR becomes an error.
    pub(super) fn tdisp(
        &mut self,
        interface: InterfaceId,
        request: &TdispRequest,
    ) -> Result<TdispResponse, TsmError> {
        let mut spdm_request = Vec::new();
        spdm::encode_tdisp(
            SPDM_VERSION_1_2,
            Direction::Request,
            &TdispMessage::new(interface, request.clone()),
            &mut spdm_request,
        )?;
        let raw = self
            .channel
            .exchange(self.mailbox.as_mut(), &spdm_request)?;
        let raw = trim_vendor_defined_padding(&raw);
        if let [_, 0x7f, code, ..] = raw {
            return Err(TsmError::SpdmError(*code));
        }
        let (_, message) = spdm::decode_tdisp::<TdispResponse>(raw, Direction::Response)?;
        if message.interface_id != interface {
            return Err(TsmError::InvalidResponse(format!(
                "response about {:?}, asked about {interface:?}",
                message.interface_id
            )));
        }
        match message.body {
            TdispResponse::Error(e) => Err(TsmError::Device {
                code: e.code,
                data: e.data,
            }),
            body if request.message_type().response_code() == Some(body.message_type()) => Ok(body),
            body => Err(mismatch(&body)),
        }
    }
}

fn mismatch(response: &TdispResponse) -> TsmError {
    TsmError::InvalidResponse(format!("unexpected response {:?}", response.message_type()))
}
