//! Step 2: device attestation over VMBus.
//!
//! The host side is what a VMM runs: a VMBus server, and per assigned virtual function an
//! emulated TDISP device (DSM) behind a TSM and its DOE mailbox, a host state machine, and the
//! TDISP VMBus device that offers one channel per device. The guest side is what a guest
//! kernel's driver does: connect to the bus, find the TDISP offers, open each channel, and run
//! the lock -> report -> verify -> start flow with a policy built from the BARs it was given.

use super::Platform;
use anyhow::Context;
use anyhow::bail;
use sha2::Digest as _;
use sha2::Sha384;
use std::time::Duration;
use tdisp_guest::AssignedBar;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::accept_device;
use tdisp_guest::vmbus::VmbusTransport;
use tdisp_guest::vmbus::VmbusTransportWorker;
use tdisp_guest::vmbus::open_tdisp_client;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::vmbus::SharedGuestDevice;
use tdisp_host::vmbus::TdispVmbusDevice;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispTdiState;
use tdisp_proto::pcie::LockInterfaceFlags;
use tokio::task::JoinHandle;
use vmbus_channel::client::ClientChannel;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::DeviceRunner;
use vmbus_channel::device::offer_device;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::server::VmbusServer;

/// Guest memory pages for the bus (rings of a few dozen channels).
const MEMORY_PAGES: u64 = 1024;
/// An honest in-process host answers in microseconds; only a broken one waits this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One assigned device, both sides.
struct Device {
    id: u64,
    requester_id: u16,
    assignment: EmulatedAssignment,
    host: SharedGuestDevice,
    runner: JoinHandle<DeviceRunner<TdispVmbusDevice>>,
    stop: vmbus_channel::device::DeviceStop,
    client: Option<TdispGuestClient<VmbusTransport>>,
    worker: Option<JoinHandle<Option<ClientChannel>>>,
}

/// The running bus: host and guest halves.
pub(crate) struct Attested {
    runtime: tokio::runtime::Runtime,
    /// Held for the bus's lifetime: dropping the server handle ends the bus.
    _server: VmbusServer,
    guest: VmbusClient,
    devices: Vec<Device>,
    /// SHA-384 of the first device's verified interface report, as received.
    pub(crate) report_digest: [u8; 48],
}

fn protocol(platform: Platform) -> TdispGuestProtocolType {
    match platform {
        Platform::Tdx => TdispGuestProtocolType::IntelTdxConnectV1,
        Platform::Snp | Platform::Native => TdispGuestProtocolType::AmdSevTioV1,
    }
}

fn requester_id(device_id: u64) -> anyhow::Result<u16> {
    let n = u16::try_from(device_id).context("too many devices")?;
    n.checked_mul(8)
        .and_then(|n| n.checked_add(0x0100))
        .context("too many devices")
}

/// What the guest knows of a function it was given: its BARs and the lock it expects.
fn policy(assignment: &EmulatedAssignment, requester_id: u16) -> anyhow::Result<InterfacePolicy> {
    let dsm = assignment
        .dsm()
        .lock()
        .map_err(|_| anyhow::anyhow!("the emulated device's lock is poisoned"))?;
    let function = dsm
        .config()
        .function(requester_id)
        .context("the assigned function is missing")?;
    Ok(InterfacePolicy {
        assigned_bars: Some(
            function
                .bars
                .iter()
                .map(|b| AssignedBar {
                    index: b.index.into(),
                    address: b.address,
                    size: b.size,
                    non_tee_expected: b.non_tee,
                })
                .collect(),
        ),
        lock_flags: Some(LockInterfaceFlags::new().with_lock_msix(true)),
        expected_device_specific_info: Some(function.device_specific_info.clone()),
        // The guest trusts the device vendor's root, never the host: here the emulated
        // device's freshly made root stands in for it.
        binding: tdisp_guest::BindingPolicy::require(vec![assignment.root_der().to_vec()]),
        ..Default::default()
    })
}

/// Brings up the bus, offers `count` devices and accepts each one from the guest.
pub(crate) fn attest(platform: Platform, count: usize) -> anyhow::Result<(Attested, String)> {
    if count == 0 {
        bail!("--devices must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let memory = GuestMemory::new(usize::try_from(MEMORY_PAGES)? * PAGE_SIZE)
        .context("allocating guest memory")?;
    let (server, server_runner) = VmbusServer::new(memory.clone(), None);
    runtime.spawn(server_runner.run());

    let mut devices = Vec::new();
    for n in 1..=count {
        let id = u64::try_from(n)?;
        let requester_id = requester_id(id)?;
        let address = u32::try_from(id)? * 0x100;
        let assignment = EmulatedAssignment::single(address, requester_id, id)
            .with_context(|| format!("assigning emulated device {id}"))?;
        let device =
            TdispVmbusDevice::new(id, Box::new(assignment.machine(MachineConfig::new(id))));
        let host = device.shared();
        let runner = runtime
            .block_on(offer_device(&server, device))
            .with_context(|| format!("offering the TDISP channel of device {id}"))?;
        let stop = runner.stop_handle();
        devices.push(Device {
            id,
            requester_id,
            assignment,
            host,
            runner: runtime.spawn(runner.run()),
            stop,
            client: None,
            worker: None,
        });
    }

    let guest = runtime
        .block_on(VmbusClient::connect(
            &server,
            memory,
            None,
            8..MEMORY_PAGES,
            FeatureFlags::all(),
        ))
        .context("guest: connecting to the VMBus server")?;
    let offers = tdisp_offers(&guest);
    let mut report_digest = None;
    let mut session_th1 = None;
    let mut ranges = 0;
    for device in &mut devices {
        let offer = offers
            .iter()
            .find(|o| o.device_id == device.id)
            .with_context(|| format!("guest: no TDISP offer for device {}", device.id))?;
        let (mut client, worker) = runtime
            .block_on(open_tdisp_client(&guest, offer, COMMAND_TIMEOUT))
            .with_context(|| format!("guest: opening the channel of device {}", device.id))?;
        device.worker = Some(runtime.spawn(worker_run(worker)));
        let policy = policy(&device.assignment, device.requester_id)?;
        let accepted = accept_device(&mut client, protocol(platform), &policy)
            .with_context(|| format!("guest: accepting device {}", device.id))?;
        let host_state = device
            .host
            .lock()
            .map_err(|_| anyhow::anyhow!("host device lock poisoned"))?
            .tdi_state();
        if (client.state(), host_state) != (TdispTdiState::Run, TdispTdiState::Run) {
            bail!(
                "device {}: guest sees {:?}, host has {host_state:?}",
                device.id,
                client.state()
            );
        }
        let secure = device
            .assignment
            .tsm()
            .lock()
            .map_err(|_| anyhow::anyhow!("TSM lock poisoned"))?
            .is_channel_secure(device.assignment.address());
        if secure != Some(true) {
            bail!(
                "device {}: TDISP did not travel in an SPDM session",
                device.id
            );
        }
        let Some(binding) = accepted.binding.as_ref() else {
            bail!(
                "device {}: the report was accepted without its session binding",
                device.id
            );
        };
        session_th1.get_or_insert(binding.session_th1);
        ranges += accepted.report.mmio_ranges.len();
        report_digest.get_or_insert_with(|| Sha384::digest(&accepted.report_bytes).into());
        device.client = Some(client);
    }
    let report_digest = report_digest.context("no device was accepted")?;
    let session_th1 = session_th1.context("no device was accepted")?;
    let detail = format!(
        "{count} device(s) in RUN over VMBus (TSM -> SPDM 1.2 session -> DOE registers -> DSM), {ranges} MMIO ranges verified; report sha384 {} bound by device-signed measurements over the guest's nonce to session TH1 {}",
        &hex::encode(report_digest)[..16],
        &hex::encode(session_th1)[..16]
    );
    Ok((
        Attested {
            runtime,
            _server: server,
            guest,
            devices,
            report_digest,
        },
        detail,
    ))
}

async fn worker_run(worker: VmbusTransportWorker) -> Option<ClientChannel> {
    worker.run().await
}

impl Attested {
    /// Unbinds every device, closes its channel, rescinds its offer and unloads the guest.
    pub(crate) fn tear_down(mut self) -> anyhow::Result<String> {
        let mut rescinded = 0;
        for device in &mut self.devices {
            let mut client = device.client.take().context("device was never accepted")?;
            client
                .request_unbind(TdispGuestUnbindReason::Graceful)
                .with_context(|| format!("guest: unbinding device {}", device.id))?;
            let host_state = device
                .host
                .lock()
                .map_err(|_| anyhow::anyhow!("host device lock poisoned"))?
                .tdi_state();
            if host_state != TdispTdiState::Unlocked {
                bail!(
                    "device {}: host still {host_state:?} after unbind",
                    device.id
                );
            }
            // Dropping the client ends its transport; the worker hands the channel back.
            drop(client);
            let worker = device.worker.take().context("no transport worker")?;
            let channel = self
                .runtime
                .block_on(worker)
                .context("transport worker panicked")?
                .context("the channel failed before it could be closed")?;
            self.runtime
                .block_on(channel.close())
                .with_context(|| format!("guest: closing the channel of device {}", device.id))?;
        }
        for device in self.devices {
            self.runtime.block_on(device.stop.stop());
            let runner = self
                .runtime
                .block_on(device.runner)
                .context("device runner panicked")?;
            self.runtime.block_on(runner.revoke());
            rescinded += 1;
        }
        self.runtime
            .block_on(self.guest.unload())
            .context("guest: unloading VMBus")?;
        Ok(format!(
            "unbound, closed and rescinded {rescinded} device(s); VMBus unloaded"
        ))
    }
}
