//! The TSM over an SPDM session ([`SpdmChannel`]) to the emulated DSM behind our SPDM
//! responder: the whole TDISP cycle runs inside the session, the device's chain and signed
//! measurements are served and verify, and the plain channel is refused by default.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::dsm::config::DsmConfig;
use tdisp_host::spdm::cert;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::channel::SpdmChannel;
use tdisp_host::spdm::crypto;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::ProbeOutcome;
use tdisp_host::tsm::Tsm;
use tdisp_host::tsm::TsmDeviceState;
use tdisp_host::tsm::TsmError;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;

const ADDRESS: u32 = 0x0300;
const REQUESTER_ID: u16 = 0x0301;

type Responder = SpdmResponder<Arc<Mutex<EmulatedDsm>>>;

fn device(identity: DeviceIdentity) -> Responder {
    let dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap();
    SpdmResponder::new(
        ResponderConfig::new(
            identity,
            tdisp_host::emulated::EmulatedAssignment::measurements(),
        ),
        Arc::new(Mutex::new(dsm)),
    )
}

#[test]
fn the_tdisp_cycle_runs_inside_the_session_and_the_device_attests() {
    let identity = DeviceIdentity::generate("device").unwrap();
    let root = identity.root_der.clone();
    let responder = Arc::new(Mutex::new(device(identity)));
    let mut tsm = Tsm::new();
    let info = PciDeviceInfo::tee_io(ADDRESS);
    assert_eq!(
        tsm.probe(
            info,
            Box::new(responder.clone()),
            Box::new(SpdmChannel::new(RequesterConfig::new(root.clone())))
        ),
        ProbeOutcome::Handled
    );
    tsm.connect(ADDRESS).unwrap();
    assert_eq!(tsm.is_channel_secure(ADDRESS), Some(true));
    assert!(responder.lock().unwrap().is_established());

    tsm.bind(
        ADDRESS,
        BindParams::new(InterfaceId::from_requester_id(REQUESTER_ID), 7),
    )
    .unwrap();
    tsm.lock(ADDRESS).unwrap();
    let report = tsm.read_interface_report(ADDRESS).unwrap();
    assert!(!report.is_empty());

    // Session evidence while locked: the device signed this session's key exchange and,
    // inside it, measurements whose binding block holds this report's digest and the TH1.
    let chain = tsm.certificate_chain(ADDRESS).unwrap();
    let leaf = cert::validate_slot(&chain, &root).unwrap().leaf_key;
    let evidence =
        SessionEvidence::decode(&tsm.signed_measurements(ADDRESS).unwrap().unwrap()).unwrap();
    crypto::verify(
        &leaf,
        crypto::context::KEY_EXCHANGE_RSP,
        &crypto::hash(&evidence.key_exchange_transcript(&chain)),
        &evidence.key_exchange_signature,
    )
    .unwrap();
    crypto::verify(
        &leaf,
        crypto::context::MEASUREMENTS,
        &crypto::hash(&evidence.measurements_transcript()),
        &evidence.measurements_signature,
    )
    .unwrap();
    assert_eq!(
        Some(evidence.session_id()),
        responder.lock().unwrap().session_id()
    );
    let bindings = evidence.bindings().unwrap();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].report_digest, crypto::hash(&report));
    assert_eq!(bindings[0].session_th1, evidence.th1(&chain));
    assert_eq!(
        bindings[0].interface,
        InterfaceId::from_requester_id(REQUESTER_ID)
    );
    assert_eq!(bindings[0].state, TdiState::ConfigLocked);

    tsm.start(ADDRESS).unwrap();
    assert_eq!(tsm.interface_state(ADDRESS).unwrap(), TdiState::Run);
    tsm.stop(ADDRESS).unwrap();
    assert_eq!(
        tsm.interface_state(ADDRESS).unwrap(),
        TdiState::ConfigUnlocked
    );

    // Unlocked, the TDI has no report and the device binds none; the rest still verifies.
    let evidence =
        SessionEvidence::decode(&tsm.signed_measurements(ADDRESS).unwrap().unwrap()).unwrap();
    assert_eq!(evidence.bindings().unwrap(), Vec::new());
    assert_eq!(evidence.blocks().unwrap().len(), 1);
    crypto::verify(
        &leaf,
        crypto::context::MEASUREMENTS,
        &crypto::hash(&evidence.measurements_transcript()),
        &evidence.measurements_signature,
    )
    .unwrap();

    tsm.unbind(ADDRESS).unwrap();
    tsm.disconnect(ADDRESS).unwrap();
    assert_eq!(responder.lock().unwrap().session_id(), None);
}

#[test]
fn the_plain_channel_is_refused_unless_opted_in() {
    let dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap();
    let mut tsm = Tsm::new();
    tsm.probe(
        PciDeviceInfo::tee_io(ADDRESS),
        Box::new(dsm),
        Box::new(PlainChannel::new()),
    );
    assert!(matches!(tsm.connect(ADDRESS), Err(TsmError::Channel(_))));
    assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Init));
    assert_eq!(tsm.certificate_chain(ADDRESS), None);
}

#[test]
fn a_device_under_another_root_is_not_connected_and_a_later_connect_can_succeed() {
    let identity = DeviceIdentity::generate("device").unwrap();
    let wrong_root = DeviceIdentity::generate("other").unwrap().root_der;
    let mut tsm = Tsm::new();
    tsm.probe(
        PciDeviceInfo::tee_io(ADDRESS),
        Box::new(device(identity)),
        Box::new(SpdmChannel::new(RequesterConfig::new(wrong_root))),
    );
    assert!(tsm.connect(ADDRESS).is_err());
    assert_eq!(tsm.device_state(ADDRESS), Some(TsmDeviceState::Init));
    assert_eq!(tsm.certificate_chain(ADDRESS), None);
    // Still refused on retry: nothing about the failed attempt was kept.
    assert!(tsm.connect(ADDRESS).is_err());
}
