//! A hostile guest on a real VMBus channel to the host's TDISP device: packets that ask for no
//! completion, completions sent by the guest, garbage payloads, commands naming another
//! device. The host answers what asks for an answer, drops the rest, and none of it changes the
//! device. Every check is ordered by the ring itself: a later request's completion proves the
//! earlier packets were handled.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap; a failure fails the test"
)]

#[expect(
    dead_code,
    reason = "the shared helpers serve the other VMBus tests as well"
)]
mod common;

use common::Bus;
use tdisp_guest::vmbus::TDISP_RING_PAGES;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::frame;
use tdisp_proto::wire::unframe;
use vmbus_channel::client::ClientChannel;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::PacketType;

fn framed(device_id: u64, command: GuestCommand) -> Vec<u8> {
    frame(&CommandPacket { device_id, command }.encode()).unwrap()
}

fn request(bus: &Bus, channel: &mut ClientChannel, payload: &[u8]) -> ResponsePacket {
    let reply = bus.runtime.block_on(channel.request(payload)).unwrap();
    assert_eq!(reply.packet_type, PacketType::COMPLETION);
    ResponsePacket::decode(unframe(reply.data()).unwrap()).unwrap()
}

#[test]
fn packets_that_ask_for_no_answer_are_dropped_and_garbage_changes_nothing() {
    let bus = Bus::new();
    let (host, _assignment) = bus.offer_emulated(1);
    let offer = tdisp_offers(&bus.guest).pop().unwrap();
    let mut channel = bus
        .runtime
        .block_on(bus.guest.open(&offer.offer, TDISP_RING_PAGES))
        .unwrap();
    let negotiate = framed(
        1,
        GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
    );
    let reply = request(&bus, &mut channel, &negotiate);
    assert_eq!(reply.state_after, TdispTdiState::Unlocked);

    // A lock that asks for no completion, and a lock sent as a completion: neither is run.
    let lock = framed(1, GuestCommand::LockDeviceResources);
    bus.runtime
        .block_on(channel.send_packet(&OutgoingPacket::in_band(100, false, &[&lock])))
        .unwrap();
    bus.runtime
        .block_on(channel.send_packet(&OutgoingPacket::completion(101, &[&lock])))
        .unwrap();

    // Garbage, a frame that lies about its length, and a command for another device are each
    // answered as a host failure with the state unchanged.
    let foreign = framed(2, GuestCommand::LockDeviceResources);
    for payload in [
        vec![0xa5; 64],
        vec![0xff, 0xff, 0, 0, 0, 0, 0, 0, 1, 2],
        frame(&[0xff; 9]).unwrap(),
        foreign,
    ] {
        let reply = request(&bus, &mut channel, &payload);
        assert_eq!(
            reply.result,
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(
            (reply.state_before, reply.state_after),
            (TdispTdiState::Unlocked, TdispTdiState::Unlocked),
            "the dropped locks and the garbage left the device alone"
        );
    }
    assert_eq!(host.lock().unwrap().tdi_state(), TdispTdiState::Unlocked);

    // The channel still serves the guest.
    let reply = request(&bus, &mut channel, &lock);
    assert_eq!(
        (reply.result.is_ok(), reply.state_after),
        (true, TdispTdiState::Locked)
    );
    assert_eq!(host.lock().unwrap().tdi_state(), TdispTdiState::Locked);
}
