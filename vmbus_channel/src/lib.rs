//! VMBus channels without a hypervisor: offers, GPADLs, ring buffers over guest memory, and an in-process server and client.
//!
//! This crate is being built in the first wave of issues; its modules land with them.

#![forbid(unsafe_code)]
