//! Device contexts: what the PCI core reports on arrival, probe filtering and removal, the
//! per-device state, and DOE discovery with secure channel setup (connect/disconnect).

use super::BindParams;
use super::PciAddress;
use super::Tsm;
use super::TsmError;
use super::binding::Binding;
use super::doe::DiscoveryRequestWire;
use super::doe::DiscoveryResponseWire;
use super::doe::DoeMailbox;
use super::engine::Pending;
use super::engine::TsmOperation;
use super::secure_channel::ChannelError;
use super::secure_channel::SecureChannel;
use serde::Deserialize;
use serde::Serialize;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::TdiState;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

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
    /// The bound TDI's state is not known: a state-changing request failed or went unanswered
    /// and so did the question about the state. Only STOP (unbind) and state queries are
    /// allowed until the device answers again.
    Unknown,
}

impl TsmDeviceState {
    /// The state of a device whose bound TDI the device reports in `state`.
    pub fn of_bound_tdi(state: TdiState) -> Self {
        match state {
            TdiState::ConfigUnlocked => Self::Bound,
            TdiState::ConfigLocked => Self::Locked,
            TdiState::Run => Self::Run,
            TdiState::Error => Self::Error,
        }
    }
}

pub(super) struct TsmDevice {
    pub(super) info: PciDeviceInfo,
    pub(super) mailbox: Box<dyn DoeMailbox>,
    pub(super) channel: Box<dyn SecureChannel>,
    pub(super) state: TsmDeviceState,
    pub(super) binding: Option<Binding>,
    pub(super) capabilities: Option<Capabilities>,
    pub(super) pending: Option<Pending>,
}

impl Tsm {
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

    /// The device's certificate chain as the secure channel authenticated it (SPDM slot
    /// format); `None` without a channel that authenticates the device.
    pub fn certificate_chain(&self, address: PciAddress) -> Option<Vec<u8>> {
        self.devices
            .get(&address)
            .and_then(|d| d.channel.certificate_chain())
    }

    /// Session evidence with fresh measurements signed by the device, asked over the secure
    /// channel (see [`super::SecureChannel::signed_measurements`]); `Ok(None)` when the channel
    /// cannot produce it.
    pub fn signed_measurements(
        &mut self,
        address: PciAddress,
    ) -> Result<Option<Vec<u8>>, TsmError> {
        self.signed_measurements_with_nonce(address, None)
    }

    /// As [`Self::signed_measurements`], with `nonce` as the GET_MEASUREMENTS requester nonce
    /// (a guest's, for evidence it can tell is fresh) instead of a random one when given.
    pub fn signed_measurements_with_nonce(
        &mut self,
        address: PciAddress,
        nonce: Option<[u8; 32]>,
    ) -> Result<Option<Vec<u8>>, TsmError> {
        let device = self.device_mut(address)?;
        if device.pending.is_some() {
            return Err(TsmError::Busy);
        }
        if device.state == TsmDeviceState::Init {
            return Err(TsmError::WrongState(device.state));
        }
        Ok(device
            .channel
            .signed_measurements(device.mailbox.as_mut(), nonce)?)
    }

    pub(super) fn device_mut(&mut self, address: PciAddress) -> Result<&mut TsmDevice, TsmError> {
        self.devices
            .get_mut(&address)
            .ok_or(TsmError::UnknownDevice(address))
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
}

impl TsmDevice {
    /// One DOE discovery exchange (outside the secure channel, as DOE discovery always is).
    pub(super) fn discover(&mut self, index: u8) -> Result<DiscoveryResponseWire, TsmError> {
        let request = DiscoveryRequestWire {
            index,
            version: self.mailbox.discovery_version(),
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
}
