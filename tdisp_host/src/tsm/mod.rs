//! The TEE Security Manager (TSM) layer, in the manner of Linux PCI TSM.
//!
//! - Devices arrive and depart: [`Tsm::probe`] decides whether the TSM handles a device (it
//!   declines devices without a DOE mailbox or without TEE-IO) and [`Tsm::remove`] tears the
//!   device context down.
//! - Per device, [`Tsm::connect`] discovers the DOE protocols and establishes the
//!   [`SecureChannel`]; [`Tsm::disconnect`] closes it.
//! - [`Tsm::bind`] assigns one TDI of the device to a guest (checking its TDISP version, that
//!   it honours the lock flags the binding needs, and that it is CONFIG_UNLOCKED; the request
//!   bitmap is advisory); [`Tsm::unbind`] stops it (unless it is known CONFIG_UNLOCKED) and
//!   releases it.
//! - Guest requests pass through [`Tsm::guest_request`] with their scope enforced:
//!   [`GuestRequestScope::Info`] covers read-only requests (version, capabilities, state,
//!   report), [`GuestRequestScope::StateChange`] covers exactly UNLOCKED->LOCKED and
//!   LOCKED->RUN; the debug scopes admit no request (this TSM has no debug operations).
//!
//! Every operation follows the "request + exec" model: [`Tsm::submit`] queues the one
//! outstanding command a device may have and [`Tsm::exec`] services it one DOE exchange at a
//! time until it completes; the convenience methods do both.
//!
//! The code is split by concern: `device` (device contexts, probe/remove, discovery and
//! connect), `binding` (what a binding needs and the operations on a bound TDI), `engine` (the
//! one table of what each device state allows, and the steps of every command), `exchange` (one
//! validated TDISP request/response with retries), [`clock`] (time and retry policy), [`doe`]
//! and [`doe_driver`] (the DOE mailbox at object and register level), [`secure_channel`].
//!
//! ```
//! use tdisp_host::dsm::{DsmConfig, EmulatedDsm};
//! use tdisp_host::tsm::{BindParams, PciDeviceInfo, PlainChannel, ProbeOutcome, Tsm};
//! use tdisp_proto::pcie::{InterfaceId, TdiState};
//!
//! let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101))?;
//! let mut tsm = Tsm::new();
//! let device = PciDeviceInfo::tee_io(0x0100);
//! assert_eq!(tsm.probe(device, Box::new(dsm), Box::new(PlainChannel::insecure_opt_in())), ProbeOutcome::Handled);
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

mod binding;
mod device;
mod engine;
mod error;
mod exchange;

pub mod clock;

pub mod doe;
pub mod doe_driver;
pub mod secure_channel;

pub use binding::BindParams;
pub use clock::Clock;
pub use clock::ManualClock;
pub use clock::RetryPolicy;
pub use clock::SystemClock;
pub use device::PciDeviceInfo;
pub use device::ProbeOutcome;
pub use device::TsmDeviceState;
pub use doe::DoeMailbox;
pub use doe::DoeRegisters;
pub use doe::MailboxError;
pub use doe_driver::RegisterMailbox;
pub use engine::ExecStatus;
pub use engine::GuestRequest;
pub use engine::GuestRequestScope;
pub use engine::TsmOperation;
pub use engine::TsmOutcome;
pub use error::TsmError;
pub use secure_channel::ChannelError;
pub use secure_channel::PlainChannel;
pub use secure_channel::SecureChannel;

use device::TsmDevice;
use std::collections::BTreeMap;

/// Bytes the TSM asks for per GET_DEVICE_INTERFACE_REPORT (the device may return fewer).
pub const REPORT_REQUEST_LENGTH: u16 = 4096;

/// Most DOE discovery entries the TSM reads before giving up on a device.
const MAX_DISCOVERY_ENTRIES: usize = 64;

/// A PCI function address: segment in bits 23:16, bus/device/function in bits 15:0.
pub type PciAddress = u32;

/// The TSM: device contexts keyed by PCI address, and the clock and retry policy every
/// device's exchanges share.
pub struct Tsm {
    devices: BTreeMap<PciAddress, TsmDevice>,
    clock: Box<dyn Clock>,
    retry: RetryPolicy,
}

impl Default for Tsm {
    fn default() -> Self {
        Self::with_clock(Box::new(SystemClock::new()), RetryPolicy::default())
    }
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

    /// A TSM managing no devices that waits on `clock` and retries a busy device as `retry`
    /// says (tests pass a [`ManualClock`] so backoff never sleeps).
    pub fn with_clock(clock: Box<dyn Clock>, retry: RetryPolicy) -> Self {
        Self {
            devices: BTreeMap::new(),
            clock,
            retry,
        }
    }
}

#[cfg(test)]
mod tests;
