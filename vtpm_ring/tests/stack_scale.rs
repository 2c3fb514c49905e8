//! What `vtpmctl run --domains N` runs (a `VtpmStack`) for N within the range it accepts
//! (1..=1000), beyond what a guest's store quota would let the backend domain serve. Needs
//! swtpm.

#![forbid(unsafe_code)]

use std::time::Duration;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;

/// 64 guests: with the guests' quota of 128 store watches, the backend domain ran out at the
/// 64th device, whose frontend never connected; the stack's start failed after the frontend
/// timeout ("the backend did not answer in time"), as did `vtpmctl run --domains 64`, after
/// the default 180 s. The stack now sizes the backend domain's quota for its guests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_of_sixty_four_guests_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::new(dir.path(), 64);
    config.swtpm.io_timeout = Duration::from_secs(10);
    config.frontend.timeout = Some(Duration::from_secs(5));
    let started = VtpmStack::start(config).await;
    let stack = match started {
        Ok(s) => s,
        Err(e) => panic!("a stack of 64 guests did not start: {e}"),
    };
    assert_eq!(stack.guests().len(), 64);
    stack.shutdown().await.unwrap();
}
