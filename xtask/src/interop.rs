//! `cargo xtask interop spdm-emu --bin-dir DIR`: our SPDM stack against DMTF's spdm-emu, built
//! by the user from DMTF's sources by their own instructions (nothing of theirs is fetched,
//! built or kept here).
//!
//! Both directions, PCI_DOE transport, SPDM 1.2, SHA-384, ECDSA P-384, secp384r1, AES-256-GCM:
//! - **our TSM → `spdm_responder_emu`**: DOE discovery, the handshake with the chain validated
//!   against the emulator's sample root (`--root`), and a TDISP lock/report/start/stop cycle
//!   inside the session (`tdisp_host/tests/spdm_interop.rs`);
//! - **`spdm_requester_emu` → our DSM**: our SPDM responder around the emulated DSM, served on
//!   the emulator's port in its socket framing (`tdisp_host::spdm::emu_socket::serve`) with the
//!   identity given at run time (`--device-key`, `--device-chain`: by default the emulator's
//!   sample ECP384 responder key and chain), must see KEY_EXCHANGE, FINISH and END_SESSION
//!   with a clean exit (`--exe_session KEY_EX`); then, with `--exe_session KEY_EX,APP`, the
//!   requester's whole PCIe application phase inside the session, every request answered:
//!   IDE_KM QUERY and KEY_PROG/K_SET_GO for six substreams, TDISP version, capabilities, lock,
//!   report, start and stop (to interface 0xbeef, which it hard-codes), IDE_KM K_SET_STOP for
//!   the six. The requester then starts CXL IDE_KM (VendorID 0x1e98), which our PCIe DSM
//!   refuses, and exits 1: that one refusal, and nothing else, is accepted.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::emu_socket;
use tdisp_host::spdm::emu_socket::EmuSocketMailbox;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;
use tdisp_host::spdm::responder::VendorHandler;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;

/// Arguments of `cargo xtask interop`.
#[derive(clap::Args)]
pub struct InteropArgs {
    #[command(subcommand)]
    peer: Peer,
}

/// Which direction(s) to run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    /// Our TSM against `spdm_responder_emu`.
    Responder,
    /// `spdm_requester_emu` against our DSM.
    Requester,
    /// Both, responder first.
    Both,
}

#[derive(clap::Subcommand)]
enum Peer {
    /// DMTF spdm-emu's emulators (`spdm_responder_emu`, `spdm_requester_emu`).
    SpdmEmu {
        /// The directory holding the emulator binaries and their sample certificates
        /// (`ecp384/`), e.g. spdm-emu's `build/bin`.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The TCP port the emulators use (spdm-emu's is fixed at 2323).
        #[arg(long, default_value_t = emu_socket::DEFAULT_PORT)]
        port: u16,
        /// The root certificate (DER or PEM) our TSM trusts and our DSM's chain leads to
        /// [default: BIN_DIR/ecp384/ca.cert.der].
        #[arg(long)]
        root: Option<PathBuf>,
        /// Our DSM's leaf private key (PKCS#8 or SEC1, DER or PEM) for spdm_requester_emu
        /// [default: BIN_DIR/ecp384/end_responder.key].
        #[arg(long)]
        device_key: Option<PathBuf>,
        /// Our DSM's certificate chain, root first (concatenated DER or PEM)
        /// [default: BIN_DIR/ecp384/bundle_responder.certchain.der].
        #[arg(long)]
        device_chain: Option<PathBuf>,
        /// Which direction(s) to run.
        #[arg(long, value_enum, default_value = "both")]
        direction: Direction,
        /// Write the transcript of our TSM's run (every DOE object, with the fixed ECDHE key
        /// that run then uses) to this file, the format of tdisp_host's known-answer test.
        #[arg(long)]
        capture: Option<PathBuf>,
    },
}

const COMMON_ARGS: &[&str] = &[
    "--trans",
    "PCI_DOE",
    "--ver",
    "1.2",
    "--hash",
    "SHA_384",
    "--asym",
    "ECDSA_P384",
    "--dhe",
    "SECP_384_R1",
    "--aead",
    "AES_256_GCM",
];

/// The responder emulator asserts without MEAS_SIG.
const RESPONDER_CAPS: &[&str] = &["--cap", "CERT,MEAS_SIG,ENCRYPT,MAC,KEY_EX"];

/// The requester emulator: no CHALLENGE, no measurements, no PSK, no heartbeat or key
/// update (our responder implements none of them), then SHUTDOWN; `--exe_session` is chosen
/// per run ([`HANDSHAKE_SESSION`], [`APP_SESSION`]).
const REQUESTER_ARGS: &[&str] = &[
    "--cap",
    "CERT,ENCRYPT,MAC,KEY_EX",
    "--exe_conn",
    "DIGEST,CERT",
    "--exe_mode",
    "SHUTDOWN",
];

/// The TDISP interface (requester id) spdm_requester_emu's application phase addresses.
const REQUESTER_EMU_FUNCTION_ID: u16 = 0xbeef;

/// A KEY_EXCHANGE session: KEY_EXCHANGE, FINISH, END_SESSION.
const HANDSHAKE_SESSION: &str = "KEY_EX";
/// The same with its application phase, which for PCI_DOE runs PCIe IDE_KM (query, key
/// programming) before TDISP (version, capabilities, state, lock, report, start, stop).
const APP_SESSION: &str = "KEY_EX,APP";

/// Runs the interop checks.
pub fn run(args: &InteropArgs) -> Result<()> {
    match &args.peer {
        Peer::SpdmEmu {
            bin_dir,
            port,
            root,
            device_key,
            device_chain,
            direction,
            capture,
        } => {
            let sample = |name: &str| bin_dir.join("ecp384").join(name);
            let root = root.clone().unwrap_or_else(|| sample("ca.cert.der"));
            let mut failures = Vec::new();
            if matches!(direction, Direction::Responder | Direction::Both) {
                match our_tsm_against_responder_emu(bin_dir, *port, &root, capture.as_deref()) {
                    Ok(()) => println!("interop: our TSM against spdm_responder_emu: PASSED"),
                    Err(e) => {
                        println!("interop: our TSM against spdm_responder_emu: FAILED: {e:#}");
                        failures.push("our TSM against spdm_responder_emu");
                    }
                }
            }
            if matches!(direction, Direction::Requester | Direction::Both) {
                let key = device_key
                    .clone()
                    .unwrap_or_else(|| sample("end_responder.key"));
                let chain = device_chain
                    .clone()
                    .unwrap_or_else(|| sample("bundle_responder.certchain.der"));
                match requester_emu_against_our_dsm(bin_dir, *port, &root, &key, &chain) {
                    Ok(()) => println!("interop: spdm_requester_emu against our DSM: PASSED"),
                    Err(e) => {
                        println!("interop: spdm_requester_emu against our DSM: FAILED: {e:#}");
                        failures.push("spdm_requester_emu against our DSM");
                    }
                }
            }
            if !failures.is_empty() {
                bail!("interop failed: {}", failures.join(", "));
            }
            Ok(())
        }
    }
}

fn port_free(port: u16) -> Result<()> {
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("port {port} is already in use");
    }
    Ok(())
}

/// Waits until the emulator serves: connects (retrying while it starts), checks its answer to
/// TEST and ends the connection with CONTINUE, after which it accepts the next client. Its
/// "listening" line only appears with `--verbose` in recent versions, so the socket itself is
/// the readiness signal; a probe that vanished without CONTINUE would stop the emulator.
fn wait_until_serving(
    emulator: &mut std::process::Child,
    port: u16,
    deadline: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = emulator.try_wait()? {
            bail!("spdm_responder_emu exited early with {status}");
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut probe = EmuSocketMailbox::new(stream);
            probe.test().context("TEST to spdm_responder_emu")?;
            probe
                .end_connection()
                .context("CONTINUE to spdm_responder_emu")?;
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!("spdm_responder_emu did not accept connections in {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn our_tsm_against_responder_emu(
    bin_dir: &Path,
    port: u16,
    root: &Path,
    capture: Option<&Path>,
) -> Result<()> {
    let responder = bin_dir.join("spdm_responder_emu");
    if !responder.is_file() {
        bail!(
            "{} must hold spdm_responder_emu (build spdm-emu by its README)",
            bin_dir.display()
        );
    }
    // Fail here, not in the test, on a root that does not load.
    tdisp_host::spdm::cert::load_certificate(
        &std::fs::read(root).with_context(|| format!("reading {}", root.display()))?,
    )
    .with_context(|| format!("loading the root {}", root.display()))?;
    port_free(port)?;
    // The emulator reads its certificates relative to its working directory.
    let mut emulator = Command::new("stdbuf")
        .arg("-o0")
        .arg(&responder)
        .args(COMMON_ARGS)
        .args(RESPONDER_CAPS)
        .current_dir(bin_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting spdm_responder_emu")?;
    let ready = wait_until_serving(&mut emulator, port, Duration::from_secs(30));
    let outcome = ready.and_then(|()| {
        let mut test = Command::new(env!("CARGO"));
        test.args(["test", "-p", "tdisp_host", "--test", "spdm_interop", "--"])
            .args(["--ignored", "--nocapture"])
            .env("SPDM_EMU_PORT", port.to_string())
            .env("SPDM_EMU_ROOT", root);
        if let Some(capture) = capture {
            test.env("SPDM_EMU_CAPTURE", capture);
        }
        let status = test.status().context("running the interop test")?;
        if !status.success() {
            bail!("the interop test failed");
        }
        Ok(())
    });
    // The test asks the emulator to shut down; make sure it is gone either way.
    if emulator.try_wait()?.is_none() {
        emulator.kill().ok();
    }
    emulator.wait().ok();
    outcome
}

/// What our DSM saw of spdm_requester_emu's session.
#[derive(Default)]
struct Observed {
    /// DOE object types of the requests, in order.
    object_types: Vec<u8>,
    /// Whether a session was established at some point (FINISH completed).
    established: bool,
    /// Whether an established session was ended again (END_SESSION).
    ended: bool,
    /// TDISP request codes the DSM received, in order.
    tdisp_codes: Vec<u8>,
    /// PCI-SIG vendor protocol ids of the VENDOR_DEFINED requests (0 IDE_KM, 1 TDISP).
    protocols: Vec<u8>,
    /// Every VENDOR_DEFINED exchange, in order.
    exchanges: Vec<VendorExchange>,
}

/// One VENDOR_DEFINED request the DSM received and whether it got a vendor response.
#[derive(Debug, Clone, Copy)]
struct VendorExchange {
    /// The VendorID (0x0001 PCI-SIG; 0x1e98 is CXL).
    vendor_id: u16,
    /// The protocol id byte.
    protocol: u8,
    /// The protocol's object id / message type byte (IDE_KM: byte 1 of the payload is the
    /// object id; TDISP: byte 2 is the message type).
    object: u8,
    /// Whether the answer was a VENDOR_DEFINED_RESPONSE (not an SPDM ERROR).
    answered: bool,
}

/// PCI-SIG's VendorID in a VENDOR_DEFINED message.
const PCI_SIG: u16 = 0x0001;
/// CXL's VendorID (spdm_requester_emu's CXL IDE_KM and CXL TSP phases).
const CXL: u16 = 0x1e98;
/// IDE_KM object ids spdm_requester_emu sends: QUERY, then KEY_PROG and K_SET_GO for the six
/// K0 substreams of stream 0 before TDISP, and K_SET_STOP for the six after it.
const IDE_KM_SETUP: [u8; 13] = [0, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4];
const IDE_KM_TEARDOWN: [u8; 6] = [5; 6];
/// TDISP request codes spdm_requester_emu sends: GET_VERSION, GET_CAPABILITIES, state,
/// LOCK_INTERFACE, state, GET_DEVICE_INTERFACE_REPORT (one or more parts), START_INTERFACE,
/// state, STOP_INTERFACE, state.
const TDISP_BEFORE_REPORT: [u8; 5] = [0x81, 0x82, 0x85, 0x83, 0x85];
const TDISP_AFTER_REPORT: [u8; 4] = [0x86, 0x85, 0x87, 0x85];
const GET_DEVICE_INTERFACE_REPORT: u8 = 0x84;

/// Checks the PCIe part of spdm_requester_emu's application phase: IDE_KM setup, TDISP,
/// IDE_KM teardown, in that order, every request answered with a vendor response. Returns
/// the exchanges after it.
fn check_pcie_phase(exchanges: &[VendorExchange]) -> Result<&[VendorExchange]> {
    let mut rest = exchanges;
    take(&mut rest, 0, &IDE_KM_SETUP, "IDE_KM setup")?;
    take(&mut rest, 1, &TDISP_BEFORE_REPORT, "TDISP")?;
    let reports = rest
        .iter()
        .take_while(|e| e.protocol == 1 && e.object == GET_DEVICE_INTERFACE_REPORT)
        .count();
    if reports == 0 {
        bail!("TDISP: no GET_DEVICE_INTERFACE_REPORT after the lock");
    }
    let report_parts = vec![GET_DEVICE_INTERFACE_REPORT; reports];
    take(&mut rest, 1, &report_parts, "TDISP report")?;
    take(&mut rest, 1, &TDISP_AFTER_REPORT, "TDISP")?;
    take(&mut rest, 0, &IDE_KM_TEARDOWN, "IDE_KM teardown")?;
    Ok(rest)
}

/// Consumes from `rest` one answered PCI-SIG exchange of `protocol` per entry of `objects`.
fn take(rest: &mut &[VendorExchange], protocol: u8, objects: &[u8], what: &str) -> Result<()> {
    for &object in objects {
        let Some((first, tail)) = rest.split_first() else {
            bail!("{what}: the requester stopped before object {object:#04x}");
        };
        if (first.vendor_id, first.protocol, first.object) != (PCI_SIG, protocol, object) {
            bail!("{what}: expected object {object:#04x}, got {first:?}");
        }
        if !first.answered {
            bail!("{what}: our DSM refused {first:?}");
        }
        *rest = tail;
    }
    Ok(())
}

/// Our responder, recording what it serves.
struct Watched<H> {
    responder: SpdmResponder<H>,
    observed: Arc<Mutex<Observed>>,
}

impl<H: VendorHandler> DoeMailbox for Watched<H> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let response = self.responder.exchange(request);
        if let Ok(mut observed) = self.observed.lock() {
            observed
                .object_types
                .push(request.get(2).copied().unwrap_or(0xff));
            let established = self.responder.is_established();
            observed.ended |= observed.established && !established;
            observed.established |= established;
        }
        response
    }
}

fn requester_emu_against_our_dsm(
    bin_dir: &Path,
    port: u16,
    root: &Path,
    key: &Path,
    chain: &Path,
) -> Result<()> {
    let requester = bin_dir.join("spdm_requester_emu");
    if !requester.is_file() {
        bail!(
            "{} must hold spdm_requester_emu (build spdm-emu by its README)",
            bin_dir.display()
        );
    }
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let identity = DeviceIdentity::load(&read(root)?, &read(chain)?, &read(key)?)
        .context("loading our DSM's identity (root, chain, key)")?;

    // 1. The handshake alone: KEY_EXCHANGE, FINISH, END_SESSION, and a clean exit.
    let handshake = run_requester_emu(&requester, bin_dir, port, &identity, HANDSHAKE_SESSION)?;
    if !handshake.established {
        bail!("spdm_requester_emu did not complete KEY_EXCHANGE and FINISH");
    }
    if !handshake.ended {
        bail!("spdm_requester_emu did not end its session (END_SESSION)");
    }
    if !handshake.exit_ok {
        bail!("spdm_requester_emu exited with an error after the handshake");
    }
    println!("  spdm_requester_emu: KEY_EXCHANGE, FINISH, END_SESSION: passed");

    // 2. With its application phase: TDISP calls inside the session.
    let app = run_requester_emu(&requester, bin_dir, port, &identity, APP_SESSION)?;
    if !app.established {
        bail!("spdm_requester_emu did not complete KEY_EXCHANGE and FINISH");
    }
    let after = check_pcie_phase(&app.exchanges)?;
    println!(
        "  spdm_requester_emu: PCIe IDE_KM (QUERY, 6 x KEY_PROG/K_SET_GO), TDISP (version, \
         capabilities, lock, report, start, stop), IDE_KM teardown (6 x K_SET_STOP): passed"
    );
    if app.exit_ok {
        return Ok(());
    }
    // spdm_requester_emu goes on to CXL IDE_KM and CXL TSP (VendorID 0x1e98) whatever the
    // device; a PCIe device refuses them, which is the only failure accepted here.
    match after.first() {
        Some(next) if next.vendor_id == CXL && !next.answered => {
            println!(
                "  spdm_requester_emu: then CXL IDE_KM (VendorID 0x1e98, object {:#04x}): \
                 refused, not implemented (our DSM is a PCIe device); the requester exits 1",
                next.object
            );
            Ok(())
        }
        _ => bail!("spdm_requester_emu exited with an error in its application phase"),
    }
}

/// What one run of spdm_requester_emu against our DSM showed.
struct RequesterRun {
    established: bool,
    exchanges: Vec<VendorExchange>,
    ended: bool,
    exit_ok: bool,
}

/// Serves one fresh DSM with `identity` on `port` while spdm_requester_emu runs with
/// `--exe_session exe_session`.
fn run_requester_emu(
    requester: &Path,
    bin_dir: &Path,
    port: u16,
    identity: &DeviceIdentity,
    exe_session: &str,
) -> Result<RequesterRun> {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let tdisp_log = observed.clone();
    // spdm_requester_emu addresses its TDISP calls to the interface with function id 0xbeef.
    let mut dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_EMU_FUNCTION_ID))
        .map_err(|e| anyhow::anyhow!("emulated DSM: {e:?}"))?;
    // The DSM's TDISP request codes, recorded as they arrive.
    let handler = move |request: &[u8]| {
        if let Ok(mut log) = tdisp_log.lock() {
            if let Some(protocol) = request.get(VENDOR_PAYLOAD_OFFSET) {
                log.protocols.push(*protocol);
            }
            if let Some(code) = tdisp_message_type(request) {
                log.tdisp_codes.push(code);
            }
        }
        // The responder hands vendor requests over only inside the session.
        let response = dsm.handle_session_vendor(request);
        if let Ok(mut log) = tdisp_log.lock()
            && let Some(exchange) = vendor_exchange(request, &response)
        {
            log.exchanges.push(exchange);
        }
        response
    };
    let mut device = Watched {
        responder: SpdmResponder::new(ResponderConfig::new(identity.clone(), Vec::new()), handler),
        observed: observed.clone(),
    };

    port_free(port)?;
    let listener = TcpListener::bind(("127.0.0.1", port)).context("binding the DSM's port")?;
    let server = std::thread::spawn(move || emu_socket::serve(&listener, &mut device));
    let started = Instant::now();
    let output = Command::new("stdbuf")
        .arg("-o0")
        .arg(requester)
        .args(COMMON_ARGS)
        .args(REQUESTER_ARGS)
        .args(["--exe_session", exe_session])
        .current_dir(bin_dir)
        .stdin(Stdio::null())
        .output()
        .context("running spdm_requester_emu")?;
    let elapsed = started.elapsed();
    // The requester sends SHUTDOWN even when it fails; if it died first, stop the server.
    if !server.is_finished()
        && let Ok(stream) = TcpStream::connect(("127.0.0.1", port))
    {
        EmuSocketMailbox::new(stream).shutdown().ok();
    }
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the DSM server panicked"))?;
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("  spdm_requester_emu: {line}");
    }
    served.context("serving spdm_requester_emu")?;
    let observed = observed
        .lock()
        .map_err(|_| anyhow::anyhow!("observation lock poisoned"))?;
    let secured = observed.object_types.iter().filter(|&&t| t == 2).count();
    println!(
        "  spdm_requester_emu --exe_session {exe_session}: {elapsed:?}, exit {}, {} DOE \
         objects ({secured} secured), session established: {}, ended: {}, vendor protocols \
         asked: {:?}, TDISP request codes: {:02x?}",
        output.status,
        observed.object_types.len(),
        observed.established,
        observed.ended,
        observed.protocols,
        observed.tdisp_codes
    );
    Ok(RequesterRun {
        established: observed.established,
        exchanges: observed.exchanges.clone(),
        ended: observed.ended,
        exit_ok: output.status.success(),
    })
}

/// Where a PCI-SIG VENDOR_DEFINED_REQUEST's payload starts: SPDM header (4), StandardID
/// u16, Len u8, VendorID u16, ReqLength u16.
const VENDOR_PAYLOAD_OFFSET: usize = 4 + 2 + 1 + 2 + 2;

/// What a VENDOR_DEFINED request asked (VendorID, protocol id, object id or TDISP message
/// type) and whether `response` is a VENDOR_DEFINED_RESPONSE.
fn vendor_exchange(request: &[u8], response: &[u8]) -> Option<VendorExchange> {
    let vendor_id = u16::from_le_bytes(request.get(7..9)?.try_into().ok()?);
    let protocol = *request.get(VENDOR_PAYLOAD_OFFSET)?;
    let object_offset = if (vendor_id, protocol) == (PCI_SIG, 1) {
        VENDOR_PAYLOAD_OFFSET + 2
    } else {
        VENDOR_PAYLOAD_OFFSET + 1
    };
    Some(VendorExchange {
        vendor_id,
        protocol,
        object: *request.get(object_offset)?,
        answered: response.get(1) == Some(&0x7e),
    })
}

/// The TDISP message type of a VENDOR_DEFINED_REQUEST carrying TDISP (PCI-SIG standard id 3,
/// vendor id 0x0001, protocol id 1), or `None`.
fn tdisp_message_type(request: &[u8]) -> Option<u8> {
    // The payload: ProtocolID u8, TDISP version u8, message type u8.
    let payload = request.get(VENDOR_PAYLOAD_OFFSET..)?;
    match payload {
        [1, _, code, ..] => Some(*code),
        _ => None,
    }
}
