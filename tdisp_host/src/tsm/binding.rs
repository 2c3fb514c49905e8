//! Binding a TDI to a guest: what the binding needs of the device, and the operations the
//! bound guest's host drives (lock, start, report, state, stop, unbind).

use super::GuestRequest;
use super::GuestRequestScope;
use super::PciAddress;
use super::Tsm;
use super::TsmError;
use super::TsmOperation;
use super::TsmOutcome;
use super::engine::unexpected_outcome;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispMessageType;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::request::NONCE_SIZE;

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

/// The TDI bound to a guest.
#[derive(Debug, Clone)]
pub(super) struct Binding {
    pub(super) params: BindParams,
    pub(super) nonce: Option<[u8; NONCE_SIZE]>,
}

impl Tsm {
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

/// The requests the TSM will send a bound TDI. The capability bitmap is advisory: devices get
/// it wrong (DMTF spdm-emu advertises 0x7F, which leaves out STOP_INTERFACE, and answers STOP
/// all the same), and STOP is mandatory in TDISP. A missing bit is logged, not refused; the
/// device's answer to the request itself is what counts.
const USED_REQUESTS: [TdispMessageType; 5] = [
    TdispMessageType::LOCK_INTERFACE_REQUEST,
    TdispMessageType::GET_DEVICE_INTERFACE_REPORT,
    TdispMessageType::GET_DEVICE_INTERFACE_STATE,
    TdispMessageType::START_INTERFACE_REQUEST,
    TdispMessageType::STOP_INTERFACE_REQUEST,
];

/// Refuses to bind a TDI that cannot honour the lock flags the binding will ask for; notes
/// requests the device does not advertise.
pub(super) fn check_capabilities(caps: &Capabilities, params: &BindParams) -> Result<(), TsmError> {
    let unadvertised: Vec<_> = USED_REQUESTS
        .into_iter()
        .filter(|&code| !caps.req_msg_supported.supports(code))
        .collect();
    if !unadvertised.is_empty() {
        tracing::warn!(
            ?unadvertised,
            bitmap = ?caps.req_msg_supported,
            "device does not advertise requests the TSM uses; binding anyway (the bitmap is advisory)"
        );
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
