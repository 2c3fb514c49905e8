//! A guest accepts an assigned device: negotiate -> lock -> report -> verify -> start.
//!
//! Every call travels as a real `tdisp.proto` command to the host stack of `tdisp_host` (dispatcher,
//! state machine, TSM, DOE mailbox, emulated DSM), and every reply is checked by the client
//! before the guest believes it.

#![forbid(unsafe_code)]

use tdisp_guest::BindingPolicy;
use tdisp_guest::GuestTransport;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_guest::accept_device;
use tdisp_host::HostDispatcher;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispTdiState;

/// The guest's transport: here a direct call into the host dispatcher.
struct Direct(HostDispatcher);

impl GuestTransport for Direct {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.handle(command))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device_id = 1;
    let assignment = EmulatedAssignment::single(0x0100, 0x0100, device_id)?;
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(
        device_id,
        Box::new(assignment.machine(MachineConfig::new(device_id))),
    );

    let mut client = TdispGuestClient::new(Direct(dispatcher), device_id);
    // The guest trusts the device vendor's root (here the emulation's, handed over in-process;
    // a real guest has it from its own configuration, never from the host).
    let policy = InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(vec![assignment.root_der().to_vec()]),
        ..Default::default()
    };
    let accepted = accept_device(&mut client, TdispGuestProtocolType::AmdSevTioV1, &policy)?;
    assert_eq!(client.state(), TdispTdiState::Run);
    if let Some(binding) = &accepted.binding {
        println!(
            "report bound by the device to SPDM session {:#010x} (interface {:#x})",
            binding.session_id,
            binding.interface.function_id.into_bits()
        );
    }
    for range in &accepted.report.mmio_ranges {
        println!(
            "  BAR {} at {:#x}, {} pages, attributes {:#06x}",
            range.range_id,
            range.first_page,
            range.number_of_pages,
            range.attributes.into_bits()
        );
    }
    println!(
        "device {} running after verifying a {}-byte interface report",
        accepted.info.tdisp_device_id,
        accepted.report_bytes.len()
    );
    Ok(())
}
