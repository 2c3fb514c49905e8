//! Guest-side TDISP: a client implementing the guest request trait over a transport, and the guest's lock -> report -> verify -> start flow.
//!
//! This crate is being built in the first wave of issues; its modules land with them.

#![forbid(unsafe_code)]
