//! Host-side TDISP.

#![forbid(unsafe_code)]

pub mod dsm;
pub mod tsm;
