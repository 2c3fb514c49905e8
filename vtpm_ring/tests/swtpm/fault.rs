//! A swtpm that dies mid-command: the command gets a TPM error, the next one succeeds on a
//! restarted swtpm with the instance's state. A swtpm that hangs costs the command under way
//! the engine's I/O timeout, counted from that command's start.

use super::arg;
use super::get_random;
use super::init_tracing;
use super::rc;
use super::stack;
use super::tool;
use std::time::Duration;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_when_swtpm_dies_gets_an_error_and_the_next_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(&dir.path().join("state"), 1).await;
    let guest = &stack.guests()[0];
    let engine = stack.engine(guest.instance()).unwrap().clone();
    let data = arg(dir.path(), "data");
    let back = arg(dir.path(), "back");
    std::fs::write(&data, b"survives a crash").unwrap();
    tool(
        guest,
        &[
            "tpm2_nvdefine",
            "0x1500019",
            "-C",
            "o",
            "-s",
            "16",
            "-a",
            "ownerread|ownerwrite",
        ],
    )
    .await;
    tool(
        guest,
        &["tpm2_nvwrite", "0x1500019", "-C", "o", "-i", &data],
    )
    .await;

    let pid = engine.status().await.pid.unwrap();
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    // Frozen, swtpm holds the next command without answering: it is certainly in flight
    // once the engine has written it.
    signal(pid, "-STOP");
    let tpm = guest.frontend().clone();
    let in_flight = tokio::spawn(async move { tpm.transmit(&get_random(8)).await });
    sent.wait_for(|n| *n > before).await.unwrap();
    signal(pid, "-KILL");
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(rc(&response), 0x101, "TPM_RC_FAILURE, not silence");

    let response = guest.frontend().transmit(&get_random(8)).await.unwrap();
    assert_eq!(rc(&response), 0);
    assert_eq!(response.len(), 20);
    let status = engine.status().await;
    assert_eq!(status.state, EngineState::Running);
    assert_eq!(status.restarts, 1);
    assert_ne!(status.pid, Some(pid));
    // The restarted swtpm has the instance's permanent state.
    tool(
        guest,
        &[
            "tpm2_nvread",
            "0x1500019",
            "-C",
            "o",
            "-s",
            "16",
            "-o",
            &back,
        ],
    )
    .await;
    assert_eq!(std::fs::read(&back).unwrap(), b"survives a crash");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_swtpm_costs_one_command_its_io_timeout_and_each_command_gets_a_full_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let io_timeout = Duration::from_millis(300);
    let config = SwtpmConfig {
        io_timeout,
        ..SwtpmConfig::default()
    };
    let engine = SwtpmEngine::start(1, &StateDirs::new(dir.path()), config)
        .await
        .unwrap();
    // A quick command arms the connection's one timer; the wedge comes well after, so that
    // timer fires while the wedged command waits: it must not end that command early.
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let pid = engine.status().await.pid.unwrap();
    tokio::time::sleep(io_timeout / 2).await;
    signal(pid, "-STOP");
    let started = std::time::Instant::now();
    let err = engine.command(get_random(8), 0).await.unwrap_err();
    assert!(matches!(err, EngineError::Failed(_)), "{err}");
    assert!(
        started.elapsed() >= io_timeout,
        "gave up after {:?}, before its own timeout",
        started.elapsed()
    );
    // The wedged swtpm was killed; the next command runs on a new one.
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swtpm_that_dies_while_idle_costs_at_most_the_next_command_and_is_replaced() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(10),
        ..SwtpmConfig::default()
    };
    let engine = SwtpmEngine::start(1, &StateDirs::new(dir.path()), config)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    }
    let pid = engine.status().await.pid.unwrap();
    signal(pid, "-KILL");
    while engine.status().await.state != EngineState::Dead {
        tokio::task::yield_now().await;
    }
    // The engine learns of the death from SIGCHLD (no system call per command): once it has,
    // the next command goes to a new swtpm; until then it meets the dead connection and is
    // answered TPM_RC_FAILURE. Either way it is answered, and the one after succeeds.
    // (The manager answers an engine failure with TPM_RC_FAILURE.)
    match engine.command(get_random(8), 0).await {
        Ok(r) => assert_eq!(rc(&r), 0),
        Err(e) => assert!(matches!(e, EngineError::Failed(_)), "{e}"),
    }
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}
