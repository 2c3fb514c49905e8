//! TDI states as reported by GET_DEVICE_INTERFACE_STATE.

use super::codec::DecodeError;

/// The state of a TDI inside the device (PCIe 6.1 section 11).
///
/// Transitions: LOCK takes `ConfigUnlocked` to `ConfigLocked`; START takes `ConfigLocked` to
/// `Run`; STOP takes `ConfigLocked`, `Run` or `Error` back to `ConfigUnlocked`; a
/// security-relevant configuration change takes `ConfigLocked` or `Run` to `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TdiState {
    /// CONFIG_UNLOCKED: configuration may change; the TDI is not trusted.
    ConfigUnlocked = 0,
    /// CONFIG_LOCKED: configuration frozen; report readable; not yet running.
    ConfigLocked = 1,
    /// RUN: the TDI may access TVM-private memory.
    Run = 2,
    /// ERROR: a locked configuration changed; only STOP leaves this state.
    Error = 3,
}

impl TdiState {
    /// Whether a device interface report may be read in this state.
    pub fn report_readable(self) -> bool {
        matches!(self, Self::ConfigLocked | Self::Run)
    }
}

impl From<TdiState> for u8 {
    fn from(state: TdiState) -> u8 {
        state as u8
    }
}

impl TryFrom<u8> for TdiState {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, DecodeError> {
        Ok(match value {
            0 => Self::ConfigUnlocked,
            1 => Self::ConfigLocked,
            2 => Self::Run,
            3 => Self::Error,
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "tdi_state",
                    value: value.into(),
                });
            }
        })
    }
}
