//! Unit tests of the guest-facing machine: negotiation, failure handling and history.

use super::*;
use crate::emulated::EmulatedAssignment;
use tdisp_proto::TdispTdiState as S;

/// A backend whose answers the test scripts, for failure paths the emulated device cannot
/// produce on demand.
#[derive(Debug, Default)]
struct Scripted {
    fail_with: Option<BackendError>,
    fail_stop: bool,
    stops: usize,
}

impl TdiBackend for Scripted {
    fn is_tdisp_capable(&self) -> bool {
        true
    }
    fn lock(&mut self) -> Result<(), BackendError> {
        self.fail_with.clone().map_or(Ok(()), Err)
    }
    fn start(&mut self) -> Result<(), BackendError> {
        self.fail_with.clone().map_or(Ok(()), Err)
    }
    fn report(&mut self, _report_type: TdispReportType) -> Result<Vec<u8>, BackendError> {
        self.fail_with.clone().map_or(Ok(vec![1]), Err)
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        self.stops += 1;
        if self.fail_stop {
            Err(BackendError::Failed("stop".into()))
        } else {
            Ok(())
        }
    }
}

fn scripted() -> TdiStateMachine<Scripted> {
    let mut machine = TdiStateMachine::new(MachineConfig::new(5), Scripted::default());
    machine
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    // The tests count the stops of the calls after negotiation.
    machine.backend.stops = 0;
    machine
}

mod negotiation {
    use super::*;
    use crate::backend::NotTdispCapable;

    #[test]
    fn device_without_tdisp_answers_invalid_and_stays_uninitialized() {
        let mut machine = TdiStateMachine::new(MachineConfig::new(3), NotTdispCapable);
        let info = machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::IntelTdxConnectV1)
            .unwrap();
        assert_eq!(info.guest_protocol_type, TdispGuestProtocolType::Invalid);
        assert_eq!(info.tdisp_device_id, 3);
        assert_eq!(machine.state(), S::Uninitialized);
        assert_eq!(
            machine.request_lock_device_resources(),
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
    }

    #[test]
    fn protocols_the_host_does_not_offer_are_refused() {
        let mut config = MachineConfig::new(3);
        config.supported_protocols = vec![TdispGuestProtocolType::AmdSevTioV1];
        let mut machine = TdiStateMachine::new(config, Scripted::default());
        for protocol in [
            TdispGuestProtocolType::Invalid,
            TdispGuestProtocolType::IntelTdxConnectV1,
        ] {
            assert_eq!(
                machine.tdisp_negotiate_protocol(protocol),
                Err(TdispGuestOperationError::InvalidGuestProtocolRequest)
            );
        }
        assert_eq!(machine.state(), S::Uninitialized);
        let info = machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(
            info.guest_protocol_type,
            TdispGuestProtocolType::AmdSevTioV1
        );
        assert_eq!(
            machine.snapshot().protocol,
            Some(TdispGuestProtocolType::AmdSevTioV1)
        );
    }
}

mod protocol_switch {
    use super::*;

    #[test]
    fn only_the_first_negotiation_makes_sure_the_tdi_is_stopped() {
        let mut machine = TdiStateMachine::new(MachineConfig::new(5), Scripted::default());
        machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(machine.backend().stops, 1);
        machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(machine.backend().stops, 1);
        assert_eq!(machine.state(), S::Unlocked);
    }

    #[test]
    fn a_first_negotiation_whose_stop_fails_is_a_host_failure_never_unlocked() {
        let mut machine = TdiStateMachine::new(
            MachineConfig::new(5),
            Scripted {
                fail_stop: true,
                ..Default::default()
            },
        );
        assert_eq!(
            machine.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), S::Error);
        assert_eq!(machine.snapshot().protocol, None);
    }

    #[test]
    fn a_different_protocol_after_negotiation_is_refused_and_nothing_changes() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        let before = machine.snapshot();
        assert_eq!(
            machine.tdisp_negotiate_protocol(TdispGuestProtocolType::IntelTdxConnectV1),
            Err(TdispGuestOperationError::InvalidGuestProtocolRequest)
        );
        let after = machine.snapshot();
        assert_eq!(after.state, S::Locked);
        assert_eq!(after.protocol, before.protocol);
        assert_eq!(machine.backend().stops, 0);
        // The same protocol again is answered and keeps the state.
        let info = machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(
            info.guest_protocol_type,
            TdispGuestProtocolType::AmdSevTioV1
        );
        assert_eq!(machine.state(), S::Locked);
    }
}

mod failures {
    use super::*;

    #[test]
    fn spdm_report_types_are_served_from_the_session_and_keep_the_state() {
        let assignment = EmulatedAssignment::single(0x100, 0x101, 1).unwrap();
        let mut machine = assignment.machine(MachineConfig::new(1));
        machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        machine.request_lock_device_resources().unwrap();
        // The emulated assignment runs over an SPDM session, which serves the device's chain
        // and signed measurements (tests/spdm_tsm.rs verifies them).
        for report_type in [
            TdispReportType::CertificateChain,
            TdispReportType::Measurements,
        ] {
            assert!(
                !machine
                    .request_attestation_report(report_type)
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(machine.state(), S::Locked);
        let id = machine
            .request_attestation_report(TdispReportType::GuestDeviceId)
            .unwrap();
        assert_eq!(id, [0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            machine.request_attestation_report(TdispReportType::IsRegistered),
            Ok(vec![1])
        );
    }

    #[test]
    fn device_removed_from_the_tsm_leaves_the_machine_in_error() {
        let assignment = EmulatedAssignment::single(0x100, 0x101, 1).unwrap();
        let mut machine = assignment.machine(MachineConfig::new(1));
        machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        machine.request_lock_device_resources().unwrap();
        assignment
            .tsm()
            .lock()
            .unwrap()
            .remove(assignment.address())
            .unwrap();
        assert_eq!(
            machine.request_start_tdi(),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), S::Error);
        // A departed device is no longer TDISP capable.
        let info = machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(info.guest_protocol_type, TdispGuestProtocolType::Invalid);
    }

    #[test]
    fn invalid_report_type_fails_and_unbinds() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        assert_eq!(
            machine.request_attestation_report(TdispReportType::Invalid),
            Err(TdispGuestOperationError::InvalidGuestAttestationReportType)
        );
        assert_eq!(machine.state(), S::Unlocked);
        assert_eq!(machine.backend().stops, 1);
        let last = machine.history().last().unwrap();
        assert_eq!(last.unbind, Some(UnbindCause::InvalidReportType));
    }

    #[test]
    fn invalid_report_type_before_negotiation_changes_nothing() {
        let mut machine = TdiStateMachine::new(MachineConfig::new(5), Scripted::default());
        assert_eq!(
            machine.request_attestation_report(TdispReportType::Invalid),
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
        assert_eq!(machine.state(), S::Uninitialized);
        assert_eq!(machine.backend().stops, 0);
    }

    #[test]
    fn report_in_the_wrong_state_says_so_and_unbinds() {
        let mut machine = scripted();
        assert_eq!(
            machine.request_attestation_report(TdispReportType::InterfaceReport),
            Err(TdispGuestOperationError::InvalidGuestAttestationReportState)
        );
        assert_eq!(machine.state(), S::Unlocked);
        // The backend is asked to stop: it, not the machine, knows whether STOP is needed.
        assert_eq!(machine.backend().stops, 1);
        let last = machine.history().last().unwrap();
        assert_eq!(last.unbind, Some(UnbindCause::WrongState));
    }

    #[test]
    fn device_failure_unbinds_and_says_the_host_failed() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        machine.backend.fail_with = Some(BackendError::Failed("boom".into()));
        assert_eq!(
            machine.request_start_tdi(),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), S::Unlocked);
        assert_eq!(machine.backend().stops, 1);
        let last = machine.history().last().unwrap();
        assert_eq!(last.unbind, Some(UnbindCause::DeviceFailure));
    }

    #[test]
    fn tdi_in_error_moves_the_machine_to_error_until_unbind() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        machine.backend.fail_with = Some(BackendError::TdiInError);
        assert_eq!(
            machine.request_attestation_report(TdispReportType::InterfaceReport),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), S::Error);
        machine.backend.fail_with = None;
        machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(machine.state(), S::Unlocked);
    }

    #[test]
    fn failed_stop_leaves_the_machine_in_error_until_an_unbind_succeeds() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        machine.backend.fail_stop = true;
        assert_eq!(
            machine.request_lock_device_resources(),
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
        assert_eq!(machine.state(), S::Error);
        assert_eq!(
            machine.request_unbind(TdispGuestUnbindReason::Unknown),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(machine.state(), S::Error);
        machine.backend.fail_stop = false;
        machine
            .request_unbind(TdispGuestUnbindReason::Unknown)
            .unwrap();
        assert_eq!(machine.state(), S::Unlocked);
    }
}

mod history {
    use super::*;

    #[test]
    fn history_records_transitions_and_unbind_reasons() {
        let mut machine = scripted();
        machine.request_lock_device_resources().unwrap();
        let _ = machine.request_lock_device_resources();
        machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        let entries: Vec<_> = machine
            .history()
            .entries()
            .map(|e| (e.call.kind(), e.from, e.to, e.result, e.unbind))
            .collect();
        assert_eq!(
            entries,
            vec![
                (
                    CallKind::Negotiate,
                    S::Uninitialized,
                    S::Unlocked,
                    Ok(()),
                    None
                ),
                (CallKind::Lock, S::Unlocked, S::Locked, Ok(()), None),
                (
                    CallKind::Lock,
                    S::Locked,
                    S::Unlocked,
                    Err(TdispGuestOperationError::InvalidDeviceState),
                    Some(UnbindCause::WrongState)
                ),
                (
                    CallKind::Unbind,
                    S::Unlocked,
                    S::Unlocked,
                    Ok(()),
                    Some(UnbindCause::Guest(TdispGuestUnbindReason::Graceful))
                ),
            ]
        );
    }

    #[test]
    fn history_is_bounded_and_the_snapshot_is_json() {
        let mut config = MachineConfig::new(9);
        config.history_capacity = 4;
        let mut machine = TdiStateMachine::new(config, Scripted::default());
        for _ in 0..10 {
            let _ = machine.request_start_tdi();
        }
        let snapshot = machine.snapshot();
        assert_eq!(snapshot.history.entries.len(), 4);
        assert_eq!(snapshot.history.dropped, 6);
        let json = snapshot.to_json().unwrap();
        let back: MachineSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
    }
}

#[test]
fn transition_table_allows_exactly_the_seed_rules() {
    use TdispGuestOperationError as E;
    let states = [S::Uninitialized, S::Unlocked, S::Locked, S::Run, S::Error];
    let calls = [
        CallKind::Negotiate,
        CallKind::Lock,
        CallKind::Start,
        CallKind::Report,
        CallKind::Unbind,
    ];
    for from in states {
        for call in calls {
            let expected = match (from, call) {
                (S::Uninitialized, CallKind::Negotiate) => Transition::Allowed { to: S::Unlocked },
                (_, CallKind::Negotiate) => Transition::Allowed { to: from },
                (S::Uninitialized, _) => Transition::Refused(E::InvalidDeviceState),
                (_, CallKind::Unbind) => Transition::Allowed { to: S::Unlocked },
                (S::Unlocked, CallKind::Lock) => Transition::Allowed { to: S::Locked },
                (S::Locked, CallKind::Start) => Transition::Allowed { to: S::Run },
                (S::Locked | S::Run, CallKind::Report) => Transition::Allowed { to: from },
                (_, CallKind::Report) => {
                    Transition::RefusedAndUnbound(E::InvalidGuestAttestationReportState)
                }
                _ => Transition::RefusedAndUnbound(E::InvalidDeviceState),
            };
            assert_eq!(transition(from, call), expected, "{from:?} x {call:?}");
        }
    }
}
