//! An in-process VMBus with TDISP devices on it, for the VMBus tests: a tokio runtime runs the
//! server, every device runner and every transport worker; the test thread is the guest's
//! blocking caller.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test setup: a failure should fail the test loudly"
)]

use std::time::Duration;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::vmbus::VmbusTransport;
use tdisp_guest::vmbus::open_tdisp_client;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::vmbus::SharedGuestDevice;
use tdisp_host::vmbus::TdispVmbusDevice;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::server::VmbusServer;

/// Generous: an honest in-process host answers in microseconds; only a broken one waits this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Pages of guest memory, enough for the rings of a few dozen channels.
const MEMORY_PAGES: u64 = 2048;

/// One device on the bus, both sides.
pub struct Attached {
    /// The guest's client for the device.
    pub client: TdispGuestClient<VmbusTransport>,
    /// The host's state handler behind the channel.
    pub host: SharedGuestDevice,
    /// The emulated device behind the host.
    pub assignment: EmulatedAssignment,
}

/// The runtime, the server and one connected guest.
pub struct Bus {
    pub runtime: tokio::runtime::Runtime,
    pub server: VmbusServer,
    pub guest: VmbusClient,
}

impl Bus {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let memory = GuestMemory::new((MEMORY_PAGES as usize) * PAGE_SIZE).unwrap();
        let (server, server_runner) = VmbusServer::new(memory.clone(), None);
        runtime.spawn(server_runner.run());
        let guest = runtime
            .block_on(VmbusClient::connect(
                &server,
                memory,
                None,
                8..MEMORY_PAGES,
                FeatureFlags::all(),
            ))
            .unwrap();
        Self {
            runtime,
            server,
            guest,
        }
    }

    /// The requester id of device `device_id`'s function (distinct per device).
    pub fn requester_id(device_id: u64) -> u16 {
        0x0100 + u16::try_from(device_id).unwrap() * 8
    }

    /// Offers an emulated device under `device_id` and returns its host side.
    pub fn offer_emulated(&self, device_id: u64) -> (SharedGuestDevice, EmulatedAssignment) {
        let address = u32::try_from(device_id).unwrap() * 0x100;
        let assignment =
            EmulatedAssignment::single(address, Self::requester_id(device_id), device_id).unwrap();
        let device = TdispVmbusDevice::new(
            device_id,
            Box::new(assignment.machine(MachineConfig::new(device_id))),
        );
        let host = device.shared();
        self.offer(device);
        (host, assignment)
    }

    /// Offers any device and runs it.
    pub fn offer<D: SimpleVmbusDevice>(&self, device: D) {
        let runner = self
            .runtime
            .block_on(offer_device(&self.server, device))
            .unwrap();
        self.runtime.spawn(async move {
            runner.run().await;
        });
    }

    /// Opens the channel of device `device_id` and runs its worker.
    pub fn open(&self, device_id: u64) -> TdispGuestClient<VmbusTransport> {
        let offer = tdisp_offers(&self.guest)
            .into_iter()
            .find(|o| o.device_id == device_id)
            .expect("the host offers the device");
        let (client, worker) = self
            .runtime
            .block_on(open_tdisp_client(&self.guest, &offer, TIMEOUT))
            .unwrap();
        self.runtime.spawn(worker.run());
        client
    }

    /// Offers an emulated device and opens its channel.
    pub fn attach(&self, device_id: u64) -> Attached {
        let (host, assignment) = self.offer_emulated(device_id);
        Attached {
            client: self.open(device_id),
            host,
            assignment,
        }
    }
}
