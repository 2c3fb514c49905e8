//! A swtpm that dies mid-command: the command gets a TPM error, the next one succeeds on a
//! restarted swtpm with the instance's state. A swtpm that hangs costs the command under way
//! the engine's I/O timeout, counted from that command's start.

use super::arg;
use super::get_random;
use super::init_tracing;
use super::rc;
use super::stack;
use super::tool;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::engine::swtpm::SwtpmError;

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
    // The engine learns of a death from SIGCHLD (no system call per command), or from
    // `status`, which found this one dead: either way the next command goes to a new swtpm
    // (before the review of wave 9b, one that `status` had found dead before SIGCHLD was
    // handled could still get the dead connection and TPM_RC_FAILURE).
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}

/// The command line of a swtpm on `dir` that nobody connects to (so `--terminate` never ends
/// it), writing its pid where the engine keeps it.
fn lone_swtpm(dir: &std::path::Path) -> String {
    // Both listeners are held until both ports are known, so the two differ.
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (data, ctrl) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    format!(
        "swtpm socket --tpm2 --terminate --tpmstate dir={d} \
         --server type=tcp,port={data},bindaddr=127.0.0.1 \
         --ctrl type=tcp,port={ctrl},bindaddr=127.0.0.1 --flags not-need-init \
         --pid file={d}/swtpm.pid",
        d = dir.display()
    )
}

/// The pid swtpm wrote into `dir`, once it did (bounded).
async fn pid_in(dir: &std::path::Path) -> u32 {
    for _ in 0..1000 {
        if let Some(pid) = std::fs::read_to_string(dir.join("swtpm.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("swtpm wrote no pid file");
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swtpm_orphaned_on_the_state_is_ended_and_one_another_host_runs_is_left_alone() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(root.path());
    let dir = dirs.create(1).unwrap();
    // A host that died between starting swtpm and connecting to it: the shell that started
    // it is gone, so init adopted it, and it holds the state's lock.
    let shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} >/dev/null 2>&1 &", lone_swtpm(&dir)))
        .status()
        .unwrap();
    assert!(shell.success());
    let orphan = pid_in(&dir).await;
    let engine = SwtpmEngine::start(1, &dirs, SwtpmConfig::default())
        .await
        .unwrap();
    assert!(!alive(orphan), "the orphan was ended");
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    engine.save_and_shutdown().await.unwrap();

    // A swtpm whose parent lives (here: this test) belongs to another host: refused, untouched.
    std::fs::remove_file(dir.join("swtpm.pid")).ok();
    let mut owned = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec {}", lone_swtpm(&dir)))
        .spawn()
        .unwrap();
    let theirs = pid_in(&dir).await;
    let Err(err) = SwtpmEngine::start(1, &dirs, SwtpmConfig::default()).await else {
        panic!("started on a state another host's swtpm holds");
    };
    // Its own error, not a start failure to retry; it names the process.
    assert!(
        matches!(err, SwtpmError::StateInUse { pid, .. } if u32::try_from(pid) == Ok(theirs)),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("swtpm pid {theirs}")),
        "{err}"
    );
    assert!(alive(theirs));
    owned.kill().unwrap();
    owned.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_of_the_sent_count_starts_with_nothing_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = SwtpmEngine::start(1, &StateDirs::new(dir.path()), SwtpmConfig::default())
        .await
        .unwrap();
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let sent = engine.commands_sent();
    assert!(*sent.borrow() >= 1);
    // As `watch::Sender::subscribe` promises: the current value counts as seen, so
    // `changed()` waits for the next command.
    assert!(
        !sent.has_changed().unwrap(),
        "a fresh subscriber sees a change nobody made"
    );
}

/// While a new swtpm starts (the old one failed), status answers at once and says so, instead
/// of waiting for the start, which may take the spawn timeout on each attempt (`vtpmctl list`
/// and Ctrl-C wait on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_at_once_while_a_new_swtpm_starts() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // swtpm through a script that, while `hold` exists, says so in `holding` and waits for
    // `hold` to go before it starts swtpm.
    let hold = dir.path().join("hold");
    let holding = dir.path().join("holding");
    let script = dir.path().join("held-swtpm");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{hold}' ]; then\n  : > '{holding}'\n  \
             while [ -e '{hold}' ]; do sleep 0.01; done\nfi\nexec swtpm \"$@\"\n",
            hold = hold.display(),
            holding = holding.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = SwtpmConfig {
        binary: script,
        io_timeout: Duration::from_millis(300),
        spawn_timeout: Duration::from_secs(20),
        ..SwtpmConfig::default()
    };
    let engine = SwtpmEngine::start(1, &StateDirs::new(dir.path().join("state")), config)
        .await
        .unwrap();
    let engine = Arc::new(engine);
    let pid = engine.status().await.pid.unwrap();
    // Wedged, swtpm costs a command its I/O timeout and is killed; the next command starts a
    // new one.
    signal(pid, "-STOP");
    let err = engine.command(get_random(8), 0).await.unwrap_err();
    assert!(matches!(err, EngineError::Failed(_)), "{err}");
    std::fs::write(&hold, b"").unwrap();
    let restart = tokio::spawn({
        let engine = engine.clone();
        async move { engine.command(get_random(8), 0).await }
    });
    let waited = std::time::Instant::now();
    while !holding.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the new swtpm never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(1), engine.status())
        .await
        .expect("status waited for the new swtpm to start");
    assert_eq!(
        (status.state, status.pid, status.restarts),
        (EngineState::Restarting, None, 1)
    );
    std::fs::remove_file(&hold).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), restart)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(rc(&answer), 0, "{answer:02x?}");
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}

/// A swtpm that `status` found dead is replaced before the next command even when the
/// engine has not yet handled the SIGCHLD of its death (on a current-thread runtime, the
/// task that does cannot run in between): that command used to meet the dead connection
/// and get TPM_RC_FAILURE (review wave 9b).
#[tokio::test(flavor = "current_thread")]
async fn a_swtpm_status_found_dead_is_replaced_before_the_next_command() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let engine = SwtpmEngine::start(1, &StateDirs::new(dir.path()), SwtpmConfig::default())
        .await
        .unwrap();
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let pid = engine.status().await.pid.unwrap();
    signal(pid, "-KILL");
    // Waited for without yielding to the runtime, so SIGCHLD stays unhandled.
    let zombie = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let start = std::time::Instant::now();
    while !zombie(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "swtpm did not die"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.status().await.state, EngineState::Dead);
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    let status = engine.status().await;
    assert_eq!((status.state, status.restarts), (EngineState::Running, 1));
    assert_ne!(status.pid, Some(pid));
}
