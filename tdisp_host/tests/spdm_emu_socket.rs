//! spdm-emu's socket framing: golden bytes, and our requester against our responder over TCP
//! loopback in that framing (the same path an interop run takes against DMTF's emulators).

use std::net::TcpListener;
use std::net::TcpStream;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::dsm::config::DsmConfig;
use tdisp_host::spdm::cert::DeviceIdentity;
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
