//! VMBus bus definitions: what a device hands the bus when it is offered, and the requests
//! the bus sends the device.
//!
//! Mirrors OpenVMM's `vmbus_channel::bus` with `futures` channels in place of mesh channels,
//! [`crate::rpc`] in place of mesh RPCs, `uuid::Uuid` for GUIDs and [`GuestMemory`] over
//! `vm-memory`.

use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::protocol;
use crate::protocol::GpadlId;
use crate::protocol::UserDefinedData;
use crate::rpc::FailableRpc;
use crate::rpc::Rpc;
use async_trait::async_trait;
use futures::channel::mpsc;
use serde::Deserialize;
use serde::Serialize;
use std::fmt::Display;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// Input for creating a channel offer.
#[derive(Debug)]
pub struct OfferInput {
    /// Parameters describing the offer.
    pub params: OfferParams,
    /// A channel to send channel-related requests to.
    pub request_send: mpsc::UnboundedSender<ChannelRequest>,
    /// A channel to receive channel-related requests to.
    pub server_request_recv: mpsc::UnboundedReceiver<ChannelServerRequest>,
}

/// Resources for an offered channel.
#[derive(Debug, Default)]
pub struct OfferResources {
    /// Untrusted guest memory access.
    untrusted_memory: GuestMemory,
    /// Private guest memory access. This will be `None` unless running in a paravisor of a hardware
    /// isolated VM.
    private_memory: Option<GuestMemory>,
}

/// Memory with no pages: what a request for private memory gets when there is none, so that
/// a misconfiguration fails every access instead of exposing shared memory.
static NO_MEMORY: LazyLock<GuestMemory> = LazyLock::new(GuestMemory::default);

impl OfferResources {
    /// Creates a new `OfferResources`.
    pub fn new(untrusted_memory: GuestMemory, private_memory: Option<GuestMemory>) -> Self {
        OfferResources {
            untrusted_memory,
            private_memory,
        }
    }

    /// Returns the `GuestMemory` to use based on the whether the open request requests confidential
    /// memory.
    ///
    /// The open request reflects both whether the device indicated it supports confidential
    /// external memory when it was offered, and whether the currently connected vmbus client
    /// supports it. As such, you must not attempt to get the guest memory until a channel is
    /// opened, and you should not retain the guest memory after it is closed, as the client and
    /// its capabilities may change across opens.
    pub fn guest_memory(&self, open_request: &OpenRequest) -> &GuestMemory {
        self.get_memory(open_request.use_confidential_external_memory)
    }

    /// Returns the memory that holds the channel's ring buffers.
    pub(crate) fn ring_memory(&self, open_request: &OpenRequest) -> &GuestMemory {
        self.get_memory(open_request.use_confidential_ring)
    }

    /// Memory GPADLs are checked against before the open request says which memory they
    /// use (private and shared memory span the same guest physical addresses).
    pub(crate) fn validation_memory(&self) -> &GuestMemory {
        &self.untrusted_memory
    }

    fn get_memory(&self, private: bool) -> &GuestMemory {
        if private {
            self.private_memory.as_ref().unwrap_or_else(|| {
                // The server only grants confidential use when it has private memory; if that
                // ever breaks, fail every access rather than fall back to shared memory.
                tracing::error!("confidential memory requested but no private memory present");
                &NO_MEMORY
            })
        } else {
            &self.untrusted_memory
        }
    }
}

/// A request from the VMBus control plane.
#[derive(Debug)]
pub enum ChannelRequest {
    /// Open the channel.
    Open(Rpc<OpenRequest, Option<OpenResult>>),
    /// Close the channel.
    ///
    /// Although there is no response from the host, this is still modeled as an
    /// RPC so that the caller can know that the vmbus client's state has been
    /// updated.
    Close(Rpc<(), ()>),
    /// Create a new GPADL.
    Gpadl(Rpc<GpadlRequest, bool>),
    /// Tear down an existing GPADL.
    TeardownGpadl(Rpc<GpadlId, ()>),
    /// Modify the channel's target VP.
    Modify(Rpc<ModifyRequest, i32>),
}

/// The successful result of an open request.
#[derive(Debug, Clone)]
pub struct OpenResult {
    /// The interrupt object vmbus should signal when the guest signals the
    /// host.
    pub guest_to_host_interrupt: Interrupt,
}

/// GPADL information from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpadlRequest {
    /// The GPADL ID.
    pub id: GpadlId,
    /// The number of ranges in the GPADL.
    pub count: u16,
    /// The GPA range buffer.
    pub buf: Vec<u64>,
}

/// Modify channel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModifyRequest {
    /// Change the target VP to `target_vp`.
    TargetVp {
        /// The new target VP.
        target_vp: u32,
    },
}

/// A request to the VMBus control plane.
#[derive(Debug)]
pub enum ChannelServerRequest {
    /// A request to restore the channel.
    ///
    /// The input parameter provides the open result if the channel was saved open.
    Restore(FailableRpc<Option<OpenResult>, RestoreResult>),
    /// A request to revoke the channel.
    ///
    /// A channel can also be revoked by dropping it. This request is only necessary if you need to
    /// wait for the revoke operation to complete.
    Revoke(Rpc<(), ()>),
}

/// The result of a [`ChannelServerRequest::Restore`] operation.
#[derive(Debug)]
pub struct RestoreResult {
    /// The open request, if the channel was opened restored.
    pub open_request: Option<OpenRequest>,
    /// The active GPADLs.
    pub gpadls: Vec<RestoredGpadl>,
}

/// A restored GPADL.
#[derive(Debug, Clone)]
pub struct RestoredGpadl {
    /// The GPADL request.
    pub request: GpadlRequest,
    /// Whether the GPADL was saved in the accepted state.
    ///
    /// If true, failure to restore this is fatal to the restore operation. If
    /// false, the device will later get another GPADL offer for this same
    /// GPADL.
    ///
    /// This is needed because the device may have saved itself with a
    /// dependency on this GPADL even if the response did not make it into the
    /// vmbus server saved state.
    pub accepted: bool,
}

/// Trait implemented by VMBus servers.
#[async_trait]
pub trait ParentBus: Send + Sync {
    /// Offers a new channel.
    async fn add_child(&self, request: OfferInput) -> anyhow::Result<OfferResources>;

    /// Clones the bus.
    ///
    /// Kept from the seed: needed to offer subchannels from a device that only holds a
    /// `&dyn ParentBus`.
    fn clone_bus(&self) -> Box<dyn ParentBus>;

    /// Returns whether [`OpenResult::guest_to_host_interrupt`] needs to be
    /// backed by an OS event.
    ///
    /// In-process buses signal through a callback and return `false`.
    fn use_event(&self) -> bool {
        true
    }
}

/// Channel open-specific data.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenData {
    /// The target VP for interrupts to the guest.
    pub target_vp: u32,
    /// The page offset into the ring GPADL of the host-to-guest ring buffer.
    pub ring_offset: u32,
    /// The ring buffer's GPADL ID.
    pub ring_gpadl_id: GpadlId,
    /// The event flag used to notify the guest.
    pub event_flag: u16,
    /// An connection ID used when the guest notifies the host.
    pub connection_id: u32,
    /// User data provided by the opener.
    pub user_data: UserDefinedData,
}

/// Information provided to devices when a channel is opened.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Channel open-specific data.
    pub open_data: OpenData,
    /// The interrupt used to signal the guest.
    pub interrupt: Interrupt,
    /// Indicates if the currently connected vmbus client, as well as the channel the request is
    /// for, supports the use of confidential ring buffers.
    pub use_confidential_ring: bool,
    /// Indicates if the currently connected vmbus client, as well as the channel the request is
    /// for, supports the use of confidential external memory.
    pub use_confidential_external_memory: bool,
}

impl OpenRequest {
    /// Creates a new `OpenRequest`.
    pub fn new(
        open_data: OpenData,
        interrupt: Interrupt,
        feature_flags: protocol::FeatureFlags,
        offer_flags: protocol::OfferFlags,
    ) -> Self {
        Self {
            open_data,
            interrupt,
            use_confidential_ring: feature_flags.confidential_channels()
                && offer_flags.confidential_ring_buffer(),
            use_confidential_external_memory: feature_flags.confidential_channels()
                && offer_flags.confidential_external_memory(),
        }
    }
}

/// The identifying IDs for a channel offer.
#[derive(Debug, Copy, Clone, Hash, Eq, PartialEq, Ord, PartialOrd, Serialize, Deserialize)]
pub struct OfferKey {
    /// The interface ID describing the type of channel.
    pub interface_id: Uuid,
    /// The unique instance ID for the channel.
    pub instance_id: Uuid,
    /// The subchannel index. Index 0 indicates a primary (normal channel).
    pub subchannel_index: u16,
}

impl Display for OfferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{{}}}-{{{}}}-{}",
            self.interface_id, self.instance_id, self.subchannel_index
        )
    }
}

/// Channel offer parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferParams {
    /// An informational string describing the channel type.
    pub interface_name: String,
    /// The unique instance ID for the channel.
    pub instance_id: Uuid,
    /// The interface ID describing the type of channel.
    pub interface_id: Uuid,
    /// The amount of MMIO space needed by the channel, in megabytes.
    pub mmio_megabytes: u16,
    /// The amount of optional MMIO space used by the channel, in megabytes.
    pub mmio_megabytes_optional: u16,
    /// The channel's type.
    pub channel_type: ChannelType,
    /// The subchannel index. Index 0 indicates a primary (normal channel).
    pub subchannel_index: u16,
    /// Indicates whether the channel's interrupts should use monitor pages,
    /// and the interrupt latency if it's enabled.
    pub mnf_interrupt_latency: Option<Duration>,
    /// The order in which channels with the same interface will be offered to
    /// the guest (optional).
    pub offer_order: Option<u32>,
    /// Indicates whether the channel supports using encrypted memory for any
    /// external GPADLs and GPA direct ranges. This is only used when hardware
    /// isolation is in use.
    pub allow_confidential_external_memory: bool,
}

impl OfferParams {
    /// Gets the offer key for this offer.
    pub fn key(&self) -> OfferKey {
        OfferKey {
            interface_id: self.interface_id,
            instance_id: self.instance_id,
            subchannel_index: self.subchannel_index,
        }
    }
}

/// The channel type.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelType {
    /// A channel representing a device.
    Device {
        /// If true, the ring buffer packets should contain pipe headers.
        pipe_packets: bool,
    },
    /// A channel representing an interface for the guest to open.
    Interface {
        /// Interface-specific user-defined data to put in the channel offer.
        user_defined: UserDefinedData,
    },
    /// A channel representing a pipe.
    Pipe {
        /// If true, the pipe uses message mode. Otherwise, it uses byte mode.
        message_mode: bool,
    },
    /// A channel representing a Hyper-V socket.
    HvSocket {
        /// If true, this is a connect to the guest. Otherwise, this is a
        /// connect from the guest.
        is_connect: bool,
        /// If true, the connection is for a container in the guest.
        is_for_container: bool,
        /// The silo ID to connect to. Use `Uuid::nil()` to not specify a silo ID.
        silo_id: Uuid,
    },
}

impl Default for ChannelType {
    fn default() -> Self {
        Self::Device {
            pipe_packets: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FeatureFlags;
    use crate::protocol::OfferFlags;

    fn open_data() -> OpenData {
        OpenData {
            target_vp: 0,
            ring_offset: 2,
            ring_gpadl_id: GpadlId(1),
            event_flag: 1,
            connection_id: 1,
            user_data: UserDefinedData::ZERO,
        }
    }

    #[test]
    fn offer_key_display_braces_guids_and_appends_index() {
        let key = OfferKey {
            interface_id: Uuid::from_u128(1),
            instance_id: Uuid::from_u128(2),
            subchannel_index: 3,
        };
        assert_eq!(
            key.to_string(),
            "{00000000-0000-0000-0000-000000000001}-{00000000-0000-0000-0000-000000000002}-3"
        );
    }

    #[test]
    fn confidential_use_needs_both_client_feature_and_offer_flag() {
        let offer = OfferFlags::new()
            .with_confidential_ring_buffer(true)
            .with_confidential_external_memory(true);
        let with = FeatureFlags::new().with_confidential_channels(true);
        let r = OpenRequest::new(open_data(), Interrupt::null(), with, offer);
        assert!(r.use_confidential_ring && r.use_confidential_external_memory);
        let r = OpenRequest::new(open_data(), Interrupt::null(), FeatureFlags::new(), offer);
        assert!(!r.use_confidential_ring && !r.use_confidential_external_memory);
        let ring_only = OfferFlags::new().with_confidential_ring_buffer(true);
        let r = OpenRequest::new(open_data(), Interrupt::null(), with, ring_only);
        assert!(r.use_confidential_ring && !r.use_confidential_external_memory);
    }

    #[test]
    fn resources_pick_private_memory_only_when_requested() {
        let shared = GuestMemory::new(0x1000).unwrap();
        let private = GuestMemory::new(0x2000).unwrap();
        let res = OfferResources::new(shared, Some(private));
        let mut req = OpenRequest::new(
            open_data(),
            Interrupt::null(),
            FeatureFlags::new(),
            OfferFlags::new(),
        );
        assert!(res.guest_memory(&req).check_range(0, 0x1000));
        assert!(!res.guest_memory(&req).check_range(0, 0x2000));
        req.use_confidential_ring = true;
        assert!(res.ring_memory(&req).check_range(0, 0x2000));
    }

    #[test]
    fn missing_private_memory_fails_closed() {
        let res = OfferResources::new(GuestMemory::new(0x1000).unwrap(), None);
        let mut req = OpenRequest::new(
            open_data(),
            Interrupt::null(),
            FeatureFlags::new(),
            OfferFlags::new(),
        );
        req.use_confidential_external_memory = true;
        assert!(!res.guest_memory(&req).check_range(0, 1));
    }

    #[test]
    fn offer_params_key_uses_ids_and_index() {
        let p = OfferParams {
            interface_id: Uuid::from_u128(5),
            instance_id: Uuid::from_u128(6),
            subchannel_index: 1,
            ..Default::default()
        };
        assert_eq!(
            p.key(),
            OfferKey {
                interface_id: Uuid::from_u128(5),
                instance_id: Uuid::from_u128(6),
                subchannel_index: 1
            }
        );
    }
}
