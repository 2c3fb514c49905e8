//! A device interface report larger than one portion travels in several
//! GET_DEVICE_INTERFACE_REPORT exchanges and reaches the guest byte-exact.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::config::BarConfig;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::tsm::Tsm;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispReportType;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;

#[test]
fn report_larger_than_one_portion_reassembles_byte_exact() {
    const PORTION: u16 = 100;
    let mut config = DsmConfig::single_function(0x0501);
    config.max_report_portion = PORTION;
    let function = &mut config.functions[0];
    function.device_specific_info = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for index in 1..6 {
        function.bars.push(BarConfig {
            index,
            address: 0x1_0000_0000 * u64::from(index),
            size: 0x4000,
            non_tee: index % 2 == 0,
            attributes_updatable: index == 3,
        });
    }
    let lock = LockInterfaceParams {
        flags: LockInterfaceFlags::new()
            .with_no_fw_update(true)
            .with_lock_msix(true),
        mmio_reporting_offset: 0x10_0000,
        ..Default::default()
    };
    let expected = function
        .build_report(lock.flags, lock.mmio_reporting_offset, false)
        .unwrap()
        .to_bytes();
    assert!(expected.len() > usize::from(PORTION) * 10);

    let tsm = Arc::new(Mutex::new(Tsm::new()));
    let assignment = EmulatedAssignment::new(tsm, 0x0500, config, 9, lock).unwrap();
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(9, Box::new(assignment.machine(MachineConfig::new(9))));
    let mut call = |command| {
        let packet = CommandPacket {
            device_id: 9,
            command,
        };
        ResponsePacket::decode(&dispatcher.handle(&packet.encode()))
            .unwrap()
            .result
            .unwrap()
    };
    call(GuestCommand::NegotiateProtocol(
        TdispGuestProtocolType::AmdSevTioV1,
    ));
    call(GuestCommand::LockDeviceResources);
    let GuestReply::GetAttestationReport { report, .. } = call(GuestCommand::GetAttestationReport(
        TdispReportType::InterfaceReport,
    )) else {
        unreachable!("a report command answers with a report");
    };
    assert_eq!(report, expected);
    let decoded = DeviceInterfaceReport::decode(&report).unwrap();
    assert_eq!(decoded.device_specific_info.len(), 5000);
    assert_eq!(decoded.mmio_ranges.len(), 3 + 5);
    assert_eq!(decoded.mmio_ranges[0].first_page, 0xf000_0000 + 0x10_0000);
}
