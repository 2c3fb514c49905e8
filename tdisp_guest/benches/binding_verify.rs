//! The guest's binding check (`verify_binding`) on genuine evidence from our TSM and emulated
//! DSM, beside its floor measured in the same run: the three ECDSA P-384 verifications it
//! cannot avoid (the leaf certificate's, the key exchange's and the measurements') done bare
//! on the same inputs. What separates the two is parsing, hashing the transcripts and the
//! report, and the decisions.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "a failed check fails the bench")]

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use tdisp_guest::BindingInputs;
use tdisp_guest::BindingPolicy;
use tdisp_guest::verify_binding;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispReportType;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::evidence::cert::validate_slot;
use tdisp_proto::evidence::signature::context;
use tdisp_proto::evidence::signature::hash;
use tdisp_proto::evidence::signature::verify;

fn bench(c: &mut Criterion) {
    let assignment = EmulatedAssignment::single(0x0100, 0x0101, 1).unwrap();
    let mut machine = assignment.machine(MachineConfig::new(1));
    machine
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    machine.request_lock_device_resources().unwrap();
    let mut get = |t| machine.request_attestation_report(t).unwrap();
    let report = get(TdispReportType::InterfaceReport);
    let chain = get(TdispReportType::CertificateChain);
    let evidence = get(TdispReportType::Measurements);
    let guest_device_id = get(TdispReportType::GuestDeviceId);
    let root = assignment.root_der().to_vec();
    let policy = BindingPolicy::require(vec![root.clone()]);
    let inputs = BindingInputs {
        report: &report,
        chain: &chain,
        evidence: &evidence,
        guest_device_id: &guest_device_id,
        nonce: None,
    };

    // The floor's inputs, prepared outside the loop.
    let leaf = validate_slot(&chain, &root).unwrap().leaf_key;
    let decoded = SessionEvidence::decode(&evidence).unwrap();
    let key_exchange_hash = hash(&decoded.key_exchange_transcript(&chain));
    let measurements_hash = hash(&decoded.measurements_transcript());

    let mut group = c.benchmark_group("binding");
    group.bench_function("verify_binding", |b| {
        b.iter(|| {
            let verified = verify_binding(&policy, black_box(inputs)).unwrap();
            assert_eq!(verified.report_digest, hash(&report));
        });
    });
    group.bench_function("reference_three_p384_verifications", |b| {
        b.iter(|| {
            // The leaf certificate's signature (inside validate_slot, with its parsing), then
            // the two SPDM signatures.
            let chain = validate_slot(black_box(&chain), &root).unwrap();
            assert_eq!(chain.leaf_key, leaf);
            verify(
                &leaf,
                context::KEY_EXCHANGE_RSP,
                black_box(&key_exchange_hash),
                &decoded.key_exchange_signature,
            )
            .unwrap();
            verify(
                &leaf,
                context::MEASUREMENTS,
                black_box(&measurements_hash),
                &decoded.measurements_signature,
            )
            .unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
