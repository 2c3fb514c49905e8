//! A Xen-style vTPM split driver: grant table, event channels, a xenstore-like store, the shared ring, frontend and backend.
//!
//! This crate is being built in the first wave of issues; its modules land with them.

#![forbid(unsafe_code)]
