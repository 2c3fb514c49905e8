//! Who owns an instance's swtpm, and for how long: a swtpm never outlives its host, however
//! the host ends, and one instance's state is run by one engine at a time.

use super::get_random;
use super::init_tracing;
use super::rc;
use super::swtpm_procs::kill_all_under;
use super::swtpm_procs::swtpm_left_after;
use super::swtpm_procs::swtpm_under;
use super::vtpmctl_run::spawn_run;
use std::time::Duration;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::engine::swtpm::SwtpmError;

async fn bounded<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s"))
}

/// Whether a start was refused because another engine runs the state.
fn refused(start: Result<SwtpmEngine, SwtpmError>) -> bool {
    matches!(start, Err(SwtpmError::StateLocked { .. }))
}

fn signal(pid: u32, sig: &str) {
    // The process may have ended meanwhile: nothing to signal then.
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// A `vtpmctl run` killed outright (SIGKILL, OOM killer) during start-up must not leave
/// swtpm processes behind: most of its swtpm are then started but not connected to yet, so
/// swtpm's `--terminate` cannot end them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtpmctl_killed_during_startup_leaves_no_swtpm_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = spawn_run(&state, "8");
    let pid = run.id().unwrap();
    // Killed as soon as the first swtpm appears (start-up under way).
    let deadline = Instant::now() + Duration::from_secs(8);
    let appeared = loop {
        if !swtpm_under(&state).is_empty() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    signal(pid, "-KILL");
    let _ = bounded(5, "vtpmctl exit", run.wait()).await;
    let left = swtpm_left_after(&state, 3).await;
    kill_all_under(&state);
    assert!(appeared, "vtpmctl run started no swtpm within 8 s");
    assert!(
        left.is_empty(),
        "vtpmctl run was killed during start-up; swtpm pids {left:?} still run on its state"
    );
}

/// Two engines (two managers, say) started at the same moment on the same instance state:
/// exactly one runs it, the other gets a truthful refusal at once, and neither hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_started_at_once_on_one_state_one_runs_and_the_other_is_refused() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(root.path());
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(5),
        spawn_timeout: Duration::from_secs(3),
        ..SwtpmConfig::default()
    };
    for round in 0..10 {
        let (a, b) = bounded(
            30,
            "two engine starts",
            futures::future::join(
                SwtpmEngine::start(1, &dirs, config.clone()),
                SwtpmEngine::start(1, &dirs, config.clone()),
            ),
        )
        .await;
        let describe = |r: &Result<SwtpmEngine, SwtpmError>| match r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        let msg = format!("round {round}: a: {}, b: {}", describe(&a), describe(&b));
        let ((Ok(winner), Err(loser)) | (Err(loser), Ok(winner))) = (a, b) else {
            kill_all_under(root.path());
            panic!("exactly one engine must get the state: {msg}");
        };
        assert!(
            matches!(&loser, SwtpmError::StateLocked { dir } if *dir == dirs.dir(1)),
            "the refusal must say the state is in use: {msg}"
        );
        assert_eq!(rc(&winner.command(get_random(8), 0).await.unwrap()), 0);
        winner.save_and_shutdown().await.unwrap();
    }
    kill_all_under(root.path());
}

/// An engine holds its state across a swtpm crash and the restart after it: no other engine
/// slips in between two of its processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_holds_its_state_through_a_swtpm_crash_and_restart() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(root.path());
    let engine = SwtpmEngine::start(1, &dirs, SwtpmConfig::default())
        .await
        .unwrap();
    let first = engine.status().await.pid.unwrap();
    signal(first, "-KILL");
    assert!(swtpm_left_after(root.path(), 3).await.is_empty());
    // No swtpm runs on the state now, and still it is not free.
    assert!(refused(
        SwtpmEngine::start(1, &dirs, SwtpmConfig::default()).await
    ));
    // The first command after the crash may fail (swtpm's exit not seen yet); the next one
    // runs on a new swtpm.
    let _ = engine.command(get_random(8), 0).await;
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    assert_ne!(engine.status().await.pid, Some(first));
    assert!(refused(
        SwtpmEngine::start(1, &dirs, SwtpmConfig::default()).await
    ));
    engine.save_and_shutdown().await.unwrap();
    assert!(swtpm_left_after(root.path(), 3).await.is_empty());
}

/// A planned shutdown lets the state go (the next manager on the root may start while the
/// old one is still being torn down); the INIT after it takes the state back, or fails
/// truthfully while another engine runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_engine_lets_its_state_go_and_its_next_init_takes_it_back() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(root.path());
    let init = || ControlOp::Init {
        delete_volatile: false,
    };
    let old = SwtpmEngine::start(1, &dirs, SwtpmConfig::default())
        .await
        .unwrap();
    old.save_and_shutdown().await.unwrap();
    let new = SwtpmEngine::start(1, &dirs, SwtpmConfig::default())
        .await
        .unwrap();
    let err = old.control(init()).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::Failed(why) if why.contains("locked by another engine")),
        "{err}"
    );
    assert_eq!(rc(&new.command(get_random(8), 0).await.unwrap()), 0);
    new.save_and_shutdown().await.unwrap();
    old.control(init()).await.unwrap();
    assert_eq!(rc(&old.command(get_random(8), 0).await.unwrap()), 0);
    assert!(refused(
        SwtpmEngine::start(1, &dirs, SwtpmConfig::default()).await
    ));
    assert_eq!(swtpm_under(root.path()).len(), 1);
    old.save_and_shutdown().await.unwrap();
    assert!(swtpm_left_after(root.path(), 3).await.is_empty());
}

/// A host killed outright once it serves: its swtpm die with it, and the next host on the
/// same state gets every instance back at once (the hold on a state ends with its holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_leaves_its_state_free_for_the_next_host() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = spawn_run(&state, "1");
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    while let Some(line) = bounded(10, "vtpmctl ready", lines.next_line())
        .await
        .unwrap()
    {
        if line.starts_with("ready") {
            break;
        }
    }
    assert_eq!(swtpm_under(&state).len(), 1);
    signal(run.id().unwrap(), "-KILL");
    let _ = bounded(5, "vtpmctl exit", run.wait()).await;
    let left = swtpm_left_after(&state, 3).await;
    kill_all_under(&state);
    assert!(
        left.is_empty(),
        "swtpm pids {left:?} outlived their killed host"
    );
    let engine = SwtpmEngine::start(1, &StateDirs::new(&state), SwtpmConfig::default())
        .await
        .unwrap();
    assert_eq!(rc(&engine.command(get_random(8), 0).await.unwrap()), 0);
    engine.save_and_shutdown().await.unwrap();
}
