//! The guest client over a real VMBus channel (in-process server, Hyper-V rings in guest
//! memory) against the real host: TDISP VMBus device -> state machine -> TSM -> DOE -> emulated
//! device.

#![forbid(unsafe_code)]

mod common;

use common::Bus;
use std::sync::Arc;
use std::sync::Barrier;
use tdisp_guest::BindingPolicy;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::accept_device;
use tdisp_guest::vmbus::tdisp_offers;
use tdisp_host::dsm::config::ConfigChange;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::testing::ConformanceConfig;
use tdisp_proto::testing::run_conformance;

/// What the guest knows of the emulated device: its device-specific bytes and its root.
fn emulated_policy(assignment: &EmulatedAssignment) -> InterfacePolicy {
    InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(vec![assignment.root_der().to_vec()]),
        ..Default::default()
    }
}

#[test]
fn conformance_suite_passes_for_the_guest_client_over_vmbus_against_the_real_host() {
    let bus = Bus::new();
    let mut next_id = 0;
    let config = ConformanceConfig {
        protocol: TdispGuestProtocolType::AmdSevTioV1,
        report_types: vec![
            TdispReportType::InterfaceReport,
            TdispReportType::GuestDeviceId,
            TdispReportType::IsRegistered,
        ],
    };
    // Every check gets a fresh device on its own channel of the same bus.
    let report = run_conformance(&config, || {
        next_id += 1;
        bus.attach(next_id).client
    });
    assert!(report.is_ok(), "{report}");
    assert_eq!(tdisp_offers(&bus.guest).len(), next_id as usize);
}

#[test]
fn two_devices_run_the_whole_flow_concurrently_and_both_sides_agree() {
    let bus = Bus::new();
    let devices = [bus.attach(1), bus.attach(2)];
    let start = Arc::new(Barrier::new(2));
    let flows: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let policy = emulated_policy(&device.assignment);
                let accepted = accept_device(
                    &mut device.client,
                    TdispGuestProtocolType::AmdSevTioV1,
                    &policy,
                )
                .unwrap();
                let running = (
                    device.client.state(),
                    device.host.lock().unwrap().tdi_state(),
                );
                // The channel reached this device and no other: its interface id is ours.
                let id = device
                    .client
                    .request_attestation_report(TdispReportType::GuestDeviceId)
                    .unwrap();
                device
                    .client
                    .request_unbind(TdispGuestUnbindReason::Graceful)
                    .unwrap();
                let unbound = (
                    device.client.state(),
                    device.host.lock().unwrap().tdi_state(),
                );
                (accepted.info.tdisp_device_id, running, id, unbound, device)
            })
        })
        .collect();
    for (expected_id, flow) in [1u64, 2].into_iter().zip(flows) {
        let (device_id, running, id, unbound, device) = flow.join().unwrap();
        assert_eq!(device_id, expected_id);
        assert_eq!(running, (TdispTdiState::Run, TdispTdiState::Run));
        assert_eq!(unbound, (TdispTdiState::Unlocked, TdispTdiState::Unlocked));
        assert_eq!(
            u16::from_le_bytes([id[0], id[1]]),
            Bus::requester_id(expected_id)
        );
        assert_eq!(device.client.faults(), 0);
        assert_eq!(device.client.transport().dropped_packets(), 0);
        assert!(device.assignment.dsm().lock().is_ok());
    }
}

#[test]
fn host_error_state_reaches_the_guest_as_error_and_unbind_recovers_both_sides() {
    let bus = Bus::new();
    let mut device = bus.attach(3);
    let policy = emulated_policy(&device.assignment);
    let first = accept_device(
        &mut device.client,
        TdispGuestProtocolType::IntelTdxConnectV1,
        &policy,
    )
    .unwrap();
    device
        .assignment
        .dsm()
        .lock()
        .unwrap()
        .apply_config_change(ConfigChange::MoveBar {
            requester_id: Bus::requester_id(3),
            bar: 0,
            new_address: 0x2_0000_0000,
        })
        .unwrap();
    assert_eq!(
        device
            .client
            .request_attestation_report(TdispReportType::InterfaceReport),
        Err(TdispGuestOperationError::HostFailedToProcessCommand)
    );
    let host_state = device.host.lock().unwrap().tdi_state();
    assert_eq!(host_state, TdispTdiState::Error);
    assert_eq!(device.client.state(), TdispTdiState::Error);
    assert_eq!(
        device.client.faults(),
        0,
        "the host reported the error honestly"
    );
    device
        .client
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    assert_eq!(device.client.state(), TdispTdiState::Unlocked);
    assert_eq!(
        device.host.lock().unwrap().tdi_state(),
        TdispTdiState::Unlocked
    );
    let again = accept_device(
        &mut device.client,
        TdispGuestProtocolType::IntelTdxConnectV1,
        &policy,
    )
    .unwrap();
    assert_ne!(
        again.report.mmio_ranges[0].first_page,
        first.report.mmio_ranges[0].first_page
    );
}
