//! The whole TDISP path in one process: guest client -> command packets -> host dispatcher ->
//! host state machine -> TSM -> DOE mailbox -> emulated DSM, and back.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test setup helpers outside #[test] fns unwrap"
)]

use tdisp_guest::BindingPolicy;
use tdisp_guest::FlowError;
use tdisp_guest::GuestTransport;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_guest::accept_device;
use tdisp_host::HostDispatcher;
use tdisp_host::dsm::config::ConfigChange;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::testing::ConformanceConfig;
use tdisp_proto::testing::run_conformance;

const DEVICE_ID: u64 = 7;
const REQUESTER_ID: u16 = 0x0100;

/// The host side reached by direct calls: what a VMBus channel will carry later.
struct Direct(HostDispatcher);

impl GuestTransport for Direct {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.handle(command))
    }
}

fn host() -> (EmulatedAssignment, TdispGuestClient<Direct>) {
    let assignment = EmulatedAssignment::single(0x0100, REQUESTER_ID, DEVICE_ID).unwrap();
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(
        DEVICE_ID,
        Box::new(assignment.machine(MachineConfig::new(DEVICE_ID))),
    );
    (
        assignment,
        TdispGuestClient::new(Direct(dispatcher), DEVICE_ID),
    )
}

/// What the guest knows of the emulated device: its device-specific bytes, and the root its
/// vendor (here, the emulation) issued its identity under.
fn emulated_policy(assignment: &EmulatedAssignment) -> InterfacePolicy {
    InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(vec![assignment.root_der().to_vec()]),
        ..Default::default()
    }
}

#[test]
fn conformance_suite_passes_for_guest_client_over_the_real_host() {
    for protocol in [
        TdispGuestProtocolType::AmdSevTioV1,
        TdispGuestProtocolType::IntelTdxConnectV1,
    ] {
        let config = ConformanceConfig {
            protocol,
            report_types: vec![
                TdispReportType::InterfaceReport,
                TdispReportType::GuestDeviceId,
                TdispReportType::IsRegistered,
            ],
        };
        let report = run_conformance(&config, || host().1);
        assert!(report.is_ok(), "{protocol:?}: {report}");
    }
}

#[test]
fn guest_accepts_the_emulated_device_and_sees_its_bars() {
    let (assignment, mut client) = host();
    let accepted = accept_device(
        &mut client,
        TdispGuestProtocolType::AmdSevTioV1,
        &emulated_policy(&assignment),
    )
    .unwrap();
    assert_eq!(client.state(), TdispTdiState::Run);
    assert_eq!(client.faults(), 0);
    let binding = accepted.binding.as_ref().unwrap();
    assert_eq!(binding.interface, assignment.interface());
    assert_eq!(binding.root_index, 0);
    let dsm = assignment.dsm().lock().unwrap();
    let bar0 = dsm.config().function(REQUESTER_ID).unwrap().bars[0];
    let reported_bytes: u64 = accepted
        .report
        .mmio_ranges
        .iter()
        .filter(|r| r.range_id == 0)
        .map(|r| u64::from(r.number_of_pages) * 4096)
        .sum();
    assert_eq!(reported_bytes, bar0.size, "BAR 0 is reported whole");
    assert!(
        accepted
            .report
            .mmio_ranges
            .iter()
            .any(|r| r.first_page == bar0.address)
    );
    assert!(
        accepted
            .report
            .mmio_ranges
            .iter()
            .any(|r| r.attributes.msix_table())
    );
}

#[test]
fn guest_refuses_a_device_whose_report_differs_and_host_ends_unlocked() {
    let (_assignment, mut client) = host();
    let policy = InterfacePolicy {
        expected_device_specific_info: Some(b"some-other-device".to_vec()),
        ..Default::default()
    };
    let err = accept_device(&mut client, TdispGuestProtocolType::AmdSevTioV1, &policy).unwrap_err();
    assert!(matches!(err, FlowError::Policy(_)));
    assert_eq!(client.state(), TdispTdiState::Unlocked);
    // The refusal unbound the device: it can be locked again.
    client.request_lock_device_resources().unwrap();
}

#[test]
fn bar_move_while_running_breaks_the_device_until_the_guest_unbinds() {
    let (assignment, mut client) = host();
    let first = accept_device(
        &mut client,
        TdispGuestProtocolType::AmdSevTioV1,
        &emulated_policy(&assignment),
    )
    .unwrap();
    let old_bar = first.report.mmio_ranges[0].first_page;
    assignment
        .dsm()
        .lock()
        .unwrap()
        .apply_config_change(ConfigChange::MoveBar {
            requester_id: REQUESTER_ID,
            bar: 0,
            new_address: 0x2_0000_0000,
        })
        .unwrap();
    assert_eq!(
        client.request_attestation_report(TdispReportType::InterfaceReport),
        Err(TdispGuestOperationError::HostFailedToProcessCommand),
        "a device in ERROR must not keep serving the old report"
    );
    assert_eq!(client.state(), TdispTdiState::Error);
    assert_eq!(client.faults(), 0, "the host reported the error honestly");
    assert_eq!(
        client.request_start_tdi(),
        Err(TdispGuestOperationError::InvalidDeviceState)
    );
    client
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    assert_eq!(client.state(), TdispTdiState::Unlocked);
    let again = accept_device(
        &mut client,
        TdispGuestProtocolType::AmdSevTioV1,
        &emulated_policy(&assignment),
    )
    .unwrap();
    assert_ne!(again.report.mmio_ranges[0].first_page, old_bar);
    assert_eq!(again.report.mmio_ranges[0].first_page, 0x2_0000_0000);
}

#[test]
fn commands_for_an_unknown_device_are_refused_not_crashing() {
    let (_assignment, client) = host();
    let Direct(dispatcher) = client.into_transport();
    let mut stranger = TdispGuestClient::new(Direct(dispatcher), DEVICE_ID + 1);
    let result = stranger.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1);
    assert!(result.is_err());
    assert_ne!(result, Err(TdispGuestOperationError::Success));
}
