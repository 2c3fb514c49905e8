//! Servicing in the middle of traffic, with every interleaving made explicit: a request the
//! device has read but not answered, a guest blocked on a full ring and a GPADL the device
//! has not accepted are all in flight when the device is stopped (and proven stopped) and
//! the server saved. After restore on the same port nothing is lost.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

use async_trait::async_trait;
use futures::poll;
use std::pin::pin;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::mpsc;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::PacketType;
use vmbus_channel::server::VmbusServer;
use vmbus_channel::server::channels::ChannelState;

const IFACE: Uuid = Uuid::from_u128(0x5e41_0001);

/// Packets start with a tag: `S` (slow: the first device instance never finishes it),
/// `F` (fill: no reply), anything else is echoed.
struct Gated {
    blocks: bool,
    entered: mpsc::UnboundedSender<u8>,
    handled: Arc<Mutex<Vec<u8>>>,
}

#[async_trait]
impl SimpleVmbusDevice for Gated {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "gated".into(),
            interface_id: IFACE,
            instance_id: Uuid::from_u128(1),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let tag = packet.data()[0];
        let _ = self.entered.send(tag);
        if tag == b'S' && self.blocks {
            // Read, never answered: only a stop gets the runner out of here.
            std::future::pending::<()>().await;
        }
        self.handled.lock().unwrap().push(tag);
        Ok((tag != b'F').then(|| packet.data().to_vec()))
    }
}

fn gated(blocks: bool) -> (Gated, mpsc::UnboundedReceiver<u8>, Arc<Mutex<Vec<u8>>>) {
    let (entered, rx) = mpsc::unbounded_channel();
    let handled = Arc::new(Mutex::new(Vec::new()));
    (
        Gated {
            blocks,
            entered,
            handled: handled.clone(),
        },
        rx,
        handled,
    )
}

#[tokio::test]
async fn save_and_restore_mid_traffic_loses_nothing() {
    let mem = GuestMemory::new(256 * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    let server_task = tokio::spawn(runner.run());
    let (device, mut entered, old_handled) = gated(true);
    let device = offer_device(&server, device).await.unwrap();
    let stop = device.stop_handle();
    let device_task = tokio::spawn(device.run());

    let client = VmbusClient::connect(&server, mem.clone(), None, 16..200, FeatureFlags::all())
        .await
        .unwrap();
    let offer = client.find_offer(IFACE).unwrap();
    let mut ch = client.open(&offer, 1).await.unwrap();

    // 1. A request the device reads and does not answer.
    ch.send_packet(&OutgoingPacket::in_band(100, true, &[b"S-request"]))
        .await
        .unwrap();
    assert_eq!(entered.recv().await, Some(b'S'));

    // 2. The guest fills its ring until a send blocks (the device reads nothing more).
    let fill = [b'F'; 1000];
    let mut sent = 0;
    let blocked = loop {
        let mut send = Box::pin(ch.send(&fill));
        match poll!(send.as_mut()) {
            std::task::Poll::Ready(r) => {
                r.unwrap();
                sent += 1;
            }
            std::task::Poll::Pending => break send,
        }
    };
    assert!(sent >= 2, "{sent} fill packets fit");

    // 3. A GPADL the device cannot accept yet (its runner is inside the slow request).
    let pfn = client.alloc_pages(3).unwrap();
    let gpadl_client = client.clone();
    let pfns = [pfn, pfn + 1, pfn + 2];
    let mut gpadl = pin!(gpadl_client.create_gpadl(offer.channel_id, &pfns));
    assert!(poll!(gpadl.as_mut()).is_pending());
    while server.control_state().gpadl_count() < 2 {
        tokio::task::yield_now().await;
    }

    // Stop the device; it really stopped once its run() has returned.
    stop.stop().await;
    let old_runner = device_task.await.unwrap();
    assert!(old_runner.is_open(), "stopping does not close or revoke");
    assert!(old_handled.lock().unwrap().is_empty());
    server.stop();
    let state = server.control_state();
    assert!(matches!(
        state.channels().next().unwrap().2,
        ChannelState::Open(..)
    ));
    let saved = server.save().unwrap();

    // The host side goes away. The port (the hypervisor's) stays with the guest.
    let port = server.host_port();
    drop(old_runner);
    drop(server);
    server_task.await.unwrap();

    let (server, runner) = VmbusServer::restore_with_port(mem.clone(), None, port, &saved).unwrap();
    tokio::spawn(runner.run());
    let (device, mut entered, handled) = gated(false);
    let mut device = offer_device(&server, device).await.unwrap();
    device.restore().await.unwrap();
    assert!(device.is_open());
    tokio::spawn(device.run());

    // The blocked send completes, the GPADL is offered to the new device and accepted.
    blocked.await.unwrap();
    let id = gpadl.await.unwrap();
    // The request read but not answered is read again and answered.
    let reply = ch.recv().await.unwrap();
    assert_eq!(reply.packet_type, PacketType::COMPLETION);
    assert_eq!(reply.transaction_id, 100);
    assert!(reply.data().starts_with(b"S-request"));
    let after = ch.request(b"E-after").await.unwrap();
    assert!(after.data().starts_with(b"E-after"));
    // Every packet handled exactly once by the restored device, in order.
    let mut expect = vec![b'S'];
    expect.extend(std::iter::repeat_n(b'F', sent + 1));
    expect.push(b'E');
    assert_eq!(*handled.lock().unwrap(), expect);
    assert_eq!(entered.recv().await, Some(b'S'));
    client.teardown_gpadl(offer.channel_id, id).await.unwrap();
    ch.close().await.unwrap();
}

#[tokio::test]
async fn stopped_device_is_not_revoked_and_runs_again() {
    let mem = GuestMemory::new(64 * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    tokio::spawn(runner.run());
    let (device, _entered, handled) = gated(false);
    let device = offer_device(&server, device).await.unwrap();
    let stop = device.stop_handle();
    let task = tokio::spawn(device.run());
    let client = VmbusClient::connect(&server, mem, None, 16..64, FeatureFlags::all())
        .await
        .unwrap();
    let offer = client.find_offer(IFACE).unwrap();
    let mut ch = client.open(&offer, 1).await.unwrap();
    ch.request(b"E1").await.unwrap();
    stop.stop().await;
    let device = task.await.unwrap();
    // Still offered, still open.
    assert!(client.find_offer(IFACE).is_some());
    assert!(device.is_open());
    // A request sent while stopped waits in the ring and is answered after run().
    ch.send_packet(&OutgoingPacket::in_band(7, true, &[b"E2"]))
        .await
        .unwrap();
    tokio::spawn(device.run());
    let reply = ch.recv().await.unwrap();
    assert_eq!(reply.transaction_id, 7);
    assert_eq!(*handled.lock().unwrap(), b"EE");
}
