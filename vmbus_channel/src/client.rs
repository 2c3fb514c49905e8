//! The guest side of the in-process VMBus: enumerate offers, create GPADLs in guest memory,
//! open channels and exchange packets with the devices behind them.
//!
//! The client owns a range of guest pages (its "driver memory") from which it allocates ring
//! buffers. With confidential channels negotiated and a confidential offer, rings go to
//! private memory, exactly where the device will look for them.

use crate::bus::OfferKey;
use crate::channel::ChannelError;
use crate::channel::RingChannel;
use crate::channel::Side;
use crate::gpadl::Gpadl;
use crate::gpadl::GpadlError;
use crate::gpadl::build_request;
use crate::interrupt::Event;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::memory::PAGE_SIZE;
use crate::protocol::FeatureFlags;
use crate::protocol::GpadlId;
use crate::protocol::OfferFlags;
use crate::protocol::OfferWire;
use crate::protocol::UserDefinedData;
use crate::protocol::guid_from_wire;
use crate::ring::IncomingPacket;
use crate::ring::OutgoingPacket;
use crate::ring::PacketType;
use crate::ring::PagedRingMem;
use crate::ring::RingMemError;
use crate::server::OpenParams;
use crate::server::ServerError;
use crate::server::VmbusServer;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::RwLock;

/// A client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused.
    #[error("server error")]
    Server(#[from] ServerError),
    /// The channel failed.
    #[error("channel error")]
    Channel(#[from] ChannelError),
    /// The client's driver memory is used up.
    #[error("out of driver memory ({0} pages requested)")]
    OutOfMemory(u64),
    /// A GPADL could not be built.
    #[error("GPADL error")]
    Gpadl(#[from] GpadlError),
    /// Ring pages could not be initialized.
    #[error("ring memory error")]
    RingMem(#[from] RingMemError),
    /// A GPADL of this many pages cannot be described.
    #[error("GPADL of {0} pages is too large")]
    TooManyPages(usize),
    /// The ring size is unusable.
    #[error("ring of {0} pages is unusable")]
    BadRingSize(u32),
}

/// An offer as the client decoded it from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    /// The channel id.
    pub channel_id: u32,
    /// Interface, instance and subchannel index.
    pub key: OfferKey,
    /// The offer flags.
    pub flags: OfferFlags,
    /// Interface-specific data.
    pub user_defined: UserDefinedData,
    /// MMIO space requested, in megabytes.
    pub mmio_megabytes: u16,
}

impl OfferInfo {
    fn decode(channel_id: u32, wire: &OfferWire) -> Self {
        Self {
            channel_id,
            key: OfferKey {
                interface_id: guid_from_wire(wire.interface_id),
                instance_id: guid_from_wire(wire.instance_id),
                subchannel_index: wire.subchannel_index.get(),
            },
            flags: OfferFlags::from_bits(wire.flags.get()),
            user_defined: wire.user_defined,
            mmio_megabytes: wire.mmio_megabytes.get(),
        }
    }
}

#[derive(Debug)]
struct Connection {
    server: RwLock<VmbusServer>,
    memory: GuestMemory,
    private: Option<GuestMemory>,
    features: FeatureFlags,
    pages: Mutex<Range<u64>>,
    next_gpadl: Mutex<u32>,
    /// Events of open channels, re-registered when re-attaching to a restored server.
    events: Mutex<HashMap<u32, Event>>,
}

impl Connection {
    fn server(&self) -> VmbusServer {
        self.server
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn events(&self) -> MutexGuard<'_, HashMap<u32, Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The in-process guest.
#[derive(Debug, Clone)]
pub struct VmbusClient {
    conn: Arc<Connection>,
}

impl VmbusClient {
    /// Connects to `server` as a guest with `memory` (and `private` memory in a
    /// hardware-isolated guest), allocating rings from the page numbers in `driver_pages`.
    pub fn connect(
        server: &VmbusServer,
        memory: GuestMemory,
        private: Option<GuestMemory>,
        driver_pages: Range<u64>,
        requested: FeatureFlags,
    ) -> Result<Self, ClientError> {
        let features = server.connect(requested)?;
        Ok(Self {
            conn: Arc::new(Connection {
                server: RwLock::new(server.clone()),
                memory,
                private,
                features,
                pages: Mutex::new(driver_pages),
                next_gpadl: Mutex::new(0),
                events: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The features the server agreed to.
    pub fn feature_flags(&self) -> FeatureFlags {
        self.conn.features
    }

    /// The current offers.
    pub fn offers(&self) -> Vec<OfferInfo> {
        self.conn
            .server()
            .offers()
            .iter()
            .map(|m| OfferInfo::decode(m.channel_id, &m.offer))
            .collect()
    }

    /// The offer for `interface_id`, if there is one.
    pub fn find_offer(&self, interface_id: uuid::Uuid) -> Option<OfferInfo> {
        self.offers()
            .into_iter()
            .find(|o| o.key.interface_id == interface_id)
    }

    /// Allocates `count` contiguous pages of driver memory; returns the first page number.
    pub fn alloc_pages(&self, count: u64) -> Result<u64, ClientError> {
        let mut pages = self
            .conn
            .pages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = pages.start;
        let end = first
            .checked_add(count)
            .filter(|&e| e <= pages.end)
            .ok_or(ClientError::OutOfMemory(count))?;
        pages.start = end;
        Ok(first)
    }

    /// Creates a GPADL over `pfns` (one page-aligned range) on `channel_id`.
    pub async fn create_gpadl(
        &self,
        channel_id: u32,
        pfns: &[u64],
    ) -> Result<GpadlId, ClientError> {
        let id = {
            let mut next = self
                .conn
                .next_gpadl
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *next = next.wrapping_add(1);
            GpadlId(*next)
        };
        let byte_count = pfns
            .len()
            .checked_mul(PAGE_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ClientError::TooManyPages(pfns.len()))?;
        let request = build_request(id, [(0, byte_count, pfns)]);
        self.conn.server().create_gpadl(channel_id, request).await?;
        Ok(id)
    }

    /// Tears down a GPADL.
    pub async fn teardown_gpadl(&self, channel_id: u32, id: GpadlId) -> Result<(), ClientError> {
        Ok(self.conn.server().teardown_gpadl(channel_id, id).await?)
    }

    /// Opens the channel of `offer` with `ring_pages` data pages in each direction.
    pub async fn open(
        &self,
        offer: &OfferInfo,
        ring_pages: u32,
    ) -> Result<ClientChannel, ClientError> {
        if ring_pages == 0 {
            return Err(ClientError::BadRingSize(ring_pages));
        }
        let confidential =
            self.conn.features.confidential_channels() && offer.flags.confidential_ring_buffer();
        let ring_memory = match (&self.conn.private, confidential) {
            (Some(private), true) => private.clone(),
            _ => self.conn.memory.clone(),
        };
        let per_ring = u64::from(ring_pages) + 1;
        let first = self.alloc_pages(2 * per_ring)?;
        let pfns: Vec<u64> = (first..first + 2 * per_ring).collect();
        let (ours, theirs) = pfns.split_at(per_ring as usize);
        PagedRingMem::new(ring_memory.clone(), ours)?.initialize()?;
        PagedRingMem::new(ring_memory.clone(), theirs)?.initialize()?;
        let channel_id = offer.channel_id;
        let byte_count = pfns
            .len()
            .checked_mul(PAGE_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ClientError::BadRingSize(ring_pages))?;
        let gpadl_id = self.create_gpadl(channel_id, &pfns).await?;
        let ring_offset = per_ring as u32;

        let event = Event::new();
        self.conn.events().insert(channel_id, event.clone());
        let server = self.conn.server();
        server.set_guest_interrupt(channel_id, Interrupt::from_event(event.clone()));
        let params = OpenParams {
            ring_gpadl_id: gpadl_id,
            ring_offset,
            target_vp: 0,
            user_data: UserDefinedData::ZERO,
        };
        if let Err(err) = server.open_channel(channel_id, params).await {
            self.conn.events().remove(&channel_id);
            return Err(err.into());
        }
        let gpadl = Gpadl::new(
            &build_request(gpadl_id, [(0, byte_count, pfns.as_slice())]),
            &ring_memory,
        )?;
        let conn = Arc::downgrade(&self.conn);
        let signal_host = Interrupt::from_fn(move || {
            if let Some(conn) = conn.upgrade() {
                conn.server().signal_host(channel_id);
            }
        });
        let ring = RingChannel::new(
            Side::Guest,
            &ring_memory,
            &gpadl,
            ring_offset,
            signal_host,
            event,
        )?;
        Ok(ClientChannel {
            client: self.clone(),
            offer: offer.clone(),
            ring,
            ring_gpadl: gpadl_id,
            confidential_ring: confidential,
            next_transaction_id: 1,
            unsolicited: VecDeque::new(),
        })
    }

    /// Re-attaches to `server`, a server restored from the one this client used: the guest
    /// keeps running across host servicing, with its rings and GPADLs in guest memory.
    pub fn reattach(&self, server: &VmbusServer) -> Result<(), ClientError> {
        server.connect(self.conn.features)?;
        for (&channel_id, event) in self.conn.events().iter() {
            server.set_guest_interrupt(channel_id, Interrupt::from_event(event.clone()));
        }
        *self
            .conn
            .server
            .write()
            .unwrap_or_else(PoisonError::into_inner) = server.clone();
        // Packets or space may have arrived while detached.
        for event in self.conn.events().values() {
            event.signal();
        }
        Ok(())
    }
}

/// An open channel, from the guest.
#[derive(Debug)]
pub struct ClientChannel {
    client: VmbusClient,
    offer: OfferInfo,
    ring: RingChannel,
    ring_gpadl: GpadlId,
    confidential_ring: bool,
    next_transaction_id: u64,
    /// Packets that arrived while waiting for a completion.
    unsolicited: VecDeque<IncomingPacket>,
}

impl ClientChannel {
    /// The offer this channel was opened from.
    pub fn offer(&self) -> &OfferInfo {
        &self.offer
    }

    /// True if the rings are in private memory.
    pub fn uses_confidential_ring(&self) -> bool {
        self.confidential_ring
    }

    /// Sends a raw packet.
    pub async fn send_packet(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), ClientError> {
        Ok(self.ring.send(packet).await?)
    }

    /// Sends an in-band packet without asking for a completion.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let tid = self.take_transaction_id();
        self.send_packet(&OutgoingPacket::in_band(tid, false, &[payload]))
            .await
    }

    /// Sends `payload` asking for a completion and waits for it; other packets arriving
    /// meanwhile are kept for [`ClientChannel::recv`].
    pub async fn request(&mut self, payload: &[u8]) -> Result<IncomingPacket, ClientError> {
        let tid = self.take_transaction_id();
        self.send_packet(&OutgoingPacket::in_band(tid, true, &[payload]))
            .await?;
        loop {
            let packet = self.ring.recv().await?;
            if packet.packet_type == PacketType::COMPLETION && packet.transaction_id == tid {
                return Ok(packet);
            }
            self.unsolicited.push_back(packet);
        }
    }

    /// Waits for the next packet from the device.
    pub async fn recv(&mut self) -> Result<IncomingPacket, ClientError> {
        if let Some(packet) = self.unsolicited.pop_front() {
            return Ok(packet);
        }
        Ok(self.ring.recv().await?)
    }

    /// Changes the VP the device interrupts.
    pub async fn modify_target_vp(&self, target_vp: u32) -> Result<i32, ClientError> {
        Ok(self
            .client
            .conn
            .server()
            .modify_channel(self.offer.channel_id, target_vp)
            .await?)
    }

    /// Closes the channel and tears down its ring GPADL.
    pub async fn close(self) -> Result<(), ClientError> {
        let server = self.client.conn.server();
        let channel_id = self.offer.channel_id;
        server.close_channel(channel_id).await?;
        self.client.conn.events().remove(&channel_id);
        server.teardown_gpadl(channel_id, self.ring_gpadl).await?;
        Ok(())
    }

    fn take_transaction_id(&mut self) -> u64 {
        let tid = self.next_transaction_id;
        self.next_transaction_id = tid.wrapping_add(1);
        tid
    }
}
