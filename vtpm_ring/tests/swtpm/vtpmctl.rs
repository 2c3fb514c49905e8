//! `vtpmctl run` serves guests until SIGINT, `vtpmctl list` sees them, and the state stays.

use std::process::Stdio;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use tokio::process::Command;

const VTPMCTL: &str = env!("CARGO_BIN_EXE_vtpmctl");

async fn list(state: &std::path::Path) -> String {
    let out = Command::new(VTPMCTL)
        .args(["list", "--state-dir"])
        .arg(state)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_list_shows_and_sigint_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = Command::new(VTPMCTL)
        .args(["run", "--domains", "2", "--base-port", "0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("ready") {
            break;
        }
        ports.push(line.rsplit("port=").next().unwrap().to_owned());
    }
    assert_eq!(ports.len(), 2);

    let listing = list(&state).await;
    for port in &ports {
        assert!(listing.contains(port.as_str()), "{listing}");
    }
    assert_eq!(listing.matches("Running").count(), 2, "{listing}");

    let pid = run.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while let Some(line) = lines.next_line().await.unwrap() {
        if line == "stopped" {
            break;
        }
    }
    assert!(run.wait().await.unwrap().success());
    let listing = list(&state).await;
    assert!(listing.contains("instance 1: stopped"), "{listing}");
    assert!(listing.contains("instance 2: stopped"), "{listing}");
}
