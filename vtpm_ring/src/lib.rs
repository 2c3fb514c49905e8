//! A Xen-style vTPM split driver: domains with separate memory, a grant table, event channels,
//! a xenstore-like store, the v1 and v2 vTPM ring protocols, a frontend, a backend, the
//! instance-multiplexed stream to the vTPM manager, and TPM engines.

#![forbid(unsafe_code)]

pub mod backend;
pub mod domain;
pub mod engine;
pub mod event;
pub mod frontend;
pub mod grant;
pub mod manager;
pub mod page;
pub mod protocol;
pub mod store;
pub mod testbed;
pub mod tpm_header;
pub mod xenbus;
