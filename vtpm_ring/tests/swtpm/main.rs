//! Integration tests with real swtpm processes and stock tpm2-tools: the whole path from a TPM
//! client to swtpm (TPM socket -> frontend -> shared pages -> backend -> manager -> swtpm).
//! They need `swtpm` and `tpm2-tools` (`cargo xtask deps` installs them) and fail, naming the
//! missing tool, without them. Every stack uses its own temporary state directory and ports
//! the system picks.

#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod dropped;
mod engine;
mod fault;
mod guest_power;
mod lifetime;
mod load;
mod persistence;
mod socket;
#[path = "../support/swtpm_procs.rs"]
mod swtpm_procs;
mod tools;
mod vtpmctl;
#[path = "../support/vtpmctl_run.rs"]
mod vtpmctl_run;

use std::path::Path;
use std::process::Output;
use std::time::Duration;
use vtpm_ring::stack::GuestTpm;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;

/// A stack of `guests` guests on `state` (ports picked free).
pub async fn stack(state: &Path, guests: u16) -> VtpmStack {
    init_tracing();
    let mut config = StackConfig::new(state, guests);
    config.swtpm.io_timeout = Duration::from_secs(10);
    VtpmStack::start(config)
        .await
        .expect("stack starts (is swtpm installed? `cargo xtask deps`)")
}

/// Runs a tpm2-tools command against `guest`'s TPM socket; panics with its stderr on failure.
pub async fn tool(guest: &GuestTpm, args: &[&str]) -> Output {
    let out = tool_status(guest, args).await;
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a tpm2-tools command against `guest`'s TPM socket and returns whatever it did.
pub async fn tool_status(guest: &GuestTpm, args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("a program");
    tokio::process::Command::new(program)
        .args(rest)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", guest.data_addr().port()),
        )
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (is tpm2-tools installed?): {e}"))
}

/// stdout as text.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Logs to the test output (`RUST_LOG` filters).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

pub use vtpm_ring::tpm_command::get_random;

/// The sha256 value of a PCR after one extend of `digest` from zero.
pub fn extended(digest: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(digest)
        .finalize()
        .into()
}

/// The response code of a TPM response.
pub fn rc(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[6..10].try_into().expect("a TPM header"))
}

/// A path inside `dir` as a tool argument.
pub fn arg(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}
