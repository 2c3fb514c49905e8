//! The guest side of VMBus: a client that speaks the control protocol through a
//! [`MessagePort`] — connects, enumerates offers, creates GPADLs in guest memory, opens
//! channels — and exchanges packets with the devices behind them.
//!
//! The client owns a range of guest pages (its "driver memory") from which it allocates ring
//! buffers. With confidential channels negotiated and a confidential offer, rings go to
//! private memory, exactly where the device will look for them.
//!
//! There is no client task to run: whichever client call is waiting for an answer reads the
//! port and files every message it finds (offers, results, rescinds) for whoever waits for
//! it. [`VmbusClient::offers`] files what has arrived so far without waiting.

use crate::bus::GpadlRequest;
use crate::bus::OfferKey;
use crate::channel::ChannelError;
use crate::channel::RingChannel;
use crate::channel::Side;
use crate::control;
use crate::control::ChannelIdBody;
use crate::control::Message;
use crate::control::Version;
use crate::control::gpadl::GpadlMessageError;
use crate::control::gpadl::GpadlMessages;
use crate::gpadl::Gpadl;
use crate::gpadl::GpadlError;
use crate::gpadl::build_request;
use crate::interrupt::Event;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::memory::PAGE_SIZE;
use crate::port::MessagePort;
use crate::port::PortError;
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
use crate::server::VmbusServer;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::Weak;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::task::Poll;

/// A client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused (a failure status in its answer).
    #[error("server refused {what} with status {status:#x}")]
    Refused {
        /// What was refused.
        what: &'static str,
        /// The status the server sent.
        status: i32,
    },
    /// No version this client speaks was accepted.
    #[error("the server accepted no protocol version")]
    NoVersion,
    /// This server has no in-process port to connect to.
    #[error("the server has no in-process port")]
    NoPort,
    /// The port failed.
    #[error("port error")]
    Port(#[from] PortError),
    /// The channel failed.
    #[error("channel error")]
    Channel(#[from] ChannelError),
    /// The client's driver memory is used up.
    #[error("out of driver memory ({0} pages requested)")]
    OutOfMemory(u64),
    /// A GPADL could not be built.
    #[error("GPADL error")]
    Gpadl(#[from] GpadlError),
    /// A GPADL cannot be sent.
    #[error("GPADL cannot be sent")]
    GpadlMessage(#[from] GpadlMessageError),
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
    /// The connection id to signal the host with.
    pub connection_id: u32,
}

impl OfferInfo {
    fn decode(offer: &control::OfferChannel) -> Self {
        let wire: &OfferWire = &offer.offer;
        Self {
            channel_id: offer.channel_id.get(),
            key: OfferKey {
                interface_id: guid_from_wire(wire.interface_id),
                instance_id: guid_from_wire(wire.instance_id),
                subchannel_index: wire.subchannel_index.get(),
            },
            flags: OfferFlags::from_bits(wire.flags.get()),
            user_defined: wire.user_defined,
            mmio_megabytes: wire.mmio_megabytes.get(),
            connection_id: offer.connection_id.get(),
        }
    }
}

/// Messages from the server, filed for whoever waits for them.
#[derive(Debug, Default)]
struct Inbox {
    version: Option<(bool, FeatureFlags)>,
    offers: BTreeMap<u32, OfferInfo>,
    all_offers_delivered: bool,
    rescinded: HashSet<u32>,
    gpadl_created: HashMap<GpadlId, i32>,
    gpadl_torndown: HashSet<GpadlId>,
    open_results: HashMap<u32, (u32, u32)>,
    modify_responses: HashMap<u32, i32>,
    unload_complete: bool,
    /// UNLOAD was sent: the connection is going away and nothing is released any more.
    unloading: bool,
}

impl Inbox {
    fn file(&mut self, bytes: &[u8], port: &dyn MessagePort) {
        let message = match Message::parse(bytes) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "malformed message from the host dropped");
                return;
            }
        };
        match message {
            Message::VersionResponse(r) => {
                self.version = Some((r.version_supported != 0, FeatureFlags::new()));
            }
            Message::VersionResponse2(r) => {
                self.version = Some((
                    r.base.version_supported != 0,
                    FeatureFlags::from_bits(r.supported_features.get()),
                ));
            }
            Message::OfferChannel(o) => {
                let info = OfferInfo::decode(&o);
                self.rescinded.remove(&info.channel_id);
                self.offers.insert(info.channel_id, info);
            }
            Message::AllOffersDelivered => self.all_offers_delivered = true,
            Message::RescindChannelOffer(r) => {
                let channel_id = r.channel_id.get();
                self.offers.remove(&channel_id);
                self.rescinded.insert(channel_id);
                if self.unloading {
                    // The unload releases everything; the host no longer takes a release.
                    return;
                }
                // Nothing of this client keeps the id: release it at once.
                let release = Message::RelIdReleased(ChannelIdBody {
                    channel_id: channel_id.into(),
                })
                .encode();
                if let Err(err) = port.post_message(release.as_bytes()) {
                    tracing::warn!(error = %err, "release not sent");
                }
            }
            Message::GpadlCreated(c) => {
                self.gpadl_created
                    .insert(GpadlId(c.gpadl_id.get()), c.status.get());
            }
            Message::GpadlTorndown(t) => {
                self.gpadl_torndown.insert(GpadlId(t.gpadl_id.get()));
            }
            Message::OpenResult(r) => {
                self.open_results
                    .insert(r.channel_id.get(), (r.open_id.get(), r.status.get()));
            }
            Message::ModifyChannelResponse(r) => {
                self.modify_responses
                    .insert(r.channel_id.get(), r.status.get());
            }
            Message::UnloadComplete => self.unload_complete = true,
            other => {
                tracing::warn!(message_type = ?other.message_type(), "unexpected message from the host");
            }
        }
    }
}

struct Connection {
    port: RwLock<Arc<dyn MessagePort>>,
    memory: GuestMemory,
    private: Option<GuestMemory>,
    version: Version,
    features: FeatureFlags,
    pages: Mutex<Range<u64>>,
    next_gpadl: AtomicU32,
    next_open: AtomicU32,
    inbox: Mutex<Inbox>,
    /// Events of open channels by event flag, registered again on a new port.
    events: Mutex<HashMap<u32, Event>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("version", &self.version)
            .field("features", &self.features)
            .finish()
    }
}

impl Connection {
    fn port(&self) -> Arc<dyn MessagePort> {
        self.port
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn events(&self) -> MutexGuard<'_, HashMap<u32, Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn post(&self, message: &Message<'_>) -> Result<(), ClientError> {
        Ok(self.port().post_message(message.encode().as_bytes())?)
    }

    /// Files every queued message.
    fn drain(inbox: &mut Inbox, port: &dyn MessagePort) {
        while let Some(m) = port.try_recv() {
            inbox.file(m.as_bytes(), port);
        }
    }

    /// Waits until `pick` finds its answer in the inbox, reading the port meanwhile.
    async fn wait<T>(
        port: &dyn MessagePort,
        inbox: &Mutex<Inbox>,
        mut pick: impl FnMut(&mut Inbox) -> Option<T>,
    ) -> Result<T, ClientError> {
        std::future::poll_fn(|cx| {
            // Draining, checking and registering under the inbox lock: a message filed by
            // another waiter is seen here, and one arriving later wakes us.
            let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                Self::drain(&mut inbox, port);
                if let Some(t) = pick(&mut inbox) {
                    return Poll::Ready(Ok(t));
                }
                match port.poll_ready(cx) {
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => return Poll::Ready(Err(PortError::Disconnected.into())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    async fn wait_for<T>(
        &self,
        pick: impl FnMut(&mut Inbox) -> Option<T>,
    ) -> Result<T, ClientError> {
        let port = self.port();
        Self::wait(&*port, &self.inbox, pick).await
    }
}

/// A guest's VMBus client.
#[derive(Debug, Clone)]
pub struct VmbusClient {
    conn: Arc<Connection>,
}

impl VmbusClient {
    /// Connects to the in-process `server` as a guest with `memory` (and `private` memory in
    /// a hardware-isolated guest), allocating rings from the page numbers in `driver_pages`.
    pub async fn connect(
        server: &VmbusServer,
        memory: GuestMemory,
        private: Option<GuestMemory>,
        driver_pages: Range<u64>,
        requested: FeatureFlags,
    ) -> Result<Self, ClientError> {
        let port = server.guest_port().ok_or(ClientError::NoPort)?;
        Self::connect_port(port, memory, private, driver_pages, requested).await
    }

    /// Connects through `port`: negotiates the newest version the host accepts (features
    /// from 6.0), then asks for the offers and waits until all are delivered.
    pub async fn connect_port(
        port: Arc<dyn MessagePort>,
        memory: GuestMemory,
        private: Option<GuestMemory>,
        driver_pages: Range<u64>,
        requested: FeatureFlags,
    ) -> Result<Self, ClientError> {
        let inbox = Mutex::new(Inbox::default());
        let mut negotiated = None;
        for version in Version::SUPPORTED {
            let base = control::InitiateContact {
                version_requested: version.0.into(),
                target_message_vp: 0.into(),
                interrupt_page_or_target_info: control::TargetInfo::new()
                    .with_sint(2)
                    .with_feature_flags(if version.has_feature_flags() {
                        requested.into_bits()
                    } else {
                        0
                    })
                    .into_bits()
                    .into(),
                parent_to_child_monitor_page_gpa: 0.into(),
                child_to_parent_monitor_page_gpa: 0.into(),
            };
            let message = if version.has_feature_flags() {
                Message::InitiateContact2(control::InitiateContact2 {
                    base,
                    client_id: [0; 16],
                })
            } else {
                Message::InitiateContact(base)
            };
            port.post_message(message.encode().as_bytes())?;
            let (accepted, features) =
                Connection::wait(&*port, &inbox, |i| i.version.take()).await?;
            if accepted {
                negotiated = Some((version, features));
                break;
            }
        }
        let (version, features) = negotiated.ok_or(ClientError::NoVersion)?;
        // Never use a feature that was not asked for, whatever the host says.
        let features = FeatureFlags::from_bits(features.into_bits() & requested.into_bits());
        port.post_message(Message::RequestOffers.encode().as_bytes())?;
        Connection::wait(&*port, &inbox, |i| i.all_offers_delivered.then_some(())).await?;
        Ok(Self {
            conn: Arc::new(Connection {
                port: RwLock::new(port),
                memory,
                private,
                version,
                features,
                pages: Mutex::new(driver_pages),
                next_gpadl: AtomicU32::new(0),
                next_open: AtomicU32::new(0),
                inbox,
                events: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The features the server agreed to.
    pub fn feature_flags(&self) -> FeatureFlags {
        self.conn.features
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        self.conn.version
    }

    /// The current offers (those received so far).
    pub fn offers(&self) -> Vec<OfferInfo> {
        let port = self.conn.port();
        let mut inbox = self.conn.inbox();
        Connection::drain(&mut inbox, &*port);
        inbox.offers.values().cloned().collect()
    }

    /// The primary offer for `interface_id`, if there is one.
    pub fn find_offer(&self, interface_id: uuid::Uuid) -> Option<OfferInfo> {
        self.offers()
            .into_iter()
            .find(|o| o.key.interface_id == interface_id && o.key.subchannel_index == 0)
    }

    /// The subchannel offers of `primary`, by subchannel index.
    pub fn subchannel_offers(&self, primary: &OfferInfo) -> Vec<OfferInfo> {
        let mut subs: Vec<_> = self
            .offers()
            .into_iter()
            .filter(|o| {
                o.key.interface_id == primary.key.interface_id
                    && o.key.instance_id == primary.key.instance_id
                    && o.key.subchannel_index != 0
            })
            .collect();
        subs.sort_by_key(|o| o.key.subchannel_index);
        subs
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

    /// Creates a GPADL over `pfns` (one page-aligned range) on `channel_id`, split over as
    /// many messages as it needs.
    pub async fn create_gpadl(
        &self,
        channel_id: u32,
        pfns: &[u64],
    ) -> Result<GpadlId, ClientError> {
        let byte_count = pfns
            .len()
            .checked_mul(PAGE_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ClientError::TooManyPages(pfns.len()))?;
        let id = GpadlId(self.conn.next_gpadl.fetch_add(1, Ordering::Relaxed) + 1);
        let request = build_request(id, [(0, byte_count, pfns)]);
        self.send_gpadl(channel_id, &request).await?;
        Ok(id)
    }

    async fn send_gpadl(&self, channel_id: u32, request: &GpadlRequest) -> Result<(), ClientError> {
        let id = request.id;
        let port = self.conn.port();
        for message in GpadlMessages::new(channel_id, request)? {
            port.post_message(message.as_bytes())?;
        }
        let status = self.conn.wait_for(|i| i.gpadl_created.remove(&id)).await?;
        if status != control::STATUS_SUCCESS {
            return Err(ClientError::Refused {
                what: "GPADL",
                status,
            });
        }
        Ok(())
    }

    /// Tears down a GPADL; returns once the host no longer uses it.
    pub async fn teardown_gpadl(&self, channel_id: u32, id: GpadlId) -> Result<(), ClientError> {
        if self.conn.inbox().rescinded.contains(&channel_id) {
            // Released with the channel.
            return Ok(());
        }
        self.conn
            .post(&Message::GpadlTeardown(control::GpadlTeardown {
                channel_id: channel_id.into(),
                gpadl_id: id.0.into(),
            }))?;
        self.conn
            .wait_for(|i| i.gpadl_torndown.remove(&id).then_some(()))
            .await
    }

    /// Opens the channel of `offer` with `ring_pages` data pages in each direction,
    /// interrupts on VP 0.
    pub async fn open(
        &self,
        offer: &OfferInfo,
        ring_pages: u32,
    ) -> Result<ClientChannel, ClientError> {
        self.open_on_vp(offer, ring_pages, 0).await
    }

    /// Opens the channel of `offer` with its interrupts on `target_vp`.
    pub async fn open_on_vp(
        &self,
        offer: &OfferInfo,
        ring_pages: u32,
        target_vp: u32,
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
        let split = usize::try_from(per_ring).map_err(|_| ClientError::BadRingSize(ring_pages))?;
        let (ours, theirs) = pfns.split_at(split);
        PagedRingMem::new(ring_memory.clone(), ours)?.initialize()?;
        PagedRingMem::new(ring_memory.clone(), theirs)?.initialize()?;
        let channel_id = offer.channel_id;
        let gpadl_id = self.create_gpadl(channel_id, &pfns).await?;
        let ring_offset =
            u32::try_from(per_ring).map_err(|_| ClientError::BadRingSize(ring_pages))?;

        // The host signals the channel's event flag, its channel id (no guest-chosen
        // signal parameters).
        let event = Event::new();
        self.conn.events().insert(channel_id, event.clone());
        self.conn
            .port()
            .set_event_handler(channel_id, Some(Interrupt::from_event(event.clone())));
        let open_id = self.conn.next_open.fetch_add(1, Ordering::Relaxed) + 1;
        let result = async {
            self.conn.post(&Message::OpenChannel(control::OpenChannel {
                channel_id: channel_id.into(),
                open_id: open_id.into(),
                ring_buffer_gpadl_id: gpadl_id.0.into(),
                target_vp: target_vp.into(),
                downstream_ring_buffer_page_offset: ring_offset.into(),
                user_data: UserDefinedData::ZERO,
            }))?;
            let (_, status) = self
                .conn
                .wait_for(|i| {
                    if i.rescinded.contains(&channel_id) {
                        return Some((open_id, control::STATUS_UNSUCCESSFUL.cast_unsigned()));
                    }
                    i.open_results
                        .remove(&channel_id)
                        .filter(|&(id, _)| id == open_id)
                })
                .await?;
            if status != 0 {
                return Err(ClientError::Refused {
                    what: "open",
                    status: status.cast_signed(),
                });
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            self.conn.events().remove(&channel_id);
            self.conn.port().set_event_handler(channel_id, None);
            return Err(err);
        }
        let request = build_request(
            gpadl_id,
            [(
                0,
                u32::try_from(pfns.len() * PAGE_SIZE).unwrap_or(u32::MAX),
                pfns.as_slice(),
            )],
        );
        let gpadl = Gpadl::new(&request, &ring_memory)?;
        let conn = Arc::downgrade(&self.conn);
        let connection_id = offer.connection_id;
        let signal_host = Interrupt::from_fn(move || signal(&conn, connection_id));
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

    /// Re-attaches to `server`, a server restored (on a new port) from the one this client
    /// used: the guest keeps its connection, rings and GPADLs, which live in guest memory
    /// and in the restored server's state.
    pub fn reattach(&self, server: &VmbusServer) -> Result<(), ClientError> {
        let port = server.guest_port().ok_or(ClientError::NoPort)?;
        for (&event_flag, event) in self.conn.events().iter() {
            port.set_event_handler(event_flag, Some(Interrupt::from_event(event.clone())));
        }
        *self
            .conn
            .port
            .write()
            .unwrap_or_else(PoisonError::into_inner) = port;
        // Packets or space may have arrived while detached.
        for event in self.conn.events().values() {
            event.signal();
        }
        Ok(())
    }

    /// Disconnects: sends UNLOAD and waits for UNLOAD_COMPLETE (the host closes every
    /// channel and releases every GPADL first).
    pub async fn unload(&self) -> Result<(), ClientError> {
        {
            // Handle what the host already sent (a rescind is released now, while the
            // connection stands) and send UNLOAD before anyone else files a message.
            let port = self.conn.port();
            let mut inbox = self.conn.inbox();
            Connection::drain(&mut inbox, &*port);
            inbox.unloading = true;
            port.post_message(Message::Unload.encode().as_bytes())?;
        }
        self.conn
            .wait_for(|i| std::mem::take(&mut i.unload_complete).then_some(()))
            .await
    }
}

fn signal(conn: &Weak<Connection>, connection_id: u32) {
    if let Some(conn) = conn.upgrade() {
        conn.port().signal_event(connection_id);
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

    /// The GPADL holding the rings.
    pub fn ring_gpadl(&self) -> GpadlId {
        self.ring_gpadl
    }

    /// Signals the host (as the ring code does after writing).
    pub fn signal_host(&self) {
        signal(&Arc::downgrade(&self.client.conn), self.offer.connection_id);
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

    /// Moves the channel's interrupts to `target_vp`; returns the host's status (0 = ok).
    /// Before version 5.3 the host sends no answer and 0 is returned once the request is
    /// sent.
    pub async fn modify_target_vp(&self, target_vp: u32) -> Result<i32, ClientError> {
        let conn = &self.client.conn;
        let channel_id = self.offer.channel_id;
        conn.post(&Message::ModifyChannel(control::ModifyChannel {
            channel_id: channel_id.into(),
            target_vp: target_vp.into(),
        }))?;
        if conn.version < Version::IRON {
            return Ok(control::STATUS_SUCCESS);
        }
        // A rescinded channel gets no answer any more.
        conn.wait_for(|i| {
            i.modify_responses.remove(&channel_id).or_else(|| {
                i.rescinded
                    .contains(&channel_id)
                    .then_some(control::STATUS_UNSUCCESSFUL)
            })
        })
        .await
    }

    /// Closes the channel and tears down its ring GPADL.
    pub async fn close(self) -> Result<(), ClientError> {
        let conn = &self.client.conn;
        let channel_id = self.offer.channel_id;
        conn.events().remove(&channel_id);
        conn.port().set_event_handler(channel_id, None);
        if conn.inbox().rescinded.contains(&channel_id) {
            return Ok(());
        }
        conn.post(&Message::CloseChannel(ChannelIdBody {
            channel_id: channel_id.into(),
        }))?;
        self.client
            .teardown_gpadl(channel_id, self.ring_gpadl)
            .await
    }

    fn take_transaction_id(&mut self) -> u64 {
        let tid = self.next_transaction_id;
        self.next_transaction_id = tid.wrapping_add(1);
        tid
    }
}
