//! VMBus channels without a hypervisor: offers, GPADLs, ring buffers over guest memory, and an
//! in-process server and client to run them.
//!
//! Layers, bottom up:
//! * [`memory`] — a cloneable handle over `vm-memory` guest memory (stands in for OpenVMM's
//!   `guestmem`).
//! * [`ring`] — the Hyper-V/Linux ring buffer: control page, packet framing, a reader and a
//!   writer that read each peer-owned value once and validate it before use.
//! * [`gpadl`] — guest buffers described as page ranges, validated, held in a per-channel map
//!   with reference-counted views.
//! * [`protocol`], [`bus`], [`rpc`], [`interrupt`] — the device-facing bus API of OpenVMM's
//!   `vmbus_channel::bus` (offers, open/close/GPADL requests, save/restore) with `futures`
//!   channels in place of mesh.
//! * [`channel`] — an opened channel's ring pair with async send/receive, for either end.
//! * [`control`] — the channel-management messages of Linux `hyperv.h` / OpenVMM
//!   `vmbus_core`, byte for byte (no I/O), and the GPADL header/body split.
//! * [`port`] — the [`port::MessagePort`] seam (240-byte messages on one connection, event
//!   signals) and its in-process implementation.
//! * [`server`], [`client`] — a VMBus server (a [`bus::ParentBus`] with one state machine
//!   per channel, [`server::channels`]) and a guest client. They exchange only control
//!   messages and event signals through a port, so either could face a real peer.
//! * [`device`] — [`device::SimpleVmbusDevice`]: put a device on the bus in a few lines.
//!
//! Start with a device on the in-process bus (see also `examples/echo_device.rs`):
//!
//! ```
//! # use async_trait::async_trait;
//! # use futures::future::{join, select};
//! # use std::pin::pin;
//! use vmbus_channel::bus::OfferParams;
//! use vmbus_channel::client::VmbusClient;
//! use vmbus_channel::device::{offer_device, DeviceContext, DeviceError, SimpleVmbusDevice};
//! use vmbus_channel::memory::{GuestMemory, PAGE_SIZE};
//! use vmbus_channel::protocol::FeatureFlags;
//! use vmbus_channel::ring::IncomingPacket;
//! use vmbus_channel::server::VmbusServer;
//!
//! struct Ping;
//! const PING: uuid::Uuid = uuid::Uuid::from_u128(0x9196);
//!
//! #[async_trait]
//! impl SimpleVmbusDevice for Ping {
//!     fn offer(&self) -> OfferParams {
//!         OfferParams { interface_id: PING, ..Default::default() }
//!     }
//!     async fn handle_packet(
//!         &mut self,
//!         _ctx: &DeviceContext<'_>,
//!         _packet: &IncomingPacket,
//!     ) -> Result<Option<Vec<u8>>, DeviceError> {
//!         Ok(Some(b"pong".to_vec()))
//!     }
//! }
//!
//! let memory = GuestMemory::new(64 * PAGE_SIZE).unwrap();
//! let (server, server_runner) = VmbusServer::new(memory.clone(), None);
//! futures::executor::block_on(async {
//!     let device = offer_device(&server, Ping).await.unwrap();
//!     let guest = async {
//!         let client = VmbusClient::connect(&server, memory, None, 8..64, FeatureFlags::all())
//!             .await
//!             .unwrap();
//!         let mut channel = client.open(&client.find_offer(PING).unwrap(), 2).await.unwrap();
//!         let reply = channel.request(b"ping").await.unwrap();
//!         assert_eq!(&reply.data()[..4], b"pong");
//!     };
//!     select(pin!(guest), pin!(join(server_runner.run(), device.run()))).await;
//! });
//! ```
//!
//! Payloads read from a ring include the sender's padding to a multiple of 8 bytes (the
//! descriptor counts 8-byte units); protocols on top carry their own lengths.
//!
//! Beyond the suggested module layout: `ring/mem.rs` holds the small [`ring::RingMem`] trait
//! (so tests can substitute memory that changes under the host), `channel` is shared by the
//! device runner and the client, and `interrupt` replaces `vmcore::interrupt`.
//!
//! Not implemented: writing transfer-page packets (they are read and exposed raw through
//! [`ring::IncomingPacket::header_area`]); monitor pages (offers never set
//! `request_monitored_notification`, `mnf_interrupt_latency` is ignored and interrupts are
//! always direct); an hvsocket provider (TL_CONNECT_REQUEST is answered with
//! `STATUS_CONNECTION_REFUSED`); MODIFY_CONNECTION, PAUSE/RESUME and reserved channels of
//! OpenVMM's 6.0 protocol; interrupt masking by the async channel (it never polls; the ring
//! API has [`ring::IncomingRing::set_interrupt_mask`]).

#![forbid(unsafe_code)]

pub mod bus;
pub mod channel;
pub mod client;
pub mod control;
pub mod device;
pub mod gpadl;
pub mod interrupt;
pub mod memory;
pub mod port;
pub mod protocol;
pub mod ring;
pub mod rpc;
pub mod server;
