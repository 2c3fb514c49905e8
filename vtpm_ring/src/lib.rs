//! A Xen-style vTPM split driver, in one process: guest domains reach a virtual TPM through
//! pages they grant to a backend domain, event channels and a xenstore-like store.
//!
//! The pieces, bottom up:
//! - [`domain`]: a [`Host`](domain::Host) (the hypervisor) and its domains, each with its own
//!   `vm-memory` address space; a [`Domain`](domain::Domain) handle is the right to act as it,
//!   and nothing more: dom0's powers need the [`Toolstack`](domain::Toolstack) capability,
//!   which only the host side gets.
//! - [`page`], [`grant`]: pages, and the grant table that lets exactly one other domain map a
//!   page read-only or read-write until revoked (refused while mapped).
//! - [`event`]: inter-domain event channels (bind, notify, async wait, close).
//! - [`store`], [`xenbus`]: hierarchical keys with per-domain permissions, quotas and bounded
//!   watch queues; the xenbus states and the seed's device layout.
//! - [`protocol`]: the v1 multi-page ring of seed 004 and the v2 shared page of current Xen.
//! - [`frontend`]: the guest driver (`transmit`, locality, cancel: what `/dev/tpm0` offers).
//! - [`backend`]: serves every frontend, validates every request, answers malformed ones
//!   itself, resets the TPM for every connection, bounds the engine's processing time, and
//!   multiplexes all instances onto one stream ([`manager`]) to the engines, where replies are
//!   matched by tag, never by order.
//! - [`engine`]: the [`TpmEngine`](engine::TpmEngine) trait (commands and control
//!   operations), [`SwtpmEngine`](engine::SwtpmEngine) (one swtpm process per instance, state
//!   on disk, control channel as QEMU drives it) and [`SimTpm`](engine::SimTpm), an in-process
//!   TPM 2.0 subset for unit tests and fuzzing.
//! - [`tpm_header`], [`tpm_command`]: TPM 2.0 headers and response codes; the few commands a
//!   user sends to see a vTPM work (GetRandom, PCR_Extend, PCR_Read, ReadClock) and readers
//!   for their answers.
//! - [`socket`]: a guest's frontend served as a TPM socket for tpm2-tools' `swtpm:` TCTI.
//! - [`qemu`]: a guest's frontend served to QEMU's `-tpmdev emulator` as if it were swtpm,
//!   with the TPM's power carried over the ring (`feature-vtpm-control`).
//! - [`stack`]: a whole host with swtpm engines and served guests (what `vtpmctl run` runs).
//! - [`testbed`]: a ready host with a backend: over [`SimTpm`](engine::SimTpm) for the example
//!   below and fuzzing, over any engine (swtpm in the ring's integration tests).
//!
//! - `vtpmctl` (a binary): `vtpmctl run --domains N` serves N guests' vTPMs as TPM sockets,
//!   `--qemu-socket PATH` serves one more to QEMU, `vtpmctl list` shows them.
//!
//! For real TPMs (swtpm, tpm2-tools), start from [`stack::VtpmStack`] (tokio). The ring
//! itself is plain `futures`: no executor is required, as this in-process example shows:
//!
//! ```
//! use futures::future::Either;
//! use vtpm_ring::backend::BackendConfig;
//! use vtpm_ring::domain::DomainId;
//! use vtpm_ring::frontend::{Frontend, FrontendConfig, FrontendError};
//! use vtpm_ring::testbed::Testbed;
//! use vtpm_ring::tpm_header::{response_code, TpmRc};
//!
//! // A backend domain serving vTPM instance 1, and a guest with a vTPM device on it.
//! let (bed, backend) = Testbed::new(BackendConfig::default(), &[1])?;
//! let guest = bed.add_guest(DomainId(2))?;
//! bed.add_device(guest.id(), 0, 1)?;
//!
//! let guest_side = async {
//!     let tpm = Frontend::connect(&guest, FrontendConfig::default()).await?;
//!     // TPM2_GetRandom(8)
//!     let response = tpm.transmit(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8]).await?;
//!     tpm.close().await?;
//!     Ok::<_, FrontendError>(response)
//! };
//! futures::pin_mut!(guest_side, backend);
//! let response = match futures::executor::block_on(futures::future::select(guest_side, backend)) {
//!     Either::Left((response, _)) => response?,
//!     Either::Right(_) => unreachable!("the backend runs until dropped"),
//! };
//! assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
//! assert_eq!(response.len(), 10 + 2 + 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod backend;
#[cfg(test)]
mod counting_waker;
mod deadline;
pub mod domain;
pub mod engine;
pub mod event;
pub mod frontend;
pub mod grant;
pub mod manager;
mod pace;
pub mod page;
pub mod protocol;
pub mod qemu;
pub mod socket;
pub mod stack;
pub mod store;
mod task_set;
pub mod testbed;
pub mod tpm_command;
pub mod tpm_header;
mod wake_set;
pub mod xenbus;
