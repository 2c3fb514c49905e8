//! The server's saved state: every channel's GPADLs and open parameters, versioned and
//! encoded with postcard.

use crate::bus::GpadlRequest;
use crate::bus::OfferKey;
use crate::bus::OpenData;
use serde::Deserialize;
use serde::Serialize;

/// Version written by this code; restore refuses anything else.
pub(super) const SAVED_STATE_VERSION: u32 = 1;

/// Everything needed to rebuild the server's view of the guest's channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedState {
    pub version: u32,
    /// Feature flags of the connected client, if one was connected.
    pub feature_flags: Option<u32>,
    pub next_channel_id: u32,
    pub channels: Vec<SavedChannel>,
}

/// One offered channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedChannel {
    pub channel_id: u32,
    pub key: OfferKey,
    pub gpadls: Vec<SavedGpadl>,
    /// Present if the channel was open.
    pub open: Option<OpenData>,
}

/// One GPADL of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedGpadl {
    pub request: GpadlRequest,
    /// The device had accepted it.
    pub accepted: bool,
}
