//! A guest's whole TDISP cycle against an emulated device, as the host sees it: command packets
//! go into the dispatcher, the state machine drives the TSM, the TSM talks DOE to the emulated
//! DSM. Then the host moves a BAR of the running device, which the specification punishes by
//! moving the TDI to ERROR, and the guest recovers by unbinding.
//!
//! Run with `cargo run -p tdisp_host --example host_cycle`.

#![forbid(unsafe_code)]

use std::error::Error;
use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::dsm::ConfigChange;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::tsm::Tsm;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::state_seen_by_guest;

const DEVICE: u64 = 1;
const REQUESTER_ID: u16 = 0x0101;

fn main() -> Result<(), Box<dyn Error>> {
    let tsm = Arc::new(Mutex::new(Tsm::new()));
    let lock = LockInterfaceParams {
        flags: LockInterfaceFlags::new()
            .with_no_fw_update(true)
            .with_lock_msix(true),
        mmio_reporting_offset: 0,
        ..Default::default()
    };
    let assignment = EmulatedAssignment::new(
        tsm,
        0x0100,
        DsmConfig::single_function(REQUESTER_ID),
        DEVICE,
        lock,
    )?;
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(
        DEVICE,
        Box::new(assignment.machine(MachineConfig::new(DEVICE))),
    );

    let mut call = |command| -> Result<ResponsePacket, Box<dyn Error>> {
        let packet = CommandPacket {
            device_id: DEVICE,
            command,
        };
        let mut reply = ResponsePacket::decode(&dispatcher.handle(&packet.encode()))?;
        reply.check_answers(&packet.command)?;
        // The schema has no Error state: the host sends it as UNINITIALIZED ("indeterminate"),
        // which a guest that has negotiated reads back as Error.
        let negotiated = !matches!(packet.command, GuestCommand::NegotiateProtocol(_));
        reply.state_before = state_seen_by_guest(reply.state_before, negotiated);
        reply.state_after = state_seen_by_guest(reply.state_after, negotiated);
        println!(
            "{:<40} {:?} -> {:?}: {}",
            format!("{command:?}"),
            reply.state_before,
            reply.state_after,
            match &reply.result {
                Ok(GuestReply::GetAttestationReport { report: r, .. }) =>
                    format!("report of {} bytes", r.len()),
                Ok(_) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            }
        );
        Ok(reply)
    };

    let negotiated = call(GuestCommand::NegotiateProtocol(
        TdispGuestProtocolType::AmdSevTioV1,
    ))?;
    assert!(
        matches!(negotiated.result, Ok(GuestReply::NegotiateProtocol(info))
        if info.guest_protocol_type == TdispGuestProtocolType::AmdSevTioV1)
    );
    call(GuestCommand::LockDeviceResources)?.result?;
    let report = call(GuestCommand::GetAttestationReport(
        TdispReportType::InterfaceReport,
    ))?;
    let Ok(GuestReply::GetAttestationReport { report, .. }) = report.result else {
        return Err("no report".into());
    };
    let report = DeviceInterfaceReport::decode(&report)?;
    assert!(report.interface_info.no_fw_update());
    println!(
        "interface report: {} MMIO ranges, {} bytes of device info",
        report.mmio_ranges.len(),
        report.device_specific_info.len()
    );
    let started = call(GuestCommand::StartTdi)?;
    assert_eq!(started.state_after, TdispTdiState::Run);

    // The host moves BAR 0 of the running TDI: the device must go to ERROR.
    let errored = assignment
        .dsm()
        .lock()
        .map_err(|_| "device lock poisoned")?
        .apply_config_change(ConfigChange::MoveBar {
            requester_id: REQUESTER_ID,
            bar: 0,
            new_address: 0xd000_0000,
        })?;
    assert_eq!(errored, vec![REQUESTER_ID]);
    let failed = call(GuestCommand::GetAttestationReport(
        TdispReportType::InterfaceReport,
    ))?;
    assert_eq!(
        failed.result,
        Err(TdispGuestOperationError::HostFailedToProcessCommand)
    );
    assert_eq!(failed.state_after, TdispTdiState::Error);

    let unbound = call(GuestCommand::Unbind(TdispGuestUnbindReason::Graceful))?;
    assert_eq!(unbound.state_after, TdispTdiState::Unlocked);
    let device_state = assignment
        .dsm()
        .lock()
        .map_err(|_| "device lock poisoned")?
        .tdi_state(REQUESTER_ID);
    assert_eq!(device_state, Some(TdiState::ConfigUnlocked));
    println!("device TDI state after unbind: {device_state:?}");
    Ok(())
}
