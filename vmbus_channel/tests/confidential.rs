//! Confidential channels, with and without the feature flag and the offer flags: the ring
//! and the device's external memory come from the right memory, and the offer bits the
//! guest sees are OpenVMM's and Linux's (ring 0x2, external memory 0x4).

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
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::server::VmbusServer;

const PAGES: usize = 128;
const IFACE: Uuid = Uuid::from_u128(0xc0f1);
const RING_MARK: &[u8] = b"RING-MARK-1234";

/// Reads 8 bytes of external memory at the GPA in the request and reports which memory
/// the open request chose.
struct Reader {
    allow_external: bool,
}

#[async_trait]
impl SimpleVmbusDevice for Reader {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "reader".into(),
            interface_id: IFACE,
            instance_id: Uuid::from_u128(1),
            allow_confidential_external_memory: self.allow_external,
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let gpa = u64::from_le_bytes(packet.data()[..8].try_into().unwrap());
        let mut value = [0; 8];
        ctx.memory
            .read_at(gpa, &mut value)
            .map_err(|e| DeviceError::Device(e.to_string()))?;
        let mut reply = value.to_vec();
        reply.push(u8::from(ctx.open_request.use_confidential_ring));
        reply.push(u8::from(ctx.open_request.use_confidential_external_memory));
        Ok(Some(reply))
    }
}

struct Outcome {
    offer_bits: u16,
    external: [u8; 8],
    device_ring_private: bool,
    device_external_private: bool,
    ring_in_private: bool,
    ring_in_shared: bool,
}

async fn run_case(private: bool, client_feature: bool, allow_external: bool) -> Outcome {
    let shared_mem = GuestMemory::new(PAGES * PAGE_SIZE).unwrap();
    let private_mem = GuestMemory::new(PAGES * PAGE_SIZE).unwrap();
    let host_private = private.then(|| private_mem.clone());
    let (server, runner) = VmbusServer::new(shared_mem.clone(), host_private.clone());
    tokio::spawn(runner.run());
    let device = offer_device(&server, Reader { allow_external })
        .await
        .unwrap();
    tokio::spawn(device.run());
    let features = if client_feature {
        FeatureFlags::all()
    } else {
        FeatureFlags::all().with_confidential_channels(false)
    };
    let client = VmbusClient::connect(
        &server,
        shared_mem.clone(),
        host_private,
        16..PAGES as u64,
        features,
    )
    .await
    .unwrap();
    let offer = client.find_offer(IFACE).unwrap();
    let mut ch = client.open(&offer, 1).await.unwrap();
    // The same guest physical page holds different bytes in the two memories.
    let page = client.alloc_pages(1).unwrap();
    let gpa = page * PAGE_SIZE as u64;
    shared_mem.write_at(gpa, b"SHARED!!").unwrap();
    private_mem.write_at(gpa, b"PRIVATE!").unwrap();
    let mut request = gpa.to_le_bytes().to_vec();
    request.extend_from_slice(RING_MARK);
    let reply = ch.request(&request).await.unwrap();
    let data = reply.data();
    let find = |mem: &GuestMemory| {
        let mut all = vec![0; PAGES * PAGE_SIZE];
        mem.read_at(0, &mut all).unwrap();
        all.windows(RING_MARK.len()).any(|w| w == RING_MARK)
    };
    Outcome {
        offer_bits: offer.flags.into_bits() & 0x6,
        external: data[..8].try_into().unwrap(),
        device_ring_private: data[8] == 1,
        device_external_private: data[9] == 1,
        ring_in_private: find(&private_mem),
        ring_in_shared: find(&shared_mem),
    }
}

#[tokio::test]
async fn feature_and_both_offer_flags_use_private_memory_for_everything() {
    let o = run_case(true, true, true).await;
    assert_eq!(o.offer_bits, 0x2 | 0x4);
    assert!(o.device_ring_private && o.device_external_private);
    assert!(o.ring_in_private && !o.ring_in_shared);
    assert_eq!(&o.external, b"PRIVATE!");
}

#[tokio::test]
async fn ring_flag_only_keeps_external_memory_shared() {
    let o = run_case(true, true, false).await;
    assert_eq!(o.offer_bits, 0x2);
    assert!(o.device_ring_private && !o.device_external_private);
    assert!(o.ring_in_private && !o.ring_in_shared);
    assert_eq!(&o.external, b"SHARED!!");
}

#[tokio::test]
async fn client_without_the_feature_sees_no_confidential_bits_and_uses_shared_memory() {
    let o = run_case(true, false, true).await;
    assert_eq!(o.offer_bits, 0);
    assert!(!o.device_ring_private && !o.device_external_private);
    assert!(o.ring_in_shared && !o.ring_in_private);
    assert_eq!(&o.external, b"SHARED!!");
}

#[tokio::test]
async fn host_without_private_memory_grants_no_confidential_channels() {
    let o = run_case(false, true, true).await;
    assert_eq!(o.offer_bits, 0);
    assert!(!o.device_ring_private && !o.device_external_private);
    assert!(o.ring_in_shared && !o.ring_in_private);
    assert_eq!(&o.external, b"SHARED!!");
}
