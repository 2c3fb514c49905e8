//! Why a TSM operation failed.

use super::GuestRequestScope;
use super::PciAddress;
use super::TsmDeviceState;
use super::secure_channel::ChannelError;
use tdisp_proto::framing::spdm::SpdmFramingError;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::report::PortionError;
use thiserror::Error;

/// Why a TSM operation failed. A failed operation is no longer outstanding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TsmError {
    /// No device was probed at this address.
    #[error("no device at {0:#x}")]
    UnknownDevice(PciAddress),
    /// The device already has an outstanding command.
    #[error("device busy: one command is already outstanding")]
    Busy,
    /// [`super::Tsm::exec`] was called with no outstanding command.
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
    /// The device stayed busy (TDISP BUSY or SPDM ResponseNotReady) through every retry.
    #[error("device still not ready after {attempts} attempts")]
    NotReady {
        /// Requests sent, the first included.
        attempts: u32,
    },
    /// STOP_INTERFACE did not bring the TDI to CONFIG_UNLOCKED; `state` is what the device
    /// said when asked afterwards (`None`: it did not answer). The binding is kept so a later
    /// unbind tries again.
    #[error("STOP_INTERFACE failed; the TDI is {state:?}")]
    StopFailed {
        /// The TDI's state according to the device.
        state: Option<TdiState>,
        /// Why STOP failed.
        #[source]
        cause: Box<TsmError>,
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
