//! A vTPM stack that does not end by `shutdown` (its start failed, or its owner dropped it)
//! leaves no swtpm running: nobody would hold a handle to stop them. (Found by review; the
//! failed start left every engine's swtpm running for as long as the runtime.)

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use std::path::Path;
use std::time::Duration;
use std::time::Instant;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::StackError;
use vtpm_ring::stack::VtpmStack;

/// Pids of the swtpm processes whose state lies under `root` (zombies have no command line).
fn swtpm_under(root: &Path) -> Vec<u32> {
    let needle = format!("dir={}", root.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_swtpm = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "swtpm"));
        if is_swtpm && args.iter().any(|a| a.starts_with(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to 3 s for no swtpm to run on `root`; kills and returns those still running.
async fn swtpm_left(root: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = swtpm_under(root);
        if left.is_empty() || Instant::now() >= deadline {
            for pid in &left {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_on_a_taken_port_starts_no_swtpm() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path(), 2);
    config.base_port = Some(taken.local_addr().unwrap().port());
    let Err(err) = VtpmStack::start(config).await else {
        panic!("started on a taken port");
    };
    assert!(matches!(err, StackError::Ports { .. }), "{err}");
    let left = swtpm_left(dir.path()).await;
    assert!(
        left.is_empty(),
        "start failed ({err}) but swtpm {left:?} run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_dropped_without_shutdown_leaves_no_swtpm() {
    let dir = tempfile::tempdir().unwrap();
    let stack = VtpmStack::start(StackConfig::new(dir.path(), 2))
        .await
        .unwrap();
    assert_eq!(swtpm_under(dir.path()).len(), 2);
    drop(stack);
    let left = swtpm_left(dir.path()).await;
    assert!(left.is_empty(), "swtpm {left:?} outlived their stack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_port_too_high_for_its_guests_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path(), 2);
    config.base_port = Some(65533);
    let err = VtpmStack::start(config).await.unwrap_err();
    assert!(
        matches!(&err, StackError::Config(m) if m.contains("beyond 65535")),
        "{err}"
    );
    assert!(swtpm_left(dir.path()).await.is_empty());
}
