//! Engine calls dropped half-way (a caller's own timeout, an aborted task): swtpm still has
//! the command or control operation and answers it. That answer must never be read as the
//! next call's, a command swtpm has not run yet must not run at the next one's locality, and
//! the TPM keeps its volatile state (no restart).
//!
//! Each test polls a call once, which writes it to swtpm, then drops it; swtpm is frozen
//! (SIGSTOP) meanwhile, so that the call is certainly unanswered then, and for longer where a
//! test needs it to hold a call unanswered. The engine's own count of commands written and
//! the kernel's socket queues tell what is where: no test sleeps for an ordering.

use super::get_random;
use super::init_tracing;
use super::rc;
use std::time::Duration;
use std::time::Instant;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::ControlReply;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::tpm_command::pcr_digest_sha256;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;
use vtpm_ring::tpm_header::TpmRc;

/// A PCR that locality 0 may not extend and locality 3 may (PC client profile).
const PCR_LOCALITY_3: u8 = 17;

async fn engine(dir: &std::path::Path) -> SwtpmEngine {
    init_tracing();
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(10),
        ..SwtpmConfig::default()
    };
    SwtpmEngine::start(1, &StateDirs::new(dir), config)
        .await
        .expect("swtpm starts (is it installed? `cargo xtask deps`)")
}

/// Any wait in these tests: a hang fails the test instead.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(4), f)
        .await
        .expect("bounded wait expired")
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `condition` until it holds (a kernel state the test cannot be told of otherwise).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Freezes swtpm and waits until it is stopped, so that it reads nothing sent from now on
/// until [`thaw`].
fn freeze(pid: u32) {
    signal(pid, "-STOP");
    wait_until("swtpm stopped", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The state follows the command name in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    });
}

fn thaw(pid: u32) {
    signal(pid, "-CONT");
}

/// Bytes waiting to be read on the loopback TCP connections (no listeners) whose local port
/// is `local` or whose remote port is `remote`.
fn queued(local: Option<u16>, remote: Option<u16>) -> usize {
    const LISTEN: &str = "0A";
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (l, r, state, queues) = (fields[1], fields[2], fields[3], fields[4]);
            let ours =
                (local.is_some() && port(l) == local) || (remote.is_some() && port(r) == remote);
            if !ours || state == LISTEN {
                return None;
            }
            let (_, rx) = queues.split_once(':')?;
            usize::from_str_radix(rx, 16).ok()
        })
        .sum()
}

/// swtpm's pid, data port and control port; and that it was never restarted.
async fn same_swtpm(engine: &SwtpmEngine) -> (u32, u16, u16) {
    let status = engine.status().await;
    assert_eq!(
        (status.state, status.restarts),
        (EngineState::Running, 0),
        "the TPM was restarted (its volatile state lost)"
    );
    (
        status.pid.unwrap(),
        status.data_port.unwrap(),
        status.ctrl_port.unwrap(),
    )
}

async fn pcr(engine: &SwtpmEngine, index: u8) -> [u8; 32] {
    let read = within(engine.command(pcr_read_sha256(index).unwrap(), 0))
        .await
        .unwrap();
    pcr_digest_sha256(&read).unwrap_or_else(|| panic!("not a PCR_Read response: {read:02x?}"))
}

/// A command future dropped after swtpm got the command and answered it: that answer must
/// never be taken for the next command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swtpm_command_dropped_after_it_was_sent_never_answers_the_next_command() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let first = within(engine.command(get_random(8), 0)).await.unwrap();
    assert_eq!(first.len(), 20);
    let (pid, data_port, _) = same_swtpm(&engine).await;
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    // Frozen, swtpm cannot answer before the one poll is over.
    freeze(pid);
    let mut abandoned = Box::pin(engine.command(get_random(32), 0));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    assert_eq!(*sent.borrow(), before + 1, "the command went out");
    drop(abandoned);
    thaw(pid);
    // swtpm's answer (44 bytes) waits in the engine's socket.
    wait_until("swtpm answered the dropped command", || {
        queued(None, Some(data_port)) >= 44
    });
    let next = within(engine.command(get_random(8), 0)).await;
    let next_len = next.as_ref().map(Vec::len);
    let after = within(engine.command(get_random(16), 0)).await;
    let after_len = after.as_ref().map(Vec::len);
    assert_eq!(
        (next_len, after_len),
        (Ok(20), Ok(28)),
        "GetRandom(8) and GetRandom(16) after an abandoned GetRandom(32) got responses of \
         {next_len:?} and {after_len:?} bytes (44 is the abandoned command's)"
    );
    assert_eq!(same_swtpm(&engine).await.0, pid);
}

/// The dropped command is still unanswered (swtpm busy with it: frozen here) when the next
/// one comes. The next is held back until swtpm has answered the dropped one, and then gets
/// its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_dropped_before_swtpm_answered_holds_the_next_back_until_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    assert_eq!(
        rc(&within(engine.command(get_random(8), 0)).await.unwrap()),
        0
    );
    let (pid, _, _) = same_swtpm(&engine).await;
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    freeze(pid);
    let mut abandoned = Box::pin(engine.command(get_random(32), 0));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    assert_eq!(*sent.borrow(), before + 1, "the command went out");
    drop(abandoned);
    let mut next = Box::pin(engine.command(get_random(8), 0));
    assert!(futures::poll!(next.as_mut()).is_pending());
    assert_eq!(
        *sent.borrow(),
        before + 1,
        "the next command went out while the dropped one's answer was still to come"
    );
    thaw(pid);
    let next = within(next).await.unwrap();
    assert_eq!((next.len(), rc(&next)), (20, 0), "{next:02x?}");
    let after = within(engine.command(get_random(16), 0)).await.unwrap();
    assert_eq!((after.len(), rc(&after)), (28, 0), "{after:02x?}");
    assert_eq!(*sent.borrow(), before + 3);
    assert_eq!(same_swtpm(&engine).await.0, pid);
}

/// A dropped command swtpm has not even read yet must run at its own locality, not at the
/// next command's (swtpm reads its control connection before its data connection, so a
/// SET_LOCALITY sent before swtpm took the dropped command would apply to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_command_swtpm_has_not_read_never_runs_at_the_next_commands_locality() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let initial = pcr(&engine, PCR_LOCALITY_3).await;
    let (pid, _, _) = same_swtpm(&engine).await;
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    freeze(pid);
    let mut abandoned = Box::pin(engine.command(pcr_extend_sha256(PCR_LOCALITY_3, &[7; 32]), 0));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    assert_eq!(*sent.borrow(), before + 1, "the extend went out");
    drop(abandoned);
    let mut next = Box::pin(engine.command(pcr_read_sha256(PCR_LOCALITY_3).unwrap(), 3));
    assert!(futures::poll!(next.as_mut()).is_pending());
    thaw(pid);
    let read = within(next).await.unwrap();
    assert_eq!(
        pcr_digest_sha256(&read),
        Some(initial),
        "the extend dropped at locality 0 ran at locality 3 (or its answer was read as the \
         PCR_Read's): {read:02x?}"
    );
    // At locality 3 the extend does change the PCR.
    let extend = within(engine.command(pcr_extend_sha256(PCR_LOCALITY_3, &[7; 32]), 3))
        .await
        .unwrap();
    assert_eq!(rc(&extend), 0);
    assert_ne!(pcr(&engine, PCR_LOCALITY_3).await, initial);
    assert_eq!(same_swtpm(&engine).await.0, pid);
}

/// The same for the control connection: a control operation dropped after swtpm got it must
/// not leave its reply to be read as the next operation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swtpm_control_dropped_after_it_was_sent_never_answers_the_next_control() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let caps = within(engine.control(ControlOp::GetCapability))
        .await
        .unwrap();
    let (pid, _, _) = same_swtpm(&engine).await;
    // Frozen, swtpm cannot answer before the one poll is over.
    freeze(pid);
    let mut abandoned = Box::pin(engine.control(ControlOp::GetTpmEstablished));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    drop(abandoned);
    thaw(pid);
    let again = within(engine.control(ControlOp::GetCapability)).await;
    let established = within(engine.control(ControlOp::GetTpmEstablished)).await;
    assert_eq!(
        again.as_ref(),
        Ok(&caps),
        "GetCapability after an abandoned GetTpmEstablished (then GetTpmEstablished got \
         {established:?})"
    );
    assert!(
        matches!(established, Ok(ControlReply::TpmEstablished(_))),
        "{established:?}"
    );
    assert_eq!(same_swtpm(&engine).await.0, pid);
}

/// A command whose SET_LOCALITY was dropped after swtpm got it (swtpm now uses that locality,
/// unconfirmed to the engine): the next command must still run at its own locality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_locality_dropped_after_it_was_sent_never_leaves_the_next_command_at_its_locality() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let initial = pcr(&engine, PCR_LOCALITY_3).await;
    let (pid, _, ctrl_port) = same_swtpm(&engine).await;
    freeze(pid);
    // The command at locality 3 first sets it on the control connection, and waits there.
    let mut abandoned = Box::pin(engine.command(get_random(8), 3));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    drop(abandoned);
    wait_until("SET_LOCALITY(3) reached swtpm's control socket", || {
        queued(Some(ctrl_port), None) >= 8
    });
    thaw(pid);
    let extend = within(engine.command(pcr_extend_sha256(PCR_LOCALITY_3, &[7; 32]), 0))
        .await
        .unwrap();
    assert_eq!(
        rc(&extend),
        TpmRc::LOCALITY.0,
        "an extend at locality 0 was not refused: it ran at the dropped SET_LOCALITY's: \
         {extend:02x?}"
    );
    assert_eq!(pcr(&engine, PCR_LOCALITY_3).await, initial);
    assert!(matches!(
        within(engine.control(ControlOp::GetTpmEstablished)).await,
        Ok(ControlReply::TpmEstablished(_))
    ));
    assert_eq!(same_swtpm(&engine).await.0, pid);
}

/// A command dropped half-written (swtpm stopped reading it): the connection cannot carry
/// another, so the next command runs on a new swtpm (as after a crash) instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_dropped_half_written_costs_a_new_swtpm_and_not_the_next_command() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let (pid, _, _) = same_swtpm(&engine).await;
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    freeze(pid);
    // More than loopback's socket buffers hold: the write stops part-way.
    let length = 64 << 20;
    let mut huge = vec![0; length];
    huge[..6].copy_from_slice(&[0x80, 0x01, 0x04, 0, 0, 0]);
    let mut abandoned = Box::pin(engine.command(huge, 0));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    assert_eq!(*sent.borrow(), before, "the command was not written whole");
    drop(abandoned);
    let next = within(engine.command(get_random(8), 0)).await.unwrap();
    assert_eq!((next.len(), rc(&next)), (20, 0), "{next:02x?}");
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}

/// Sends `op` and drops it while swtpm (frozen) has it unanswered; returns the state the
/// engine reports then.
async fn state_after_dropped(engine: &SwtpmEngine, pid: u32, op: ControlOp) -> EngineState {
    freeze(pid);
    let mut abandoned = Box::pin(engine.control(op));
    assert!(futures::poll!(abandoned.as_mut()).is_pending());
    drop(abandoned);
    let state = engine.status().await.state;
    thaw(pid);
    state
}

/// A STOP, INIT or SHUTDOWN dropped after it went to swtpm: swtpm may have done it or not, so
/// the engine must not go on reporting the state from before it; the next power operation
/// settles the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_operation_dropped_after_it_was_sent_leaves_the_state_unsettled_not_stale() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let (pid, _, _) = same_swtpm(&engine).await;
    assert_eq!(
        state_after_dropped(&engine, pid, ControlOp::Stop).await,
        EngineState::Unsettled,
        "a dropped STOP left the TPM reported running"
    );
    within(engine.control(ControlOp::Stop)).await.unwrap();
    assert_eq!(engine.status().await.state, EngineState::Stopped);
    let init = ControlOp::Init {
        delete_volatile: false,
    };
    assert_eq!(
        state_after_dropped(&engine, pid, init.clone()).await,
        EngineState::Unsettled,
        "a dropped INIT left the TPM reported stopped"
    );
    within(engine.control(init)).await.unwrap();
    assert_eq!(same_swtpm(&engine).await.0, pid);
    let random = within(engine.command(get_random(8), 0)).await.unwrap();
    assert_eq!((random.len(), rc(&random)), (20, 0), "{random:02x?}");
    assert_eq!(
        state_after_dropped(&engine, pid, ControlOp::Shutdown).await,
        EngineState::Unsettled,
        "a dropped SHUTDOWN left the TPM reported running"
    );
}

/// A command whose size field claims more bytes than it has: written, swtpm would wait for
/// the rest, and the next command on swtpm's answer until the I/O timeout killed swtpm. It is
/// refused before anything is written, whether its caller waits for the answer or goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_a_wrong_size_field_is_refused_and_never_holds_up_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let (pid, _, _) = same_swtpm(&engine).await;
    let mut sent = engine.commands_sent();
    let before = *sent.borrow_and_update();
    let with_size = |size: u32| {
        let mut command = get_random(8);
        command[2..6].copy_from_slice(&size.to_be_bytes());
        command
    };
    let mut abandoned = Box::pin(engine.command(with_size(100), 0));
    let _ = futures::poll!(abandoned.as_mut());
    drop(abandoned);
    let next = within(engine.command(get_random(8), 0)).await.unwrap();
    assert_eq!((next.len(), rc(&next)), (20, 0), "{next:02x?}");
    for size in [100, 11, 0] {
        let refused = within(engine.command(with_size(size), 0)).await.unwrap();
        assert_eq!(
            rc(&refused),
            TpmRc::COMMAND_SIZE.0,
            "size {size}: {refused:02x?}"
        );
    }
    let short = within(engine.command(vec![0x80, 0x01, 0, 0], 0))
        .await
        .unwrap();
    assert_eq!(rc(&short), TpmRc::COMMAND_SIZE.0, "{short:02x?}");
    assert_eq!(
        *sent.borrow(),
        before + 1,
        "only the GetRandom went to swtpm"
    );
    assert_eq!(same_swtpm(&engine).await.0, pid);
}
