//! Setting up 256 channels on one server: offer 256 devices, connect a guest (version
//! negotiation and 256 offers), create each ring GPADL and open each channel, all through
//! control messages. Beside it, in the same run, the part any implementation must pay: the
//! same 256 ring pairs initialized in guest memory directly. Before the timed runs, the
//! resident-memory growth of one setup and the size of its saved state are printed.
//!
//! Run with `cargo bench -p vmbus_channel --bench server_setup -- --warm-up-time 1
//! --measurement-time 2`.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a failure aborts the run"
)]

use async_trait::async_trait;
use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use std::time::Duration;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::client::ClientChannel;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::PagedRingMem;
use vmbus_channel::server::VmbusServer;

const CHANNELS: u128 = 256;
/// Two rings of one control page and one data page per channel, plus headroom.
const PAGES: usize = 16 + 4 * CHANNELS as usize + 16;

struct Nop(u128);

#[async_trait]
impl SimpleVmbusDevice for Nop {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "nop".into(),
            interface_id: Uuid::from_u128(0xbe4c),
            instance_id: Uuid::from_u128(self.0),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        _packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        Ok(None)
    }
}

/// Everything a finished setup holds (dropped after the measurement).
struct Setup {
    server: VmbusServer,
    channels: Vec<ClientChannel>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn setup() -> Setup {
    let mem = GuestMemory::new(PAGES * PAGE_SIZE).unwrap();
    let (server, runner) = VmbusServer::new(mem.clone(), None);
    let mut tasks = vec![tokio::spawn(runner.run())];
    for i in 0..CHANNELS {
        let device = offer_device(&server, Nop(i)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            device.run().await;
        }));
    }
    let client = VmbusClient::connect(&server, mem, None, 16..PAGES as u64, FeatureFlags::all())
        .await
        .unwrap();
    let offers = client.offers();
    assert_eq!(offers.len(), CHANNELS as usize);
    let mut channels = Vec::with_capacity(offers.len());
    for offer in &offers {
        channels.push(client.open(offer, 1).await.unwrap());
    }
    Setup {
        server,
        channels,
        tasks,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The reference: the 256 ring pairs initialized directly, no protocol.
fn rings_only() -> usize {
    let mem = GuestMemory::new(PAGES * PAGE_SIZE).unwrap();
    let mut n = 0;
    for i in 0..CHANNELS as u64 {
        let first = 16 + 4 * i;
        for ring in [[first, first + 1], [first + 2, first + 3]] {
            PagedRingMem::new(mem.clone(), &ring)
                .unwrap()
                .initialize()
                .unwrap();
            n += 1;
        }
    }
    n
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // One setup's memory: resident growth (includes the 4 MiB of guest ring pages the
    // guest touches) and the saved control state.
    let before = rss_kib();
    let s = rt.block_on(setup());
    let after = rss_kib();
    let state = s.server.control_state();
    assert_eq!(state.channel_count(), CHANNELS as usize);
    assert_eq!(state.gpadl_count(), CHANNELS as usize);
    let saved = s.server.save().unwrap();
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "256 channels: resident memory +{} KiB (guest ring pages {} KiB of it), saved state {} bytes",
            a.saturating_sub(b),
            CHANNELS as usize * 4 * PAGE_SIZE / 1024,
            saved.len()
        );
    }
    drop(s);

    let mut group = c.benchmark_group("setup_256channels");
    group.sample_size(10);
    group.bench_function("offer_connect_gpadl_open", |b| {
        b.iter(|| {
            let s = rt.block_on(setup());
            assert_eq!(s.channels.len(), CHANNELS as usize);
            black_box(s)
        });
    });
    group.bench_function("reference_ring_init_only", |b| {
        b.iter(|| {
            let n = rings_only();
            assert_eq!(n, 2 * CHANNELS as usize);
            black_box(n)
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
