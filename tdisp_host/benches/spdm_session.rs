//! SPDM session establishment (VCA, digests, certificate chain, KEY_EXCHANGE, FINISH) between
//! our requester and our responder, and one TDISP command (GET_DEVICE_INTERFACE_STATE) inside
//! the session beside the same command over the plain channel, measured in the same run.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "a failed exchange fails the bench")]

use criterion::BatchSize;
use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::spdm::requester::SpdmRequester;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::SecureChannel;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::framing::spdm::decode_tdisp;
use tdisp_proto::framing::spdm::encode_tdisp;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;

const RID: u16 = 0x0101;

fn pair(identity: &DeviceIdentity) -> (SpdmRequester, SpdmResponder<EmulatedDsm>) {
    let dsm = EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap();
    (
        SpdmRequester::new(RequesterConfig::new(identity.root_der.clone())),
        SpdmResponder::new(ResponderConfig::new(identity.clone(), Vec::new()), dsm),
    )
}

fn state_request() -> Vec<u8> {
    let mut out = Vec::new();
    encode_tdisp(
        SPDM_VERSION_1_2,
        Direction::Request,
        &TdispMessage {
            interface_id: InterfaceId::from_requester_id(RID),
            body: TdispRequest::GetDeviceInterfaceState,
        },
        &mut out,
    )
    .unwrap();
    out
}

fn check(response: &[u8]) {
    let response = tdisp_host::tsm::doe::trim_vendor_defined_padding(response);
    let (_, message) = decode_tdisp::<TdispResponse>(response, Direction::Response).unwrap();
    assert!(matches!(
        message.body,
        TdispResponse::DeviceInterfaceState { .. }
    ));
}

fn bench(c: &mut Criterion) {
    let identity = DeviceIdentity::generate("bench device").unwrap();
    c.bench_function("spdm/session_establishment", |b| {
        b.iter_batched(
            || pair(&identity),
            |(mut requester, mut responder)| {
                black_box(requester.connect(&mut responder).unwrap());
            },
            BatchSize::SmallInput,
        );
    });

    let request = state_request();
    let mut group = c.benchmark_group("spdm/tdisp_get_state");
    let (mut requester, mut responder) = pair(&identity);
    requester.connect(&mut responder).unwrap();
    group.bench_function("in_session", |b| {
        b.iter(|| {
            let response = requester
                .send_in_session(&mut responder, black_box(&request))
                .unwrap();
            check(&response);
        });
    });
    let mut dsm = EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap();
    let mut plain = PlainChannel::insecure_opt_in();
    plain.establish(&mut dsm).unwrap();
    group.bench_function("plain_channel", |b| {
        b.iter(|| {
            let response = plain.exchange(&mut dsm, black_box(&request)).unwrap();
            check(&response);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
