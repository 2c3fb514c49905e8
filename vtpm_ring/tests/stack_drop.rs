//! A vTPM stack that does not end by `shutdown` (its start failed, or its owner dropped it)
//! leaves no swtpm running: nobody would hold a handle to stop them. (Found by review; the
//! failed start left every engine's swtpm running for as long as the runtime.)

#![forbid(unsafe_code)]

use std::path::Path;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::StackError;
use vtpm_ring::stack::VtpmStack;

#[path = "support/swtpm_procs.rs"]
mod swtpm_procs;

/// Waits up to 3 s for no swtpm to run on `root`; kills and returns those still running.
async fn swtpm_left(root: &Path) -> Vec<u32> {
    let left = swtpm_procs::swtpm_left_after(root, 3).await;
    swtpm_procs::kill_all_under(root);
    left
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
    assert_eq!(swtpm_procs::swtpm_under(dir.path()).len(), 2);
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
