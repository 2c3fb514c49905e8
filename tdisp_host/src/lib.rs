//! Host-side TDISP state handling: the TDI state machine behind the guest request trait, an emulated device security manager (DSM) and a TSM layer in the manner of Linux PCI TSM.
//!
//! This crate is being built in the first wave of issues; its modules land with them.

#![forbid(unsafe_code)]
