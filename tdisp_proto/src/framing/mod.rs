//! Transport framing around TDISP messages: SPDM vendor-defined messages carried in PCIe DOE
//! data objects.
//!
//! A TDISP request travels as `DOE object { SPDM VENDOR_DEFINED_REQUEST { protocol id 0x01,
//! TDISP message } }` (the SPDM message is normally inside a secured session, DOE type 2).

pub mod doe;
pub mod spdm;
