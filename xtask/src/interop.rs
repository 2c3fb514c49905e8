//! `cargo xtask interop spdm-emu --bin-dir DIR`: our SPDM stack against DMTF's spdm-emu, built
//! by the user from DMTF's sources by their own instructions (nothing of theirs is fetched,
//! built or kept here).
//!
//! Checked: our TSM (SPDM requester, `tdisp_host::spdm`) against `spdm_responder_emu` (PCI_DOE,
//! SPDM 1.2, SHA-384, ECDSA P-384, secp384r1, AES-256-GCM): DOE discovery, the handshake, and
//! a TDISP lock/report/start/stop cycle inside the session (`tdisp_host/tests/spdm_interop.rs`).
//! Not yet: `spdm_requester_emu` against our responder; the command says so and fails.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

/// Arguments of `cargo xtask interop`.
#[derive(clap::Args)]
pub struct InteropArgs {
    #[command(subcommand)]
    peer: Peer,
}

#[derive(clap::Subcommand)]
enum Peer {
    /// DMTF spdm-emu's emulators (`spdm_responder_emu`, `spdm_requester_emu`).
    SpdmEmu {
        /// The directory holding the emulator binaries and their sample certificates.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The TCP port the responder emulator listens on.
        #[arg(long, default_value_t = 2323)]
        port: u16,
    },
}

const RESPONDER_ARGS: &[&str] = &[
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
    "--cap",
    "CERT,MEAS_SIG,ENCRYPT,MAC,KEY_EX",
];

/// Runs the interop checks.
pub fn run(args: &InteropArgs) -> Result<()> {
    match &args.peer {
        Peer::SpdmEmu { bin_dir, port } => spdm_emu(bin_dir, *port),
    }
}

/// Waits for the emulator to say it listens (its only readiness signal; probing the port would
/// count as a client, and the emulator stops when a client vanishes mid-message). Keeps
/// draining its output afterwards so it never blocks on a full pipe.
fn wait_until_listening(stdout: std::process::ChildStdout, deadline: Duration) -> Result<()> {
    use std::io::BufRead;
    let (ready, listening) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on port") {
                ready.send(()).ok();
            }
        }
    });
    listening
        .recv_timeout(deadline)
        .map_err(|_| anyhow::anyhow!("spdm_responder_emu did not start listening in {deadline:?}"))
}

fn spdm_emu(bin_dir: &std::path::Path, port: u16) -> Result<()> {
    let responder = bin_dir.join("spdm_responder_emu");
    let root = bin_dir.join("ecp384").join("ca.cert.der");
    if !responder.is_file() || !root.is_file() {
        bail!(
            "{} must hold spdm_responder_emu and ecp384/ca.cert.der (build spdm-emu by its README)",
            bin_dir.display()
        );
    }
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("port {port} is already in use");
    }
    // The emulator reads its certificates relative to its working directory.
    let mut emulator = Command::new("stdbuf")
        .arg("-o0")
        .arg(&responder)
        .args(RESPONDER_ARGS)
        .current_dir(bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting spdm_responder_emu")?;
    let ready = match emulator.stdout.take() {
        Some(stdout) => wait_until_listening(stdout, Duration::from_secs(30)),
        None => Err(anyhow::anyhow!("no emulator output")),
    };
    let outcome = ready.and_then(|()| {
        let status = Command::new(env!("CARGO"))
            .args(["test", "-p", "tdisp_host", "--test", "spdm_interop", "--"])
            .args(["--ignored", "--nocapture"])
            .env("SPDM_EMU_PORT", port.to_string())
            .env("SPDM_EMU_ROOT", &root)
            .status()
            .context("running the interop test")?;
        if !status.success() {
            bail!("our TSM against spdm_responder_emu failed");
        }
        Ok(())
    });
    // The test asks the emulator to shut down; make sure it is gone either way.
    if emulator.try_wait()?.is_none() {
        emulator.kill().ok();
    }
    emulator.wait().ok();
    outcome?;
    println!("interop: our TSM against spdm_responder_emu: passed");
    bail!("interop: spdm_requester_emu against our DSM is not implemented yet")
}
