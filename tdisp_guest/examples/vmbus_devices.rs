//! Two assigned devices over VMBus: the host offers one TDISP channel per device on the
//! in-process VMBus server, the guest finds the offers, opens both channels and accepts both
//! devices (negotiate -> lock -> report -> verify -> start), then unbinds them.
//!
//! A tokio runtime drives the bus, the host devices and the guest's channel workers; the main
//! thread is the guest's blocking caller.

#![forbid(unsafe_code)]

use std::error::Error;
use std::time::Duration;
use tdisp_guest::BindingPolicy;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::accept_device;
use tdisp_guest::vmbus::open_tdisp_client;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::vmbus::offer_tdisp_devices;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::server::VmbusServer;

fn main() -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()?;

    // Host: two emulated devices, each behind its state machine, each on its own channel.
    let memory = GuestMemory::new(512 * PAGE_SIZE)?;
    let (server, server_runner) = VmbusServer::new(memory.clone(), None);
    runtime.spawn(server_runner.run());
    let assignments = [
        EmulatedAssignment::single(0x0100, 0x0101, 1)?,
        EmulatedAssignment::single(0x0200, 0x0201, 2)?,
    ];
    let devices = assignments.iter().zip(1u64..).map(|(assignment, id)| {
        let machine: Box<dyn tdisp_host::dispatch::GuestDevice> =
            Box::new(assignment.machine(MachineConfig::new(id)));
        (id, machine)
    });
    for runner in runtime.block_on(offer_tdisp_devices(&server, devices))? {
        runtime.spawn(async move {
            runner.run().await;
        });
    }

    // Guest: connect, find the TDISP offers, open each channel.
    let guest = runtime.block_on(VmbusClient::connect(
        &server,
        memory,
        None,
        8..512,
        FeatureFlags::all(),
    ))?;
    // The guest trusts both devices' vendor roots (here handed over in-process).
    let policy = InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(
            assignments.iter().map(|a| a.root_der().to_vec()).collect(),
        ),
        ..Default::default()
    };
    for offer in tdisp_offers(&guest) {
        let (mut client, worker) =
            runtime.block_on(open_tdisp_client(&guest, &offer, Duration::from_secs(5)))?;
        runtime.spawn(worker.run());
        let accepted = accept_device(&mut client, TdispGuestProtocolType::AmdSevTioV1, &policy)?;
        println!(
            "device {}: {:?}, {} MMIO ranges verified",
            offer.device_id,
            client.state(),
            accepted.report.mmio_ranges.len()
        );
        client.request_unbind(TdispGuestUnbindReason::Graceful)?;
        println!("device {}: unbound, {:?}", offer.device_id, client.state());
    }
    Ok(())
}
