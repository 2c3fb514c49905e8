//! One TDISP command round trip over a real VMBus channel (guest client -> transport worker ->
//! ring -> host VMBus device -> state machine -> ring -> guest), beside a bare ring round trip
//! of the same sizes on the same bus in the same run (an echo device answering a packet as
//! large as the framed command with a payload as large as the framed response). Goal: the
//! TDISP round trip costs at most twice the bare one. Also whole guest flows per second
//! (negotiate, lock, report, verify, start, unbind), each through the full host stack.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "a failed round trip fails the bench")]

use async_trait::async_trait;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use std::time::Duration;
use tdisp_guest::BindingPolicy;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::accept_device;
use tdisp_guest::vmbus::TDISP_RING_PAGES;
use tdisp_guest::vmbus::VmbusTransport;
use tdisp_guest::vmbus::open_tdisp_client;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::vmbus::TdispVmbusDevice;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::frame;
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
use vmbus_channel::server::VmbusServer;

const ECHO_ID: Uuid = Uuid::from_u128(0xbe_0c40);
/// Framed negotiate response: 8-byte frame header + 12-byte `GuestToHostResponse`.
const RESPONSE_LEN: usize = 20;

/// Answers every packet with `RESPONSE_LEN` bytes.
struct Echo;

#[async_trait]
impl SimpleVmbusDevice for Echo {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: "echo".into(),
            interface_id: ECHO_ID,
            instance_id: ECHO_ID,
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let mut reply = vec![0; RESPONSE_LEN];
        reply[0] = packet.data().first().copied().unwrap_or_default();
        Ok(Some(reply))
    }
}

struct Bus {
    runtime: tokio::runtime::Runtime,
    server: VmbusServer,
    guest: VmbusClient,
}

impl Bus {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let memory = GuestMemory::new(2048 * PAGE_SIZE).unwrap();
        let (server, server_runner) = VmbusServer::new(memory.clone(), None);
        runtime.spawn(server_runner.run());
        let guest = runtime
            .block_on(VmbusClient::connect(
                &server,
                memory,
                None,
                8..2048,
                FeatureFlags::all(),
            ))
            .unwrap();
        Self {
            runtime,
            server,
            guest,
        }
    }

    fn run<D: SimpleVmbusDevice>(&self, device: D) {
        let runner = self
            .runtime
            .block_on(offer_device(&self.server, device))
            .unwrap();
        self.runtime.spawn(async move {
            runner.run().await;
        });
    }

    fn tdisp(&self, device_id: u64) -> (TdispGuestClient<VmbusTransport>, Vec<u8>) {
        let assignment = EmulatedAssignment::single(
            u32::try_from(device_id).unwrap() * 0x100,
            0x0100 + u16::try_from(device_id).unwrap(),
            device_id,
        )
        .unwrap();
        self.run(TdispVmbusDevice::new(
            device_id,
            Box::new(assignment.machine(MachineConfig::new(device_id))),
        ));
        let offer = tdisp_offers(&self.guest)
            .into_iter()
            .find(|o| o.device_id == device_id)
            .unwrap();
        let (client, worker) = self
            .runtime
            .block_on(open_tdisp_client(
                &self.guest,
                &offer,
                Duration::from_secs(10),
            ))
            .unwrap();
        self.runtime.spawn(worker.run());
        (client, assignment.root_der().to_vec())
    }

    fn echo(&self) -> ClientChannel {
        self.run(Echo);
        let offer = self.guest.find_offer(ECHO_ID).unwrap();
        self.runtime
            .block_on(self.guest.open(&offer, TDISP_RING_PAGES))
            .unwrap()
    }
}

fn round_trips(c: &mut Criterion) {
    let bus = Bus::new();
    let (mut tdisp, _root) = bus.tdisp(1);
    tdisp
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    let mut echo = bus.echo();
    let command = frame(
        &CommandPacket {
            device_id: 1,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        }
        .encode(),
    )
    .unwrap();

    let mut group = c.benchmark_group("vmbus_round_trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tdisp_negotiate_over_vmbus", |b| {
        b.iter(|| {
            let info = tdisp
                .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
                .unwrap();
            assert_eq!(info.tdisp_device_id, 1);
        });
    });
    group.bench_function("bare_ring_same_sizes", |b| {
        b.iter(|| {
            let reply = bus.runtime.block_on(echo.request(&command)).unwrap();
            assert_eq!(reply.data()[0], command[0]);
            assert!(reply.data().len() >= RESPONSE_LEN);
        });
    });
    group.finish();
    assert_eq!(tdisp.faults(), 0);
    assert_eq!(tdisp.state(), TdispTdiState::Unlocked);
}

fn whole_flows(c: &mut Criterion) {
    let bus = Bus::new();
    let (mut tdisp, root) = bus.tdisp(2);
    let policy = InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(vec![root]),
        ..Default::default()
    };
    let mut group = c.benchmark_group("vmbus_flow");
    group.throughput(Throughput::Elements(1));
    group.bench_function("accept_then_unbind", |b| {
        b.iter(|| {
            let accepted =
                accept_device(&mut tdisp, TdispGuestProtocolType::AmdSevTioV1, &policy).unwrap();
            assert!(!accepted.report.mmio_ranges.is_empty());
            tdisp
                .request_unbind(TdispGuestUnbindReason::Graceful)
                .unwrap();
        });
    });
    group.finish();
    assert_eq!(tdisp.faults(), 0);
}

criterion_group!(benches, round_trips, whole_flows);
criterion_main!(benches);
