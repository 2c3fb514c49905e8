//! A malicious host on a real VMBus channel: garbage, replayed answers, stale transaction ids,
//! lies about states, an extra range, silence. The guest refuses with the right error, never
//! panics and never hangs: every wait has an explicit timeout, and every interleaving the test
//! depends on is forced by a gate, not by sleeping.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap; a failure fails the test"
)]

#[expect(
    dead_code,
    reason = "the emulated-device helpers serve the other VMBus tests"
)]
mod common;

use async_trait::async_trait;
use common::Bus;
use common::TIMEOUT;
use futures::channel::oneshot;
use std::sync::mpsc;
use std::time::Duration;
use tdisp_guest::FlowError;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::PolicyViolation;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::accept_device;
use tdisp_guest::vmbus::VmbusTransport;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::vmbus::SharedGuestDevice;
use tdisp_host::vmbus::TdispVmbusDevice;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::MAX_REPORT_BUFFER;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::frame;
use tdisp_proto::wire::unframe;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::ring::IncomingPacket;

const HOST_FAILED: TdispGuestOperationError = TdispGuestOperationError::HostFailedToProcessCommand;
/// Short, explicit timeouts for the commands a silent host never answers.
const SHORT: Duration = Duration::from_millis(200);

/// Rewrites the honest host's n-th framed answer; `None` sends nothing.
type Tamper = Box<dyn FnMut(usize, Vec<u8>) -> Option<Vec<u8>> + Send>;

/// The real host device behind a tampering channel.
struct Scripted {
    honest: TdispVmbusDevice,
    tamper: Tamper,
    seen: usize,
    /// Holds the first answer until the test opens it.
    gate: Option<oneshot::Receiver<()>>,
    /// Tells the test that packet n arrived.
    arrived: Option<mpsc::Sender<usize>>,
}

#[async_trait]
impl SimpleVmbusDevice for Scripted {
    fn offer(&self) -> OfferParams {
        self.honest.offer()
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let index = self.seen;
        self.seen += 1;
        if let Some(arrived) = &self.arrived {
            let _ = arrived.send(index);
        }
        let honest = self.honest.handle_payload(packet.data());
        if index == 0
            && let Some(gate) = self.gate.take()
        {
            let _ = gate.await;
        }
        Ok((self.tamper)(index, honest))
    }
}

struct Malicious {
    client: TdispGuestClient<VmbusTransport>,
    host: SharedGuestDevice,
    _assignment: EmulatedAssignment,
}

impl Malicious {
    /// Negotiates and locks, both of which the test's host answers honestly.
    fn negotiate_and_lock(&mut self) {
        self.client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        self.client.request_lock_device_resources().unwrap();
    }
}

fn malicious(
    bus: &Bus,
    device_id: u64,
    tamper: impl FnMut(usize, Vec<u8>) -> Option<Vec<u8>> + Send + 'static,
    gate: Option<oneshot::Receiver<()>>,
    arrived: Option<mpsc::Sender<usize>>,
) -> Malicious {
    let assignment = EmulatedAssignment::single(
        u32::try_from(device_id).unwrap() * 0x100,
        Bus::requester_id(device_id),
        device_id,
    )
    .unwrap();
    let honest = TdispVmbusDevice::new(
        device_id,
        Box::new(assignment.machine(MachineConfig::new(device_id))),
    );
    let host = honest.shared();
    bus.offer(Scripted {
        honest,
        tamper: Box::new(tamper),
        seen: 0,
        gate,
        arrived,
    });
    Malicious {
        client: bus.open(device_id),
        host,
        _assignment: assignment,
    }
}

/// Decodes a framed answer, lets `edit` change it, and frames it again.
fn edit(framed: &[u8], edit: impl FnOnce(&mut ResponsePacket)) -> Vec<u8> {
    let mut response = ResponsePacket::decode(unframe(framed).unwrap()).unwrap();
    edit(&mut response);
    frame(&response.encode().unwrap()).unwrap()
}

/// Device 1 behind a host that answers honestly except for the lock (its second answer), which
/// it claims left the device running.
fn lying_about_the_lock(bus: &Bus) -> Malicious {
    malicious(
        bus,
        1,
        |index, honest| {
            Some(match index {
                1 => edit(&honest, |r| r.state_after = TdispTdiState::Run),
                _ => honest,
            })
        },
        None,
        None,
    )
}

fn host_state(host: &SharedGuestDevice) -> TdispTdiState {
    host.lock().unwrap().tdi_state()
}

#[test]
fn garbage_answers_are_refused_as_host_failures() {
    let bus = Bus::new();
    let garbage: [Vec<u8>; 5] = [
        vec![0xa5; 40],                    // not a frame
        vec![1, 2, 3],                     // shorter than a frame header
        vec![200, 0, 0, 0, 0, 0, 0, 0, 1], // a frame claiming more than it carries
        frame(&[0xff; 7]).unwrap(),        // a frame around bytes that are not protobuf
        frame(&[0x08, 0x2a]).unwrap(),     // result 42: no such code
    ];
    for (id, bytes) in (1..).zip(garbage) {
        let mut device = malicious(&bus, id, move |_, _| Some(bytes.clone()), None, None);
        assert_eq!(
            device
                .client
                .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
            Err(HOST_FAILED),
            "device {id}"
        );
        assert_ne!(device.client.state(), TdispTdiState::Unlocked);
        assert_eq!(
            device.client.request_lock_device_resources(),
            Err(HOST_FAILED)
        );
    }
}

#[test]
fn replayed_answers_are_refused() {
    let bus = Bus::new();
    // Every answer after the first is the first answer again (the negotiation).
    let mut first = None;
    let mut device = malicious(
        &bus,
        1,
        move |_, honest| Some(first.get_or_insert(honest).clone()),
        None,
        None,
    );
    device
        .client
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    assert_eq!(
        device.client.request_lock_device_resources(),
        Err(HOST_FAILED)
    );
    assert_eq!(device.client.state(), TdispTdiState::Error);
    assert_eq!(
        device
            .client
            .request_attestation_report(TdispReportType::InterfaceReport),
        Err(HOST_FAILED)
    );
    assert_eq!(device.client.faults(), 2);

    // A lock's success replayed as the answer to start.
    let mut lock_answer = None;
    let mut device = malicious(
        &bus,
        2,
        move |index, honest| match index {
            1 => Some(lock_answer.insert(honest).clone()),
            2 => lock_answer.clone(),
            _ => Some(honest),
        },
        None,
        None,
    );
    device.negotiate_and_lock();
    assert_eq!(device.client.request_start_tdi(), Err(HOST_FAILED));
    assert_eq!(device.client.state(), TdispTdiState::Error);
    assert_eq!(
        host_state(&device.host),
        TdispTdiState::Run,
        "the host did start"
    );
    // The guest recovers a known state on both sides by unbinding.
    device
        .client
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    assert_eq!(device.client.state(), TdispTdiState::Unlocked);
    assert_eq!(host_state(&device.host), TdispTdiState::Unlocked);
}

#[test]
fn an_answer_for_a_stale_transaction_is_dropped_and_the_current_one_is_used() {
    let bus = Bus::new();
    let (open_gate, gate) = oneshot::channel();
    let mut device = malicious(&bus, 1, |_, honest| Some(honest), Some(gate), None);
    device.client.transport_mut().set_timeout(SHORT);
    // The host holds its first answer past the timeout: transaction 1 is given up.
    assert_eq!(
        device
            .client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
        Err(HOST_FAILED)
    );
    // Now the late answer for transaction 1 goes out, then the answer for transaction 2.
    open_gate.send(()).unwrap();
    device.client.transport_mut().set_timeout(TIMEOUT);
    let info = device
        .client
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    assert_eq!(info.tdisp_device_id, 1);
    assert_eq!(device.client.transport().dropped_packets(), 1);
    assert_eq!(device.client.state(), TdispTdiState::Unlocked);
    assert_eq!(host_state(&device.host), TdispTdiState::Unlocked);
}

#[test]
fn lies_about_states_are_refused_and_unbind_recovers_agreement() {
    let bus = Bus::new();
    // The lock succeeds but the host claims the device is running.
    let mut device = lying_about_the_lock(&bus);
    device
        .client
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    assert_eq!(
        device.client.request_lock_device_resources(),
        Err(HOST_FAILED)
    );
    assert_eq!(device.client.state(), TdispTdiState::Error);
    device
        .client
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    assert_eq!(
        (device.client.state(), host_state(&device.host)),
        (TdispTdiState::Unlocked, TdispTdiState::Unlocked)
    );

    // A report served while the host says the device is unlocked.
    let mut device = malicious(
        &bus,
        2,
        |index, honest| {
            Some(match index {
                2 => edit(&honest, |r| {
                    r.state_before = TdispTdiState::Unlocked;
                    r.state_after = TdispTdiState::Unlocked;
                }),
                _ => honest,
            })
        },
        None,
        None,
    );
    device.negotiate_and_lock();
    assert_eq!(
        device
            .client
            .request_attestation_report(TdispReportType::InterfaceReport),
        Err(HOST_FAILED)
    );
    assert_eq!(device.client.faults(), 1);
}

#[test]
fn an_extra_range_in_the_report_is_refused_and_the_device_unbound() {
    let bus = Bus::new();
    let extra = MmioRange {
        first_page: 0x7_0000_0000,
        number_of_pages: 1,
        attributes: MmioRangeAttributes::new().with_non_tee_memory(true),
        range_id: 5,
    };
    let mut device = malicious(
        &bus,
        1,
        move |_, honest| {
            Some(edit(&honest, |r| {
                if let Ok(GuestReply::GetAttestationReport { report, .. }) = &mut r.result
                    && let Ok(mut decoded) = DeviceInterfaceReport::decode(report)
                {
                    decoded.mmio_ranges.push(extra);
                    *report = decoded.to_bytes();
                }
            }))
        },
        None,
        None,
    );
    let policy = InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        ..Default::default()
    };
    let error = accept_device(
        &mut device.client,
        TdispGuestProtocolType::AmdSevTioV1,
        &policy,
    )
    .unwrap_err();
    let FlowError::Policy(PolicyViolation::NonTeeRange { index }) = error else {
        panic!("expected the extra non-TEE range to be refused, got {error}");
    };
    assert!(index > 0);
    // The flow unbound the device on both sides.
    assert_eq!(
        (device.client.state(), host_state(&device.host)),
        (TdispTdiState::Unlocked, TdispTdiState::Unlocked)
    );
}

#[test]
fn a_silent_host_times_out_and_a_waiting_command_can_be_cancelled() {
    let bus = Bus::new();
    let (arrived_tx, arrived) = mpsc::channel();
    // The host never answers its first two commands.
    let device = malicious(
        &bus,
        1,
        |index, honest| (index >= 2).then_some(honest),
        None,
        Some(arrived_tx),
    );
    let mut client = device.client;
    client.transport_mut().set_timeout(SHORT);
    assert_eq!(
        client.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
        Err(HOST_FAILED)
    );
    assert_eq!(arrived.recv_timeout(TIMEOUT), Ok(0));

    // A command with a long timeout, cancelled once the host has it.
    client.transport_mut().set_timeout(TIMEOUT);
    let cancel = client.transport().cancel_handle();
    let waiting = std::thread::spawn(move || {
        let result = client.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1);
        (result, client)
    });
    assert_eq!(arrived.recv_timeout(TIMEOUT), Ok(1));
    // The command is registered before its packet is sent, so it is cancellable now.
    assert!(cancel.cancel());
    let (result, mut client) = waiting.join().unwrap();
    assert_eq!(result, Err(HOST_FAILED));
    assert!(!cancel.cancel(), "nothing left in flight");

    // The channel still works for the next command.
    client
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    assert_eq!(host_state(&device.host), TdispTdiState::Unlocked);
}

#[test]
fn a_maximal_report_crosses_the_channel_and_a_larger_one_never_does() {
    let bus = Bus::new();
    let mut device = malicious(
        &bus,
        1,
        |index, honest| {
            Some(match index {
                2 => edit(&honest, |r| {
                    if let Ok(GuestReply::GetAttestationReport { report, .. }) = &mut r.result {
                        *report = vec![0x5a; MAX_REPORT_BUFFER];
                    }
                }),
                3 => {
                    // One byte over the cap, framed by hand since the encoder refuses it.
                    let response = tdisp_proto::wire::proto::GuestToHostResponse {
                        result: 1,
                        tdi_state_before: 2,
                        tdi_state_after: 2,
                        response: Some(
                            tdisp_proto::wire::proto::guest_to_host_response::Response::GetTdiReport(
                                tdisp_proto::wire::proto::TdispCommandResponseGetTdiReport {
                                    report_type: 2,
                                    report_buffer: vec![0x5a; MAX_REPORT_BUFFER + 1],
                                },
                            ),
                        ),
                    };
                    frame(&prost::Message::encode_to_vec(&response)).unwrap()
                }
                _ => honest,
            })
        },
        None,
        None,
    );
    device.negotiate_and_lock();
    let report = device
        .client
        .request_attestation_report(TdispReportType::InterfaceReport)
        .unwrap();
    assert_eq!(report.len(), MAX_REPORT_BUFFER);
    assert_eq!(
        device
            .client
            .request_attestation_report(TdispReportType::InterfaceReport),
        Err(HOST_FAILED)
    );
}

#[test]
fn the_flow_unbinds_when_the_host_lies_about_a_successful_lock() {
    let bus = Bus::new();
    // The host locks the device, then claims the lock left it running.
    let mut device = lying_about_the_lock(&bus);
    let error = accept_device(
        &mut device.client,
        TdispGuestProtocolType::AmdSevTioV1,
        &InterfacePolicy::default(),
    )
    .unwrap_err();
    assert_eq!(error, FlowError::Lock(HOST_FAILED));
    // The guest refused the lock and unbound: the device is not left locked to it.
    assert_eq!(
        (device.client.state(), host_state(&device.host)),
        (TdispTdiState::Unlocked, TdispTdiState::Unlocked)
    );
}

#[test]
fn the_flow_unbinds_when_the_lock_answer_never_comes() {
    let bus = Bus::new();
    // The host locks the device but its answer is lost.
    let mut device = malicious(
        &bus,
        1,
        |index, honest| (index != 1).then_some(honest),
        None,
        None,
    );
    device.client.transport_mut().set_timeout(SHORT);
    let error = accept_device(
        &mut device.client,
        TdispGuestProtocolType::AmdSevTioV1,
        &InterfacePolicy::default(),
    )
    .unwrap_err();
    assert_eq!(error, FlowError::Lock(HOST_FAILED));
    assert_eq!(
        (device.client.state(), host_state(&device.host)),
        (TdispTdiState::Unlocked, TdispTdiState::Unlocked),
        "a lock whose outcome the guest does not know is undone"
    );
}
