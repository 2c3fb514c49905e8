//! A Xen-style vTPM split driver: domains with separate memory, a grant table, event channels,
//! a xenstore-like store, the v1 and v2 vTPM ring protocols, a frontend, a backend, the
//! instance-multiplexed stream to the vTPM manager, and TPM engines.

#![forbid(unsafe_code)]

pub mod domain;
pub mod engine;
pub mod event;
pub mod grant;
pub mod page;
pub mod store;
pub mod tpm_header;
pub mod xenbus;
