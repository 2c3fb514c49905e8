//! Puts a small device on the in-process VMBus and talks to it from the guest side: the
//! device is offered, the guest finds the offer, opens the channel (rings in a GPADL in guest
//! memory), sends requests, reads the completions and closes the channel.
//!
//! Runs on `futures`' `block_on`; no particular async runtime is needed.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "example: a failure should abort loudly")]

use async_trait::async_trait;
use futures::executor::block_on;
use futures::future::join;
use futures::future::select;
use std::pin::pin;
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
use vmbus_channel::server::VmbusServer;

const UPPERCASE_ID: Uuid = Uuid::from_u128(0x5550_7065_7243_6173_6544_6576_6963_6501);

/// Answers each request with its bytes in upper case, prefixed by their length.
struct Uppercase;

#[async_trait]
impl SimpleVmbusDevice for Uppercase {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "uppercase".into(),
            interface_id: UPPERCASE_ID,
            instance_id: Uuid::from_u128(1),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        // Requests are a length byte then the text; the payload carries up to 7 padding bytes.
        let (&len, rest) = packet
            .data()
            .split_first()
            .ok_or_else(|| DeviceError::Device("empty request".into()))?;
        let text = rest
            .get(..usize::from(len))
            .ok_or_else(|| DeviceError::Device("bad length".into()))?;
        let mut reply = vec![len];
        reply.extend(text.iter().map(u8::to_ascii_uppercase));
        Ok(Some(reply))
    }
}

fn main() {
    let memory = GuestMemory::new(256 * PAGE_SIZE).unwrap();
    let (server, server_runner) = VmbusServer::new(memory.clone(), None);

    block_on(async {
        // Host side: offer the device; its runner and the server's runner serve requests.
        let device = offer_device(&server, Uppercase).await.unwrap();
        let host = join(server_runner.run(), device.run());

        // Guest side: find the offer, open it, exchange packets, close.
        let guest = async {
            let client = VmbusClient::connect(&server, memory, None, 16..256, FeatureFlags::all())
                .await
                .unwrap();
            let offer = client.find_offer(UPPERCASE_ID).unwrap();
            println!("offer: channel {} {}", offer.channel_id, offer.key);
            let mut channel = client.open(&offer, 4).await.unwrap();
            for word in ["hello", "vmbus", "ring buffers"] {
                let mut request = vec![word.len() as u8];
                request.extend_from_slice(word.as_bytes());
                let reply = channel.request(&request).await.unwrap();
                let len = usize::from(reply.data()[0]);
                let text = std::str::from_utf8(&reply.data()[1..=len]).unwrap();
                println!("{word} -> {text}");
                assert_eq!(text, word.to_uppercase());
            }
            channel.close().await.unwrap();
        };
        // The guest finishes; the host futures run until then.
        select(pin!(guest), pin!(host)).await;
    });
    println!("ok");
}
