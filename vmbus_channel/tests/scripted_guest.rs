//! A scripted guest that speaks raw control-message bytes to the server, as Linux's
//! `hv_vmbus` would: contact, offers, a 200-page GPADL in fragments, open, packets both ways,
//! modify, close, teardown, unload. Messages are built and read with byte offsets from
//! `hyperv.h`, not with the crate's codec.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::channel::RingChannel;
use vmbus_channel::channel::Side;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::gpadl::Gpadl;
use vmbus_channel::gpadl::build_request;
use vmbus_channel::interrupt::Event;
use vmbus_channel::interrupt::Interrupt;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::port::MessagePort;
use vmbus_channel::protocol::GpadlId;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::PacketType;
use vmbus_channel::ring::PagedRingMem;
use vmbus_channel::server::VmbusServer;

const IFACE: Uuid = Uuid::from_u128(0x5c41_7000);

struct Upper;

#[async_trait]
impl SimpleVmbusDevice for Upper {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "upper".into(),
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
        Ok(Some(packet.data().to_ascii_uppercase()))
    }
}

fn msg(message_type: u32, body: &[u8]) -> Vec<u8> {
    let mut m = message_type.to_le_bytes().to_vec();
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(body);
    m
}

fn u32_at(m: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(m[offset..offset + 4].try_into().unwrap())
}

struct Guest {
    port: Arc<dyn MessagePort>,
}

impl Guest {
    fn post(&self, m: &[u8]) {
        assert!(m.len() <= 240);
        self.port.post_message(m).unwrap();
    }

    async fn expect(&self, message_type: u32) -> Vec<u8> {
        let m = tokio::time::timeout(
            Duration::from_secs(5),
            vmbus_channel::port::recv(&*self.port),
        )
        .await
        .expect("no answer from the server")
        .unwrap();
        let m = m.as_bytes().to_vec();
        assert_eq!(u32_at(&m, 0), message_type, "message {m:02x?}");
        m
    }
}

#[tokio::test]
async fn linux_style_guest_runs_the_whole_protocol_in_raw_bytes() {
    let mem = GuestMemory::new(512 * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    tokio::spawn(runner.run());
    let device = offer_device(&server, Upper).await.unwrap();
    tokio::spawn(device.run());
    let guest = Guest {
        port: server.guest_port().unwrap(),
    };

    // 1. Contact at 6.0 (Copper): version, target VP, target info (SINT 2, features in the
    //    upper half: confidential channels, which this host without private memory refuses),
    //    two monitor pages (none), client id.
    let mut body = 0x0006_0000u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&(2u64 | (0x10u64 << 32)).to_le_bytes());
    body.extend_from_slice(&[0; 16 + 16]);
    guest.post(&msg(14, &body));
    let r = guest.expect(15).await;
    assert_eq!(r.len(), 20, "6.0 answers with the feature word");
    assert_eq!(r[8], 1, "version accepted");
    assert_eq!(r[9], 0, "connection state: successful");
    assert_eq!(u32_at(&r, 12), 4, "message connection id");
    assert_eq!(
        u32_at(&r, 16) & 0x10,
        0,
        "no confidential channels without private memory"
    );

    // 2. Offers.
    guest.post(&msg(3, &[]));
    let offer = guest.expect(1).await;
    assert_eq!(offer.len(), 8 + 176 + 12);
    assert_eq!(Uuid::from_slice_le(&offer[8..24]).unwrap(), IFACE);
    let channel_id = u32_at(&offer, 8 + 176);
    let connection_id = u32_at(&offer, 8 + 184);
    guest.expect(4).await;

    // 3. A 200-page GPADL: both rings (100 pages each: control page + 99 data pages), sent
    //    as a header with 26 page numbers and bodies of 28.
    let first_pfn = 100u64;
    let pfns: Vec<u64> = (first_pfn..first_pfn + 200).collect();
    let (g2h, h2g) = pfns.split_at(100);
    PagedRingMem::new(mem.clone(), g2h)
        .unwrap()
        .initialize()
        .unwrap();
    PagedRingMem::new(mem.clone(), h2g)
        .unwrap()
        .initialize()
        .unwrap();
    let gpadl_id = 0x4242u32;
    let mut words = vec![u64::from(200 * PAGE_SIZE as u32)];
    words.extend_from_slice(&pfns);
    let mut header = channel_id.to_le_bytes().to_vec();
    header.extend_from_slice(&gpadl_id.to_le_bytes());
    header.extend_from_slice(&((words.len() * 8) as u16).to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes());
    for w in &words[..27] {
        header.extend_from_slice(&w.to_le_bytes());
    }
    guest.post(&msg(8, &header));
    let mut sent = 27;
    let mut number = 1u32;
    while sent < words.len() {
        let take = (words.len() - sent).min(28);
        let mut body = number.to_le_bytes().to_vec();
        body.extend_from_slice(&gpadl_id.to_le_bytes());
        for w in &words[sent..sent + take] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        guest.post(&msg(9, &body));
        sent += take;
        number += 1;
    }
    assert_eq!(number, 8, "one header and seven bodies");
    let created = guest.expect(10).await;
    assert_eq!(
        (
            u32_at(&created, 8),
            u32_at(&created, 12),
            u32_at(&created, 16)
        ),
        (channel_id, gpadl_id, 0)
    );

    // 4. Open with the host-to-guest ring 100 pages in, interrupts on VP 1.
    let event = Event::new();
    guest
        .port
        .set_event_handler(channel_id, Some(Interrupt::from_event(event.clone())));
    let mut open = channel_id.to_le_bytes().to_vec();
    open.extend_from_slice(&0x77u32.to_le_bytes()); // open id
    open.extend_from_slice(&gpadl_id.to_le_bytes());
    open.extend_from_slice(&1u32.to_le_bytes()); // target VP
    open.extend_from_slice(&100u32.to_le_bytes()); // downstream ring offset
    open.extend_from_slice(&[0; 120]);
    guest.post(&msg(5, &open));
    let result = guest.expect(6).await;
    assert_eq!(
        (u32_at(&result, 8), u32_at(&result, 12), u32_at(&result, 16)),
        (channel_id, 0x77, 0)
    );

    // 5. Packets both ways over the rings.
    let gpadl = Gpadl::new(
        &build_request(
            GpadlId(gpadl_id),
            [(0, 200 * PAGE_SIZE as u32, pfns.as_slice())],
        ),
        &mem,
    )
    .unwrap();
    let port = guest.port.clone();
    let mut ring = RingChannel::new(
        Side::Guest,
        &mem,
        &gpadl,
        100,
        Interrupt::from_fn(move || port.signal_event(connection_id)),
        event,
    )
    .unwrap();
    for (i, word) in ["hello", "raw", "bytes"].iter().enumerate() {
        let tid = 10 + i as u64;
        ring.send(&OutgoingPacket::in_band(tid, true, &[word.as_bytes()]))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ring.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.packet_type, PacketType::COMPLETION);
        assert_eq!(reply.transaction_id, tid);
        assert!(reply.data().starts_with(word.to_uppercase().as_bytes()));
    }

    // 6. Modify the target VP.
    let mut modify = channel_id.to_le_bytes().to_vec();
    modify.extend_from_slice(&3u32.to_le_bytes());
    guest.post(&msg(22, &modify));
    let response = guest.expect(24).await;
    assert_eq!(
        (u32_at(&response, 8), u32_at(&response, 12)),
        (channel_id, 0)
    );

    // 7. Close (no answer), 8. tear the GPADL down.
    guest.post(&msg(7, &channel_id.to_le_bytes()));
    let mut teardown = channel_id.to_le_bytes().to_vec();
    teardown.extend_from_slice(&gpadl_id.to_le_bytes());
    guest.post(&msg(11, &teardown));
    let torndown = guest.expect(12).await;
    assert_eq!(u32_at(&torndown, 8), gpadl_id);

    // 9. Unload.
    guest.post(&msg(16, &[]));
    guest.expect(17).await;
    assert!(matches!(
        server.control_state().connection(),
        vmbus_channel::server::channels::Connection::Disconnected
    ));
    // The offer stays for the next guest.
    assert_eq!(server.control_state().channel_count(), 1);
}

#[tokio::test]
async fn unload_in_the_middle_of_an_open_closes_everything_first() {
    let mem = GuestMemory::new(64 * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    tokio::spawn(runner.run());
    let device = offer_device(&server, Upper).await.unwrap();
    tokio::spawn(device.run());
    let guest = Guest {
        port: server.guest_port().unwrap(),
    };
    let mut body = 0x0005_0003u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 28]);
    guest.post(&msg(14, &body));
    let r = guest.expect(15).await;
    assert_eq!(r.len(), 16, "5.3 answers without a feature word");
    guest.post(&msg(3, &[]));
    let channel_id = u32_at(&guest.expect(1).await, 8 + 176);
    guest.expect(4).await;
    let pfns: Vec<u64> = (8..12).collect();
    PagedRingMem::new(mem.clone(), &pfns[..2])
        .unwrap()
        .initialize()
        .unwrap();
    PagedRingMem::new(mem.clone(), &pfns[2..])
        .unwrap()
        .initialize()
        .unwrap();
    let mut header = channel_id.to_le_bytes().to_vec();
    header.extend_from_slice(&5u32.to_le_bytes());
    header.extend_from_slice(&40u16.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&(4 * PAGE_SIZE as u64).to_le_bytes());
    for p in &pfns {
        header.extend_from_slice(&p.to_le_bytes());
    }
    guest.post(&msg(8, &header));
    guest.expect(10).await;
    let mut open = channel_id.to_le_bytes().to_vec();
    open.extend_from_slice(&1u32.to_le_bytes());
    open.extend_from_slice(&5u32.to_le_bytes());
    open.extend_from_slice(&0u32.to_le_bytes());
    open.extend_from_slice(&2u32.to_le_bytes());
    open.extend_from_slice(&[0; 120]);
    // Open and unload back to back: the server may get the unload before the device has
    // answered the open. Either way the channel is closed and the GPADL released before
    // UNLOAD_COMPLETE, and no OPEN_RESULT follows it.
    guest.post(&msg(5, &open));
    guest.post(&msg(16, &[]));
    loop {
        let m = tokio::time::timeout(
            Duration::from_secs(5),
            vmbus_channel::port::recv(&*guest.port),
        )
        .await
        .unwrap()
        .unwrap();
        match u32_at(m.as_bytes(), 0) {
            6 => continue,
            17 => break,
            other => panic!("unexpected message type {other}"),
        }
    }
    let state = server.control_state();
    assert_eq!(state.gpadl_count(), 0);
    assert!(
        state
            .channels()
            .all(|(_, _, s)| *s == vmbus_channel::server::channels::ChannelState::Closed)
    );
    // A new guest can connect and open again.
    let client = vmbus_channel::client::VmbusClient::connect(
        &server,
        mem,
        None,
        16..64,
        vmbus_channel::protocol::FeatureFlags::all(),
    )
    .await
    .unwrap();
    let offer = client.find_offer(IFACE).unwrap();
    let mut ch = client.open(&offer, 1).await.unwrap();
    assert!(
        ch.request(b"again")
            .await
            .unwrap()
            .data()
            .starts_with(b"AGAIN")
    );
}
