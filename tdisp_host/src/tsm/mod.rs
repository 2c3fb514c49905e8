//! The TEE Security Manager (TSM) layer, in the manner of Linux PCI TSM.
//!
//! - Devices arrive and depart: [`Tsm::probe`] decides whether the TSM handles a device (it
//!   declines devices without a DOE mailbox or without TEE-IO) and [`Tsm::remove`] tears the
//!   device context down.
//! - Per device, [`Tsm::connect`] discovers the DOE protocols and establishes the
//!   [`SecureChannel`]; [`Tsm::disconnect`] closes it.
//! - [`Tsm::bind`] assigns one TDI of the device to a guest (checking its TDISP version,
//!   that its capabilities cover the requests and lock flags the binding needs, and that it is
//!   CONFIG_UNLOCKED); [`Tsm::unbind`] stops it and releases it.
//! - Guest requests pass through [`Tsm::guest_request`] with their scope enforced:
//!   [`GuestRequestScope::Info`] covers read-only requests (version, capabilities, state,
//!   report), [`GuestRequestScope::StateChange`] covers exactly UNLOCKED->LOCKED and
//!   LOCKED->RUN; the debug scopes admit no request (this TSM has no debug operations).
//!
//! Every operation follows the "request + exec" model: [`Tsm::submit`] queues the one
//! outstanding command a device may have and [`Tsm::exec`] services it one DOE exchange at a
//! time until it completes; the convenience methods do both.
//!
//! ```
//! use tdisp_host::dsm::{DsmConfig, EmulatedDsm};
//! use tdisp_host::tsm::{BindParams, PciDeviceInfo, PlainChannel, ProbeOutcome, Tsm};
//! use tdisp_proto::pcie::{InterfaceId, TdiState};
//!
//! let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101))?;
//! let mut tsm = Tsm::new();
//! let device = PciDeviceInfo::tee_io(0x0100);
//! assert_eq!(tsm.probe(device, Box::new(dsm), Box::new(PlainChannel::new())), ProbeOutcome::Handled);
//! tsm.connect(device.address)?;
//! tsm.bind(device.address, BindParams::new(InterfaceId::from_requester_id(0x0101), 7))?;
//! tsm.lock(device.address)?;
//! let report = tsm.read_interface_report(device.address)?;
//! tsm.start(device.address)?;
//! assert_eq!(tsm.interface_state(device.address)?, TdiState::Run);
//! tsm.unbind(device.address)?;
//! # assert!(!report.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod doe;
pub mod secure_channel;

pub use doe::DoeMailbox;
pub use doe::MailboxError;
pub use secure_channel::ChannelError;
pub use secure_channel::PlainChannel;
pub use secure_channel::SecureChannel;

use doe::DiscoveryRequestWire;
use doe::DiscoveryResponseWire;
use doe::trim_vendor_defined_padding;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::doe::PCI_SIG_VENDOR_ID;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::framing::spdm::SpdmFramingError;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispMessageType;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::header::TDISP_VERSION_1_0;
use tdisp_proto::pcie::report::PortionError;
use tdisp_proto::pcie::report::ReportAssembler;
use tdisp_proto::pcie::request::NONCE_SIZE;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// Bytes the TSM asks for per GET_DEVICE_INTERFACE_REPORT (the device may return fewer).
pub const REPORT_REQUEST_LENGTH: u16 = 4096;

/// Most DOE discovery entries the TSM reads before giving up on a device.
const MAX_DISCOVERY_ENTRIES: usize = 64;

/// A PCI function address: segment in bits 23:16, bus/device/function in bits 15:0.
pub type PciAddress = u32;

/// What the PCI core tells the TSM about an arriving device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// The device's (physical function's) address.
    pub address: PciAddress,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// The function has a DOE mailbox.
    pub has_doe: bool,
    /// The device advertises TEE-IO (TDISP) support.
    pub tee_io: bool,
}

impl PciDeviceInfo {
    /// A TEE-IO capable device with a DOE mailbox at `address` (segment 0).
    pub fn tee_io(address: PciAddress) -> Self {
        Self {
            address,
            vendor_id: 0x1414,
            device_id: 0x0001,
            has_doe: true,
            tee_io: true,
        }
    }
}

/// The answer to [`Tsm::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The TSM manages the device from now on.
    Handled,
    /// The TSM does not handle this device; it keeps no context for it.
    Declined(&'static str),
}

/// Per-device state, as Linux PCI TSM names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TsmDeviceState {
    /// Probed, not connected.
    Init,
    /// Secure channel established.
    Connected,
    /// A TDI is bound to a guest (CONFIG_UNLOCKED).
    Bound,
    /// The bound TDI is CONFIG_LOCKED.
    Locked,
    /// The bound TDI is RUN.
    Run,
    /// The bound TDI reported ERROR.
    Error,
}

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

/// How a TDI is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindParams {
    /// The TDI.
    pub interface: InterfaceId,
    /// The guest it is bound to (opaque to the TSM).
    pub guest: u64,
    /// The LOCK_INTERFACE parameters [`Tsm::lock`] uses.
    pub lock: LockInterfaceParams,
}

impl BindParams {
    /// Binds `interface` to `guest` with default lock parameters.
    pub fn new(interface: InterfaceId, guest: u64) -> Self {
        Self {
            interface,
            guest,
            lock: LockInterfaceParams::default(),
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

/// Why a TSM operation failed. A failed operation is no longer outstanding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TsmError {
    /// No device was probed at this address.
    #[error("no device at {0:#x}")]
    UnknownDevice(PciAddress),
    /// The device already has an outstanding command.
    #[error("device busy: one command is already outstanding")]
    Busy,
    /// [`Tsm::exec`] was called with no outstanding command.
    #[error("no outstanding command")]
    NothingPending,
    /// The operation needs another device state.
    #[error("operation not allowed in device state {0:?}")]
    WrongState(TsmDeviceState),
    /// The guest is not the one the TDI is bound to.
    #[error("guest {0} is not bound to this device")]
    NotBoundGuest(u64),
    /// The request is not allowed under the scope it was made with.
    #[error("request not allowed under scope {0:?}")]
    ScopeViolation(GuestRequestScope),
    /// The device's DOE mailbox does not offer SPDM.
    #[error("the device offers no SPDM over DOE")]
    NoSpdm,
    /// The device does not speak TDISP 1.0.
    #[error("the device does not support TDISP 1.0 (offers {0:?})")]
    VersionMismatch(Vec<u8>),
    /// The TDI's capabilities lack something the binding needs.
    #[error("the device lacks {0}")]
    DeviceLacks(String),
    /// The TDI is not CONFIG_UNLOCKED at bind time.
    #[error("TDI is {0:?}, expected CONFIG_UNLOCKED")]
    TdiNotUnlocked(TdiState),
    /// No nonce is known for START_INTERFACE (the TDI was not locked by this TSM).
    #[error("no LOCK_INTERFACE nonce known")]
    NoNonce,
    /// The device answered TDISP_ERROR.
    #[error("device answered TDISP_ERROR {code:?} (data {data:#x})")]
    Device {
        /// The error code.
        code: TdispErrorCode,
        /// The error data.
        data: u32,
    },
    /// The device answered with an SPDM ERROR.
    #[error("device answered SPDM ERROR {0:#04x}")]
    SpdmError(u8),
    /// The device's answer is malformed or does not answer the request.
    #[error("invalid response from the device: {0}")]
    InvalidResponse(String),
    /// The interface report portions were inconsistent.
    #[error("invalid report portions")]
    Report(#[from] PortionError),
    /// The secure channel failed.
    #[error("secure channel failed")]
    Channel(#[from] ChannelError),
}

impl From<SpdmFramingError> for TsmError {
    fn from(e: SpdmFramingError) -> Self {
        Self::InvalidResponse(e.to_string())
    }
}

/// The steps of an outstanding command.
#[derive(Debug)]
enum Phase {
    Discover { index: u8, seen: usize, spdm: bool },
    Establish,
    Version,
    Capabilities,
    BindState(Capabilities),
    Single(TdispRequest),
    Report(ReportAssembler),
}

#[derive(Debug)]
struct Pending {
    op: TsmOperation,
    phase: Phase,
}

/// The TDI bound to a guest.
#[derive(Debug, Clone)]
struct Binding {
    params: BindParams,
    nonce: Option<[u8; NONCE_SIZE]>,
}

struct TsmDevice {
    info: PciDeviceInfo,
    mailbox: Box<dyn DoeMailbox>,
    channel: Box<dyn SecureChannel>,
    state: TsmDeviceState,
    binding: Option<Binding>,
    capabilities: Option<Capabilities>,
    pending: Option<Pending>,
}

/// The TSM: device contexts keyed by PCI address.
#[derive(Default)]
pub struct Tsm {
    devices: BTreeMap<PciAddress, TsmDevice>,
}

impl std::fmt::Debug for Tsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.devices.iter().map(|(a, d)| (a, (d.info, d.state))))
            .finish()
    }
}

impl Tsm {
    /// A TSM managing no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// A device arrives. The TSM handles it (keeping `mailbox` and `channel` in its context)
    /// only if it has a DOE mailbox and advertises TEE-IO.
    pub fn probe(
        &mut self,
        info: PciDeviceInfo,
        mailbox: Box<dyn DoeMailbox>,
        channel: Box<dyn SecureChannel>,
    ) -> ProbeOutcome {
        let outcome = if !info.has_doe {
            ProbeOutcome::Declined("no DOE mailbox")
        } else if !info.tee_io {
            ProbeOutcome::Declined("no TEE-IO support")
        } else {
            match self.devices.entry(info.address) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    ProbeOutcome::Declined("already probed")
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(TsmDevice {
                        info,
                        mailbox,
                        channel,
                        state: TsmDeviceState::Init,
                        binding: None,
                        capabilities: None,
                        pending: None,
                    });
                    ProbeOutcome::Handled
                }
            }
        };
        tracing::info!(address = info.address, ?outcome, "TSM probe");
        outcome
    }

    /// A device departs: any outstanding command is dropped, a bound TDI is stopped and the
    /// channel closed (both best effort: the device may already be gone), and the context is
    /// freed.
    pub fn remove(&mut self, address: PciAddress) -> Result<(), TsmError> {
        let device = self.device_mut(address)?;
        device.pending = None;
        if device.binding.is_some()
            && let Err(e) = self.run(address, TsmOperation::Unbind)
        {
            tracing::warn!(address, error = %e, "stop on removal failed");
        }
        let mut device = self
            .devices
            .remove(&address)
            .ok_or(TsmError::UnknownDevice(address))?;
        if let Err(e) = device.channel.close(device.mailbox.as_mut()) {
            tracing::warn!(address, error = %e, "channel close on removal failed");
        }
        tracing::info!(address, "TSM remove");
        Ok(())
    }

    /// The device's TSM state.
    pub fn device_state(&self, address: PciAddress) -> Option<TsmDeviceState> {
        self.devices.get(&address).map(|d| d.state)
    }

    /// The device's information, if probed.
    pub fn device_info(&self, address: PciAddress) -> Option<PciDeviceInfo> {
        self.devices.get(&address).map(|d| d.info)
    }

    /// Whether the device's channel protects messages.
    pub fn is_channel_secure(&self, address: PciAddress) -> Option<bool> {
        self.devices.get(&address).map(|d| d.channel.is_secure())
    }

    /// The capabilities the bound TDI reported.
    pub fn capabilities(&self, address: PciAddress) -> Option<Capabilities> {
        self.devices.get(&address).and_then(|d| d.capabilities)
    }

    /// The TDI bound on this device and its guest.
    pub fn binding(&self, address: PciAddress) -> Option<BindParams> {
        self.devices
            .get(&address)
            .and_then(|d| d.binding.as_ref())
            .map(|b| b.params)
    }

    fn device_mut(&mut self, address: PciAddress) -> Result<&mut TsmDevice, TsmError> {
        self.devices
            .get_mut(&address)
            .ok_or(TsmError::UnknownDevice(address))
    }

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

    /// Discovers the DOE protocols and establishes the secure channel.
    pub fn connect(&mut self, address: PciAddress) -> Result<(), TsmError> {
        self.run(address, TsmOperation::Connect).map(drop)
    }

    /// Unbinds any bound TDI and closes the channel; the device stays probed (state `Init`).
    pub fn disconnect(&mut self, address: PciAddress) -> Result<(), TsmError> {
        if self.device_mut(address)?.binding.is_some() {
            self.run(address, TsmOperation::Unbind)?;
        }
        let device = self.device_mut(address)?;
        if device.pending.is_some() {
            return Err(TsmError::Busy);
        }
        if device.state != TsmDeviceState::Connected {
            return Err(TsmError::WrongState(device.state));
        }
        device.channel.close(device.mailbox.as_mut())?;
        device.state = TsmDeviceState::Init;
        Ok(())
    }

    /// Binds a TDI to a guest; returns the TDI's capabilities.
    pub fn bind(
        &mut self,
        address: PciAddress,
        params: BindParams,
    ) -> Result<Capabilities, TsmError> {
        match self.run(address, TsmOperation::Bind(params))? {
            TsmOutcome::Bound(caps) => Ok(caps),
            other => Err(unexpected_outcome(&other)),
        }
    }

    /// Stops the bound TDI and releases the binding.
    pub fn unbind(&mut self, address: PciAddress) -> Result<(), TsmError> {
        self.run(address, TsmOperation::Unbind).map(drop)
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

    fn bound_guest(&mut self, address: PciAddress) -> Result<BindParams, TsmError> {
        let device = self.device_mut(address)?;
        device
            .binding
            .as_ref()
            .map(|b| b.params)
            .ok_or(TsmError::WrongState(device.state))
    }

    /// LOCK_INTERFACE for the bound TDI with the bind-time parameters, on behalf of its guest.
    pub fn lock(&mut self, address: PciAddress) -> Result<(), TsmError> {
        let params = self.bound_guest(address)?;
        let request = GuestRequest::Tdisp(TdispRequest::LockInterface(params.lock));
        self.guest_request(
            address,
            params.guest,
            GuestRequestScope::StateChange,
            request,
        )
        .map(drop)
    }

    /// START_INTERFACE for the bound TDI with the nonce its lock returned.
    pub fn start(&mut self, address: PciAddress) -> Result<(), TsmError> {
        let params = self.bound_guest(address)?;
        let nonce = self
            .device_mut(address)?
            .binding
            .as_ref()
            .and_then(|b| b.nonce)
            .ok_or(TsmError::NoNonce)?;
        let request = GuestRequest::Tdisp(TdispRequest::StartInterface { nonce });
        self.guest_request(
            address,
            params.guest,
            GuestRequestScope::StateChange,
            request,
        )
        .map(drop)
    }

    /// Reads the bound TDI's whole interface report.
    pub fn read_interface_report(&mut self, address: PciAddress) -> Result<Vec<u8>, TsmError> {
        let params = self.bound_guest(address)?;
        match self.guest_request(
            address,
            params.guest,
            GuestRequestScope::Info,
            GuestRequest::ReadInterfaceReport,
        )? {
            TsmOutcome::Report(report) => Ok(report),
            other => Err(unexpected_outcome(&other)),
        }
    }

    /// The bound TDI's state as the device reports it.
    pub fn interface_state(&mut self, address: PciAddress) -> Result<TdiState, TsmError> {
        let params = self.bound_guest(address)?;
        let request = GuestRequest::Tdisp(TdispRequest::GetDeviceInterfaceState);
        match self.guest_request(address, params.guest, GuestRequestScope::Info, request)? {
            TsmOutcome::Response(TdispResponse::DeviceInterfaceState { state }) => Ok(state),
            other => Err(unexpected_outcome(&other)),
        }
    }

    /// STOP_INTERFACE for the bound TDI; it stays bound, back in CONFIG_UNLOCKED.
    pub fn stop(&mut self, address: PciAddress) -> Result<(), TsmError> {
        self.run(address, TsmOperation::Stop).map(drop)
    }
}

fn unexpected_outcome(outcome: &TsmOutcome) -> TsmError {
    TsmError::InvalidResponse(format!("unexpected outcome {outcome:?}"))
}

impl TsmDevice {
    /// Checks that `op` is allowed now and returns its first step.
    fn first_phase(&self, op: &TsmOperation) -> Result<Phase, TsmError> {
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
    fn step(&mut self, pending: &mut Pending) -> Result<Option<TsmOutcome>, TsmError> {
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

    /// One DOE discovery exchange (outside the secure channel, as DOE discovery always is).
    fn discover(&mut self, index: u8) -> Result<DiscoveryResponseWire, TsmError> {
        let request = DiscoveryRequestWire {
            index,
            version: 0,
            reserved: [0; 2],
        };
        let mut object = Vec::new();
        DoeObject::new(DoeObjectType::DISCOVERY, request.as_bytes()).encode(&mut object);
        let response = self.mailbox.exchange(&object).map_err(ChannelError::from)?;
        let response = DoeObject::decode(&response).map_err(ChannelError::from)?;
        if response.object_type != DoeObjectType::DISCOVERY {
            return Err(ChannelError::UnexpectedObjectType(
                response.object_type.0,
                DoeObjectType::DISCOVERY.0,
            )
            .into());
        }
        DiscoveryResponseWire::read_from_prefix(response.payload)
            .map(|(entry, _)| entry)
            .map_err(|_| TsmError::InvalidResponse("short discovery response".into()))
    }

    /// One TDISP request/response over the channel, validated: the response must be about
    /// the same TDI and carry the request's response code; TDISP_ERROR becomes an error.
    fn tdisp(
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

/// The requests the TSM needs from a device it binds.
const REQUIRED_REQUESTS: [TdispMessageType; 5] = [
    TdispMessageType::LOCK_INTERFACE_REQUEST,
    TdispMessageType::GET_DEVICE_INTERFACE_REPORT,
    TdispMessageType::GET_DEVICE_INTERFACE_STATE,
    TdispMessageType::START_INTERFACE_REQUEST,
    TdispMessageType::STOP_INTERFACE_REQUEST,
];

/// Refuses to bind a TDI that cannot do what the binding will ask of it.
fn check_capabilities(caps: &Capabilities, params: &BindParams) -> Result<(), TsmError> {
    if let Some(missing) = REQUIRED_REQUESTS
        .into_iter()
        .find(|&code| !caps.req_msg_supported.supports(code))
    {
        return Err(TsmError::DeviceLacks(format!("request {missing:?}")));
    }
    let unsupported =
        params.lock.flags.into_bits() & !caps.lock_interface_flags_supported.into_bits();
    if unsupported != 0 {
        return Err(TsmError::DeviceLacks(format!(
            "lock flags {unsupported:#x}"
        )));
    }
    Ok(())
}

fn mismatch(response: &TdispResponse) -> TsmError {
    TsmError::InvalidResponse(format!("unexpected response {:?}", response.message_type()))
}

#[cfg(test)]
mod tests;
