//! The DOE mailbox at register level: the emulated capability ([`DoeFunction`]) and the TSM's
//! driver ([`RegisterMailbox`]) against each other and against hand-driven register sequences:
//! dword-at-a-time transfer, Busy / Error / Data Object Ready, Abort in the middle of an object,
//! the 1 s timeout on an injected clock, and the discovery version the capability asks for.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tdisp_host::dsm::DoeFunction;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::DoeRegisters;
use tdisp_host::tsm::MailboxError;
use tdisp_host::tsm::ManualClock;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::ProbeOutcome;
use tdisp_host::tsm::RegisterMailbox;
use tdisp_host::tsm::Tsm;
use tdisp_host::tsm::doe::regs;
use tdisp_host::tsm::doe_driver::DOE_TIMEOUT;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;

type Reply = fn(&[u8]) -> Result<Vec<u8>, MailboxError>;

/// A whole-object handler that records what it is given and answers with `reply`.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    reply: Reply,
}

impl Recorder {
    fn new(reply: Reply) -> Self {
        Self {
            seen: Arc::default(),
            reply,
        }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

impl DoeMailbox for Recorder {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        self.seen.lock().unwrap().push(request.to_vec());
        (self.reply)(request)
    }
}

/// Answers with the request's payload reversed, in an object of the same type.
fn reversed(request: &[u8]) -> Result<Vec<u8>, MailboxError> {
    let object = DoeObject::decode(request).unwrap();
    let payload: Vec<u8> = object.payload.iter().rev().copied().collect();
    Ok(object_of(object.object_type, &payload))
}

fn object_of(object_type: DoeObjectType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    DoeObject::new(object_type, payload).encode(&mut out);
    out
}

fn request(payload: &[u8]) -> Vec<u8> {
    object_of(DoeObjectType::SPDM, payload)
}

type Function = Arc<Mutex<DoeFunction<Recorder>>>;

struct Rig {
    handler: Recorder,
    function: Function,
    clock: ManualClock,
    mailbox: RegisterMailbox<Function>,
}

fn rig_with(reply: Reply, version: u8) -> Rig {
    let handler = Recorder::new(reply);
    let clock = ManualClock::new();
    let function = Arc::new(Mutex::new(DoeFunction::with_clock(
        handler.clone(),
        Box::new(clock.clone()),
        version,
    )));
    let mailbox = RegisterMailbox::new(function.clone(), Box::new(clock.clone())).unwrap();
    Rig {
        handler,
        function,
        clock,
        mailbox,
    }
}

fn rig() -> Rig {
    rig_with(reversed, 2)
}

fn dwords(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

impl Rig {
    fn status(&self) -> u32 {
        self.function.lock().unwrap().read(regs::STATUS)
    }

    fn write(&self, offset: u16, value: u32) {
        self.function.lock().unwrap().write(offset, value);
    }

    fn read(&self, offset: u16) -> u32 {
        self.function.lock().unwrap().read(offset)
    }

    fn aborts(&self) -> u64 {
        self.function.lock().unwrap().aborts()
    }

    /// The driver works after whatever the test did.
    fn assert_recovered(&mut self) {
        let object = request(b"after");
        let answer = self.mailbox.exchange(&object).unwrap();
        assert_eq!(answer, reversed(&object).unwrap());
    }
}

#[test]
fn objects_travel_one_dword_at_a_time_both_ways() {
    let mut rig = rig();
    let object = request(b"hello, device");
    let answer = rig.mailbox.exchange(&object).unwrap();
    assert_eq!(answer, reversed(&object).unwrap());
    assert_eq!(rig.handler.seen(), [object]);
    assert_eq!(rig.status(), 0, "idle once the whole response was read");
    assert_eq!(rig.aborts(), 0);
}

#[test]
fn registers_follow_the_specification_when_driven_by_hand() {
    let rig = rig();
    let header = rig.read(regs::HEADER);
    assert_eq!(header & 0xffff, regs::CAPABILITY_ID);
    assert_eq!(regs::header_version(header), 2);
    let object = request(b"abcd");
    for dword in dwords(&object) {
        rig.write(regs::WRITE_MAILBOX, dword);
        assert_eq!(rig.status(), 0, "nothing happens before Go");
    }
    rig.write(regs::CONTROL, regs::CONTROL_GO);
    assert_eq!(rig.status(), regs::STATUS_DATA_OBJECT_READY);
    let expected = dwords(&reversed(&object).unwrap());
    let mut got = Vec::new();
    for _ in &expected {
        let dword = rig.read(regs::READ_MAILBOX);
        // Reading does not advance; only writing the register does.
        assert_eq!(rig.read(regs::READ_MAILBOX), dword);
        got.push(dword);
        rig.write(regs::READ_MAILBOX, 0);
    }
    assert_eq!(got, expected);
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.read(regs::READ_MAILBOX), 0);
}

#[test]
fn abort_in_the_middle_of_a_request_recovers_the_mailbox() {
    let mut rig = rig();
    let object = request(b"half of this is written");
    for dword in dwords(&object).into_iter().take(3) {
        rig.write(regs::WRITE_MAILBOX, dword);
    }
    rig.write(regs::CONTROL, regs::CONTROL_ABORT);
    assert_eq!(rig.status(), 0);
    rig.assert_recovered();
    assert_eq!(
        rig.handler.seen().len(),
        1,
        "the half object never reached the handler"
    );
}

#[test]
fn abort_in_the_middle_of_a_response_recovers_the_mailbox() {
    let mut rig = rig();
    for dword in dwords(&request(b"a longer request for a longer answer")) {
        rig.write(regs::WRITE_MAILBOX, dword);
    }
    rig.write(regs::CONTROL, regs::CONTROL_GO);
    rig.read(regs::READ_MAILBOX);
    rig.write(regs::READ_MAILBOX, 0);
    rig.write(regs::CONTROL, regs::CONTROL_ABORT);
    assert_eq!(rig.status(), 0);
    rig.assert_recovered();
}

#[test]
fn an_unread_response_left_behind_is_aborted_before_the_next_exchange() {
    let mut rig = rig();
    for dword in dwords(&request(b"abandoned")) {
        rig.write(regs::WRITE_MAILBOX, dword);
    }
    rig.write(regs::CONTROL, regs::CONTROL_GO);
    assert_eq!(rig.status(), regs::STATUS_DATA_OBJECT_READY);
    rig.assert_recovered();
    assert_eq!(rig.aborts(), 1);
}

#[test]
fn an_object_whose_length_disagrees_sets_error_until_abort() {
    let mut rig = rig();
    let mut object = request(b"abcdefgh");
    object.truncate(object.len() - 4);
    let result = rig.mailbox.exchange(&object);
    assert_eq!(result, Err(MailboxError::DeviceError("DOE Error set")));
    assert_eq!(rig.aborts(), 1, "the driver aborted out of the error");
    assert!(rig.handler.seen().is_empty());
    // By hand: Error stays until Abort, and writes meanwhile change nothing.
    for dword in dwords(&object) {
        rig.write(regs::WRITE_MAILBOX, dword);
    }
    rig.write(regs::CONTROL, regs::CONTROL_GO);
    assert_eq!(rig.status(), regs::STATUS_ERROR);
    rig.write(regs::WRITE_MAILBOX, 0);
    assert_eq!(rig.status(), regs::STATUS_ERROR);
    rig.write(regs::CONTROL, regs::CONTROL_ABORT);
    assert_eq!(rig.status(), 0);
    rig.assert_recovered();
}

#[test]
fn writing_while_a_response_waits_is_an_error() {
    let rig = rig();
    for dword in dwords(&request(b"x")) {
        rig.write(regs::WRITE_MAILBOX, dword);
    }
    rig.write(regs::CONTROL, regs::CONTROL_GO);
    rig.write(regs::WRITE_MAILBOX, 1);
    assert_eq!(rig.status(), regs::STATUS_ERROR);
}

#[test]
fn a_slow_device_is_polled_until_ready_within_the_timeout() {
    let mut rig = rig();
    rig.function
        .lock()
        .unwrap()
        .set_latency(Some(Duration::from_millis(500)));
    let object = request(b"slow");
    let answer = rig.mailbox.exchange(&object).unwrap();
    assert_eq!(answer, reversed(&object).unwrap());
    use tdisp_host::tsm::Clock as _;
    let elapsed = rig.clock.now();
    assert!(elapsed >= Duration::from_millis(500) && elapsed < DOE_TIMEOUT);
    assert_eq!(rig.aborts(), 0);
}

#[test]
fn a_device_that_never_answers_times_out_after_one_second_and_is_aborted() {
    let mut rig = rig();
    rig.function.lock().unwrap().set_latency(None);
    assert_eq!(
        rig.mailbox.exchange(&request(b"lost")),
        Err(MailboxError::Timeout)
    );
    use tdisp_host::tsm::Clock as _;
    let elapsed = rig.clock.now();
    assert!(
        elapsed >= DOE_TIMEOUT,
        "waited the full second: {elapsed:?}"
    );
    assert!(elapsed < DOE_TIMEOUT + Duration::from_millis(10));
    assert_eq!(rig.aborts(), 1);
    assert_eq!(rig.status(), 0);
    rig.function
        .lock()
        .unwrap()
        .set_latency(Some(Duration::ZERO));
    rig.assert_recovered();
}

#[test]
fn hostile_response_lengths_are_refused_and_the_mailbox_recovers() {
    fn too_long(_: &[u8]) -> Result<Vec<u8>, MailboxError> {
        // Header claims 3 dwords, 5 follow.
        let mut object = object_of(DoeObjectType::SPDM, &[1; 12]);
        object[4] = 3;
        Ok(object)
    }
    fn huge(_: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let mut object = object_of(DoeObjectType::SPDM, &[1; 4]);
        object[4..8].copy_from_slice(&0x3_ffffu32.to_le_bytes());
        Ok(object)
    }
    fn refused(_: &[u8]) -> Result<Vec<u8>, MailboxError> {
        Err(MailboxError::DeviceError("cannot"))
    }
    for (reply, name) in [
        (too_long as Reply, "too long"),
        (huge, "huge"),
        (refused, "refused"),
    ] {
        let mut rig = rig_with(reply, 2);
        assert!(rig.mailbox.exchange(&request(b"q")).is_err(), "{name}");
        assert_eq!(rig.status(), 0, "{name}: idle after the driver's abort");
        assert_eq!(rig.aborts(), 1, "{name}");
    }
}

/// Connects a TSM through a DOE capability of `version` in front of the emulated DSM and
/// returns the discovery requests the device saw.
fn discovery_requests(version: u8) -> Vec<Vec<u8>> {
    #[derive(Clone)]
    struct Recording {
        dsm: Arc<Mutex<EmulatedDsm>>,
        seen: Arc<Mutex<Vec<Vec<u8>>>>,
    }
    impl DoeMailbox for Recording {
        fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
            self.seen.lock().unwrap().push(request.to_vec());
            self.dsm.exchange(request)
        }
    }
    let recording = Recording {
        dsm: Arc::new(Mutex::new(
            EmulatedDsm::new(DsmConfig::single_function(0x0101)).unwrap(),
        )),
        seen: Arc::default(),
    };
    let clock = ManualClock::new();
    let function = DoeFunction::with_clock(recording.clone(), Box::new(clock.clone()), version);
    let mailbox = RegisterMailbox::new(function, Box::new(clock)).unwrap();
    let mut tsm = Tsm::new();
    assert_eq!(
        tsm.probe(
            PciDeviceInfo::tee_io(0x0100),
            Box::new(mailbox),
            Box::new(PlainChannel::insecure_opt_in())
        ),
        ProbeOutcome::Handled
    );
    tsm.connect(0x0100).unwrap();
    // The whole life cycle runs over the registers.
    tsm.bind(
        0x0100,
        BindParams::new(InterfaceId::from_requester_id(0x0101), 1),
    )
    .unwrap();
    tsm.lock(0x0100).unwrap();
    tsm.start(0x0100).unwrap();
    assert_eq!(tsm.interface_state(0x0100).unwrap(), TdiState::Run);
    tsm.unbind(0x0100).unwrap();
    let seen = recording.seen.lock().unwrap().clone();
    seen.into_iter()
        .filter(|o| DoeObject::decode(o).unwrap().object_type == DoeObjectType::DISCOVERY)
        .collect()
}

#[test]
fn discovery_uses_the_version_the_capability_asks_for() {
    for (capability_version, discovery_version) in [(1, 0), (2, 2), (3, 2)] {
        let requests = discovery_requests(capability_version);
        assert_eq!(requests.len(), 2, "two protocols discovered");
        for object in requests {
            let payload = DoeObject::decode(&object).unwrap().payload;
            assert_eq!(
                payload[1], discovery_version,
                "capability version {capability_version}"
            );
        }
    }
}

#[test]
fn registers_that_are_not_a_doe_capability_are_refused() {
    struct NotDoe;
    impl DoeRegisters for NotDoe {
        fn read(&mut self, _offset: u16) -> u32 {
            0x0001
        }
        fn write(&mut self, _offset: u16, _value: u32) {}
    }
    assert!(RegisterMailbox::new(NotDoe, Box::new(ManualClock::new())).is_none());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn echo(request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        Ok(request.to_vec())
    }

    fn offset() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(regs::HEADER),
            Just(regs::CAPABILITIES),
            Just(regs::CONTROL),
            Just(regs::STATUS),
            Just(regs::WRITE_MAILBOX),
            Just(regs::READ_MAILBOX),
            any::<u16>(),
        ]
    }

    /// Register values served in turn, whatever is asked; writes are ignored.
    struct Lying {
        values: Vec<u32>,
        next: usize,
    }

    impl DoeRegisters for Lying {
        fn read(&mut self, offset: u16) -> u32 {
            if offset == regs::HEADER {
                return regs::CAPABILITY_ID | (2 << 16);
            }
            let value = self.values.get(self.next % self.values.len().max(1));
            self.next = self.next.wrapping_add(1);
            value.copied().unwrap_or(0)
        }
        fn write(&mut self, _offset: u16, _value: u32) {}
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a requester does to the registers, an abort brings the function back to
        /// idle and the next exchange works.
        #[test]
        fn any_register_sequence_is_recovered_by_an_abort(
            ops in proptest::collection::vec((offset(), any::<bool>(), any::<u32>()), 0..64)
        ) {
            let mut rig = rig_with(echo, 2);
            for (offset, write, value) in ops {
                if write {
                    rig.write(offset, value);
                } else {
                    rig.read(offset);
                }
            }
            rig.write(regs::CONTROL, regs::CONTROL_ABORT);
            prop_assert_eq!(rig.status(), 0);
            let object = request(b"still works");
            prop_assert_eq!(rig.mailbox.exchange(&object).unwrap(), object);
        }

        /// A device whose registers say anything never makes the driver panic or hang: it
        /// answers within the timeout budget of its clock.
        #[test]
        fn the_driver_survives_registers_that_lie(
            values in proptest::collection::vec(any::<u32>(), 0..32)
        ) {
            let clock = ManualClock::new();
            let registers = Lying { values, next: 0 };
            let mut mailbox = RegisterMailbox::new(registers, Box::new(clock.clone())).unwrap();
            let _ = mailbox.exchange(&request(b"anything"));
            use tdisp_host::tsm::Clock as _;
            // At most: wait out Busy, abort, Go and wait, abort again.
            prop_assert!(clock.now() <= DOE_TIMEOUT * 4 + Duration::from_millis(10));
        }
    }
}
