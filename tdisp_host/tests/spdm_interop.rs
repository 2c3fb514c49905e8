//! Interop with DMTF's spdm-emu, opt-in: ignored unless run by `cargo xtask interop spdm-emu
//! --bin-dir DIR`, which starts `spdm_responder_emu` from the user's own build and passes its
//! port (`SPDM_EMU_PORT`) and the root certificate to trust (`SPDM_EMU_ROOT`, DER or PEM).
//!
//! With `SPDM_EMU_CAPTURE=FILE` the run uses a fixed ECDHE key and writes every DOE object
//! exchanged, with that key, to FILE: the format `tests/spdm_emu_capture.rs` replays as a
//! known-answer test.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use tdisp_host::spdm::cert::load_certificate;
use tdisp_host::spdm::channel::SpdmChannel;
use tdisp_host::spdm::emu_socket::EmuSocketMailbox;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::ProbeOutcome;
use tdisp_host::tsm::Tsm;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::evidence::cert::validate_slot;
use tdisp_proto::evidence::signature::context;
use tdisp_proto::evidence::signature::hash;
use tdisp_proto::evidence::signature::verify;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;

const ADDRESS: u32 = 0x0100;
/// The fixed ECDHE key of capture runs (any valid scalar; it protects nothing).
const CAPTURE_EPHEMERAL: [u8; 48] = [0x5a; 48];

type Log = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Records every DOE object exchanged, in order.
struct Recording<M> {
    inner: M,
    log: Log,
}

impl<M: DoeMailbox> DoeMailbox for Recording<M> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let response = self.inner.exchange(request)?;
        if let Ok(mut log) = self.log.lock() {
            log.push((request.to_vec(), response.clone()));
        }
        Ok(response)
    }
}

/// Session evidence from libspdm's responder, checked as a guest checks it: the chain leads to
/// the root, the device signed the key exchange and the measurements (over our nonce), and the
/// MEASUREMENTS response parses with the one parser host and guest share. spdm-emu knows
/// nothing of our TDI binding block, so there is none. Returns the number of blocks.
#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a check of the interop test fails it"
)]
fn check_session_evidence(tsm: &mut Tsm, root: &[u8]) -> usize {
    let nonce = [0x42; 32];
    let evidence = tsm
        .signed_measurements_with_nonce(ADDRESS, Some(nonce))
        .unwrap()
        .expect("an SPDM session gives session evidence");
    let chain = tsm.certificate_chain(ADDRESS).unwrap();
    let validated = validate_slot(&chain, root).unwrap();
    let evidence = SessionEvidence::decode(&evidence).unwrap();
    verify(
        &validated.leaf_key,
        context::KEY_EXCHANGE_RSP,
        &hash(&evidence.key_exchange_transcript(&chain)),
        &evidence.key_exchange_signature,
    )
    .expect("libspdm's KEY_EXCHANGE_RSP signature over the evidence's transcript");
    verify(
        &validated.leaf_key,
        context::MEASUREMENTS,
        &hash(&evidence.measurements_transcript()),
        &evidence.measurements_signature,
    )
    .expect("libspdm's MEASUREMENTS signature over the evidence's transcript");
    assert_eq!(evidence.requester_nonce().unwrap(), nonce);
    let blocks = evidence.blocks().unwrap();
    assert!(!blocks.is_empty(), "spdm-emu measures something");
    assert!(evidence.bindings().unwrap().is_empty());
    blocks.len()
}

#[test]
#[ignore = "needs spdm_responder_emu; run by `cargo xtask interop spdm-emu --bin-dir DIR`"]
fn our_tsm_runs_a_tdisp_cycle_inside_a_session_with_spdm_emu_responder() {
    let port: u16 = std::env::var("SPDM_EMU_PORT").unwrap().parse().unwrap();
    let root = std::fs::read(std::env::var("SPDM_EMU_ROOT").unwrap()).unwrap();
    let root = load_certificate(&root).unwrap();
    let capture = std::env::var_os("SPDM_EMU_CAPTURE");
    let mut config = RequesterConfig::new(root.clone());
    if capture.is_some() {
        config.fixed_ephemeral_key = Some(CAPTURE_EPHEMERAL.into());
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut control = EmuSocketMailbox::new(stream.try_clone().unwrap());
    let log = Log::default();
    let mut tsm = Tsm::new();
    assert_eq!(
        tsm.probe(
            PciDeviceInfo::tee_io(ADDRESS),
            Box::new(Recording {
                inner: EmuSocketMailbox::new(stream),
                log: log.clone(),
            }),
            Box::new(SpdmChannel::new(config)),
        ),
        ProbeOutcome::Handled
    );
    let started = Instant::now();
    tsm.connect(ADDRESS).unwrap();
    let established = started.elapsed();
    let handshake_objects = log.lock().unwrap().len();
    assert_eq!(tsm.is_channel_secure(ADDRESS), Some(true));
    tsm.bind(ADDRESS, BindParams::new(InterfaceId::default(), 1))
        .unwrap();
    tsm.lock(ADDRESS).unwrap();
    let report = tsm.read_interface_report(ADDRESS).unwrap();
    let blocks = check_session_evidence(&mut tsm, &root);
    tsm.start(ADDRESS).unwrap();
    assert_eq!(tsm.interface_state(ADDRESS).unwrap(), TdiState::Run);
    tsm.stop(ADDRESS).unwrap();
    tsm.unbind(ADDRESS).unwrap();
    tsm.disconnect(ADDRESS).unwrap();
    let cycle = started.elapsed() - established;
    control.shutdown().unwrap();

    let log = log.lock().unwrap();
    // Everything after the handshake's plain part travelled as secured DOE objects (type 2).
    let secured = log.iter().filter(|(request, _)| request[2] == 2).count();
    let tdisp_in_session = log[handshake_objects..]
        .iter()
        .all(|(request, response)| request[2] == 2 && response[2] == 2);
    assert!(tdisp_in_session, "a TDISP message left the session");
    println!(
        "spdm-emu interop: session established in {established:?} ({handshake_objects} DOE \
         objects); TDISP lock/report({} bytes)/evidence({blocks} measurement blocks)/start/stop \
         in {cycle:?}; {secured} of {} DOE objects secured",
        report.len(),
        log.len()
    );
    if let Some(path) = capture {
        let mut out = std::fs::File::create(path).unwrap();
        writeln!(
            out,
            "# SPDM 1.2 over PCI DOE: our requester (tdisp_host) against DMTF spdm_responder_emu \
             (PCI_DOE, SHA_384, ECDSA_P384, SECP_384_R1, AES_256_GCM), captured by \
             tests/spdm_interop.rs. '>' request DOE object, '<' response DOE object (hex)."
        )
        .unwrap();
        writeln!(out, "ephemeral {}", hex::encode(CAPTURE_EPHEMERAL)).unwrap();
        for (request, response) in log.iter() {
            writeln!(out, "> {}", hex::encode(request)).unwrap();
            writeln!(out, "< {}", hex::encode(response)).unwrap();
        }
    }
}
