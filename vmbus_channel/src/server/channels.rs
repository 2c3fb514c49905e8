//! The server's control-plane state machine: the connection and every channel and GPADL,
//! driven by guest messages and device answers. No I/O: each step returns [`Output`]s (a
//! message for the guest, a request for a device) that the runner carries out.
//!
//! A channel moves through the states of OpenVMM's `vmbus_server` (see [`ChannelState`]);
//! `Channel::transition` is the one table that says which event is valid in which state.
//! Every guest message is valid in the current state or refused: with the protocol's failure
//! status where the message has an answer, otherwise logged and dropped. Nothing a guest
//! sends panics the server or grows its state without bound.
//!
//! This module holds the types, the transition table and the queries; the steps live beside
//! it by who drives them: `devices` (offers, revokes, device answers), `guest` (the guest's
//! messages), `servicing` (save, restore, invariants), and `replies` builds what goes out.

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

    /// What the device is asked to open with: the guest's parameters, the connection's
    /// features, and the offer's flags as this connection sees them.
    fn open_action(&self, open_data: OpenData, features: FeatureFlags) -> DeviceAction {
        DeviceAction::Open {
            open_data,
            features,
            offer_flags: self.offer.flags().for_connection(features),
        }
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
}

mod devices;
mod guest;
mod replies;
mod servicing;

use replies::device;
use replies::gpadl_created;
use replies::gpadl_torndown;
use replies::open_result;
use replies::tl_refused;
use replies::version_response;

#[cfg(test)]
mod tests;
