//! Interop with DMTF's spdm-emu, opt-in: ignored unless run by `cargo xtask interop spdm-emu
//! --bin-dir DIR`, which starts `spdm_responder_emu` from the user's own build and passes its
//! port (`SPDM_EMU_PORT`) and the root certificate to trust (`SPDM_EMU_ROOT`, DER or PEM).
//!
//! With `SPDM_EMU_CAPTURE=FILE` the run uses a fixed ECDHE key and writes every DOE object
//! exchanged, with that key, to FILE: the format `tests/spdm_emu_capture.rs` replays as a
//! known-answer test.

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

#[test]
#[ignore = "needs spdm_responder_emu; run by `cargo xtask interop spdm-emu --bin-dir DIR`"]
fn our_tsm_runs_a_tdisp_cycle_inside_a_session_with_spdm_emu_responder() {
    let port: u16 = std::env::var("SPDM_EMU_PORT").unwrap().parse().unwrap();
    let root = std::fs::read(std::env::var("SPDM_EMU_ROOT").unwrap()).unwrap();
    let root = load_certificate(&root).unwrap();
    let capture = std::env::var_os("SPDM_EMU_CAPTURE");
    let mut config = RequesterConfig::new(root);
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
         objects); TDISP lock/report({} bytes)/start/stop in {cycle:?}; {secured} of {} DOE \
         objects secured",
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
