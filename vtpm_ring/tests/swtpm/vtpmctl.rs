//! `vtpmctl run` serves guests until SIGINT, `vtpmctl list` sees them, and the state stays.

use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use tokio::process::Command;

use crate::vtpmctl_run::VTPMCTL;
use crate::vtpmctl_run::spawn_run;

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

/// Sends SIGINT to `run`.
fn interrupt(run: &tokio::process::Child) {
    let pid = run.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_list_shows_and_sigint_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = spawn_run(&state, "2");
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

    interrupt(&run);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_while_starting_still_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = spawn_run(&state, "1");
    // The listing socket is the first thing a run makes visible, before its TPMs start.
    let socket = state.join("vtpmctl.sock");
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no listing socket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    interrupt(&run);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    assert!(run.wait().await.unwrap().success(), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("stopped"), "{seen:?}");
}
