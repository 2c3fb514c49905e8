//! A full negotiate -> lock -> report -> start -> unbind cycle through the host stack (state
//! machine, TSM, plain channel, DOE, emulated DSM), as guest packets and as direct trait calls,
//! with two references measured in the same run: the same TDISP requests typed straight into the
//! DSM (no framing, no TSM) and the rules alone (`tdisp_proto`'s reference model, no device).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "a failed cycle fails the bench")]

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::testing::reference::ReferenceModel;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::ResponsePacket;

const DEVICE: u64 = 1;
const RID: u16 = 0x0101;

fn cycle<T: TdispGuestRequestInterface>(target: &mut T) -> usize {
    target
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    target.request_lock_device_resources().unwrap();
    let report = target
        .request_attestation_report(TdispReportType::InterfaceReport)
        .unwrap();
    target.request_start_tdi().unwrap();
    target
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    report.len()
}

fn packets() -> Vec<Vec<u8>> {
    [
        GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        GuestCommand::LockDeviceResources,
        GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
        GuestCommand::StartTdi,
        GuestCommand::Unbind(TdispGuestUnbindReason::Graceful),
    ]
    .into_iter()
    .map(|command| {
        CommandPacket {
            device_id: DEVICE,
            command,
        }
        .encode()
    })
    .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("tdisp_cycle");

    let assignment = EmulatedAssignment::single(0x0100, RID, DEVICE).unwrap();
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(
        DEVICE,
        Box::new(assignment.machine(MachineConfig::new(DEVICE))),
    );
    let packets = packets();
    // The measured loop must be the successful cycle, not a string of error replies.
    for _ in 0..2 {
        for packet in &packets {
            let reply = ResponsePacket::decode(&dispatcher.handle(packet)).unwrap();
            assert!(reply.result.is_ok(), "{reply:?}");
        }
    }
    group.bench_function("packets_dispatcher_tsm_dsm", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for packet in &packets {
                bytes += dispatcher.handle(black_box(packet)).len();
            }
            bytes
        });
    });

    let assignment = EmulatedAssignment::single(0x0100, RID, DEVICE).unwrap();
    let mut machine = assignment.machine(MachineConfig::new(DEVICE));
    group.bench_function("trait_machine_tsm_dsm", |b| b.iter(|| cycle(&mut machine)));

    let mut dsm = EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap();
    let tdi = InterfaceId::from_requester_id(RID);
    group.bench_function("reference_dsm_direct", |b| {
        b.iter(|| {
            let TdispResponse::LockInterface { nonce } =
                dsm.respond(tdi, &TdispRequest::LockInterface(Default::default()))
            else {
                unreachable!("lock from CONFIG_UNLOCKED succeeds");
            };
            let report = dsm.respond(
                tdi,
                &TdispRequest::GetDeviceInterfaceReport {
                    offset: 0,
                    length: 4096,
                },
            );
            dsm.respond(tdi, &TdispRequest::StartInterface { nonce });
            dsm.respond(tdi, &TdispRequest::StopInterface);
            black_box(report)
        });
    });

    let mut model = ReferenceModel::default();
    group.bench_function("reference_rules_only", |b| b.iter(|| cycle(&mut model)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
