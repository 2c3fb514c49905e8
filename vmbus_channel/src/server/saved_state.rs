//! The server's saved state: the connection, every channel in whatever state it was (a
//! transitional state included, so the restored server asks the device again), every GPADL
//! with its own state, and GPADLs still being assembled. Versioned, encoded with postcard.

use crate::bus::GpadlRequest;
use crate::bus::OfferKey;
use crate::bus::OpenData;
use crate::control::gpadl::PartialGpadl;
use serde::Deserialize;
use serde::Serialize;

/// Version written by this code; restore refuses anything else.
pub(super) const SAVED_STATE_VERSION: u32 = 2;

/// The envelope: a version, then the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub version: u32,
    pub state: SavedState,
}

/// Everything the control plane knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub(super) connection: SavedConnection,
    pub(super) channels: Vec<SavedChannel>,
    pub(super) partial_gpadls: Vec<PartialGpadl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum SavedConnection {
    Disconnected,
    Connected {
        version: u32,
        features: u32,
        offers_sent: bool,
    },
    Unloading,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedChannel {
    pub key: OfferKey,
    pub channel_id: u32,
    pub open_id: u32,
    pub state: SavedChannelState,
    pub gpadls: Vec<SavedGpadl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum SavedChannelState {
    Closed,
    Opening(OpenData),
    Open(OpenData, Option<u32>),
    Closing(OpenData),
    ClosingReopen(OpenData, OpenData),
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedGpadl {
    pub request: GpadlRequest,
    pub state: SavedGpadlState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum SavedGpadlState {
    Offered,
    OfferedTearingDown,
    Accepted,
    TearingDown,
}
