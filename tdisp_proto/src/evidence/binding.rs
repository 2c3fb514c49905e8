//! The TDI binding measurement block: what a device says, under its signature, about the
//! interface report of one of its TDIs and the SPDM session it answers in.
//!
//! TDISP 1.0 does not sign the DEVICE_INTERFACE_REPORT, and an SPDM 1.2 MEASUREMENTS signature
//! covers VCA and the measurement messages but not the session's key exchange. This block
//! fills both gaps and is **this project's own format, not a DMTF or PCI-SIG one**: a device
//! (here, `tdisp_host`'s emulated DSM) that implements it reports, in a MEASUREMENTS response
//! asked for inside a secured session, one block per TDI in CONFIG_LOCKED or RUN at index
//! [`BINDING_INDEX_FIRST`] + n, as a DMTF raw bit stream of type "freeform measurement
//! manifest" ([`BINDING_VALUE_TYPE`]), whose value is [`TdiBindingWire`]:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"TDISPBND"` |
//! | 8 | 1 | version, 1 |
//! | 9 | 1 | TDI state (TDISP code: 1 CONFIG_LOCKED, 2 RUN) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | interface id: function id, u32 LE |
//! | 16 | 8 | interface id: reserved, 0 |
//! | 24 | 48 | SHA-384 of the whole DEVICE_INTERFACE_REPORT, as its portions concatenate |
//! | 72 | 48 | TH1 of the session the request arrived in (see [`super::bundle`]) |
//!
//! A device that does not implement it (DMTF spdm-emu, for one) reports no such block; a
//! guest that requires the binding then refuses it.

use crate::pcie::InterfaceId;
use crate::pcie::TdiState;
use crate::pcie::header::FunctionId;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::Unaligned;
use zerocopy::little_endian::U32;

use super::signature::HASH_SIZE;

/// Measurement index of the first TDI's binding block (a device-specific index, DSP0274 1.2
/// table 45: 0x01..=0xEF).
pub const BINDING_INDEX_FIRST: u8 = 0xE0;
/// Measurement index of the last binding block: at most 16 bound TDIs per device.
pub const BINDING_INDEX_LAST: u8 = 0xEF;
/// DMTFSpecMeasurementValueType: raw bit stream (bit 7) of a freeform manifest (4).
pub const BINDING_VALUE_TYPE: u8 = 0x84;
/// The block's magic.
pub const BINDING_MAGIC: [u8; 8] = *b"TDISPBND";
/// The block's version.
pub const BINDING_VERSION: u8 = 1;

/// The binding block as it appears in the measurement value.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct TdiBindingWire {
    /// [`BINDING_MAGIC`].
    pub magic: [u8; 8],
    /// [`BINDING_VERSION`].
    pub version: u8,
    /// TDISP TDI state code.
    pub tdi_state: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// The TDI's function id.
    pub function_id: U32,
    /// The interface id's reserved bytes, zero.
    pub interface_reserved: [u8; 8],
    /// SHA-384 of the interface report.
    pub report_digest: [u8; HASH_SIZE],
    /// TH1 of the session.
    pub session_th1: [u8; HASH_SIZE],
}
const _: () = assert!(size_of::<TdiBindingWire>() == 120);

/// Why a binding block was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindingBlockError {
    /// The value is not exactly one block long.
    #[error("binding block of {0} bytes, expected 120")]
    Length(usize),
    /// The magic is wrong.
    #[error("binding block magic is wrong")]
    Magic,
    /// The version is not 1.
    #[error("binding block version {0} is not supported")]
    Version(u8),
    /// A reserved field is not zero, or the function id has reserved bits set.
    #[error("binding block reserved field {0} is not zero")]
    Reserved(&'static str),
    /// The TDI state is not a TDISP state, or one without a report.
    #[error("binding block names TDI state {0}, which has no report")]
    State(u8),
}

/// A decoded, validated binding block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdiBinding {
    /// The TDI the report belongs to.
    pub interface: InterfaceId,
    /// Its state when the device answered (CONFIG_LOCKED or RUN).
    pub state: TdiState,
    /// SHA-384 of its interface report.
    pub report_digest: [u8; HASH_SIZE],
    /// TH1 of the session the device answered in.
    pub session_th1: [u8; HASH_SIZE],
}

impl TdiBinding {
    /// The measurement value.
    pub fn encode(&self) -> Vec<u8> {
        TdiBindingWire {
            magic: BINDING_MAGIC,
            version: BINDING_VERSION,
            tdi_state: self.state.into(),
            reserved: [0; 2],
            function_id: self.interface.function_id.into_bits().into(),
            interface_reserved: [0; 8],
            report_digest: self.report_digest,
            session_th1: self.session_th1,
        }
        .as_bytes()
        .to_vec()
    }

    /// Parses a measurement value, then validates every field.
    pub fn decode(value: &[u8]) -> Result<Self, BindingBlockError> {
        let wire = TdiBindingWire::read_from_bytes(value)
            .map_err(|_| BindingBlockError::Length(value.len()))?;
        if wire.magic != BINDING_MAGIC {
            return Err(BindingBlockError::Magic);
        }
        if wire.version != BINDING_VERSION {
            return Err(BindingBlockError::Version(wire.version));
        }
        if wire.reserved != [0; 2] {
            return Err(BindingBlockError::Reserved("reserved"));
        }
        if wire.interface_reserved != [0; 8] {
            return Err(BindingBlockError::Reserved("interface id"));
        }
        let function_id = wire.function_id.get();
        if function_id & !FunctionId::DEFINED_BITS != 0 {
            return Err(BindingBlockError::Reserved("function id"));
        }
        let state = TdiState::try_from(wire.tdi_state)
            .ok()
            .filter(|s| s.report_readable())
            .ok_or(BindingBlockError::State(wire.tdi_state))?;
        Ok(Self {
            interface: InterfaceId {
                function_id: FunctionId::from_bits(function_id),
            },
            state,
            report_digest: wire.report_digest,
            session_th1: wire.session_th1,
        })
    }
}
