//! VMBus channels without a hypervisor: offers, GPADLs, ring buffers over guest memory, and an
//! in-process server and client.
//!
//! * [`bus`] — the device-facing bus API (offers, open/close/GPADL requests, save/restore).
//! * [`rpc`] — request/reply messages over `futures` channels.
//! * [`protocol`] — GPADL ids, user data, feature/offer flags and their wire layouts.
//! * [`memory`] — a cloneable handle over `vm-memory` guest memory.
//! * [`interrupt`] — signals between the two ends of a channel.
//!
//! ```
//! use vmbus_channel::protocol::UserDefinedData;
//! let data = UserDefinedData::pipe(true);
//! assert_eq!(&data.0[..4], &[4, 0, 0, 0]);
//! ```

#![forbid(unsafe_code)]

pub mod bus;
pub mod channel;
pub mod client;
pub mod device;
pub mod gpadl;
pub mod interrupt;
pub mod memory;
pub mod protocol;
pub mod ring;
pub mod rpc;
pub mod server;
