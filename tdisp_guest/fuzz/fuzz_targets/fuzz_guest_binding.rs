//! The guest's binding verifier against a host that edits genuine evidence: a report, chain,
//! session evidence and guest device id captured once from our TSM and emulated DSM over an
//! SPDM session, then changed by the fuzzer (byte edits, truncation, appended bytes) before
//! `verify_binding` sees them. It never panics, and it accepts only the unchanged inputs. (An
//! ECDSA signature `(r, s)` has a twin `(r, n - s)` that also verifies; byte edits do not
//! find it, and it would change nothing the signature vouches for.)

#![forbid(unsafe_code)]
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tdisp_guest::BindingInputs;
use tdisp_guest::BindingPolicy;
use tdisp_guest::verify_binding;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispReportType;

/// A genuine capture: [report, chain, evidence, guest device id], and the root.
struct Genuine {
    parts: [Vec<u8>; 4],
    root: Vec<u8>,
}

static GENUINE: LazyLock<Genuine> = LazyLock::new(|| {
    let assignment = EmulatedAssignment::single(0x0100, 0x0101, 1).expect("emulated device");
    let mut machine = assignment.machine(MachineConfig::new(1));
    machine
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .expect("negotiate");
    machine.request_lock_device_resources().expect("lock");
    let mut get = |t| machine.request_attestation_report(t).expect("report");
    Genuine {
        parts: [
            get(TdispReportType::InterfaceReport),
            get(TdispReportType::CertificateChain),
            get(TdispReportType::Measurements),
            get(TdispReportType::GuestDeviceId),
        ],
        root: assignment.root_der().to_vec(),
    }
});

#[derive(Arbitrary, Debug)]
struct Edit {
    part: u8,
    edits: Vec<(u16, u8)>,
    truncate: Option<u16>,
    append: Vec<u8>,
}

fuzz_target!(|edits: Vec<Edit>| {
    let genuine = &*GENUINE;
    let mut parts = genuine.parts.clone();
    for edit in edits.iter().take(8) {
        let part = &mut parts[usize::from(edit.part % 4)];
        for &(at, xor) in &edit.edits {
            if !part.is_empty() {
                let at = usize::from(at) % part.len();
                part[at] ^= xor;
            }
        }
        if let Some(len) = edit.truncate {
            part.truncate(usize::from(len));
        }
        part.extend_from_slice(&edit.append);
    }
    let policy = BindingPolicy::require(vec![genuine.root.clone()]);
    let [report, chain, evidence, guest_device_id] = &parts;
    let result = verify_binding(
        &policy,
        BindingInputs {
            report,
            chain,
            evidence,
            guest_device_id,
            nonce: None,
        },
    );
    if result.is_ok() {
        assert_eq!(
            parts, genuine.parts,
            "verify_binding accepted changed inputs"
        );
    }
});
