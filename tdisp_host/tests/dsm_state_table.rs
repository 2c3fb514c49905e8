//! Every (TDI state, request) pair of the PCIe TDI state machine against the emulated DSM: the
//! expected response (success or the TDISP_ERROR code) and the state the TDI is left in.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use tdisp_host::dsm::ConfigChange;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::dsm::config::BarConfig;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::pcie::vdm::VendorDefinedBody;

const RID: u16 = 0x0108;
const BAR2: u64 = 0xe000_0000;
/// The stream the RUN setup binds; the table's BIND uses another one.
const BOUND_STREAM: u8 = 7;

fn tdi() -> InterfaceId {
    InterfaceId::from_requester_id(RID)
}

fn config() -> DsmConfig {
    let mut config = DsmConfig::single_function(RID);
    config.functions[0].bars.push(BarConfig {
        index: 2,
        address: BAR2,
        size: 0x2000,
        non_tee: false,
        attributes_updatable: true,
    });
    config
}

fn lock_params() -> LockInterfaceParams {
    LockInterfaceParams {
        flags: LockInterfaceFlags::new().with_bind_p2p(true),
        ..Default::default()
    }
}

/// A device whose TDI is in `state`, plus the nonce of its current lock if any.
fn device_in(state: TdiState) -> (EmulatedDsm, [u8; 32]) {
    let mut dsm = EmulatedDsm::new(config()).unwrap();
    let mut nonce = [0; 32];
    if state != TdiState::ConfigUnlocked {
        match dsm.respond(tdi(), &TdispRequest::LockInterface(lock_params())) {
            TdispResponse::LockInterface { nonce: n } => nonce = n,
            other => panic!("lock failed: {other:?}"),
        }
    }
    if matches!(state, TdiState::Run | TdiState::Error) {
        assert_eq!(
            dsm.respond(tdi(), &TdispRequest::StartInterface { nonce }),
            TdispResponse::StartInterface
        );
        assert_eq!(
            dsm.respond(
                tdi(),
                &TdispRequest::BindP2pStream {
                    p2p_stream_id: BOUND_STREAM,
                    stream_config: None
                }
            ),
            TdispResponse::BindP2pStream
        );
    }
    if state == TdiState::Error {
        let errored = dsm
            .apply_config_change(ConfigChange::MoveBar {
                requester_id: RID,
                bar: 0,
                new_address: 0xd000_0000,
            })
            .unwrap();
        assert_eq!(errored, vec![RID]);
    }
    assert_eq!(dsm.tdi_state(RID), Some(state));
    (dsm, nonce)
}

/// One request of each of the twelve codes, well formed; START carries the right nonce.
fn requests(nonce: [u8; 32]) -> Vec<(&'static str, TdispRequest)> {
    vec![
        ("GET_TDISP_VERSION", TdispRequest::GetVersion),
        (
            "GET_TDISP_CAPABILITIES",
            TdispRequest::GetCapabilities { tsm_caps: 0 },
        ),
        ("LOCK_INTERFACE", TdispRequest::LockInterface(lock_params())),
        (
            "GET_DEVICE_INTERFACE_REPORT",
            TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 64,
            },
        ),
        (
            "GET_DEVICE_INTERFACE_STATE",
            TdispRequest::GetDeviceInterfaceState,
        ),
        ("START_INTERFACE", TdispRequest::StartInterface { nonce }),
        ("STOP_INTERFACE", TdispRequest::StopInterface),
        (
            "BIND_P2P_STREAM",
            TdispRequest::BindP2pStream {
                p2p_stream_id: 1,
                stream_config: None,
            },
        ),
        (
            "UNBIND_P2P_STREAM",
            TdispRequest::UnbindP2pStream {
                p2p_stream_id: BOUND_STREAM,
            },
        ),
        (
            "SET_MMIO_ATTRIBUTE",
            TdispRequest::SetMmioAttribute(MmioRange {
                first_page: BAR2,
                number_of_pages: 2,
                attributes: MmioRangeAttributes::new()
                    .with_attributes_updatable(true)
                    .with_non_tee_memory(true),
                range_id: 2,
            }),
        ),
        (
            "VDM",
            TdispRequest::Vdm(VendorDefinedBody {
                registry_id: 0,
                vendor_id: vec![0x86, 0x80],
                data: vec![1],
            }),
        ),
        (
            "SET_TDISP_CONFIG",
            TdispRequest::SetTdispConfig { dsm_config: 0 },
        ),
    ]
}

/// `None` is success; `Some(code)` a TDISP_ERROR with that code.
type Expected = (Option<TdispErrorCode>, TdiState);

fn expected(state: TdiState, request: &str) -> Expected {
    use TdiState::ConfigLocked as L;
    use TdiState::ConfigUnlocked as U;
    use TdiState::Error as E;
    use TdiState::Run as R;
    const IIS: Option<TdispErrorCode> = Some(TdispErrorCode::INVALID_INTERFACE_STATE);
    const UNSUPPORTED: Option<TdispErrorCode> = Some(TdispErrorCode::UNSUPPORTED_REQUEST);
    match (state, request) {
        (s, "GET_TDISP_VERSION" | "GET_TDISP_CAPABILITIES" | "GET_DEVICE_INTERFACE_STATE") => {
            (None, s)
        }
        (_, "STOP_INTERFACE") => (None, U),
        (s, "VDM") => (UNSUPPORTED, s),

        (U, "LOCK_INTERFACE") => (None, L),
        (U, "SET_TDISP_CONFIG") => (None, U),
        (U, _) => (IIS, U),

        (L, "GET_DEVICE_INTERFACE_REPORT" | "SET_MMIO_ATTRIBUTE") => (None, L),
        (L, "START_INTERFACE") => (None, R),
        (L, _) => (IIS, L),

        (R, "GET_DEVICE_INTERFACE_REPORT" | "SET_MMIO_ATTRIBUTE") => (None, R),
        (R, "BIND_P2P_STREAM" | "UNBIND_P2P_STREAM") => (None, R),
        (R, _) => (IIS, R),

        (E, _) => (IIS, E),
    }
}

#[test]
fn every_state_request_pair_answers_as_the_specification_says() {
    let states = [
        TdiState::ConfigUnlocked,
        TdiState::ConfigLocked,
        TdiState::Run,
        TdiState::Error,
    ];
    let mut checked = 0;
    for state in states {
        let (_, nonce) = device_in(state);
        for (name, request) in requests(nonce) {
            // A fresh device per pair: each answer depends only on (state, request).
            let (mut dsm, nonce) = device_in(state);
            let request = match request {
                TdispRequest::StartInterface { .. } => TdispRequest::StartInterface { nonce },
                other => other,
            };
            let response = dsm.respond(tdi(), &request);
            let got_code = match &response {
                TdispResponse::Error(e) => Some(e.code),
                _ => None,
            };
            let (want_code, want_state) = expected(state, name);
            assert_eq!(
                got_code, want_code,
                "{state:?} x {name}: response {response:?}"
            );
            if want_code.is_none() {
                assert_eq!(
                    request.message_type().response_code(),
                    Some(response.message_type()),
                    "{state:?} x {name}: {response:?} does not answer the request"
                );
            }
            assert_eq!(
                dsm.tdi_state(RID),
                Some(want_state),
                "{state:?} x {name}: next state"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 12);
}
