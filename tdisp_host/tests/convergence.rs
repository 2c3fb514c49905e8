//! Each convergence rule of the host, tried against a scripted device that misbehaves exactly
//! that way.
//!
//! The device is the emulated DSM behind a DOE mailbox whose script can lose the answer to a
//! request after the device processed it (a DOE timeout), answer TDISP BUSY or SPDM
//! ResponseNotReady a number of times, refuse STOP, answer STOP in CONFIG_UNLOCKED with
//! INVALID_INTERFACE_STATE as DMTF spdm-emu does, or advertise spdm-emu's request bitmap (0x7F).
//! The mailbox records every TDISP request it receives, so a test can say what was sent.
//!
//! After every guest call the tests check the invariant the host promises: it never reports
//! `Unlocked` while the device's TDI is not CONFIG_UNLOCKED.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tdisp_host::TdiStateMachine;
use tdisp_host::backend::SharedTsm;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dsm::ConfigChange;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;
use tdisp_host::tsm::ManualClock;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::ProbeOutcome;
use tdisp_host::tsm::RetryPolicy;
use tdisp_host::tsm::Tsm;
use tdisp_host::tsm::TsmDeviceState;
use tdisp_host::tsm::TsmError;
use tdisp_host::tsm::doe::trim_vendor_defined_padding;
use tdisp_proto::TdispGuestOperationError as E;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState as S;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::RequestBitmap;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispMessageType as M;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;

const ADDRESS: u32 = 0x0700;
const RID: u16 = 0x0701;
const GUEST: u64 = 11;

/// How the scripted device misbehaves. Counters are consumed one per matching request.
#[derive(Debug, Default)]
struct Script {
    /// Process the request, then lose the answer (DOE timeout).
    lose_answer: BTreeMap<u8, u32>,
    /// Answer TDISP BUSY without processing.
    busy: BTreeMap<u8, u32>,
    /// Answer SPDM ResponseNotReady; RESPOND_IF_READY then gets the same until the count is
    /// used up, and the real answer after.
    not_ready: BTreeMap<u8, u32>,
    /// STOP in CONFIG_UNLOCKED answers INVALID_INTERFACE_STATE (DMTF spdm-emu).
    spdm_emu_stop: bool,
    /// STOP answers UNSPECIFIED and changes nothing.
    refuse_stop: bool,
    /// GET_TDISP_CAPABILITIES advertises spdm-emu's bitmap, 0x7F (no STOP_INTERFACE bit).
    spdm_emu_bitmap: bool,
    /// Every TDISP request received, in order.
    seen: Vec<M>,
    /// RESPOND_IF_READY requests received.
    respond_if_ready: u32,
    /// The request a ResponseNotReady answer parked.
    parked: Option<(u8, Vec<u8>)>,
}

fn take(counter: &mut BTreeMap<u8, u32>, code: M) -> bool {
    match counter.get_mut(&code.0) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// The emulated DSM behind a scripted DOE mailbox.
#[derive(Clone)]
struct ScriptedDevice {
    dsm: Arc<Mutex<EmulatedDsm>>,
    script: Arc<Mutex<Script>>,
}

fn spdm_object(spdm: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    DoeObject::new(DoeObjectType::SPDM, spdm).encode(&mut out);
    out
}

fn tdisp_error(interface: InterfaceId, code: TdispErrorCode) -> Vec<u8> {
    let mut out = Vec::new();
    let message = TdispMessage::new(
        interface,
        TdispResponse::Error(TdispErrorResponse {
            code,
            data: 0,
            extended: Vec::new(),
        }),
    );
    spdm::encode_tdisp(SPDM_VERSION_1_2, Direction::Response, &message, &mut out).unwrap();
    spdm_object(&out)
}

fn response_not_ready(token: u8) -> Vec<u8> {
    // ERROR(ResponseNotReady), then RDTExponent 20 (about 1 s), VENDOR_DEFINED_REQUEST, token,
    // RDTM 1: the TSM must bound the wait the device asks for.
    spdm_object(&[SPDM_VERSION_1_2, 0x7f, 0x42, 0, 20, 0xfe, token, 1])
}

impl DoeMailbox for ScriptedDevice {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let object =
            DoeObject::decode(request).map_err(|_| MailboxError::DeviceError("bad object"))?;
        if object.object_type != DoeObjectType::SPDM {
            return self.dsm.lock().unwrap().exchange(request);
        }
        let spdm_request = trim_vendor_defined_padding(object.payload).to_vec();
        let mut script = self.script.lock().unwrap();
        if spdm_request.get(1) == Some(&0xff) {
            script.respond_if_ready += 1;
            let (code, parked) = script.parked.clone().unwrap();
            if take(&mut script.not_ready, M(code)) {
                return Ok(response_not_ready(7));
            }
            script.parked = None;
            return Ok(spdm_object(&self.dsm.lock().unwrap().handle_spdm(&parked)));
        }
        let (_, message) =
            spdm::decode_tdisp::<TdispRequest>(&spdm_request, Direction::Request).unwrap();
        let code = message.body.message_type();
        let interface = message.interface_id;
        script.seen.push(code);
        if take(&mut script.busy, code) {
            return Ok(tdisp_error(interface, TdispErrorCode::BUSY));
        }
        if take(&mut script.not_ready, code) {
            script.parked = Some((code.0, spdm_request));
            return Ok(response_not_ready(7));
        }
        let mut dsm = self.dsm.lock().unwrap();
        if code == M::STOP_INTERFACE_REQUEST {
            if script.spdm_emu_stop && dsm.tdi_state(RID) == Some(TdiState::ConfigUnlocked) {
                return Ok(tdisp_error(
                    interface,
                    TdispErrorCode::INVALID_INTERFACE_STATE,
                ));
            }
            if script.refuse_stop {
                return Ok(tdisp_error(interface, TdispErrorCode::UNSPECIFIED));
            }
        }
        let mut answer = dsm.handle_spdm(&spdm_request);
        if code == M::GET_TDISP_CAPABILITIES && script.spdm_emu_bitmap {
            let (_, mut caps) = spdm::decode_tdisp::<TdispResponse>(
                trim_vendor_defined_padding(&answer),
                Direction::Response,
            )
            .unwrap();
            if let TdispResponse::Capabilities(c) = &mut caps.body {
                let mut bitmap = [0; 16];
                bitmap[0] = 0x7f;
                c.req_msg_supported = RequestBitmap(bitmap);
            }
            answer.clear();
            spdm::encode_tdisp(SPDM_VERSION_1_2, Direction::Response, &caps, &mut answer).unwrap();
        }
        if take(&mut script.lose_answer, code) {
            return Err(MailboxError::Timeout);
        }
        Ok(spdm_object(&answer))
    }
}

/// The device, the TSM it is bound in, and the host state machine for its guest.
struct Rig {
    dsm: Arc<Mutex<EmulatedDsm>>,
    script: Arc<Mutex<Script>>,
    clock: ManualClock,
    tsm: SharedTsm,
    machine: TdiStateMachine<TsmBackend>,
}

impl Rig {
    fn new(script: Script) -> Self {
        Self::with_config(script, DsmConfig::single_function(RID))
    }

    fn with_config(script: Script, config: DsmConfig) -> Self {
        let dsm = Arc::new(Mutex::new(EmulatedDsm::new(config).unwrap()));
        let script = Arc::new(Mutex::new(script));
        let clock = ManualClock::new();
        let mut tsm = Tsm::with_clock(Box::new(clock.clone()), RetryPolicy::default());
        let device = ScriptedDevice {
            dsm: dsm.clone(),
            script: script.clone(),
        };
        assert_eq!(
            tsm.probe(
                PciDeviceInfo::tee_io(ADDRESS),
                Box::new(device),
                Box::new(PlainChannel::insecure_opt_in())
            ),
            ProbeOutcome::Handled
        );
        tsm.connect(ADDRESS).unwrap();
        let params = BindParams {
            lock: EmulatedAssignment::default_lock(),
            ..BindParams::new(InterfaceId::from_requester_id(RID), GUEST)
        };
        tsm.bind(ADDRESS, params).unwrap();
        let tsm = Arc::new(Mutex::new(tsm));
        let machine = TdiStateMachine::new(
            MachineConfig::new(GUEST),
            TsmBackend::new(tsm.clone(), ADDRESS),
        );
        let rig = Self {
            dsm,
            script,
            clock,
            tsm,
            machine,
        };
        rig.script.lock().unwrap().seen.clear();
        rig
    }

    fn negotiated(script: Script) -> Self {
        let mut rig = Self::new(script);
        rig.machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        rig
    }

    fn device(&self) -> TdiState {
        self.dsm.lock().unwrap().tdi_state(RID).unwrap()
    }

    fn tsm_state(&self) -> TsmDeviceState {
        self.tsm.lock().unwrap().device_state(ADDRESS).unwrap()
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    /// Takes the requests the device received since the last call.
    fn sent(&self) -> Vec<M> {
        std::mem::take(&mut self.script().seen)
    }

    /// The host's promise: `Unlocked` means the device's TDI is CONFIG_UNLOCKED.
    fn check_truthful(&self) {
        if self.machine.state() == S::Unlocked {
            assert_eq!(
                self.device(),
                TdiState::ConfigUnlocked,
                "host reports Unlocked while the device is not"
            );
        }
    }

    fn change(&self, change: ConfigChange) {
        self.dsm
            .lock()
            .unwrap()
            .apply_config_change(change)
            .unwrap();
    }
}

mod protocol {
    use super::*;

    #[test]
    fn a_second_protocol_is_refused_and_nothing_changes() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.sent();
        assert_eq!(
            rig.machine
                .tdisp_negotiate_protocol(TdispGuestProtocolType::IntelTdxConnectV1),
            Err(E::InvalidGuestProtocolRequest)
        );
        assert_eq!(rig.machine.state(), S::Locked);
        assert_eq!(
            rig.machine.snapshot().protocol,
            Some(TdispGuestProtocolType::AmdSevTioV1)
        );
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        assert_eq!(rig.sent(), [], "a refused negotiation reaches no device");
        // The guest carries on under the protocol it negotiated.
        rig.machine.request_start_tdi().unwrap();
        assert_eq!(rig.device(), TdiState::Run);
    }
}

mod reassignment {
    use super::*;

    fn next_machine(rig: &Rig) -> TdiStateMachine<TsmBackend> {
        TdiStateMachine::new(
            MachineConfig::new(GUEST),
            TsmBackend::new(rig.tsm.clone(), ADDRESS),
        )
    }

    #[test]
    fn a_new_guest_negotiating_on_a_tdi_left_running_gets_it_stopped_not_a_false_unlocked() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.machine.request_start_tdi().unwrap();
        // The guest goes away without unbinding; the next guest gets a fresh machine for the
        // same TDI.
        let mut next = next_machine(&rig);
        rig.sent();
        next.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(next.state(), S::Unlocked);
        assert_eq!(
            rig.device(),
            TdiState::ConfigUnlocked,
            "the new guest is told Unlocked only once the TDI is"
        );
        assert_eq!(rig.sent(), [M::STOP_INTERFACE_REQUEST]);
        next.request_lock_device_resources().unwrap();
        assert_eq!(rig.device(), TdiState::ConfigLocked);
    }

    #[test]
    fn negotiation_on_a_tdi_that_cannot_be_stopped_never_claims_unlocked() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.script().refuse_stop = true;
        let mut next = next_machine(&rig);
        assert_eq!(
            next.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
            Err(E::HostFailedToProcessCommand)
        );
        assert_ne!(next.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        // Once the device takes STOP, the guest gets there.
        rig.script().refuse_stop = false;
        next.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        next.request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(next.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
    }

    #[test]
    fn negotiation_on_a_tdi_known_unlocked_sends_nothing() {
        let rig = Rig::new(Script::default());
        let mut next = next_machine(&rig);
        next.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(rig.sent(), []);
    }
}

mod unbind {
    use super::*;

    #[test]
    fn stop_is_not_sent_to_a_tdi_known_unlocked() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(rig.machine.state(), S::Unlocked);
        // A refused call from Unlocked unbinds too, still without STOP.
        assert_eq!(rig.machine.request_start_tdi(), Err(E::InvalidDeviceState));
        assert!(!rig.sent().contains(&M::STOP_INTERFACE_REQUEST));
        rig.check_truthful();
    }

    #[test]
    fn stop_refused_on_a_locked_tdi_is_error_not_unlocked_and_a_later_unbind_converges() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.script().refuse_stop = true;
        assert_eq!(
            rig.machine.request_unbind(TdispGuestUnbindReason::Graceful),
            Err(E::HostFailedToProcessCommand)
        );
        // The device says the TDI is still locked: the host does not claim otherwise.
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        assert_eq!(rig.machine.state(), S::Error);
        assert_eq!(rig.tsm_state(), TsmDeviceState::Locked);
        rig.check_truthful();
        // The TSM took the device's word: no LOCK goes to a TDI it knows is locked.
        rig.sent();
        assert_eq!(
            rig.machine.request_lock_device_resources(),
            Err(E::InvalidDeviceState)
        );
        assert!(
            !rig.sent().contains(&M::LOCK_INTERFACE_REQUEST),
            "no LOCK is sent to a TDI the device says is locked"
        );
        assert_eq!(rig.machine.state(), S::Error);
        // Once the device takes STOP again, an unbind converges.
        rig.script().refuse_stop = false;
        rig.machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        assert_eq!(rig.tsm_state(), TsmDeviceState::Bound);
        rig.check_truthful();
        rig.machine.request_lock_device_resources().unwrap();
    }

    #[test]
    fn refused_stop_answers_host_failed_with_an_indeterminate_state_until_a_retry_succeeds() {
        use tdisp_host::dispatch::dispatch_command;
        use tdisp_proto::wire::CommandPacket;
        use tdisp_proto::wire::GuestCommand;
        use tdisp_proto::wire::GuestReply;
        use tdisp_proto::wire::ResponsePacket;
        use tdisp_proto::wire::state_seen_by_guest;

        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.machine.request_start_tdi().unwrap();
        rig.script().refuse_stop = true;
        let unbind = CommandPacket {
            device_id: GUEST,
            command: GuestCommand::Unbind(TdispGuestUnbindReason::Graceful),
        };
        // As the guest sees it on the wire, twice: the retry fails the same way while the
        // device keeps refusing, and STOP is sent each time.
        for before in [S::Run, S::Error] {
            rig.sent();
            let wire = dispatch_command(&mut rig.machine, &unbind);
            let reply = ResponsePacket::decode(&wire).unwrap();
            assert_eq!(reply.result, Err(E::HostFailedToProcessCommand));
            assert_eq!(state_seen_by_guest(reply.state_before, true), before);
            assert_eq!(
                state_seen_by_guest(reply.state_after, true),
                S::Error,
                "Error travels as the schema's indeterminate state, never as Unlocked"
            );
            assert!(rig.sent().contains(&M::STOP_INTERFACE_REQUEST));
            assert_eq!(rig.device(), TdiState::Run);
            assert_eq!(rig.machine.state(), S::Error);
            rig.check_truthful();
        }
        // The device behaves again: the next unbind converges on both sides.
        rig.script().refuse_stop = false;
        let reply = ResponsePacket::decode(&dispatch_command(&mut rig.machine, &unbind)).unwrap();
        assert_eq!(reply.result, Ok(GuestReply::Unbind));
        assert_eq!(state_seen_by_guest(reply.state_before, true), S::Error);
        assert_eq!(reply.state_after, S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        assert_eq!(rig.tsm_state(), TsmDeviceState::Bound);
        rig.check_truthful();
        rig.machine.request_lock_device_resources().unwrap();
    }

    #[test]
    fn unbind_ends_unlocked_when_stop_fails_but_the_tdi_is_unlocked() {
        // STOP's answer is lost although the device did stop: the state query settles it.
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.machine.request_start_tdi().unwrap();
        rig.script().lose_answer = BTreeMap::from([(M::STOP_INTERFACE_REQUEST.0, 1)]);
        rig.sent();
        rig.machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(
            rig.sent(),
            [M::STOP_INTERFACE_REQUEST, M::GET_DEVICE_INTERFACE_STATE]
        );
        assert_eq!(rig.machine.state(), S::Unlocked);
        rig.check_truthful();
    }

    #[test]
    fn spdm_emu_invalid_state_answer_to_stop_in_unlocked_counts_as_success() {
        let mut rig = Rig::negotiated(Script {
            spdm_emu_stop: true,
            ..Default::default()
        });
        rig.machine.request_lock_device_resources().unwrap();
        // The device drops to CONFIG_UNLOCKED behind the host's back (a reset of the TDI).
        let stop = TdispRequest::StopInterface;
        rig.dsm
            .lock()
            .unwrap()
            .respond(InterfaceId::from_requester_id(RID), &stop);
        rig.sent();
        rig.machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(
            rig.sent(),
            [M::STOP_INTERFACE_REQUEST, M::GET_DEVICE_INTERFACE_STATE]
        );
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.tsm_state(), TsmDeviceState::Bound);
        rig.check_truthful();
    }

    #[test]
    fn tsm_unbind_after_refused_stop_keeps_the_binding_and_says_where_the_tdi_is() {
        let rig = Rig::negotiated(Script::default());
        let mut tsm = rig.tsm.lock().unwrap();
        tsm.lock(ADDRESS).unwrap();
        rig.script().refuse_stop = true;
        match tsm.unbind(ADDRESS) {
            Err(TsmError::StopFailed { state, .. }) => {
                assert_eq!(state, Some(TdiState::ConfigLocked));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(tsm.binding(ADDRESS).is_some());
        assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Locked));
    }
}

mod lost_answers {
    use super::*;

    #[test]
    fn lost_lock_answer_is_resynchronised_and_the_tdi_stopped() {
        let mut rig = Rig::negotiated(Script {
            lose_answer: BTreeMap::from([(M::LOCK_INTERFACE_REQUEST.0, 1)]),
            ..Default::default()
        });
        assert_eq!(
            rig.machine.request_lock_device_resources(),
            Err(E::HostFailedToProcessCommand)
        );
        let sent = rig.sent();
        assert_eq!(
            sent[..3],
            [
                M::LOCK_INTERFACE_REQUEST,
                M::GET_DEVICE_INTERFACE_STATE,
                M::GET_DEVICE_INTERFACE_STATE,
            ],
            "the host asks the device after the answer is lost"
        );
        assert_eq!(sent.last(), Some(&M::STOP_INTERFACE_REQUEST));
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        rig.check_truthful();
        // Converged: the next lock works.
        rig.machine.request_lock_device_resources().unwrap();
        assert_eq!(rig.device(), TdiState::ConfigLocked);
    }

    #[test]
    fn lost_lock_answer_with_stop_refused_is_error_never_unlocked() {
        let mut rig = Rig::negotiated(Script {
            lose_answer: BTreeMap::from([(M::LOCK_INTERFACE_REQUEST.0, 1)]),
            refuse_stop: true,
            ..Default::default()
        });
        assert_eq!(
            rig.machine.request_lock_device_resources(),
            Err(E::HostFailedToProcessCommand)
        );
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        assert_eq!(rig.machine.state(), S::Error);
        rig.check_truthful();
    }

    #[test]
    fn lost_start_answer_is_resynchronised() {
        let mut rig = Rig::negotiated(Script {
            lose_answer: BTreeMap::from([(M::START_INTERFACE_REQUEST.0, 1)]),
            ..Default::default()
        });
        rig.machine.request_lock_device_resources().unwrap();
        assert_eq!(
            rig.machine.request_start_tdi(),
            Err(E::HostFailedToProcessCommand)
        );
        // The device did start; the host learnt so and stopped it for the failed call.
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        rig.check_truthful();
    }

    #[test]
    fn unanswered_state_query_leaves_the_state_unknown_and_unbind_still_stops() {
        let rig = Rig::negotiated(Script::default());
        rig.script().lose_answer = BTreeMap::from([
            (M::LOCK_INTERFACE_REQUEST.0, 1),
            (M::GET_DEVICE_INTERFACE_STATE.0, 1),
        ]);
        let mut tsm = rig.tsm.lock().unwrap();
        assert!(matches!(tsm.lock(ADDRESS), Err(TsmError::Channel(_))));
        assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Unknown));
        // No state change on a TDI in an unknown state.
        assert!(matches!(tsm.lock(ADDRESS), Err(TsmError::WrongState(_))));
        // Asking the state again, once the device answers, makes it known.
        assert_eq!(
            tsm.interface_state(ADDRESS).unwrap(),
            TdiState::ConfigLocked
        );
        assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Locked));
        tsm.unbind(ADDRESS).unwrap();
        assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Connected));
        drop(tsm);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        assert!(rig.sent().contains(&M::STOP_INTERFACE_REQUEST));
    }
}

mod busy {
    use super::*;

    #[test]
    fn tdisp_busy_is_retried_with_backoff() {
        let mut rig = Rig::negotiated(Script {
            busy: BTreeMap::from([(M::LOCK_INTERFACE_REQUEST.0, 3)]),
            ..Default::default()
        });
        rig.machine.request_lock_device_resources().unwrap();
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        assert_eq!(
            rig.clock.sleeps(),
            [1, 2, 4].map(Duration::from_millis),
            "exponential backoff between the attempts"
        );
        assert_eq!(rig.sent(), [M::LOCK_INTERFACE_REQUEST; 4]);
    }

    #[test]
    fn a_device_that_stays_busy_fails_after_bounded_retries_and_converges() {
        let mut rig = Rig::negotiated(Script {
            busy: BTreeMap::from([(M::LOCK_INTERFACE_REQUEST.0, u32::MAX)]),
            ..Default::default()
        });
        assert_eq!(
            rig.machine.request_lock_device_resources(),
            Err(E::HostFailedToProcessCommand)
        );
        let policy = RetryPolicy::default();
        let sleeps = rig.clock.sleeps();
        assert_eq!(sleeps.len(), policy.max_retries as usize);
        assert!(sleeps.iter().all(|&d| d <= policy.max_delay));
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        // Busy never processed the lock, so the TDI is known unlocked: no STOP was needed.
        assert!(!rig.sent().contains(&M::STOP_INTERFACE_REQUEST));
        rig.check_truthful();
    }

    #[test]
    fn spdm_response_not_ready_is_retried_with_respond_if_ready() {
        let mut rig = Rig::negotiated(Script {
            not_ready: BTreeMap::from([(M::LOCK_INTERFACE_REQUEST.0, 3)]),
            ..Default::default()
        });
        rig.machine.request_lock_device_resources().unwrap();
        assert_eq!(rig.device(), TdiState::ConfigLocked);
        assert_eq!(rig.script().respond_if_ready, 3);
        let sleeps = rig.clock.sleeps();
        assert_eq!(sleeps.len(), 3);
        // The device asked for about a second; each wait is held to the policy's bound.
        assert!(
            sleeps
                .iter()
                .all(|&d| d == RetryPolicy::default().max_delay)
        );
        rig.machine.request_start_tdi().unwrap();
        assert_eq!(rig.device(), TdiState::Run);
    }
}

mod reports {
    use super::*;

    #[test]
    fn report_in_the_wrong_state_answers_report_state_and_unbinds() {
        let mut rig = Rig::negotiated(Script::default());
        assert_eq!(
            rig.machine
                .request_attestation_report(TdispReportType::InterfaceReport),
            Err(E::InvalidGuestAttestationReportState)
        );
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(
            rig.machine.history().last().unwrap().unbind,
            Some(tdisp_host::history::UnbindCause::WrongState)
        );
        rig.check_truthful();
    }

    #[test]
    fn report_type_invalid_is_an_error_and_unbinds() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.sent();
        assert_eq!(
            rig.machine
                .request_attestation_report(TdispReportType::Invalid),
            Err(E::InvalidGuestAttestationReportType)
        );
        assert_eq!(rig.machine.state(), S::Unlocked);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
        assert_eq!(rig.sent(), [M::STOP_INTERFACE_REQUEST]);
    }

    #[test]
    fn reports_come_from_the_device_so_a_tdi_in_error_has_none() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.machine
            .request_attestation_report(TdispReportType::InterfaceReport)
            .unwrap();
        rig.machine.request_start_tdi().unwrap();
        rig.change(ConfigChange::MoveBar {
            requester_id: RID,
            bar: 0,
            new_address: 0xe000_0000,
        });
        assert_eq!(rig.device(), TdiState::Error);
        rig.sent();
        // The machine still believes Run; the device is asked and refuses.
        assert_eq!(
            rig.machine
                .request_attestation_report(TdispReportType::GuestDeviceId),
            Err(E::HostFailedToProcessCommand)
        );
        assert_eq!(rig.sent()[0], M::GET_DEVICE_INTERFACE_STATE);
        assert_eq!(rig.machine.state(), S::Error);
        assert_eq!(
            rig.machine
                .request_attestation_report(TdispReportType::InterfaceReport),
            Err(E::InvalidGuestAttestationReportState)
        );
        // That refusal unbound: the TDI is stopped and the host says so truthfully.
        assert_eq!(rig.machine.state(), S::Unlocked);
        rig.check_truthful();
    }

    #[test]
    fn interface_report_of_a_tdi_gone_to_error_fails_at_the_device() {
        let mut rig = Rig::negotiated(Script::default());
        rig.machine.request_lock_device_resources().unwrap();
        rig.change(ConfigChange::SetMsixControl {
            requester_id: RID,
            message_control: 0x8000,
        });
        rig.sent();
        assert_eq!(
            rig.machine
                .request_attestation_report(TdispReportType::InterfaceReport),
            Err(E::HostFailedToProcessCommand)
        );
        assert_eq!(rig.sent()[0], M::GET_DEVICE_INTERFACE_REPORT);
        assert_eq!(rig.machine.state(), S::Error);
    }
}

mod capabilities {
    use super::*;

    #[test]
    fn spdm_emu_bitmap_without_the_stop_bit_still_binds_and_stop_is_sent() {
        let mut rig = Rig::new(Script {
            spdm_emu_bitmap: true,
            ..Default::default()
        });
        // Rebind so the bind sees the scripted bitmap.
        {
            let mut tsm = rig.tsm.lock().unwrap();
            tsm.unbind(ADDRESS).unwrap();
            let params = BindParams {
                lock: EmulatedAssignment::default_lock(),
                ..BindParams::new(InterfaceId::from_requester_id(RID), GUEST)
            };
            let caps = tsm.bind(ADDRESS, params).unwrap();
            assert_eq!(caps.req_msg_supported.0[0], 0x7f);
            assert!(!caps.req_msg_supported.supports(M::STOP_INTERFACE_REQUEST));
        }
        rig.machine
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        rig.machine.request_lock_device_resources().unwrap();
        rig.machine.request_start_tdi().unwrap();
        rig.sent();
        rig.machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(rig.sent(), [M::STOP_INTERFACE_REQUEST]);
        assert_eq!(rig.device(), TdiState::ConfigUnlocked);
    }

    #[test]
    fn msix_ranges_and_control_are_reported_only_under_lock_msix() {
        for lock_msix in [false, true] {
            let rig = Rig::new(Script::default());
            let mut tsm = rig.tsm.lock().unwrap();
            tsm.unbind(ADDRESS).unwrap();
            let mut params = BindParams::new(InterfaceId::from_requester_id(RID), GUEST);
            params.lock.flags = params.lock.flags.with_lock_msix(lock_msix);
            tsm.bind(ADDRESS, params).unwrap();
            tsm.lock(ADDRESS).unwrap();
            let report =
                DeviceInterfaceReport::decode(&tsm.read_interface_report(ADDRESS).unwrap())
                    .unwrap();
            let msix = report
                .mmio_ranges
                .iter()
                .filter(|r| r.attributes.msix_table() || r.attributes.msix_pba())
                .count();
            assert_eq!(msix, if lock_msix { 2 } else { 0 }, "lock_msix {lock_msix}");
            assert_eq!(report.msi_x_message_control != 0, lock_msix);
        }
    }
}

/// Random guest calls, device faults and configuration changes, on devices with and without
/// spdm-emu's quirks: the host never claims `Unlocked` for a TDI that is not, and once the
/// faults stop, one unbind brings both sides to Unlocked / CONFIG_UNLOCKED.
mod random {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Negotiate,
        Lock,
        Start,
        Report(TdispReportType),
        Unbind,
        LoseNext(u8),
        BusyNext(u8, u32),
        NotReadyNext(u8, u32),
        RefuseStop(bool),
        Change(ConfigChange),
    }

    fn code() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(M::LOCK_INTERFACE_REQUEST.0),
            Just(M::START_INTERFACE_REQUEST.0),
            Just(M::STOP_INTERFACE_REQUEST.0),
            Just(M::GET_DEVICE_INTERFACE_STATE.0),
            Just(M::GET_DEVICE_INTERFACE_REPORT.0),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Negotiate),
            3 => Just(Step::Lock),
            3 => Just(Step::Start),
            2 => prop_oneof![
                Just(TdispReportType::Invalid),
                Just(TdispReportType::InterfaceReport),
                Just(TdispReportType::GuestDeviceId),
            ]
            .prop_map(Step::Report),
            2 => Just(Step::Unbind),
            1 => code().prop_map(Step::LoseNext),
            1 => (code(), 1u32..10).prop_map(|(c, n)| Step::BusyNext(c, n)),
            1 => (code(), 1u32..4).prop_map(|(c, n)| Step::NotReadyNext(c, n)),
            1 => any::<bool>().prop_map(Step::RefuseStop),
            1 => prop_oneof![
                (0u64..4).prop_map(|page| ConfigChange::MoveBar {
                    requester_id: RID,
                    bar: 0,
                    new_address: 0xe000_0000 + page * 0x10_0000,
                }),
                any::<u16>().prop_map(|message_control| ConfigChange::SetMsixControl {
                    requester_id: RID,
                    message_control,
                }),
            ]
            .prop_map(Step::Change),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn the_host_stays_truthful_and_converges(
            quirks in any::<bool>(),
            steps in proptest::collection::vec(step(), 0..40),
        ) {
            let mut config = DsmConfig::single_function(RID);
            config.spdm_emu_quirks = quirks;
            let mut rig = Rig::with_config(Script::default(), config);
            for step in steps {
                let machine = &mut rig.machine;
                match step {
                    Step::Negotiate => {
                        let _ = machine.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1);
                    }
                    Step::Lock => {
                        let _ = machine.request_lock_device_resources();
                    }
                    Step::Start => {
                        let _ = machine.request_start_tdi();
                    }
                    Step::Report(t) => {
                        let _ = machine.request_attestation_report(t);
                    }
                    Step::Unbind => {
                        let _ = machine.request_unbind(TdispGuestUnbindReason::Graceful);
                    }
                    Step::LoseNext(c) => {
                        *rig.script().lose_answer.entry(c).or_default() += 1;
                    }
                    Step::BusyNext(c, n) => {
                        rig.script().busy.insert(c, n);
                    }
                    Step::NotReadyNext(c, n) => {
                        rig.script().not_ready.insert(c, n);
                    }
                    Step::RefuseStop(refuse) => rig.script().refuse_stop = refuse,
                    Step::Change(change) => {
                        let _ = rig.dsm.lock().unwrap().apply_config_change(change);
                    }
                }
                if rig.machine.state() == S::Unlocked {
                    prop_assert_eq!(rig.device(), TdiState::ConfigUnlocked);
                }
            }
            {
                let mut script = rig.script();
                script.lose_answer.clear();
                script.busy.clear();
                script.not_ready.clear();
                script.refuse_stop = false;
            }
            if rig.machine.state() != S::Uninitialized {
                prop_assert_eq!(
                    rig.machine.request_unbind(TdispGuestUnbindReason::Graceful),
                    Ok(())
                );
                prop_assert_eq!(rig.machine.state(), S::Unlocked);
            }
            prop_assert_eq!(rig.device(), TdiState::ConfigUnlocked);
            prop_assert_eq!(rig.tsm_state(), TsmDeviceState::Bound);
        }
    }
}
