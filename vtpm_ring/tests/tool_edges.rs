//! The edges of the `vtpmctl` tool facing a hostile or broken peer: `list` against a listing
//! socket that never answers or never stops, and a `run` whose process runs out of
//! descriptors while QEMU or `list` connects. They start the `vtpmctl` binary (`run` needs
//! `swtpm`) and lower its descriptor limit with `prlimit`.
//! (From the adversarial reviews A and B, kept as regression tests.)

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::process::Command;

const VTPMCTL: &str = env!("CARGO_BIN_EXE_vtpmctl");

/// Fails the test instead of hanging.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: bounded wait expired"))
}

// ---------------------------------------------------------------------------------------------
// `vtpmctl list` against a hostile listing socket.
// ---------------------------------------------------------------------------------------------

/// `vtpmctl list --state-dir <state>`, killed after `secs`: `None` if it had not ended.
async fn list_within(state: &Path, secs: u64) -> Option<std::process::Output> {
    let child = Command::new(VTPMCTL)
        .args(["list", "--state-dir"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(secs), child.wait_with_output())
        .await
        .ok()
        .map(Result::unwrap)
}

/// A `run` that is stopped (Ctrl-Z, SIGSTOP) or wedged still has its listening socket: the
/// kernel completes the connection, and nobody ever writes. `list` must give up, fail, and
/// say which process does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtpmctl_list_gives_up_on_a_listing_socket_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    // Bound and listening, never accepting: what a SIGSTOPped `run` looks like.
    let _silent = std::os::unix::net::UnixListener::bind(dir.path().join("vtpmctl.sock")).unwrap();
    let out = list_within(dir.path(), 6)
        .await
        .expect("vtpmctl list still waiting after 6 s on a listener that never answers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "names the silent process: {stderr}"
    );
}

/// A hostile process on the listing socket that streams without end: `list` must bound
/// what it reads instead of growing without limit, and refuse the listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtpmctl_list_bounds_what_it_reads_from_the_listing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::UnixListener::bind(dir.path().join("vtpmctl.sock")).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let chunk = vec![b' '; 1 << 16];
        while s.write_all(&chunk).await.is_ok() {}
    });
    let out = list_within(dir.path(), 6).await;
    server.abort();
    let out =
        out.expect("vtpmctl list still reading (unbounded) after 6 s from an endless listing");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("longer than"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// `vtpmctl run --qemu-socket` in a child process whose descriptor limit the test lowers
// (`prlimit`) to provoke running out of descriptors.
// ---------------------------------------------------------------------------------------------

struct Run {
    child: Child,
    pid: u32,
    data_port: u16,
    qemu: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// `vtpmctl run --domains 1 --qemu-socket DIR/q`, ready.
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("te")
            .tempdir_in("/tmp")
            .unwrap();
        let qemu = dir.path().join("q");
        let state = dir.path().join("state");
        let mut child = Command::new(VTPMCTL)
            .args(["run", "--domains", "1", "--base-port", "0", "--state-dir"])
            .arg(&state)
            .arg("--qemu-socket")
            .arg(&qemu)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut data_port = 0;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("vtpmctl run became ready (is swtpm installed?)")
                .unwrap()
                .expect("vtpmctl run printed ready");
            if line.starts_with("ready") {
                break;
            }
            if let Some(p) = line.split("port=").nth(1) {
                data_port = p.trim().parse().unwrap();
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            pid,
            data_port,
            qemu,
            state,
            _dir: dir,
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// The soft open-files limit.
    fn soft_limit(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    fn set_soft_limit(&self, n: u64) {
        let ok = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", self.pid))
            .arg(format!("--nofile={n}:"))
            .status()
            .expect("prlimit runs");
        assert!(ok.success());
    }

    /// User + system CPU time of the process, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        let after = stat.rsplit(')').next().unwrap();
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat; `after` starts at field 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Exhausts the process's descriptors: lowers its soft limit just above what it uses
    /// and has it accept idle TCP connections on the data port. Returns the original limit
    /// and the connections.
    async fn exhaust(&self) -> (u64, Vec<tokio::net::TcpStream>) {
        let original = self.soft_limit();
        let in_use = u64::try_from(self.fds()).unwrap();
        self.set_soft_limit(in_use + 2);
        let mut flood = Vec::new();
        for _ in 0..8 {
            flood.push(
                tokio::net::TcpStream::connect(("127.0.0.1", self.data_port))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        (original, flood)
    }

    /// CPU ticks the process spends in one second with `pending` waiting in a listener's
    /// backlog while it is out of descriptors, and in one second before, with nothing
    /// waiting.
    async fn ticks_idle_and_with(&self, pending: &Path) -> (u64, u64) {
        let (original, flood) = self.exhaust().await;
        let idle_before = self.cpu_ticks();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let idle = self.cpu_ticks() - idle_before;

        let second = UnixStream::connect(pending).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = self.cpu_ticks();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let busy = self.cpu_ticks() - before;
        drop(second);
        drop(flood);
        self.set_soft_limit(original);
        (idle, busy)
    }
}

/// GET_CAPABILITY on the control socket; the 8-byte reply, or why there is none.
async fn capability(s: &mut UnixStream) -> Result<[u8; 8], String> {
    s.write_all(&[0, 0, 0, 1])
        .await
        .map_err(|e| e.to_string())?;
    let mut r = [0u8; 8];
    match tokio::time::timeout(Duration::from_millis(700), s.read_exact(&mut r)).await {
        Ok(Ok(_)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no reply in 700 ms".into()),
    }
}

/// The host process runs out of descriptors for a moment (other guests' TPM clients hold
/// connections) while QEMU connects to its control socket. Once descriptors are free again,
/// QEMU must be able to connect and be answered: TCP TPM sockets back off and retry after a
/// failed accept, the QEMU socket must not give up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_socket_keeps_accepting_after_the_process_ran_out_of_descriptors() {
    let run = Run::start().await;
    let mut s = UnixStream::connect(&run.qemu).await.unwrap();
    capability(&mut s).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (original, flood) = run.exhaust().await;
    // QEMU connects while no descriptor is free.
    let pending = UnixStream::connect(&run.qemu).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(pending);
    drop(flood);
    run.set_soft_limit(original);

    let mut last = String::new();
    let served = bounded("reconnect", async {
        for _ in 0..10 {
            match UnixStream::connect(&run.qemu).await {
                Ok(mut s) => match capability(&mut s).await {
                    Ok(r) => return Some(r),
                    Err(e) => last = e,
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    })
    .await;
    assert!(
        served.is_some(),
        "the QEMU socket no longer serves after a failed accept: {last}"
    );
    drop(run.child);
}

/// While QEMU is served and the process is out of descriptors, a second connection to the
/// control socket waits in the backlog. The socket must not spin on the failing accept
/// (the TCP sockets pause 50 ms after one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_socket_out_of_descriptors_does_not_spin_on_accept() {
    let run = Run::start().await;
    let mut served = UnixStream::connect(&run.qemu).await.unwrap();
    capability(&mut served).await.unwrap();

    let (idle, busy) = run.ticks_idle_and_with(&run.qemu).await;
    assert!(
        busy <= idle + 20,
        "one second with a connection waiting cost {busy} ticks of CPU (idle: {idle})"
    );
    // The session it served throughout still answers.
    capability(&mut served).await.unwrap();
    drop(run.child);
}

/// The same for `run`'s listing socket: a `list` waiting in its backlog while the process is
/// out of descriptors must not make `run` spin on the failing accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtpmctl_run_out_of_descriptors_does_not_spin_on_the_listing_socket() {
    let run = Run::start().await;
    let (idle, busy) = run
        .ticks_idle_and_with(&run.state.join("vtpmctl.sock"))
        .await;
    assert!(
        busy <= idle + 20,
        "one second with a listing client waiting cost {busy} ticks of CPU (idle: {idle})"
    );
    // Descriptors back: the listing is served again.
    let out = list_within(&run.state, 4)
        .await
        .expect("vtpmctl list answers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("pid {}", run.pid)), "{stdout}");
    drop(run.child);
}
