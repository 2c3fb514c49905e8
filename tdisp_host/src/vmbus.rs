//! The TDISP VMBus device: each assigned device gets a channel of its own on a VMBus server,
//! and the guest's `tdisp.proto` commands on that channel reach that device and no other.
//!
//! The offer uses [`TDISP_VMBUS_INTERFACE_ID`] and an instance id that carries the device id
//! ([module `tdisp_proto::wire::frame`](mod@tdisp_proto::wire::frame) defines both). Each guest packet must be an in-band packet
//! asking for a completion; its payload is one framed `GuestToHostCommand`. The device runs the
//! command through [`crate::dispatch::answer`] (the host state machine) and answers with a
//! completion carrying the packet's transaction id and one framed `GuestToHostResponse`. A
//! payload that is not a valid frame is answered too, with `HostFailedToProcessCommand` and
//! the unchanged state; packets of other kinds are dropped and logged.
//!
//! Built only on `vmbus_channel`'s device API ([`SimpleVmbusDevice`], [`offer_device`]), so
//! it runs on any [`ParentBus`]:
//!
//! ```
//! # use futures::future::{join, select};
//! # use std::pin::pin;
//! use tdisp_host::emulated::EmulatedAssignment;
//! use tdisp_host::state_machine::MachineConfig;
//! use tdisp_host::vmbus::TdispVmbusDevice;
//! use tdisp_proto::wire::{CommandPacket, GuestCommand, ResponsePacket, frame, unframe};
//! use tdisp_proto::{TdispGuestProtocolType, TdispTdiState};
//! use vmbus_channel::client::VmbusClient;
//! use vmbus_channel::device::offer_device;
//! use vmbus_channel::memory::{GuestMemory, PAGE_SIZE};
//! use vmbus_channel::protocol::FeatureFlags;
//! use vmbus_channel::server::VmbusServer;
//!
//! let assignment = EmulatedAssignment::single(0x0100, 0x0101, 7)?;
//! let device = TdispVmbusDevice::new(7, Box::new(assignment.machine(MachineConfig::new(7))));
//! let host_view = device.shared();
//! let memory = GuestMemory::new(64 * PAGE_SIZE)?;
//! let (server, server_runner) = VmbusServer::new(memory.clone(), None);
//! futures::executor::block_on(async {
//!     let runner = offer_device(&server, device).await.unwrap();
//!     let guest = async {
//!         let client = VmbusClient::connect(&server, memory, None, 8..64, FeatureFlags::all()).await.unwrap();
//!         let offer = client.find_offer(tdisp_host::vmbus::interface_id()).unwrap();
//!         let mut channel = client.open(&offer, 2).await.unwrap();
//!         let command = CommandPacket { device_id: 7, command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1) };
//!         let reply = channel.request(&frame(&command.encode()).unwrap()).await.unwrap();
//!         let response = ResponsePacket::decode(unframe(reply.data()).unwrap()).unwrap();
//!         assert_eq!(response.state_after, TdispTdiState::Unlocked);
//!     };
//!     select(pin!(guest), pin!(join(server_runner.run(), runner.run()))).await;
//! });
//! assert_eq!(host_view.lock().unwrap().tdi_state(), TdispTdiState::Unlocked);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::dispatch::GuestDevice;
use crate::dispatch::answer;
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::frame;
use tdisp_proto::wire::frame::TDISP_VMBUS_INTERFACE_ID;
use tdisp_proto::wire::frame::instance_id_for;
use tdisp_proto::wire::unframe;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::bus::ParentBus;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::DeviceRunner;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::PacketType;

/// The interface id TDISP channels are offered under.
pub fn interface_id() -> Uuid {
    Uuid::from_u128(TDISP_VMBUS_INTERFACE_ID)
}

/// The instance id of the channel for device `device_id`.
pub fn instance_id(device_id: u64) -> Uuid {
    Uuid::from_u128(instance_id_for(device_id))
}

/// One assigned device's guest-facing state handler, shared between its channel and whoever
/// watches it (diagnostics, tests).
pub type SharedGuestDevice = Arc<Mutex<Box<dyn GuestDevice>>>;

/// The VMBus device serving one assigned device's TDISP channel.
pub struct TdispVmbusDevice {
    device_id: u64,
    device: SharedGuestDevice,
    dropped: u64,
}

impl std::fmt::Debug for TdispVmbusDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdispVmbusDevice")
            .field("device_id", &self.device_id)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl TdispVmbusDevice {
    /// The channel for `device`, whose host id is `device_id`.
    pub fn new(device_id: u64, device: Box<dyn GuestDevice>) -> Self {
        Self {
            device_id,
            device: Arc::new(Mutex::new(device)),
            dropped: 0,
        }
    }

    /// The device id this channel serves.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The device behind the channel.
    pub fn shared(&self) -> SharedGuestDevice {
        self.device.clone()
    }

    /// Packets dropped without an answer (not in-band or not asking for a completion).
    pub fn dropped_packets(&self) -> u64 {
        self.dropped
    }

    /// Answers one packet payload (padding included) with one framed response.
    pub fn handle_payload(&mut self, payload: &[u8]) -> Vec<u8> {
        // A poisoned lock means a panic elsewhere mid-call; the machine commits its state
        // last, so what is there is still its truthful state.
        let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        let response = match unframe(payload) {
            Ok(message) => answer(device.as_mut(), self.device_id, message),
            Err(error) => {
                tracing::info!(device = self.device_id, %error, len = payload.len(), "malformed TDISP frame");
                let state = device.tdi_state();
                let refusal = ResponsePacket {
                    state_before: state,
                    state_after: state,
                    result: Err(TdispGuestOperationError::HostFailedToProcessCommand),
                };
                // An error response always encodes.
                refusal.encode().unwrap_or_default()
            }
        };
        // The response of a report is bounded by MAX_REPORT_BUFFER, so it always fits a frame;
        // the fallback is an empty frame, which the guest refuses.
        frame(&response).unwrap_or_else(|error| {
            tracing::error!(device = self.device_id, %error, "response does not fit a frame");
            frame(&[]).unwrap_or_default()
        })
    }
}

#[async_trait]
impl SimpleVmbusDevice for TdispVmbusDevice {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "tdisp".into(),
            interface_id: interface_id(),
            instance_id: instance_id(self.device_id),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        if packet.packet_type != PacketType::IN_BAND || !packet.completion_requested {
            // Nothing to answer: only a completion can carry a response the guest will match.
            self.dropped = self.dropped.saturating_add(1);
            tracing::info!(
                device = self.device_id,
                packet_type = ?packet.packet_type,
                completion_requested = packet.completion_requested,
                "TDISP packet dropped"
            );
            return Ok(None);
        }
        Ok(Some(self.handle_payload(packet.data())))
    }
}

/// Offers one TDISP channel per `(device_id, device)` on `bus`; run each returned runner (and
/// the bus) to serve them.
pub async fn offer_tdisp_devices(
    bus: &dyn ParentBus,
    devices: impl IntoIterator<Item = (u64, Box<dyn GuestDevice>)>,
) -> Result<Vec<DeviceRunner<TdispVmbusDevice>>, DeviceError> {
    let mut runners = Vec::new();
    for (device_id, device) in devices {
        runners.push(offer_device(bus, TdispVmbusDevice::new(device_id, device)).await?);
    }
    Ok(runners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulated::EmulatedAssignment;
    use crate::state_machine::MachineConfig;
    use tdisp_proto::TdispGuestProtocolType;
    use tdisp_proto::TdispTdiState;
    use tdisp_proto::wire::CommandPacket;
    use tdisp_proto::wire::GuestCommand;

    fn device() -> TdispVmbusDevice {
        let assignment = EmulatedAssignment::single(0x0100, 0x0101, 5).unwrap();
        TdispVmbusDevice::new(5, Box::new(assignment.machine(MachineConfig::new(5))))
    }

    fn response(bytes: &[u8]) -> ResponsePacket {
        ResponsePacket::decode(unframe(bytes).unwrap()).unwrap()
    }

    #[test]
    fn framed_command_gets_a_framed_response() {
        let mut device = device();
        let command = CommandPacket {
            device_id: 5,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        };
        let mut payload = frame(&command.encode()).unwrap();
        // As read from a ring: padded to 8 bytes.
        payload.resize(payload.len().next_multiple_of(8), 0);
        let reply = response(&device.handle_payload(&payload));
        assert_eq!(reply.state_after, TdispTdiState::Unlocked);
    }

    #[test]
    fn bad_frames_and_foreign_device_ids_are_answered_and_change_nothing() {
        let mut device = device();
        let foreign = CommandPacket {
            device_id: 6,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        };
        for payload in [
            vec![],
            vec![0xff; 16],
            frame(&[0x0a, 0x05]).unwrap(),
            frame(&foreign.encode()).unwrap(),
        ] {
            let reply = response(&device.handle_payload(&payload));
            assert!(reply.result.is_err());
            assert_eq!(reply.state_after, TdispTdiState::Uninitialized);
        }
        assert_eq!(
            device.shared().lock().unwrap().tdi_state(),
            TdispTdiState::Uninitialized
        );
    }

    #[test]
    fn offer_names_the_interface_and_the_device() {
        let device = device();
        let offer = device.offer();
        assert_eq!(offer.interface_id, interface_id());
        assert_eq!(
            frame::device_id_of_instance(offer.instance_id.as_u128()),
            Some(5)
        );
    }
}
