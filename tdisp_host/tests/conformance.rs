//! The tdisp_proto conformance suite against the host state machine, driving the emulated DSM
//! through the TSM, called directly.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use tdisp_host::TdiStateMachine;
use tdisp_host::backend::TsmBackend;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispReportType;
use tdisp_proto::testing::ConformanceConfig;
use tdisp_proto::testing::check_names;
use tdisp_proto::testing::run_conformance;

const DEVICE: u64 = 11;

fn machine() -> TdiStateMachine<TsmBackend> {
    EmulatedAssignment::single(0x0200, 0x0201, DEVICE)
        .unwrap()
        .machine(MachineConfig::new(DEVICE))
}

fn config() -> ConformanceConfig {
    ConformanceConfig {
        protocol: TdispGuestProtocolType::IntelTdxConnectV1,
        report_types: vec![
            TdispReportType::InterfaceReport,
            TdispReportType::GuestDeviceId,
            TdispReportType::IsRegistered,
        ],
    }
}

#[test]
fn host_state_machine_passes_the_conformance_suite() {
    let report = run_conformance(&config(), machine);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.passed, check_names());
}

#[test]
fn host_passes_the_conformance_suite_against_an_spdm_emu_like_device() {
    use std::sync::Arc;
    use std::sync::Mutex;
    use tdisp_host::dsm::DsmConfig;
    use tdisp_host::tsm::Tsm;
    let make = || {
        let mut dsm = DsmConfig::single_function(0x0201);
        dsm.spdm_emu_quirks = true;
        let tsm = Arc::new(Mutex::new(Tsm::new()));
        EmulatedAssignment::new(tsm, 0x0200, dsm, DEVICE, EmulatedAssignment::default_lock())
            .unwrap()
            .machine(MachineConfig::new(DEVICE))
    };
    let report = run_conformance(&config(), make);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.passed, check_names());
}

// The same suite through the packet dispatcher runs in tdisp_guest/tests/end_to_end.rs, with
// the real guest client as the caller, so the codec, dispatcher and client are checked together.
