//! An in-process VMBus server: devices offer channels through [`ParentBus`], an in-process
//! guest ([`crate::client::VmbusClient`]) enumerates, opens and closes them and creates
//! GPADLs; the server forwards each control request to the device and keeps enough state to
//! save and restore every channel and GPADL.
//!
//! Requests the device sends the server (revoke, restore) are served by [`ServerRunner::run`],
//! which the embedder runs on its executor.

mod saved_state;

use crate::bus::ChannelRequest;
use crate::bus::ChannelServerRequest;
use crate::bus::ChannelType;
use crate::bus::GpadlRequest;
use crate::bus::ModifyRequest;
use crate::bus::OfferInput;
use crate::bus::OfferKey;
use crate::bus::OfferParams;
use crate::bus::OfferResources;
use crate::bus::OpenData;
use crate::bus::OpenRequest;
use crate::bus::ParentBus;
use crate::bus::RestoreResult;
use crate::bus::RestoredGpadl;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::protocol::FeatureFlags;
use crate::protocol::GpadlId;
use crate::protocol::OfferFlags;
use crate::protocol::OfferWire;
use crate::protocol::UserDefinedData;
use crate::protocol::guid_to_wire;
use crate::rpc::RemoteError;
use crate::rpc::RpcError;
use crate::rpc::RpcSend;
use async_trait::async_trait;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::stream::SelectAll;
use saved_state::SAVED_STATE_VERSION;
use saved_state::SavedChannel;
use saved_state::SavedGpadl;
use saved_state::SavedState;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::Weak;

/// A control request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No channel has this id (never offered, or revoked).
    #[error("no channel {0}")]
    UnknownChannel(u32),
    /// No client is connected.
    #[error("no client connected")]
    NotConnected,
    /// The channel is already open.
    #[error("channel {0} is already open")]
    AlreadyOpen(u32),
    /// The channel is not open.
    #[error("channel {0} is not open")]
    NotOpen(u32),
    /// The GPADL id is already used on this channel.
    #[error("GPADL {0} already exists")]
    DuplicateGpadl(GpadlId),
    /// No such GPADL on this channel.
    #[error("GPADL {0} does not exist")]
    UnknownGpadl(GpadlId),
    /// The GPADL holds the open channel's rings.
    #[error("GPADL {0} holds the open channel's rings")]
    GpadlInUse(GpadlId),
    /// The device rejected the GPADL.
    #[error("device rejected GPADL {0}")]
    GpadlRejected(GpadlId),
    /// The device refused to open the channel.
    #[error("device refused to open channel {0}")]
    OpenRejected(u32),
    /// The device did not answer.
    #[error("device did not answer")]
    Rpc(#[from] RpcError),
    /// Saved state could not be encoded or decoded.
    #[error("bad saved state")]
    SavedState(#[from] postcard::Error),
    /// Saved state has an unknown version.
    #[error("unsupported saved state version {0}")]
    SavedStateVersion(u32),
    /// The client asked for different features than the restored connection had.
    #[error("client features {requested:#x} differ from the restored {restored:#x}")]
    FeatureMismatch {
        /// What the client asked for now.
        requested: u32,
        /// What the restored connection negotiated.
        restored: u32,
    },
}

/// An offer as the guest sees it.
#[derive(Debug, Clone)]
pub struct OfferMessage {
    /// The channel id the guest uses in every request.
    pub channel_id: u32,
    /// The wire form of the offer.
    pub offer: OfferWire,
}

/// Parameters of a guest's open request.
#[derive(Debug, Clone, Copy)]
pub struct OpenParams {
    /// The GPADL holding both rings.
    pub ring_gpadl_id: GpadlId,
    /// Page offset of the host-to-guest ring in that GPADL.
    pub ring_offset: u32,
    /// VP to interrupt.
    pub target_vp: u32,
    /// Opener's user data.
    pub user_data: UserDefinedData,
}

#[derive(Debug)]
struct Channel {
    key: OfferKey,
    offer_flags: OfferFlags,
    offer: OfferWire,
    request_send: mpsc::UnboundedSender<ChannelRequest>,
    gpadls: BTreeMap<GpadlId, SavedGpadl>,
    open: Option<OpenData>,
    guest_to_host: Option<Interrupt>,
    /// Saved state waiting for the device's restore request.
    pending_restore: Option<SavedChannel>,
}

#[derive(Debug, Default)]
struct State {
    channels: BTreeMap<u32, Channel>,
    next_channel_id: u32,
    feature_flags: Option<FeatureFlags>,
    guest_interrupts: HashMap<u32, Interrupt>,
    /// Restored channels whose devices have not been offered again yet.
    restoring: HashMap<OfferKey, SavedChannel>,
}

type DeviceRequests = BoxStream<'static, (u32, Option<ChannelServerRequest>)>;

#[derive(Debug)]
struct Inner {
    untrusted: GuestMemory,
    private: Option<GuestMemory>,
    state: Mutex<State>,
    runner_send: mpsc::UnboundedSender<DeviceRequests>,
}

/// The in-process VMBus server. Cheap to clone; all clones are the same server.
#[derive(Debug, Clone)]
pub struct VmbusServer {
    inner: Arc<Inner>,
}

/// Serves the requests devices send to the server (revoke, restore).
#[derive(Debug)]
pub struct ServerRunner {
    inner: Weak<Inner>,
    new_streams: mpsc::UnboundedReceiver<DeviceRequests>,
}

impl VmbusServer {
    /// A server for a guest with `untrusted` (shared) memory and, for a hardware-isolated
    /// guest, `private` memory. With private memory, offers carry the confidential flags.
    pub fn new(untrusted: GuestMemory, private: Option<GuestMemory>) -> (Self, ServerRunner) {
        Self::with_state(untrusted, private, State::default())
    }

    fn with_state(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        state: State,
    ) -> (Self, ServerRunner) {
        let (runner_send, new_streams) = mpsc::unbounded();
        let inner = Arc::new(Inner {
            untrusted,
            private,
            state: Mutex::new(state),
            runner_send,
        });
        let runner = ServerRunner {
            inner: Arc::downgrade(&inner),
            new_streams,
        };
        (Self { inner }, runner)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    /// Connects the guest client; returns the negotiated features (confidential channels
    /// only with private memory). A restored server keeps its client's features.
    pub fn connect(&self, requested: FeatureFlags) -> Result<FeatureFlags, ServerError> {
        let mut supported = FeatureFlags::all();
        if self.inner.private.is_none() {
            supported.set_confidential_channels(false);
        }
        let negotiated = FeatureFlags::from_bits(requested.into_bits() & supported.into_bits());
        let mut state = self.state();
        match state.feature_flags {
            Some(restored) if restored != negotiated => Err(ServerError::FeatureMismatch {
                requested: negotiated.into_bits(),
                restored: restored.into_bits(),
            }),
            _ => {
                state.feature_flags = Some(negotiated);
                Ok(negotiated)
            }
        }
    }

    /// The current offers, by channel id.
    pub fn offers(&self) -> Vec<OfferMessage> {
        self.state()
            .channels
            .iter()
            .map(|(&channel_id, c)| OfferMessage {
                channel_id,
                offer: c.offer,
            })
            .collect()
    }

    /// Registers the interrupt the server delivers for `channel_id` (the guest's event).
    pub fn set_guest_interrupt(&self, channel_id: u32, interrupt: Interrupt) {
        self.state().guest_interrupts.insert(channel_id, interrupt);
    }

    /// The guest signals the device of `channel_id`.
    pub fn signal_host(&self, channel_id: u32) {
        let irq = self
            .state()
            .channels
            .get(&channel_id)
            .and_then(|c| c.guest_to_host.clone());
        if let Some(irq) = irq {
            irq.deliver();
        }
    }

    fn sender(
        &self,
        channel_id: u32,
    ) -> Result<mpsc::UnboundedSender<ChannelRequest>, ServerError> {
        let state = self.state();
        if state.feature_flags.is_none() {
            return Err(ServerError::NotConnected);
        }
        state
            .channels
            .get(&channel_id)
            .map(|c| c.request_send.clone())
            .ok_or(ServerError::UnknownChannel(channel_id))
    }

    fn with_channel<T>(
        &self,
        channel_id: u32,
        f: impl FnOnce(&mut Channel) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mut state = self.state();
        let channel = state
            .channels
            .get_mut(&channel_id)
            .ok_or(ServerError::UnknownChannel(channel_id))?;
        f(channel)
    }

    /// Creates a GPADL on `channel_id`; the device validates and accepts it.
    pub async fn create_gpadl(
        &self,
        channel_id: u32,
        request: GpadlRequest,
    ) -> Result<(), ServerError> {
        let send = self.sender(channel_id)?;
        let id = request.id;
        self.with_channel(channel_id, |c| {
            if c.gpadls.contains_key(&id) {
                return Err(ServerError::DuplicateGpadl(id));
            }
            // Recorded before the device answers: a save in between restores it unaccepted.
            c.gpadls.insert(
                id,
                SavedGpadl {
                    request: request.clone(),
                    accepted: false,
                },
            );
            Ok(())
        })?;
        let accepted = send.call(ChannelRequest::Gpadl, request).await;
        self.with_channel(channel_id, |c| {
            if matches!(accepted, Ok(true)) {
                if let Some(g) = c.gpadls.get_mut(&id) {
                    g.accepted = true;
                }
                Ok(())
            } else {
                c.gpadls.remove(&id);
                Err(ServerError::GpadlRejected(id))
            }
        })
    }

    /// Tears down a GPADL; completes once the device no longer uses it.
    pub async fn teardown_gpadl(&self, channel_id: u32, id: GpadlId) -> Result<(), ServerError> {
        let send = self.sender(channel_id)?;
        self.with_channel(channel_id, |c| {
            if c.open.is_some_and(|o| o.ring_gpadl_id == id) {
                return Err(ServerError::GpadlInUse(id));
            }
            c.gpadls
                .remove(&id)
                .map(drop)
                .ok_or(ServerError::UnknownGpadl(id))
        })?;
        send.call(ChannelRequest::TeardownGpadl, id).await?;
        Ok(())
    }

    /// Opens `channel_id` with its rings in GPADL `params.ring_gpadl_id`.
    pub async fn open_channel(
        &self,
        channel_id: u32,
        params: OpenParams,
    ) -> Result<(), ServerError> {
        let send = self.sender(channel_id)?;
        let (features, offer_flags) = {
            let state = self.state();
            let c = state
                .channels
                .get(&channel_id)
                .ok_or(ServerError::UnknownChannel(channel_id))?;
            if c.open.is_some() {
                return Err(ServerError::AlreadyOpen(channel_id));
            }
            if !c
                .gpadls
                .get(&params.ring_gpadl_id)
                .is_some_and(|g| g.accepted)
            {
                return Err(ServerError::UnknownGpadl(params.ring_gpadl_id));
            }
            (state.feature_flags.unwrap_or_default(), c.offer_flags)
        };
        let open_data = OpenData {
            target_vp: params.target_vp,
            ring_offset: params.ring_offset,
            ring_gpadl_id: params.ring_gpadl_id,
            event_flag: u16::try_from(channel_id).unwrap_or(u16::MAX),
            connection_id: channel_id,
            user_data: params.user_data,
        };
        let request = OpenRequest::new(
            open_data,
            self.inner.guest_interrupt(channel_id),
            features,
            offer_flags,
        );
        let result = send
            .call(ChannelRequest::Open, request)
            .await?
            .ok_or(ServerError::OpenRejected(channel_id))?;
        self.with_channel(channel_id, |c| {
            c.open = Some(open_data);
            c.guest_to_host = Some(result.guest_to_host_interrupt);
            Ok(())
        })
    }

    /// Closes `channel_id`; completes once the device has closed it.
    pub async fn close_channel(&self, channel_id: u32) -> Result<(), ServerError> {
        let send = self.sender(channel_id)?;
        self.with_channel(channel_id, |c| {
            c.open.take().ok_or(ServerError::NotOpen(channel_id))?;
            c.guest_to_host = None;
            Ok(())
        })?;
        send.call(ChannelRequest::Close, ()).await?;
        self.state().guest_interrupts.remove(&channel_id);
        Ok(())
    }

    /// Moves the channel's interrupts to `target_vp`; returns the device's status (0 = ok).
    pub async fn modify_channel(
        &self,
        channel_id: u32,
        target_vp: u32,
    ) -> Result<i32, ServerError> {
        let send = self.sender(channel_id)?;
        let status = send
            .call(
                ChannelRequest::Modify,
                ModifyRequest::TargetVp { target_vp },
            )
            .await?;
        if status == 0 {
            self.with_channel(channel_id, |c| {
                if let Some(open) = &mut c.open {
                    open.target_vp = target_vp;
                }
                Ok(())
            })?;
        }
        Ok(status)
    }

    /// Saves every channel's GPADLs and open parameters. Take it while no control request is
    /// in flight; ring contents live in guest memory and need no saving.
    pub fn save(&self) -> Result<Vec<u8>, ServerError> {
        let state = self.state();
        let mut channels: Vec<SavedChannel> = state
            .channels
            .iter()
            .map(|(&channel_id, c)| {
                c.pending_restore.clone().unwrap_or_else(|| SavedChannel {
                    channel_id,
                    key: c.key,
                    gpadls: c.gpadls.values().cloned().collect(),
                    open: c.open,
                })
            })
            .collect();
        channels.extend(state.restoring.values().cloned());
        channels.sort_by_key(|c| c.channel_id);
        let saved = SavedState {
            version: SAVED_STATE_VERSION,
            feature_flags: state.feature_flags.map(FeatureFlags::into_bits),
            next_channel_id: state.next_channel_id,
            channels,
        };
        Ok(postcard::to_allocvec(&saved)?)
    }

    /// A server restored from [`VmbusServer::save`] output. Devices then offer themselves
    /// again and send [`ChannelServerRequest::Restore`]; the client re-attaches.
    pub fn restore(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        saved: &[u8],
    ) -> Result<(Self, ServerRunner), ServerError> {
        let saved: SavedState = postcard::from_bytes(saved)?;
        if saved.version != SAVED_STATE_VERSION {
            return Err(ServerError::SavedStateVersion(saved.version));
        }
        let state = State {
            next_channel_id: saved.next_channel_id,
            feature_flags: saved.feature_flags.map(FeatureFlags::from_bits),
            restoring: saved.channels.into_iter().map(|c| (c.key, c)).collect(),
            ..State::default()
        };
        Ok(Self::with_state(untrusted, private, state))
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An interrupt that reaches whatever guest event is registered for the channel when it
    /// fires (so it survives the client re-attaching).
    fn guest_interrupt(self: &Arc<Self>, channel_id: u32) -> Interrupt {
        let weak = Arc::downgrade(self);
        Interrupt::from_fn(move || {
            let irq = weak
                .upgrade()
                .and_then(|inner| inner.state().guest_interrupts.get(&channel_id).cloned());
            if let Some(irq) = irq {
                irq.deliver();
            }
        })
    }

    fn revoke(&self, channel_id: u32) {
        let mut state = self.state();
        if let Some(channel) = state.channels.remove(&channel_id) {
            tracing::info!(channel_id, key = %channel.key, "channel revoked");
        }
        state.guest_interrupts.remove(&channel_id);
    }

    fn restore_channel(
        self: &Arc<Self>,
        channel_id: u32,
        open_result: Option<crate::bus::OpenResult>,
    ) -> Result<RestoreResult, RemoteError> {
        let mut state = self.state();
        let features = state.feature_flags.unwrap_or_default();
        let channel = state
            .channels
            .get_mut(&channel_id)
            .ok_or_else(|| RemoteError(format!("no channel {channel_id}")))?;
        let saved = channel
            .pending_restore
            .take()
            .ok_or_else(|| RemoteError(format!("channel {channel_id} has no saved state")))?;
        let open_request = match (saved.open, open_result) {
            (Some(open_data), Some(result)) => {
                channel.open = Some(open_data);
                channel.guest_to_host = Some(result.guest_to_host_interrupt);
                Some(OpenRequest::new(
                    open_data,
                    self.guest_interrupt(channel_id),
                    features,
                    channel.offer_flags,
                ))
            }
            (Some(_), None) => {
                channel.pending_restore = Some(saved);
                return Err(RemoteError(format!(
                    "channel {channel_id} was open but the device has no open result"
                )));
            }
            (None, _) => None,
        };
        let gpadls = saved
            .gpadls
            .iter()
            .map(|g| RestoredGpadl {
                request: g.request.clone(),
                accepted: g.accepted,
            })
            .collect();
        channel.gpadls = saved
            .gpadls
            .into_iter()
            .map(|g| (g.request.id, g))
            .collect();
        Ok(RestoreResult {
            open_request,
            gpadls,
        })
    }
}

impl ServerRunner {
    /// Serves device requests until the server is dropped.
    pub async fn run(mut self) {
        // A stream that never ends keeps the set from reporting "finished" while empty.
        let mut devices: SelectAll<DeviceRequests> = SelectAll::new();
        devices.push(futures::stream::pending().boxed());
        loop {
            let next = futures::select_biased! {
                stream = self.new_streams.next() => match stream {
                    Some(stream) => {
                        devices.push(stream);
                        continue;
                    }
                    None => return,
                },
                item = devices.next() => item,
            };
            let Some((channel_id, request)) = next else {
                continue;
            };
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            match request {
                Some(ChannelServerRequest::Revoke(rpc)) => {
                    inner.revoke(channel_id);
                    rpc.complete(());
                }
                Some(ChannelServerRequest::Restore(rpc)) => {
                    rpc.handle(|open_result| inner.restore_channel(channel_id, open_result));
                }
                // The device dropped its end: same as a revoke.
                None => inner.revoke(channel_id),
            }
        }
    }
}

fn offer_wire(params: &OfferParams, flags: OfferFlags) -> OfferWire {
    let user_defined = match params.channel_type {
        ChannelType::Interface { user_defined } => user_defined,
        ChannelType::Pipe { message_mode } => UserDefinedData::pipe(message_mode),
        ChannelType::Device { .. } | ChannelType::HvSocket { .. } => UserDefinedData::ZERO,
    };
    let latency_100ns = params
        .mnf_interrupt_latency
        .map_or(0, |d| u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX));
    OfferWire {
        interface_id: guid_to_wire(&params.interface_id),
        instance_id: guid_to_wire(&params.instance_id),
        interrupt_latency: latency_100ns.into(),
        interface_revision: 0.into(),
        server_context_size: 0.into(),
        flags: flags.into_bits().into(),
        mmio_megabytes: params.mmio_megabytes.into(),
        user_defined,
        subchannel_index: params.subchannel_index.into(),
        mmio_megabytes_optional: params.mmio_megabytes_optional.into(),
    }
}

#[async_trait]
impl ParentBus for VmbusServer {
    async fn add_child(&self, request: OfferInput) -> anyhow::Result<OfferResources> {
        let OfferInput {
            params,
            request_send,
            server_request_recv,
        } = request;
        let key = params.key();
        let confidential = self.inner.private.is_some();
        let flags = OfferFlags::new()
            .with_enumerate_device_interface(matches!(
                params.channel_type,
                ChannelType::Interface { .. }
            ))
            .with_named_pipe_mode(matches!(
                params.channel_type,
                ChannelType::Pipe { message_mode: true }
            ))
            .with_tlnpi_provider(matches!(params.channel_type, ChannelType::HvSocket { .. }))
            .with_request_monitored_notification(params.mnf_interrupt_latency.is_some())
            .with_confidential_ring_buffer(confidential)
            .with_confidential_external_memory(
                confidential && params.allow_confidential_external_memory,
            );
        let channel_id = {
            let mut state = self.state();
            if state.channels.values().any(|c| c.key == key) {
                anyhow::bail!("offer {key} already exists");
            }
            let pending_restore = state.restoring.remove(&key);
            let channel_id = match &pending_restore {
                Some(saved) => saved.channel_id,
                None => {
                    // Channel ids start at 1 and are never reused.
                    state.next_channel_id = state
                        .next_channel_id
                        .checked_add(1)
                        .ok_or_else(|| anyhow::anyhow!("out of channel ids"))?;
                    state.next_channel_id
                }
            };
            state.channels.insert(
                channel_id,
                Channel {
                    key,
                    offer_flags: flags,
                    offer: offer_wire(&params, flags),
                    request_send,
                    gpadls: BTreeMap::new(),
                    open: None,
                    guest_to_host: None,
                    pending_restore,
                },
            );
            channel_id
        };
        let stream = server_request_recv
            .map(move |r| (channel_id, Some(r)))
            .chain(futures::stream::once(async move { (channel_id, None) }))
            .boxed();
        if self.inner.runner_send.unbounded_send(stream).is_err() {
            tracing::warn!(
                channel_id,
                "server runner is gone; revoke and restore will not be served"
            );
        }
        tracing::info!(channel_id, %key, name = params.interface_name, "offered");
        Ok(OfferResources::new(
            self.inner.untrusted.clone(),
            self.inner.private.clone(),
        ))
    }

    fn clone_bus(&self) -> Box<dyn ParentBus> {
        Box::new(self.clone())
    }

    fn use_event(&self) -> bool {
        false
    }
}
