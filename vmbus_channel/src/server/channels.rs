//! The server's control-plane state machine: the connection and every channel and GPADL,
//! driven by guest messages and device answers. No I/O: each step returns [`Output`]s (a
//! message for the guest, a request for a device) that the runner carries out.
//!
//! A channel moves through the states of OpenVMM's `vmbus_server` (see [`ChannelState`]);
//! `Channel::transition` is the one table that says which event is valid in which state.
//! Every guest message is valid in the current state or refused: with the protocol's failure
//! status where the message has an answer, otherwise logged and dropped. Nothing a guest
//! sends panics the server or grows its state without bound.

use super::saved_state::SavedChannel;
use super::saved_state::SavedChannelState;
use super::saved_state::SavedConnection;
use super::saved_state::SavedGpadl;
use super::saved_state::SavedGpadlState;
use super::saved_state::SavedState;
use crate::bus::GpadlRequest;
use crate::bus::OfferKey;
use crate::bus::OpenData;
use crate::bus::RestoredGpadl;
use crate::control;
use crate::control::ChannelIdBody;
use crate::control::Message;
use crate::control::MessageBuf;
use crate::control::Version;
use crate::control::gpadl::Assembly;
use crate::control::gpadl::PartialGpadl;
use crate::gpadl::Gpadl;
use crate::protocol::FeatureFlags;
use crate::protocol::GpadlId;
use crate::protocol::HostOffer;
use crate::protocol::OfferFlags;
use std::collections::BTreeMap;

/// Channel ids run from 1 to this (the guest's event-flag bitmap has 2048 bits; bit 0 is
/// reserved).
pub const MAX_CHANNELS: u32 = 2047;
/// GPADLs (complete or being assembled) one connection may hold at once.
pub const MAX_GPADLS: usize = 4096;
/// The SINT the host's messages and events use; part of every connection id.
const SINT: u32 = 2;

/// Identifies an offer for the lifetime of the server (never reused).
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferId(pub u64);

/// A request for a device, from the state machine.
#[derive(Debug, Clone)]
pub enum DeviceAction {
    /// Open the channel with these parameters.
    Open {
        /// Open parameters.
        open_data: OpenData,
        /// The connection's features.
        features: FeatureFlags,
        /// The offer's flags as the guest saw them.
        offer_flags: OfferFlags,
    },
    /// Close the channel.
    Close,
    /// Validate and accept a GPADL.
    Gpadl(GpadlRequest),
    /// Release a GPADL.
    TeardownGpadl(GpadlId),
    /// Move interrupts to a VP.
    Modify(u32),
}

/// A device's answer to a [`DeviceAction`].
#[derive(Debug, Clone, Copy)]
pub enum DeviceResult {
    /// The open succeeded (`true`) or failed.
    Opened(bool),
    /// The close completed.
    Closed,
    /// The device accepted (`true`) or rejected the GPADL.
    GpadlCreated(GpadlId, bool),
    /// The device no longer uses the GPADL.
    GpadlTornDown(GpadlId),
    /// The modify completed with this status.
    Modified(i32),
}

/// Something the runner must do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Post this message to the guest.
    Guest(MessageBuf),
    /// Send this request to the device of `offer` (its generation `generation`).
    Device {
        /// The offer.
        offer: OfferId,
        /// The device generation the answer must carry.
        generation: u64,
        /// The request.
        action: DeviceAction,
    },
    /// Guest signals on this connection id no longer reach a device.
    ClearHostEvent(u32),
}

/// The state of one channel, as in OpenVMM's `vmbus_server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered (to the guest once it asks for offers); not open.
    Closed,
    /// The guest asked to open; the device has been asked.
    Opening(OpenData),
    /// Open on both sides; `Some(vp)` while a modify is with the device.
    Open(OpenData, Option<u32>),
    /// The guest closed; the device has been asked to close.
    Closing(OpenData),
    /// The guest opened again before the device finished closing; the open follows.
    ClosingReopen(OpenData, OpenData),
    /// The device withdrew the offer; the guest has not released the channel id yet.
    Revoked,
    /// The device offered itself again before the guest released the old channel id.
    Reoffered,
}

/// Events that move a channel between states (see [`Channel::transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    GuestOpen(OpenData),
    DeviceOpened(bool),
    GuestClose,
    DeviceClosed,
    Modify(u32),
    DeviceModified,
    Revoke,
    Reoffer,
    GuestRelease,
}

/// An event is not valid in the channel's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not valid in state {state}")]
pub struct InvalidTransition {
    event: &'static str,
    state: &'static str,
}

/// A GPADL of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GpadlState {
    /// Sent to the device, no answer yet.
    Offered,
    /// The guest tore it down before the device answered.
    OfferedTearingDown,
    /// The device accepted it.
    Accepted,
    /// The device has been asked to release it.
    TearingDown,
}

#[derive(Debug, Clone)]
struct ChannelGpadl {
    request: GpadlRequest,
    state: GpadlState,
}

/// Where a channel stands in a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestoreState {
    /// Not part of a restore (or finished).
    Live,
    /// From saved state; its device has not offered itself yet.
    Unmatched,
    /// Its device offered itself; waiting for the device's restore request.
    Restoring,
}

#[derive(Debug, Clone)]
struct Channel {
    key: OfferKey,
    offer: HostOffer,
    channel_id: u32,
    state: ChannelState,
    /// Bumped whenever the device behind the channel changes; answers from an older device
    /// are ignored.
    generation: u64,
    has_device: bool,
    /// The guest's id for its latest open request, echoed in the result.
    open_id: u32,
    gpadls: BTreeMap<GpadlId, ChannelGpadl>,
    restore: RestoreState,
}

impl Channel {
    /// True if a device holds this channel's GPADLs. A revoked channel's GPADLs belonged to
    /// the device that left, even once a new one is offered.
    fn gpadls_have_device(&self) -> bool {
        self.has_device && !matches!(self.state, ChannelState::Revoked | ChannelState::Reoffered)
    }

    fn connection_id(&self) -> u32 {
        self.channel_id | (SINT << 12)
    }

    /// The transition table: the next state for `event`, or why it is refused.
    fn transition(&self, event: Event) -> Result<ChannelState, InvalidTransition> {
        use ChannelState as S;
        let next = match (&self.state, event) {
            (S::Closed, Event::GuestOpen(open)) => S::Opening(open),
            (S::Opening(open), Event::DeviceOpened(true)) => S::Open(*open, None),
            (S::Opening(_), Event::DeviceOpened(false)) => S::Closed,
            (S::Open(open, None), Event::GuestClose) => S::Closing(*open),
            (S::Open(open, None), Event::Modify(vp)) => S::Open(*open, Some(vp)),
            (S::Open(open, Some(vp)), Event::DeviceModified) => S::Open(
                OpenData {
                    target_vp: *vp,
                    ..*open
                },
                None,
            ),
            (S::Closing(_), Event::DeviceClosed) => S::Closed,
            (S::Closing(old), Event::GuestOpen(new)) => S::ClosingReopen(*old, new),
            (S::ClosingReopen(_, new), Event::DeviceClosed) => S::Opening(*new),
            (
                S::Closed
                | S::Opening(_)
                | S::Open(..)
                | S::Closing(_)
                | S::ClosingReopen(..)
                | S::Revoked,
                Event::Revoke,
            ) => S::Revoked,
            (S::Revoked, Event::Reoffer) => S::Reoffered,
            (S::Reoffered, Event::Revoke) => S::Revoked,
            // A revoked channel is closed from the guest's view; its close is a no-op.
            (S::Revoked, Event::GuestClose) => S::Revoked,
            (S::Revoked | S::Reoffered, Event::GuestRelease) => S::Closed,
            (state, event) => {
                return Err(InvalidTransition {
                    event: event_name(event),
                    state: state_name(state),
                });
            }
        };
        Ok(next)
    }
}

fn event_name(event: Event) -> &'static str {
    match event {
        Event::GuestOpen(_) => "open",
        Event::DeviceOpened(_) => "device open result",
        Event::GuestClose => "close",
        Event::DeviceClosed => "device close result",
        Event::Modify(_) => "modify",
        Event::DeviceModified => "device modify result",
        Event::Revoke => "revoke",
        Event::Reoffer => "reoffer",
        Event::GuestRelease => "release",
    }
}

fn state_name(state: &ChannelState) -> &'static str {
    match state {
        ChannelState::Closed => "closed",
        ChannelState::Opening(_) => "opening",
        ChannelState::Open(..) => "open",
        ChannelState::Closing(_) => "closing",
        ChannelState::ClosingReopen(..) => "closing, then opening",
        ChannelState::Revoked => "revoked",
        ChannelState::Reoffered => "reoffered",
    }
}

/// The state of the connection with the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// No guest connected.
    Disconnected,
    /// Connected at `version` with `features`; `offers_sent` once the guest asked for
    /// offers (from then on offers and rescinds go out as they happen).
    Connected {
        /// The negotiated version.
        version: Version,
        /// The negotiated features.
        features: FeatureFlags,
        /// The guest has asked for offers.
        offers_sent: bool,
    },
    /// The guest sent UNLOAD; channels and GPADLs are being released.
    Unloading,
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The key is offered already.
    #[error("offer {0} already exists")]
    Duplicate(OfferKey),
    /// Every channel id is in use.
    #[error("too many channels")]
    TooManyChannels,
}

/// A device's restore request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// No such offer.
    #[error("unknown offer")]
    UnknownOffer,
    /// The offer is not waiting for a restore.
    #[error("the channel has no saved state to restore")]
    NotRestoring,
    /// The channel was saved open but the device brought no open result.
    #[error("the channel was saved open but the device has no open result")]
    MissingOpenResult,
}

/// What a restored device gets back.
#[derive(Debug, Clone)]
pub struct RestoredChannel {
    /// The open parameters if the channel was saved open, with the memory choice inputs.
    pub open: Option<(OpenData, FeatureFlags, OfferFlags)>,
    /// The channel's GPADLs.
    pub gpadls: Vec<RestoredGpadl>,
    /// The connection id the guest signals with (valid if open).
    pub connection_id: u32,
}

/// The control-plane state machine of the VMBus server.
#[derive(Debug, Clone)]
pub struct ControlState {
    connection: Connection,
    supports_confidential: bool,
    channels: BTreeMap<OfferId, Channel>,
    next_offer: u64,
    next_generation: u64,
    /// GPADLs whose header arrived and whose bodies have not, by GPADL id.
    partial_gpadls: BTreeMap<GpadlId, PartialGpadl>,
}

impl ControlState {
    /// A server with no offers and no guest. `supports_confidential` says whether the host
    /// has private memory to grant the confidential-channels feature.
    pub fn new(supports_confidential: bool) -> Self {
        Self {
            connection: Connection::Disconnected,
            supports_confidential,
            channels: BTreeMap::new(),
            next_offer: 1,
            next_generation: 1,
            partial_gpadls: BTreeMap::new(),
        }
    }

    /// The connection state.
    pub fn connection(&self) -> Connection {
        self.connection
    }

    /// The state of the channel behind `offer`.
    pub fn channel_state(&self, offer: OfferId) -> Option<&ChannelState> {
        self.channels.get(&offer).map(|c| &c.state)
    }

    /// The guest's channel id of `offer`.
    pub fn channel_id(&self, offer: OfferId) -> Option<u32> {
        self.channels.get(&offer).map(|c| c.channel_id)
    }

    /// The generation of the device currently behind `offer`, if it has one.
    pub fn device_generation(&self, offer: OfferId) -> Option<u64> {
        self.channels
            .get(&offer)
            .filter(|c| c.has_device)
            .map(|c| c.generation)
    }

    /// Number of channels known (offered, revoked or awaiting restore).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of GPADLs held, complete or partial.
    pub fn gpadl_count(&self) -> usize {
        self.partial_gpadls.len()
            + self
                .channels
                .values()
                .map(|c| c.gpadls.len())
                .sum::<usize>()
    }

    /// True while saved channels wait for their devices; guest messages wait meanwhile.
    pub fn restore_pending(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.restore != RestoreState::Live)
    }

    fn features(&self) -> FeatureFlags {
        match self.connection {
            Connection::Connected { features, .. } => features,
            _ => FeatureFlags::new(),
        }
    }

    fn offers_sent(&self) -> bool {
        matches!(
            self.connection,
            Connection::Connected {
                offers_sent: true,
                ..
            }
        )
    }

    fn by_channel_id(&mut self, channel_id: u32) -> Option<(OfferId, &mut Channel)> {
        self.channels
            .iter_mut()
            .find(|(_, c)| c.channel_id == channel_id)
            .map(|(&id, c)| (id, c))
    }

    fn free_channel_id(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> =
            self.channels.values().map(|c| c.channel_id).collect();
        (1..=MAX_CHANNELS).find(|id| !used.contains(id))
    }

    fn offer_message(&self, channel: &Channel) -> MessageBuf {
        let mut offer = channel.offer.wire;
        // A guest that did not negotiate confidential channels must not see those bits.
        offer.flags = channel
            .offer
            .flags()
            .for_connection(self.features())
            .into_bits()
            .into();
        Message::OfferChannel(control::OfferChannel {
            offer,
            channel_id: channel.channel_id.into(),
            monitor_id: 0,
            monitor_allocated: 0,
            is_dedicated: 1.into(),
            connection_id: channel.connection_id().into(),
        })
        .encode()
    }

    // ---- Devices ----

    /// A device offers a channel. Returns its id and the device generation its answers carry.
    pub fn offer(
        &mut self,
        key: OfferKey,
        offer: HostOffer,
        out: &mut Vec<Output>,
    ) -> Result<(OfferId, u64), OfferError> {
        let generation = self.next_generation;
        let existing = self
            .channels
            .iter_mut()
            .find(|(_, c)| c.key == key)
            .map(|(&id, c)| (id, c));
        if let Some((id, channel)) = existing {
            match (&channel.state, channel.restore, channel.has_device) {
                // The saved channel's device is back; it restores next.
                (_, RestoreState::Unmatched, _) => {
                    channel.restore = RestoreState::Restoring;
                }
                (ChannelState::Revoked, _, false) => {
                    channel.state = channel
                        .transition(Event::Reoffer)
                        .map_err(|_| OfferError::Duplicate(key))?;
                }
                _ => return Err(OfferError::Duplicate(key)),
            }
            self.next_generation += 1;
            channel.generation = generation;
            channel.has_device = true;
            channel.offer = offer;
            return Ok((id, generation));
        }
        let channel_id = self.free_channel_id().ok_or(OfferError::TooManyChannels)?;
        let id = OfferId(self.next_offer);
        self.next_offer += 1;
        self.next_generation += 1;
        let channel = Channel {
            key,
            offer,
            channel_id,
            state: ChannelState::Closed,
            generation,
            has_device: true,
            open_id: 0,
            gpadls: BTreeMap::new(),
            restore: RestoreState::Live,
        };
        if self.offers_sent() {
            out.push(Output::Guest(self.offer_message(&channel)));
        }
        self.channels.insert(id, channel);
        Ok((id, generation))
    }

    /// The device of `offer` withdrew it (explicit revoke or its handle was dropped).
    pub fn revoke(&mut self, offer: OfferId, out: &mut Vec<Output>) {
        let offers_sent = self.offers_sent();
        let unloading = self.connection == Connection::Unloading;
        let Some(channel) = self.channels.get_mut(&offer) else {
            return;
        };
        channel.has_device = false;
        channel.restore = RestoreState::Live;
        let old = channel.state.clone();
        let Ok(next) = channel.transition(Event::Revoke) else {
            tracing::debug!(?offer, "revoke of a channel already revoked");
            return;
        };
        tracing::info!(channel_id = channel.channel_id, key = %channel.key, "revoked");
        channel.state = next;
        // The device is gone: whatever it had not answered is answered here (not to a guest
        // that is unloading: it waits for UNLOAD_COMPLETE only).
        let mut guest_out = Vec::new();
        match old {
            ChannelState::Opening(_) => {
                guest_out.push(open_result(channel.channel_id, channel.open_id, false));
            }
            ChannelState::Open(..) | ChannelState::Closing(_) => {
                out.push(Output::ClearHostEvent(channel.connection_id()));
            }
            ChannelState::ClosingReopen(..) => {
                out.push(Output::ClearHostEvent(channel.connection_id()));
                guest_out.push(open_result(channel.channel_id, channel.open_id, false));
            }
            _ => {}
        }
        let channel_id = channel.channel_id;
        let mut torndown = Vec::new();
        channel.gpadls.retain(|&id, g| match g.state {
            GpadlState::Offered => {
                guest_out.push(gpadl_created(channel_id, id, false));
                false
            }
            GpadlState::OfferedTearingDown | GpadlState::TearingDown => {
                torndown.push(id);
                false
            }
            GpadlState::Accepted => true,
        });
        guest_out.extend(torndown.into_iter().map(gpadl_torndown));
        if !unloading {
            out.extend(guest_out.into_iter().map(Output::Guest));
        }
        if offers_sent && !unloading {
            out.push(Output::Guest(
                Message::RescindChannelOffer(ChannelIdBody {
                    channel_id: channel_id.into(),
                })
                .encode(),
            ));
        } else if !unloading {
            // The guest never saw it: nothing to release.
            self.channels.remove(&offer);
        }
        self.check_unload_done(out);
    }

    /// A device answered a request. Answers from a replaced device are ignored.
    pub fn device_done(
        &mut self,
        offer: OfferId,
        generation: u64,
        result: DeviceResult,
        out: &mut Vec<Output>,
    ) {
        let unloading = self.connection == Connection::Unloading;
        let version = match self.connection {
            Connection::Connected { version, .. } => Some(version),
            _ => None,
        };
        let version_features = self.features();
        let Some(channel) = self
            .channels
            .get_mut(&offer)
            .filter(|c| c.generation == generation && c.has_device)
        else {
            tracing::debug!(?offer, ?result, "answer from a device that is gone");
            if let DeviceResult::Opened(true) = result {
                // Nothing will route to it; the runner drops the route it made.
                if let Some(c) = self.channels.get(&offer) {
                    out.push(Output::ClearHostEvent(c.connection_id()));
                }
            }
            return;
        };
        let channel_id = channel.channel_id;
        match result {
            DeviceResult::Opened(ok) => {
                let ChannelState::Opening(open) = channel.state else {
                    tracing::warn!(channel_id, "open result in the wrong state");
                    return;
                };
                if let Ok(next) = channel.transition(Event::DeviceOpened(ok)) {
                    channel.state = next;
                }
                if unloading {
                    // The guest left meanwhile: close again.
                    if ok {
                        channel.state = ChannelState::Closing(open);
                        out.push(device(offer, channel, DeviceAction::Close));
                    }
                } else {
                    out.push(Output::Guest(open_result(channel_id, channel.open_id, ok)));
                }
            }
            DeviceResult::Closed => match channel.transition(Event::DeviceClosed) {
                Ok(next) => {
                    channel.state = next;
                    out.push(Output::ClearHostEvent(channel.connection_id()));
                    if let ChannelState::Opening(open_data) = channel.state {
                        if unloading {
                            channel.state = ChannelState::Closed;
                        } else {
                            let features = version_features;
                            let offer_flags = channel.offer.flags().for_connection(features);
                            out.push(device(
                                offer,
                                channel,
                                DeviceAction::Open {
                                    open_data,
                                    features,
                                    offer_flags,
                                },
                            ));
                        }
                    }
                }
                Err(e) => tracing::warn!(channel_id, error = %e, "unexpected close result"),
            },
            DeviceResult::Modified(status) => {
                let next = if status == control::STATUS_SUCCESS {
                    channel.transition(Event::DeviceModified)
                } else {
                    // Failed: stay on the old VP.
                    match &channel.state {
                        ChannelState::Open(open, Some(_)) => Ok(ChannelState::Open(*open, None)),
                        _ => channel.transition(Event::DeviceModified),
                    }
                };
                match next {
                    Ok(next) => {
                        channel.state = next;
                        if !unloading && version.is_some_and(|v| v >= Version::IRON) {
                            out.push(Output::Guest(
                                Message::ModifyChannelResponse(control::ModifyChannelResponse {
                                    channel_id: channel_id.into(),
                                    status: status.into(),
                                })
                                .encode(),
                            ));
                        }
                    }
                    Err(e) => tracing::warn!(channel_id, error = %e, "unexpected modify result"),
                }
            }
            DeviceResult::GpadlCreated(id, accepted) => {
                let Some(gpadl) = channel.gpadls.get_mut(&id) else {
                    return;
                };
                match (&gpadl.state, accepted) {
                    (GpadlState::Offered, true) if !unloading => {
                        gpadl.state = GpadlState::Accepted;
                        out.push(Output::Guest(gpadl_created(channel_id, id, true)));
                    }
                    (GpadlState::Offered, false) => {
                        channel.gpadls.remove(&id);
                        if !unloading {
                            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
                        }
                    }
                    // Torn down (or unloading) before the device answered: release it now.
                    (GpadlState::Offered | GpadlState::OfferedTearingDown, true) => {
                        gpadl.state = GpadlState::TearingDown;
                        out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
                    }
                    (GpadlState::OfferedTearingDown, false) => {
                        channel.gpadls.remove(&id);
                        if !unloading {
                            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
                            out.push(Output::Guest(gpadl_torndown(id)));
                        }
                    }
                    (state, _) => {
                        tracing::warn!(channel_id, %id, ?state, "unexpected GPADL result");
                    }
                }
            }
            DeviceResult::GpadlTornDown(id) => {
                if channel
                    .gpadls
                    .get(&id)
                    .is_some_and(|g| g.state == GpadlState::TearingDown)
                {
                    channel.gpadls.remove(&id);
                    if !unloading {
                        out.push(Output::Guest(gpadl_torndown(id)));
                    }
                }
            }
        }
        self.check_unload_done(out);
    }

    // ---- The guest ----

    /// Handles one message from the guest. Malformed or out-of-place messages are refused;
    /// the state stays consistent whatever arrives.
    pub fn handle_guest_message(&mut self, bytes: &[u8], out: &mut Vec<Output>) {
        let message = match Message::parse(bytes) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "malformed control message dropped");
                return;
            }
        };
        let message_type = message.message_type();
        if let Err(reason) = self.dispatch(message, out) {
            tracing::warn!(?message_type, reason, "control message refused");
        }
    }

    fn dispatch(
        &mut self,
        message: Message<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        match (self.connection, message) {
            (Connection::Disconnected, Message::InitiateContact(c)) => {
                self.initiate_contact(c, None, out);
            }
            (Connection::Disconnected, Message::InitiateContact2(c)) => {
                self.initiate_contact(c.base, Some(c.client_id), out);
            }
            (Connection::Connected { .. } | Connection::Unloading, Message::InitiateContact(_))
            | (
                Connection::Connected { .. } | Connection::Unloading,
                Message::InitiateContact2(_),
            ) => {
                // A second contact without UNLOAD: refuse, keep the connection as it is.
                out.push(Output::Guest(version_response(None, FeatureFlags::new())));
                return Err("already connected");
            }
            (Connection::Connected { .. }, Message::Unload) => self.unload(out),
            (Connection::Disconnected, Message::Unload) => {
                // Unloading twice (or before contact) is harmless; say it is done.
                out.push(Output::Guest(Message::UnloadComplete.encode()));
            }
            (
                Connection::Connected {
                    version,
                    features,
                    offers_sent,
                },
                m,
            ) => {
                return self.connected_message(version, features, offers_sent, m, out);
            }
            (Connection::Disconnected | Connection::Unloading, _) => {
                return Err("not connected");
            }
        }
        Ok(())
    }

    fn initiate_contact(
        &mut self,
        contact: control::InitiateContact,
        _client_id: Option<[u8; 16]>,
        out: &mut Vec<Output>,
    ) {
        let version = Version(contact.version_requested.get());
        if !version.is_supported() {
            tracing::info!(?version, "unsupported version requested");
            out.push(Output::Guest(version_response(None, FeatureFlags::new())));
            return;
        }
        let features = if version.has_feature_flags() {
            let info = control::TargetInfo::from_bits(contact.interrupt_page_or_target_info.get());
            let mut supported = FeatureFlags::all();
            // Only a host with private memory can give confidential channels.
            supported.set_confidential_channels(self.supports_confidential);
            // Monitor pages are not implemented, so nothing here needs them; the flags
            // granted are those asked for that this server implements.
            FeatureFlags::from_bits(info.feature_flags() & supported.into_bits())
        } else {
            FeatureFlags::new()
        };
        self.connection = Connection::Connected {
            version,
            features,
            offers_sent: false,
        };
        tracing::info!(?version, features = features.into_bits(), "guest connected");
        out.push(Output::Guest(version_response(Some(version), features)));
    }

    fn connected_message(
        &mut self,
        version: Version,
        features: FeatureFlags,
        offers_sent: bool,
        message: Message<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        match message {
            Message::RequestOffers => {
                if offers_sent {
                    return Err("offers already sent");
                }
                self.connection = Connection::Connected {
                    version,
                    features,
                    offers_sent: true,
                };
                let mut order: Vec<&Channel> = self
                    .channels
                    .values()
                    .filter(|c| matches!(c.state, ChannelState::Closed))
                    .collect();
                order.sort_by_key(|c| (c.offer.sort_key(), c.key.subchannel_index));
                for c in order {
                    out.push(Output::Guest(self.offer_message(c)));
                }
                out.push(Output::Guest(Message::AllOffersDelivered.encode()));
            }
            Message::GpadlHeader(header, words) => self.gpadl_header(&header, words, out)?,
            Message::GpadlBody(body, words) => self.gpadl_body(&body, words, out)?,
            Message::GpadlTeardown(t) => {
                self.gpadl_teardown(t.channel_id.get(), GpadlId(t.gpadl_id.get()), out)?;
            }
            Message::OpenChannel(open) => self.open_channel(open, None, features, out)?,
            Message::OpenChannel2(open) => {
                let signal = features
                    .guest_specified_signal_parameters()
                    .then_some((open.connection_id.get(), open.event_flag.get()));
                self.open_channel(open.base, signal, features, out)?;
            }
            Message::CloseChannel(close) => self.close_channel(close.channel_id.get(), out)?,
            Message::ModifyChannel(modify) => {
                if version < Version::WIN10_RS3_0 {
                    return Err("modify needs version 4.1");
                }
                self.modify_channel(modify.channel_id.get(), modify.target_vp.get(), out)?;
            }
            Message::RelIdReleased(released) => self.release(released.channel_id.get(), out)?,
            Message::TlConnectRequest(r) => out.push(tl_refused(r)),
            Message::TlConnectRequest2(r) => out.push(tl_refused(r.base)),
            _ => return Err("not a guest message"),
        }
        Ok(())
    }

    fn gpadl_header(
        &mut self,
        header: &control::GpadlHeader,
        words: &[zerocopy::little_endian::U64],
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let channel_id = header.channel_id.get();
        let id = GpadlId(header.gpadl_id.get());
        let too_many = self.gpadl_count() >= MAX_GPADLS;
        let partial_dup = self.partial_gpadls.contains_key(&id);
        let Some((_, channel)) = self.by_channel_id(channel_id) else {
            return Err("GPADL for an unknown channel");
        };
        if matches!(
            channel.state,
            ChannelState::Revoked | ChannelState::Reoffered
        ) {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("GPADL for a revoked channel");
        }
        if partial_dup || channel.gpadls.contains_key(&id) {
            // The existing GPADL is untouched; only the newcomer fails.
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("duplicate GPADL id");
        }
        if too_many {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("too many GPADLs");
        }
        match PartialGpadl::start(header, words) {
            Ok(Assembly::Incomplete(partial)) => {
                self.partial_gpadls.insert(id, partial);
            }
            Ok(Assembly::Complete(channel_id, request)) => {
                self.gpadl_complete(channel_id, request, out);
            }
            Err(err) => {
                tracing::warn!(channel_id, %id, error = %err, "bad GPADL header");
                out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            }
        }
        Ok(())
    }

    fn gpadl_body(
        &mut self,
        body: &control::GpadlBody,
        words: &[zerocopy::little_endian::U64],
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let id = GpadlId(body.gpadl_id.get());
        let partial = self
            .partial_gpadls
            .remove(&id)
            .ok_or("GPADL body without a header")?;
        let channel_id = partial.channel_id();
        match partial.add_body(words) {
            Ok(Assembly::Incomplete(partial)) => {
                self.partial_gpadls.insert(id, partial);
            }
            Ok(Assembly::Complete(channel_id, request)) => {
                self.gpadl_complete(channel_id, request, out);
            }
            Err(err) => {
                tracing::warn!(channel_id, %id, error = %err, "bad GPADL body");
                out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            }
        }
        Ok(())
    }

    fn gpadl_complete(&mut self, channel_id: u32, request: GpadlRequest, out: &mut Vec<Output>) {
        let id = request.id;
        // The channel may have been revoked while the bodies were coming.
        let Some((offer, channel)) = self
            .by_channel_id(channel_id)
            .filter(|(_, c)| c.has_device && !matches!(c.state, ChannelState::Revoked))
        else {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return;
        };
        // Structure (range counts and lengths) is checked here; the device checks the
        // pages against the memory it will use.
        if let Err(err) = Gpadl::parse(&request) {
            tracing::warn!(channel_id, %id, error = %err, "malformed GPADL");
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return;
        }
        channel.gpadls.insert(
            id,
            ChannelGpadl {
                request: request.clone(),
                state: GpadlState::Offered,
            },
        );
        out.push(device(offer, channel, DeviceAction::Gpadl(request)));
    }

    fn gpadl_teardown(
        &mut self,
        channel_id: u32,
        id: GpadlId,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        if self
            .partial_gpadls
            .get(&id)
            .is_some_and(|p| p.channel_id() == channel_id)
        {
            // Never completed: nothing reached the device.
            self.partial_gpadls.remove(&id);
            out.push(Output::Guest(gpadl_torndown(id)));
            return Ok(());
        }
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("teardown on an unknown channel")?;
        let has_device = channel.gpadls_have_device();
        let gpadl = channel
            .gpadls
            .get_mut(&id)
            .ok_or("teardown of an unknown GPADL")?;
        match gpadl.state {
            GpadlState::Accepted if has_device => {
                gpadl.state = GpadlState::TearingDown;
                out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
            }
            GpadlState::Accepted => {
                // No device (revoked): nothing holds it.
                channel.gpadls.remove(&id);
                out.push(Output::Guest(gpadl_torndown(id)));
            }
            GpadlState::Offered => gpadl.state = GpadlState::OfferedTearingDown,
            GpadlState::OfferedTearingDown | GpadlState::TearingDown => {
                return Err("GPADL already being torn down");
            }
        }
        Ok(())
    }

    fn open_channel(
        &mut self,
        open: control::OpenChannel,
        signal: Option<(u32, u16)>,
        features: FeatureFlags,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let channel_id = open.channel_id.get();
        let gpadl_id = GpadlId(open.ring_buffer_gpadl_id.get());
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("open of an unknown channel")?;
        let (connection_id, event_flag) = signal.unwrap_or((
            channel.connection_id(),
            u16::try_from(channel_id).unwrap_or(u16::MAX),
        ));
        let open_data = OpenData {
            target_vp: open.target_vp.get(),
            ring_offset: open.downstream_ring_buffer_page_offset.get(),
            ring_gpadl_id: gpadl_id,
            event_flag,
            connection_id,
            user_data: open.user_data,
        };
        let open_id = open.open_id.get();
        let mut refuse = |reason| {
            out.push(Output::Guest(open_result(channel_id, open_id, false)));
            Err(reason)
        };
        if !channel
            .gpadls
            .get(&gpadl_id)
            .is_some_and(|g| g.state == GpadlState::Accepted)
        {
            return refuse("open with a GPADL that is not accepted");
        }
        let Ok(next) = channel.transition(Event::GuestOpen(open_data)) else {
            return refuse("open in the wrong state");
        };
        channel.state = next;
        channel.open_id = open_id;
        let offer_flags = channel.offer.flags().for_connection(features);
        out.push(device(
            offer,
            channel,
            DeviceAction::Open {
                open_data,
                features,
                offer_flags,
            },
        ));
        Ok(())
    }

    fn close_channel(
        &mut self,
        channel_id: u32,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("close of an unknown channel")?;
        let next = channel
            .transition(Event::GuestClose)
            .map_err(|_| "close in the wrong state")?;
        let was_revoked = channel.state == ChannelState::Revoked;
        channel.state = next;
        if !was_revoked {
            out.push(device(offer, channel, DeviceAction::Close));
        }
        Ok(())
    }

    fn modify_channel(
        &mut self,
        channel_id: u32,
        target_vp: u32,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("modify of an unknown channel")?;
        match channel.transition(Event::Modify(target_vp)) {
            Ok(next) => {
                channel.state = next;
                out.push(device(offer, channel, DeviceAction::Modify(target_vp)));
                Ok(())
            }
            Err(_) => {
                out.push(Output::Guest(
                    Message::ModifyChannelResponse(control::ModifyChannelResponse {
                        channel_id: channel_id.into(),
                        status: control::STATUS_UNSUCCESSFUL.into(),
                    })
                    .encode(),
                ));
                Err("modify in the wrong state")
            }
        }
    }

    fn release(&mut self, channel_id: u32, out: &mut Vec<Output>) -> Result<(), &'static str> {
        let offers_sent = self.offers_sent();
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("release of an unknown channel")?;
        let reoffered = channel.state == ChannelState::Reoffered;
        let next = channel
            .transition(Event::GuestRelease)
            .map_err(|_| "release of a channel that is not revoked")?;
        if !reoffered {
            self.channels.remove(&offer);
            return Ok(());
        }
        // The device came back: offer it under a fresh channel id.
        let gpadls_left = !channel.gpadls.is_empty();
        channel.state = next;
        channel.gpadls.clear();
        if gpadls_left {
            tracing::debug!(channel_id, "GPADLs of a released channel dropped");
        }
        let Some(new_id) = self.free_channel_id_excluding(channel_id) else {
            return Err("no channel id for the reoffer");
        };
        if let Some(channel) = self.channels.get_mut(&offer) {
            channel.channel_id = new_id;
        }
        if let Some(channel) = self.channels.get(&offer).filter(|_| offers_sent) {
            out.push(Output::Guest(self.offer_message(channel)));
        }
        Ok(())
    }

    fn free_channel_id_excluding(&self, old: u32) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self
            .channels
            .values()
            .map(|c| c.channel_id)
            .filter(|&id| id != old)
            .collect();
        (1..=MAX_CHANNELS).find(|id| !used.contains(id) && *id != old)
    }

    fn unload(&mut self, out: &mut Vec<Output>) {
        tracing::info!("guest unloading");
        self.connection = Connection::Unloading;
        self.partial_gpadls.clear();
        let mut remove = Vec::new();
        for (&offer, channel) in &mut self.channels {
            let has_device = channel.gpadls_have_device();
            match &channel.state {
                ChannelState::Open(open, _) => {
                    channel.state = ChannelState::Closing(*open);
                    out.push(device(offer, channel, DeviceAction::Close));
                }
                // Closes once the device answers the open (see `device_done`).
                ChannelState::Opening(_) | ChannelState::Closing(_) | ChannelState::Closed => {}
                ChannelState::ClosingReopen(old, _) => channel.state = ChannelState::Closing(*old),
                ChannelState::Revoked => remove.push(offer),
                ChannelState::Reoffered => channel.state = ChannelState::Closed,
            }
            let mut teardowns = Vec::new();
            channel.gpadls.retain(|&id, g| match g.state {
                GpadlState::Accepted if has_device => {
                    g.state = GpadlState::TearingDown;
                    teardowns.push(id);
                    true
                }
                GpadlState::Offered => {
                    g.state = GpadlState::OfferedTearingDown;
                    true
                }
                GpadlState::OfferedTearingDown | GpadlState::TearingDown => true,
                GpadlState::Accepted => false,
            });
            for id in teardowns {
                out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
            }
        }
        for offer in remove {
            self.channels.remove(&offer);
        }
        self.check_unload_done(out);
    }

    fn check_unload_done(&mut self, out: &mut Vec<Output>) {
        if self.connection != Connection::Unloading {
            return;
        }
        let busy = self.channels.values().any(|c| {
            matches!(
                c.state,
                ChannelState::Opening(_)
                    | ChannelState::Open(..)
                    | ChannelState::Closing(_)
                    | ChannelState::ClosingReopen(..)
            ) || !c.gpadls.is_empty()
        });
        if !busy {
            // Revoked channels the guest never released are gone with the connection; a
            // device that came back meanwhile is a plain offer for the next guest.
            self.channels
                .retain(|_, c| !matches!(c.state, ChannelState::Revoked));
            for c in self.channels.values_mut() {
                if c.state == ChannelState::Reoffered {
                    c.state = ChannelState::Closed;
                    c.gpadls.clear();
                }
            }
            self.connection = Connection::Disconnected;
            tracing::info!("guest unloaded");
            out.push(Output::Guest(Message::UnloadComplete.encode()));
        }
    }

    // ---- Servicing ----

    /// The state to save. Transitional states are saved as they are: a restore asks the
    /// device again for whatever it had not answered.
    pub fn save(&self) -> SavedState {
        let channels = self
            .channels
            .values()
            .map(|c| SavedChannel {
                key: c.key,
                channel_id: c.channel_id,
                open_id: c.open_id,
                state: match &c.state {
                    ChannelState::Closed => SavedChannelState::Closed,
                    ChannelState::Opening(open) => SavedChannelState::Opening(*open),
                    ChannelState::Open(open, modify) => SavedChannelState::Open(*open, *modify),
                    ChannelState::Closing(open) => SavedChannelState::Closing(*open),
                    ChannelState::ClosingReopen(old, new) => {
                        SavedChannelState::ClosingReopen(*old, *new)
                    }
                    // A reoffered device offers itself again after restore.
                    ChannelState::Revoked | ChannelState::Reoffered => SavedChannelState::Revoked,
                },
                gpadls: c
                    .gpadls
                    .values()
                    .map(|g| SavedGpadl {
                        request: g.request.clone(),
                        state: match g.state {
                            GpadlState::Offered => SavedGpadlState::Offered,
                            GpadlState::OfferedTearingDown => SavedGpadlState::OfferedTearingDown,
                            GpadlState::Accepted => SavedGpadlState::Accepted,
                            GpadlState::TearingDown => SavedGpadlState::TearingDown,
                        },
                    })
                    .collect(),
            })
            .collect();
        SavedState {
            connection: match self.connection {
                Connection::Disconnected => SavedConnection::Disconnected,
                Connection::Connected {
                    version,
                    features,
                    offers_sent,
                } => SavedConnection::Connected {
                    version: version.0,
                    features: features.into_bits(),
                    offers_sent,
                },
                Connection::Unloading => SavedConnection::Unloading,
            },
            channels,
            partial_gpadls: self.partial_gpadls.values().cloned().collect(),
        }
    }

    /// A state machine from saved state. Saved channels wait for their devices to offer
    /// themselves again and restore.
    pub fn restore(saved: SavedState, supports_confidential: bool) -> Self {
        let mut state = Self::new(supports_confidential);
        state.connection = match saved.connection {
            SavedConnection::Disconnected => Connection::Disconnected,
            SavedConnection::Connected {
                version,
                features,
                offers_sent,
            } => Connection::Connected {
                version: Version(version),
                features: FeatureFlags::from_bits(features),
                offers_sent,
            },
            SavedConnection::Unloading => Connection::Unloading,
        };
        for c in saved.channels {
            let id = OfferId(state.next_offer);
            state.next_offer += 1;
            let revoked = matches!(c.state, SavedChannelState::Revoked);
            state.channels.insert(
                id,
                Channel {
                    key: c.key,
                    offer: crate::protocol::host_offer(&crate::bus::OfferParams {
                        interface_id: c.key.interface_id,
                        instance_id: c.key.instance_id,
                        subchannel_index: c.key.subchannel_index,
                        ..Default::default()
                    }),
                    channel_id: c.channel_id,
                    state: match c.state {
                        SavedChannelState::Closed => ChannelState::Closed,
                        SavedChannelState::Opening(open) => ChannelState::Opening(open),
                        SavedChannelState::Open(open, modify) => ChannelState::Open(open, modify),
                        SavedChannelState::Closing(open) => ChannelState::Closing(open),
                        SavedChannelState::ClosingReopen(old, new) => {
                            ChannelState::ClosingReopen(old, new)
                        }
                        SavedChannelState::Revoked => ChannelState::Revoked,
                    },
                    generation: 0,
                    has_device: false,
                    open_id: c.open_id,
                    gpadls: c
                        .gpadls
                        .into_iter()
                        .map(|g| {
                            (
                                g.request.id,
                                ChannelGpadl {
                                    request: g.request,
                                    state: match g.state {
                                        SavedGpadlState::Offered => GpadlState::Offered,
                                        SavedGpadlState::OfferedTearingDown => {
                                            GpadlState::OfferedTearingDown
                                        }
                                        SavedGpadlState::Accepted => GpadlState::Accepted,
                                        SavedGpadlState::TearingDown => GpadlState::TearingDown,
                                    },
                                },
                            )
                        })
                        .collect(),
                    // A revoked channel has no device to wait for.
                    restore: if revoked {
                        RestoreState::Live
                    } else {
                        RestoreState::Unmatched
                    },
                },
            );
        }
        for p in saved.partial_gpadls {
            state.partial_gpadls.insert(p.gpadl_id(), p);
        }
        state
    }

    /// The device of `offer` asks for its saved state. Returns what the device restores
    /// and, in `out`, the requests it had not answered before the save, asked again.
    pub fn restore_channel(
        &mut self,
        offer: OfferId,
        has_open_result: bool,
        out: &mut Vec<Output>,
    ) -> Result<RestoredChannel, RestoreError> {
        let features = self.features();
        let channel = self
            .channels
            .get_mut(&offer)
            .ok_or(RestoreError::UnknownOffer)?;
        if channel.restore != RestoreState::Restoring {
            return Err(RestoreError::NotRestoring);
        }
        let offer_flags = channel.offer.flags().for_connection(features);
        let open = match &channel.state {
            // The device saw these open (or being closed).
            ChannelState::Open(open, _)
            | ChannelState::Closing(open)
            | ChannelState::ClosingReopen(open, _) => {
                if !has_open_result {
                    return Err(RestoreError::MissingOpenResult);
                }
                Some((*open, features, offer_flags))
            }
            _ => None,
        };
        channel.restore = RestoreState::Live;
        let gpadls = channel
            .gpadls
            .values()
            .map(|g| RestoredGpadl {
                request: g.request.clone(),
                accepted: matches!(g.state, GpadlState::Accepted | GpadlState::TearingDown),
            })
            .collect();
        // Ask again what the old device had not answered.
        let mut again = Vec::new();
        let mut torndown = Vec::new();
        for (&id, g) in &channel.gpadls {
            match g.state {
                GpadlState::Offered => again.push(DeviceAction::Gpadl(g.request.clone())),
                GpadlState::TearingDown => again.push(DeviceAction::TeardownGpadl(id)),
                GpadlState::OfferedTearingDown => torndown.push(id),
                GpadlState::Accepted => {}
            }
        }
        for id in torndown {
            channel.gpadls.remove(&id);
            out.push(Output::Guest(gpadl_created(channel.channel_id, id, false)));
            out.push(Output::Guest(gpadl_torndown(id)));
        }
        match channel.state {
            ChannelState::Opening(open_data) => again.push(DeviceAction::Open {
                open_data,
                features,
                offer_flags,
            }),
            ChannelState::Closing(_) | ChannelState::ClosingReopen(..) => {
                again.push(DeviceAction::Close);
            }
            ChannelState::Open(_, Some(vp)) => again.push(DeviceAction::Modify(vp)),
            _ => {}
        }
        for action in again {
            out.push(device(offer, channel, action));
        }
        Ok(RestoredChannel {
            open,
            gpadls,
            connection_id: channel.connection_id(),
        })
    }

    /// Gives up on saved channels whose devices did not come back: they are revoked.
    pub fn post_restore(&mut self, out: &mut Vec<Output>) {
        let unmatched: Vec<OfferId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.restore == RestoreState::Unmatched)
            .map(|(&id, _)| id)
            .collect();
        for offer in unmatched {
            if let Some(c) = self.channels.get_mut(&offer) {
                c.restore = RestoreState::Live;
                c.has_device = true;
            }
            tracing::warn!(?offer, "saved channel not restored; revoking");
            self.revoke(offer, out);
        }
    }

    /// Checks the invariants every step must keep: channel ids unique and in range, GPADL
    /// count bounded, no offer waiting for a device while the connection is unloaded.
    /// For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ids = std::collections::BTreeSet::new();
        for c in self.channels.values() {
            if !(1..=MAX_CHANNELS).contains(&c.channel_id) {
                return Err(format!("channel id {} out of range", c.channel_id));
            }
            if !ids.insert(c.channel_id) {
                return Err(format!("channel id {} used twice", c.channel_id));
            }
            if !c.has_device
                && c.restore == RestoreState::Live
                && !matches!(c.state, ChannelState::Revoked)
                && !c.gpadls.values().all(|g| g.state == GpadlState::Accepted)
            {
                return Err(format!(
                    "channel {} waits for a device it does not have",
                    c.channel_id
                ));
            }
        }
        if self.gpadl_count() > MAX_GPADLS {
            return Err(format!("{} GPADLs held", self.gpadl_count()));
        }
        if self.connection == Connection::Disconnected
            && (self.gpadl_count() != 0
                || self
                    .channels
                    .values()
                    .any(|c| !matches!(c.state, ChannelState::Closed)))
        {
            return Err("disconnected with channels or GPADLs still in use".into());
        }
        Ok(())
    }

    /// The offers, for tests and inspection: `(channel id, key, state)`.
    pub fn channels(&self) -> impl Iterator<Item = (u32, OfferKey, &ChannelState)> {
        self.channels
            .values()
            .map(|c| (c.channel_id, c.key, &c.state))
    }
}

fn device(offer: OfferId, channel: &Channel, action: DeviceAction) -> Output {
    Output::Device {
        offer,
        generation: channel.generation,
        action,
    }
}

fn status(ok: bool) -> i32 {
    if ok {
        control::STATUS_SUCCESS
    } else {
        control::STATUS_UNSUCCESSFUL
    }
}

fn open_result(channel_id: u32, open_id: u32, ok: bool) -> MessageBuf {
    Message::OpenResult(control::OpenResult {
        channel_id: channel_id.into(),
        open_id: open_id.into(),
        status: status(ok).cast_unsigned().into(),
    })
    .encode()
}

fn gpadl_created(channel_id: u32, id: GpadlId, ok: bool) -> MessageBuf {
    Message::GpadlCreated(control::GpadlCreated {
        channel_id: channel_id.into(),
        gpadl_id: id.0.into(),
        status: status(ok).into(),
    })
    .encode()
}

fn gpadl_torndown(id: GpadlId) -> MessageBuf {
    Message::GpadlTorndown(control::GpadlTorndown {
        gpadl_id: id.0.into(),
    })
    .encode()
}

fn version_response(version: Option<Version>, features: FeatureFlags) -> MessageBuf {
    let base = control::VersionResponse {
        version_supported: u8::from(version.is_some()),
        connection_state: control::ConnectionState::SUCCESSFUL.0,
        padding: 0.into(),
        selected_version_or_connection_id: if version.is_some_and(|v| v >= Version::WIN10_RS3_1) {
            control::MESSAGE_CONNECTION_ID
        } else {
            0
        }
        .into(),
    };
    match version {
        Some(v) if v.has_feature_flags() => Message::VersionResponse2(control::VersionResponse2 {
            base,
            supported_features: features.into_bits().into(),
        })
        .encode(),
        _ => Message::VersionResponse(base).encode(),
    }
}

fn tl_refused(request: control::TlConnectRequest) -> Output {
    // No hvsocket provider lives in this crate: every connect is refused.
    Output::Guest(
        Message::TlConnectResult(control::TlConnectResult {
            endpoint_id: request.endpoint_id,
            service_id: request.service_id,
            status: control::STATUS_CONNECTION_REFUSED.into(),
        })
        .encode(),
    )
}

#[cfg(test)]
mod tests;
