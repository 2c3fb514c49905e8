//! Random sequences of guest calls (direct, as packets, and mixed with host configuration
//! changes on the device) never panic and always leave the machine and the device in states
//! that agree with each other and with the reference model of the rules.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use proptest::prelude::*;
use std::sync::PoisonError;
use tdisp_host::TdiStateMachine;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::dsm::ConfigChange;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState as S;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::testing::reference::ReferenceModel;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::ResponsePacket;

const RID: u16 = 0x0601;
const DEVICE: u64 = 6;

fn protocol() -> impl Strategy<Value = TdispGuestProtocolType> {
    prop_oneof![
        Just(TdispGuestProtocolType::Invalid),
        Just(TdispGuestProtocolType::AmdSevTioV1),
        Just(TdispGuestProtocolType::IntelTdxConnectV1),
    ]
}

fn report_type() -> impl Strategy<Value = TdispReportType> {
    prop_oneof![
        Just(TdispReportType::Invalid),
        Just(TdispReportType::GuestDeviceId),
        Just(TdispReportType::InterfaceReport),
        Just(TdispReportType::IsRegistered),
    ]
}

fn command() -> impl Strategy<Value = GuestCommand> {
    prop_oneof![
        protocol().prop_map(GuestCommand::NegotiateProtocol),
        Just(GuestCommand::LockDeviceResources),
        Just(GuestCommand::StartTdi),
        report_type().prop_map(GuestCommand::GetAttestationReport),
        prop_oneof![
            Just(TdispGuestUnbindReason::Unknown),
            Just(TdispGuestUnbindReason::Graceful)
        ]
        .prop_map(GuestCommand::Unbind),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Call(GuestCommand),
    Packet(Vec<u8>),
    Change(ConfigChange),
}

fn change() -> impl Strategy<Value = ConfigChange> {
    prop_oneof![
        (0u64..16).prop_map(|page| ConfigChange::MoveBar {
            requester_id: RID,
            bar: 0,
            new_address: 0xf000_0000 + page * 0x10_0000,
        }),
        any::<u16>().prop_map(|message_control| ConfigChange::SetMsixControl {
            requester_id: RID,
            message_control,
        }),
        any::<bool>().prop_map(|enabled| ConfigChange::SetMemorySpaceEnable {
            requester_id: RID,
            enabled,
        }),
        any::<u32>().prop_map(|new_version| ConfigChange::FirmwareUpdate { new_version }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => command().prop_map(Step::Call),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::Packet),
        1 => change().prop_map(Step::Change),
    ]
}

fn new_machine() -> (TdiStateMachine<TsmBackend>, EmulatedAssignment) {
    let assignment = EmulatedAssignment::single(0x0600, RID, DEVICE).unwrap();
    let machine = assignment.machine(MachineConfig::new(DEVICE));
    (machine, assignment)
}

fn device_state(assignment: &EmulatedAssignment) -> TdiState {
    let dsm = assignment
        .dsm()
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    dsm.tdi_state(RID).unwrap()
}

/// The device states a machine state may correspond to: the device may have gone to ERROR on a
/// configuration change the machine has not yet run into.
fn legal(machine: S, device: TdiState) -> bool {
    matches!(
        (machine, device),
        (S::Uninitialized | S::Unlocked, TdiState::ConfigUnlocked)
            | (S::Locked, TdiState::ConfigLocked | TdiState::Error)
            | (S::Run, TdiState::Run | TdiState::Error)
            | (S::Error, TdiState::Error)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn guest_calls_agree_with_the_reference_model(
        commands in proptest::collection::vec(command(), 0..30)
    ) {
        let (mut machine, assignment) = new_machine();
        // The reference model states the host's rules (no protocol switch, reports in the
        // wrong state or of type Invalid unbind), so results and states must agree exactly.
        let mut model = ReferenceModel { device_id: DEVICE, ..Default::default() };
        for command in commands {
            let got = command.dispatch(&mut machine);
            let want = command.dispatch(&mut model);
            prop_assert_eq!(got.is_ok(), want.is_ok(), "{:?}: {:?} vs {:?}", command, got, want);
            if let (Err(got), Err(want)) = (got, want) {
                prop_assert_eq!(got, want);
            }
            prop_assert_eq!(machine.state(), model.state, "after {:?}", command);
            prop_assert!(legal(machine.state(), device_state(&assignment)));
        }
        // The history is a chain: every entry starts where the previous one ended.
        let entries: Vec<_> = machine.history().entries().cloned().collect();
        for pair in entries.windows(2) {
            prop_assert_eq!(pair[0].to, pair[1].from);
            prop_assert_eq!(pair[0].seq + 1, pair[1].seq);
        }
    }

    #[test]
    fn packets_and_config_changes_never_break_the_state(
        steps in proptest::collection::vec(step(), 0..40)
    ) {
        let (machine, assignment) = new_machine();
        let mut dispatcher = HostDispatcher::new();
        dispatcher.insert(DEVICE, Box::new(machine));
        for step in steps {
            match step {
                Step::Call(command) => {
                    let packet = CommandPacket { device_id: DEVICE, command };
                    let reply = ResponsePacket::decode(&dispatcher.handle(&packet.encode()));
                    prop_assert!(reply.is_ok(), "{:?}", reply);
                    let reply = reply.unwrap();
                    prop_assert!(reply.check_answers(&packet.command).is_ok());
                    // The wire has no Error value: the host's Error goes out as Uninitialized.
                    let host = dispatcher.tdi_state(DEVICE).map(tdisp_proto::wire::state_to_wire);
                    prop_assert_eq!(Some(tdisp_proto::wire::state_to_wire(reply.state_after)), host);
                }
                Step::Packet(bytes) => {
                    let before = dispatcher.tdi_state(DEVICE);
                    let reply = ResponsePacket::decode(&dispatcher.handle(&bytes));
                    prop_assert!(reply.is_ok(), "{:?}", reply);
                    // Random bytes almost never decode as a command; when they do not, the
                    // device is untouched.
                    if CommandPacket::decode(&bytes).is_err() {
                        prop_assert_eq!(dispatcher.tdi_state(DEVICE), before);
                    }
                }
                Step::Change(change) => {
                    let mut dsm = assignment.dsm().lock().unwrap_or_else(PoisonError::into_inner);
                    let _ = dsm.apply_config_change(change);
                }
            }
            let state = dispatcher.tdi_state(DEVICE).unwrap();
            prop_assert!(
                legal(state, device_state(&assignment)),
                "machine {:?} device {:?}", state, device_state(&assignment)
            );
        }
    }
}
