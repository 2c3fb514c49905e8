//! Every (state, trait call) pair of the guest-facing machine, over the real TSM and emulated
//! DSM: the call's result, the machine's next state, and the TDI state inside the device.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use std::sync::PoisonError;
use tdisp_host::TdiStateMachine;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dsm::ConfigChange;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestOperationError as E;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState as S;
use tdisp_proto::pcie::TdiState;

const RID: u16 = 0x0301;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Negotiate,
    Lock,
    Start,
    Report,
    Unbind,
}

fn machine_in(state: S) -> (TdiStateMachine<TsmBackend>, EmulatedAssignment) {
    let assignment = EmulatedAssignment::single(0x0300, RID, 4).unwrap();
    let mut machine = assignment.machine(MachineConfig::new(4));
    if state != S::Uninitialized {
        machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
    }
    if matches!(state, S::Locked | S::Run | S::Error) {
        machine.request_lock_device_resources().unwrap();
    }
    if matches!(state, S::Run | S::Error) {
        machine.request_start_tdi().unwrap();
    }
    if state == S::Error {
        let errored = assignment
            .dsm()
            .lock()
            .unwrap()
            .apply_config_change(ConfigChange::MoveBar {
                requester_id: RID,
                bar: 0,
                new_address: 0x8000_0000,
            })
            .unwrap();
        assert_eq!(errored, vec![RID]);
        // The machine learns of the ERROR from the next device operation.
        assert_eq!(
            machine.request_attestation_report(TdispReportType::InterfaceReport),
            Err(E::HostFailedToProcessCommand)
        );
    }
    assert_eq!(machine.state(), state);
    (machine, assignment)
}

fn perform(machine: &mut TdiStateMachine<TsmBackend>, call: Call) -> Result<(), E> {
    match call {
        Call::Negotiate => machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .map(drop),
        Call::Lock => machine.request_lock_device_resources(),
        Call::Start => machine.request_start_tdi(),
        Call::Report => machine
            .request_attestation_report(TdispReportType::InterfaceReport)
            .map(drop),
        Call::Unbind => machine.request_unbind(TdispGuestUnbindReason::Graceful),
    }
}

fn expected(state: S, call: Call) -> (Result<(), E>, S) {
    let wrong = Err(E::InvalidDeviceState);
    match (state, call) {
        (S::Uninitialized, Call::Negotiate) => (Ok(()), S::Unlocked),
        (S::Uninitialized, _) => (wrong, S::Uninitialized),
        (s, Call::Negotiate) => (Ok(()), s),
        (_, Call::Unbind) => (Ok(()), S::Unlocked),
        (S::Unlocked, Call::Lock) => (Ok(()), S::Locked),
        (S::Locked, Call::Start) => (Ok(()), S::Run),
        (S::Locked | S::Run, Call::Report) => (Ok(()), state),
        (_, Call::Report) => (Err(E::InvalidGuestAttestationReportState), S::Unlocked),
        (_, Call::Lock | Call::Start) => (wrong, S::Unlocked),
    }
}

fn device_state(machine_state: S) -> TdiState {
    match machine_state {
        S::Uninitialized | S::Unlocked => TdiState::ConfigUnlocked,
        S::Locked => TdiState::ConfigLocked,
        S::Run => TdiState::Run,
        S::Error => TdiState::Error,
    }
}

#[test]
fn every_state_call_pair_follows_the_seed_rules_down_to_the_device() {
    let states = [S::Uninitialized, S::Unlocked, S::Locked, S::Run, S::Error];
    let calls = [
        Call::Negotiate,
        Call::Lock,
        Call::Start,
        Call::Report,
        Call::Unbind,
    ];
    for state in states {
        for call in calls {
            let (mut machine, assignment) = machine_in(state);
            let result = perform(&mut machine, call);
            let (want_result, want_state) = expected(state, call);
            assert_eq!(result, want_result, "{state:?} x {call:?}");
            assert_eq!(machine.state(), want_state, "{state:?} x {call:?}: state");
            let dsm = assignment
                .dsm()
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            assert_eq!(
                dsm.tdi_state(RID),
                Some(device_state(want_state)),
                "{state:?} x {call:?}: device state"
            );
        }
    }
}

#[test]
fn wrong_state_calls_record_an_unbind_in_the_history() {
    let (mut machine, _) = machine_in(S::Run);
    perform(&mut machine, Call::Lock).unwrap_err();
    let last = machine.history().last().unwrap();
    assert_eq!((last.from, last.to), (S::Run, S::Unlocked));
    assert!(last.unbind.is_some());
    assert_eq!(last.result, Err(E::InvalidDeviceState));
}
