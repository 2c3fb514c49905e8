//! Device-signed evidence a guest can check without trusting the host: SPDM 1.2 certificate
//! chains ([`cert`]), SPDM 1.2 signatures ([`signature`]), the MEASUREMENTS response and its
//! blocks ([`measurements`]), the session evidence container a
//! host serves as the `Measurements` report ([`bundle`]), and the TDI binding measurement block
//! that ties an interface report to a session ([`binding`]).
//!
//! This module parses and verifies primitives; it decides nothing. The guest's verifier
//! (`tdisp_guest`) decides, and `tdisp_host` produces (its SPDM requester fills the container,
//! its emulated DSM reports the binding blocks). What a verified piece of evidence does and
//! does not prove is spelled out in `tdisp_guest`'s docs and in `docs/security.md`.

pub mod binding;
pub mod bundle;
pub mod cert;
pub mod measurements;
pub mod signature;
