//! Subchannels: a device asks for N; the guest sees them offered with their indexes after
//! the primary, and opens, closes and retargets each on its own.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

use async_trait::async_trait;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::device::offer_subchannels;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::server::VmbusServer;

const IFACE: Uuid = Uuid::from_u128(0x5ab0);

/// Answers with its subchannel index and the VP it interrupts.
struct Queue(u16);

#[async_trait]
impl SimpleVmbusDevice for Queue {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "queue".into(),
            interface_id: IFACE,
            instance_id: Uuid::from_u128(3),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        ctx: &DeviceContext<'_>,
        _packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let mut reply = self.0.to_le_bytes().to_vec();
        reply.extend_from_slice(&ctx.target_vp.to_le_bytes());
        Ok(Some(reply))
    }
}

fn answer(reply: &IncomingPacket) -> (u16, u32) {
    let d = reply.data();
    (
        u16::from_le_bytes(d[..2].try_into().unwrap()),
        u32::from_le_bytes(d[2..6].try_into().unwrap()),
    )
}

#[tokio::test]
async fn subchannels_open_close_and_retarget_independently() {
    let mem = GuestMemory::new(256 * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    tokio::spawn(runner.run());
    tokio::spawn(offer_device(&server, Queue(0)).await.unwrap().run());
    for sub in offer_subchannels(&server, 3, Queue).await.unwrap() {
        tokio::spawn(sub.run());
    }
    let client = VmbusClient::connect(&server, mem, None, 16..256, FeatureFlags::all())
        .await
        .unwrap();
    let primary = client.find_offer(IFACE).unwrap();
    let subs = client.subchannel_offers(&primary);
    assert_eq!(
        subs.iter()
            .map(|o| o.key.subchannel_index)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(subs.iter().all(|o| o.channel_id != primary.channel_id));

    let mut main = client.open(&primary, 1).await.unwrap();
    let mut open = Vec::new();
    for sub in &subs {
        let vp = u32::from(sub.key.subchannel_index) * 2;
        open.push(client.open_on_vp(sub, 1, vp).await.unwrap());
    }
    assert_eq!(answer(&main.request(b"p").await.unwrap()), (0, 0));
    for (i, ch) in open.iter_mut().enumerate() {
        let index = i as u16 + 1;
        assert_eq!(
            answer(&ch.request(b"s").await.unwrap()),
            (index, u32::from(index) * 2)
        );
    }
    // Close subchannel 2: the others keep working; it opens again.
    let two = open.remove(1);
    two.close().await.unwrap();
    assert_eq!(answer(&open[1].request(b"s").await.unwrap()).0, 3);
    assert_eq!(answer(&main.request(b"p").await.unwrap()).0, 0);
    let mut two = client.open_on_vp(&subs[1], 1, 9).await.unwrap();
    assert_eq!(answer(&two.request(b"s").await.unwrap()), (2, 9));
    // Retarget subchannel 3 alone.
    assert_eq!(open[1].modify_target_vp(5).await.unwrap(), 0);
    assert_eq!(answer(&open[1].request(b"s").await.unwrap()), (3, 5));
    assert_eq!(answer(&open[0].request(b"s").await.unwrap()), (1, 2));
}
