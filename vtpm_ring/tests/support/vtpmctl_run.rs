//! Shared by the test binaries that start the `vtpmctl` binary.

use std::path::Path;
use std::process::Stdio;
use tokio::process::Child;
use tokio::process::Command;

/// The `vtpmctl` binary cargo built for these tests.
pub const VTPMCTL: &str = env!("CARGO_BIN_EXE_vtpmctl");

/// `vtpmctl run --domains N` on `state`, on ports the system picks, its output piped.
pub fn spawn_run(state: &Path, domains: &str) -> Child {
    spawn_run_in(Command::new(VTPMCTL), state, domains)
}

/// [`spawn_run`] through `launcher`, a command that ends in running `vtpmctl` with the
/// arguments appended here (`vtpmctl` itself, or a shell that sets limits and execs it).
pub fn spawn_run_in(mut launcher: Command, state: &Path, domains: &str) -> Child {
    launcher
        .args([
            "run",
            "--domains",
            domains,
            "--base-port",
            "0",
            "--state-dir",
        ])
        .arg(state)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("vtpmctl starts: {e}"))
}
