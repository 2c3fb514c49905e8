//! Wiring for an emulated assignment: an [`EmulatedDsm`] behind an SPDM responder
//! ([`SpdmResponder`]) behind an emulated DOE capability ([`DoeFunction`]) that the TSM drives
//! register by register ([`RegisterMailbox`]) over an SPDM session ([`SpdmChannel`]), bound for
//! one guest, and the host state machine that drives it. Tests, examples, benches and demos start here.

use crate::backend::SharedTsm;
use crate::backend::TsmBackend;
use crate::dsm::ConfigError;
use crate::dsm::DoeFunction;
use crate::dsm::DsmConfig;
use crate::dsm::EmulatedDsm;
use crate::spdm::cert::DeviceIdentity;
use crate::spdm::channel::SpdmChannel;
use crate::spdm::messages::MeasurementBlock;
use crate::spdm::requester::RequesterConfig;
use crate::spdm::responder::ResponderConfig;
use crate::spdm::responder::SpdmResponder;
use crate::state_machine::MachineConfig;
use crate::state_machine::TdiStateMachine;
use crate::tsm::BindParams;
use crate::tsm::PciAddress;
use crate::tsm::PciDeviceInfo;
use crate::tsm::ProbeOutcome;
use crate::tsm::RegisterMailbox;
use crate::tsm::SystemClock;
use crate::tsm::Tsm;
use crate::tsm::TsmError;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use thiserror::Error;

/// Why an emulated assignment could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetupError {
    /// The device configuration is invalid.
    #[error("invalid device configuration")]
    Config(#[from] ConfigError),
    /// The device identity could not be generated.
    #[error("device identity generation failed: {0}")]
    Identity(String),
    /// The TSM declined the device.
    #[error("the TSM declined the device: {0}")]
    Declined(&'static str),
    /// Connecting or binding failed.
    #[error("TSM setup failed")]
    Tsm(#[from] TsmError),
}

/// An emulated device probed, connected and bound (its first function) through a TSM.
#[derive(Debug, Clone)]
pub struct EmulatedAssignment {
    tsm: SharedTsm,
    dsm: Arc<Mutex<EmulatedDsm>>,
    address: PciAddress,
    interface: InterfaceId,
    root_der: Vec<u8>,
}

impl EmulatedAssignment {
    /// Creates the device from `config` with a fresh identity (root CA and leaf certificate),
    /// probes it into `tsm` at `address` over an [`SpdmChannel`] that trusts that root,
    /// connects (SPDM session), and binds its first function to `guest` with `lock` as the
    /// lock parameters.
    pub fn new(
        tsm: SharedTsm,
        address: PciAddress,
        config: DsmConfig,
        guest: u64,
        lock: LockInterfaceParams,
    ) -> Result<Self, SetupError> {
        let requester_id = config
            .functions
            .first()
            .map(|f| f.requester_id)
            .ok_or(ConfigError::NoFunctions)?;
        let dsm = Arc::new(Mutex::new(EmulatedDsm::new(config)?));
        let interface = InterfaceId::from_requester_id(requester_id);
        // The TSM reaches the device through its DOE registers, as it would real hardware.
        let identity = DeviceIdentity::generate("emulated TDISP device")
            .map_err(|e| SetupError::Identity(e.to_string()))?;
        let root_der = identity.root_der.clone();
        {
            let mut guard = tsm.lock().unwrap_or_else(PoisonError::into_inner);
            let channel = SpdmChannel::new(RequesterConfig::new(identity.root_der.clone()));
            let responder = SpdmResponder::new(
                ResponderConfig::new(identity, Self::measurements()),
                dsm.clone(),
            );
            let function = DoeFunction::new(responder);
            let mailbox = RegisterMailbox::new(function, Box::new(SystemClock::new()))
                .ok_or(SetupError::Declined("no DOE capability"))?;
            let outcome = guard.probe(
                PciDeviceInfo::tee_io(address),
                Box::new(mailbox),
                Box::new(channel),
            );
            if let ProbeOutcome::Declined(reason) = outcome {
                return Err(SetupError::Declined(reason));
            }
            guard.connect(address)?;
            guard.bind(
                address,
                BindParams {
                    interface,
                    guest,
                    lock,
                },
            )?;
        }
        Ok(Self {
            tsm,
            dsm,
            address,
            interface,
            root_der,
        })
    }

    /// A single-function device at `address` in a TSM of its own, bound to `guest`, locked
    /// with [`Self::default_lock`].
    pub fn single(address: PciAddress, requester_id: u16, guest: u64) -> Result<Self, SetupError> {
        Self::new(
            Arc::new(Mutex::new(Tsm::new())),
            address,
            DsmConfig::single_function(requester_id),
            guest,
            Self::default_lock(),
        )
    }

    /// The lock an assignment uses unless told otherwise: MSI-X locked (so the report carries
    /// the MSI-X table and PBA ranges and the message control word), nothing else.
    pub fn default_lock() -> LockInterfaceParams {
        LockInterfaceParams {
            flags: LockInterfaceFlags::new().with_lock_msix(true),
            ..Default::default()
        }
    }

    /// The measurement blocks the emulated device reports (a firmware digest).
    pub fn measurements() -> Vec<MeasurementBlock> {
        vec![MeasurementBlock {
            index: 1,
            value_type: 0x01,
            value: crate::spdm::crypto::hash(b"emulated TDISP device firmware").to_vec(),
        }]
    }

    /// The host state machine for the bound TDI.
    pub fn machine(&self, config: MachineConfig) -> TdiStateMachine<TsmBackend> {
        TdiStateMachine::new(config, TsmBackend::new(self.tsm.clone(), self.address))
    }

    /// The emulated device (to inspect it or change its configuration).
    pub fn dsm(&self) -> &Arc<Mutex<EmulatedDsm>> {
        &self.dsm
    }

    /// The TSM.
    pub fn tsm(&self) -> &SharedTsm {
        &self.tsm
    }

    /// The device's PCI address in the TSM.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The bound TDI.
    pub fn interface(&self) -> InterfaceId {
        self.interface
    }

    /// The root certificate (DER) of the device's freshly generated identity: the trust anchor
    /// a guest configures to verify the device's session evidence (in a real deployment it
    /// comes from the device vendor, never from the host).
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }
}
