//! spdm-emu's socket framing: golden bytes, and our requester against our responder over TCP
//! loopback in that framing (the same path an interop run takes against DMTF's emulators),
//! with identities loaded from PEM/DER as an interop run loads spdm-emu's sample files.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use std::net::TcpListener;
use std::net::TcpStream;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::dsm::config::DsmConfig;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::cert::LoadError;
use tdisp_host::spdm::cert::load_certificate;
use tdisp_host::spdm::cert::load_certificates;
use tdisp_host::spdm::cert::load_signing_key;
use tdisp_host::spdm::emu_socket::*;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::spdm::requester::SpdmRequester;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;

#[test]
fn frame_golden_bytes() {
    let frame = Frame::new(COMMAND_NORMAL, vec![0x01, 0x00, 0x01, 0x00, 3, 0, 0, 0]);
    let mut out = Vec::new();
    frame.write_to(&mut out).unwrap();
    assert_eq!(
        out,
        [
            0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 8, 0x01, 0x00, 0x01, 0x00, 3, 0, 0, 0
        ]
    );
    assert_eq!(Frame::read_from(out.as_slice()).unwrap(), frame);
    // Another transport (MCTP = 1) and an oversized payload are refused.
    let mut mctp = out.clone();
    mctp[7] = 1;
    assert!(matches!(
        Frame::read_from(mctp.as_slice()),
        Err(EmuSocketError::Transport(1))
    ));
    let mut huge = out.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Frame::read_from(huge.as_slice()),
        Err(EmuSocketError::TooLarge(_))
    ));
}

#[test]
fn our_requester_and_responder_hold_a_session_over_tcp_in_spdm_emu_framing() {
    let identity = DeviceIdentity::generate("tcp device").unwrap();
    let root = identity.root_der.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101)).unwrap();
        let mut responder = SpdmResponder::new(ResponderConfig::new(identity, Vec::new()), dsm);
        let (stream, _) = listener.accept().unwrap();
        serve_connection(stream, &mut responder).unwrap()
    });
    let mut mailbox = EmuSocketMailbox::new(TcpStream::connect(address).unwrap());
    mailbox.test().unwrap();
    let mut requester = SpdmRequester::new(RequesterConfig::new(root));
    requester.connect(&mut mailbox).unwrap();
    requester.end_session(&mut mailbox).unwrap();
    mailbox.shutdown().unwrap();
    assert_eq!(server.join().unwrap(), ServeOutcome::Shutdown);
}

/// A generated identity as the files an operator would pass: root, chain and key, in PEM.
struct IdentityFiles {
    root_pem: String,
    chain_pem: String,
    key_pem: String,
}

fn identity_files(identity: &DeviceIdentity) -> IdentityFiles {
    use p384::pkcs8::EncodePrivateKey;
    let pem = |der: &[u8]| der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der);
    // The slot holds Length, Reserved, RootHash, then the DER certificates (root first).
    let certificates = load_certificates(&identity.slot[4 + 48..]).unwrap();
    let chain_pem = certificates.iter().map(|c| pem(c).unwrap()).collect();
    let secret = p384::SecretKey::from(identity.leaf_key.as_nonzero_scalar());
    IdentityFiles {
        root_pem: pem(&identity.root_der).unwrap(),
        chain_pem,
        key_pem: secret
            .to_pkcs8_pem(der::pem::LineEnding::LF)
            .unwrap()
            .to_string(),
    }
}

#[test]
fn an_identity_loads_from_pem_files_and_equals_the_der_one() {
    let identity = DeviceIdentity::generate("file device").unwrap();
    let files = identity_files(&identity);
    let loaded = DeviceIdentity::load(
        files.root_pem.as_bytes(),
        files.chain_pem.as_bytes(),
        files.key_pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(loaded.slot, identity.slot);
    assert_eq!(loaded.root_der, identity.root_der);
    // DER chain and SEC1 DER key load too.
    let chain_der = identity.slot[4 + 48..].to_vec();
    let sec1 = p384::SecretKey::from(identity.leaf_key.as_nonzero_scalar())
        .to_sec1_der()
        .unwrap();
    let loaded = DeviceIdentity::load(&identity.root_der, &chain_der, &sec1).unwrap();
    assert_eq!(loaded.slot, identity.slot);
}

#[test]
fn an_identity_whose_key_or_root_does_not_match_is_refused() {
    let identity = DeviceIdentity::generate("file device").unwrap();
    let other = DeviceIdentity::generate("other device").unwrap();
    let files = identity_files(&identity);
    let other_files = identity_files(&other);
    assert_eq!(
        DeviceIdentity::load(
            files.root_pem.as_bytes(),
            files.chain_pem.as_bytes(),
            other_files.key_pem.as_bytes(),
        )
        .err(),
        Some(LoadError::KeyMismatch)
    );
    assert!(matches!(
        DeviceIdentity::load(
            other_files.root_pem.as_bytes(),
            files.chain_pem.as_bytes(),
            files.key_pem.as_bytes(),
        ),
        Err(LoadError::Chain(_))
    ));
    assert_eq!(
        load_certificate(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").err(),
        Some(LoadError::Label {
            found: "PRIVATE KEY".into(),
            expected: "CERTIFICATE",
        })
    );
    assert_eq!(load_certificate(b"").err(), Some(LoadError::Empty));
    assert!(matches!(
        load_certificates(&[0x30, 0x82, 0xff]),
        Err(LoadError::Certificate(0))
    ));
    assert_eq!(load_signing_key(b"not a key").err(), Some(LoadError::Key));
}

#[test]
fn the_server_survives_a_vanished_client_then_serves_a_tdisp_cycle_until_shutdown() {
    use std::io::Write;
    use tdisp_host::spdm::channel::SpdmChannel;
    use tdisp_host::tsm::BindParams;
    use tdisp_host::tsm::PciDeviceInfo;
    use tdisp_host::tsm::ProbeOutcome;
    use tdisp_host::tsm::Tsm;
    use tdisp_proto::pcie::InterfaceId;
    use tdisp_proto::pcie::TdiState;

    let files = identity_files(&DeviceIdentity::generate("served device").unwrap());
    let identity = DeviceIdentity::load(
        files.root_pem.as_bytes(),
        files.chain_pem.as_bytes(),
        files.key_pem.as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101)).unwrap();
        let mut responder = SpdmResponder::new(ResponderConfig::new(identity, Vec::new()), dsm);
        serve(&listener, &mut responder)
    });

    // A client that sends half a frame header and goes away.
    let mut vanishing = TcpStream::connect(address).unwrap();
    vanishing.write_all(&[0, 0, 0, 1, 0, 0]).unwrap();
    drop(vanishing);

    let root = load_certificate(files.root_pem.as_bytes()).unwrap();
    let stream = TcpStream::connect(address).unwrap();
    let mut control = EmuSocketMailbox::new(stream.try_clone().unwrap());
    let mut tsm = Tsm::new();
    assert_eq!(
        tsm.probe(
            PciDeviceInfo::tee_io(0x0100),
            Box::new(EmuSocketMailbox::new(stream)),
            Box::new(SpdmChannel::new(RequesterConfig::new(root))),
        ),
        ProbeOutcome::Handled
    );
    tsm.connect(0x0100).unwrap();
    tsm.bind(
        0x0100,
        BindParams::new(InterfaceId::from_requester_id(0x0101), 1),
    )
    .unwrap();
    tsm.lock(0x0100).unwrap();
    tsm.read_interface_report(0x0100).unwrap();
    tsm.start(0x0100).unwrap();
    assert_eq!(tsm.interface_state(0x0100).unwrap(), TdiState::Run);
    tsm.stop(0x0100).unwrap();
    tsm.disconnect(0x0100).unwrap();
    control.shutdown().unwrap();
    server.join().unwrap().unwrap();
}
