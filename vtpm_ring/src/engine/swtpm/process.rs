//! One swtpm process: starting it on loopback ports it binds itself, and stopping it.
//!
//! An instance's state directory is run by one engine at a time: the engine holds a lock of
//! its own on the directory ([`StateLock`]) while it runs the instance, restarts included,
//! and only a holder starts swtpm there. Under that lock, a swtpm still running on the same
//! state (named by the pid file it wrote) is dealt with before a new one starts: one adopted
//! by init, left by a host that died before connecting to it, is ended; one whose parent
//! lives belongs to another program and the state is refused.
//!
//! swtpm is started through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills it
//! when its host dies, however it dies (SIGKILL and the OOM killer run no destructor, and
//! swtpm's `--terminate` only fires once a data connection was made and closed).

use super::*;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

/// One running swtpm process and the loopback ports it listens on. The process is killed
/// when this is dropped, when the thread that started it ends (see [`SwtpmProcess::spawn`]),
/// and exits by itself once its first data connection closes (swtpm's `--terminate`), so it
/// never outlives its user.
#[derive(Debug)]
pub struct SwtpmProcess {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) data_port: u16,
    pub(super) ctrl_port: u16,
    /// The state directory's lock, held while the process may run on it.
    _lock: Arc<StateLock>,
}

/// An exclusive hold of one instance's state directory: whoever holds it is the only one to
/// start swtpm there, so two engines (two managers or stacks on one state root, in one
/// process or two) never race each other over the directory and its pid file. It is an
/// `flock` on [`LOCK_FILE`], which the kernel drops when the file is closed: when the holder
/// is dropped, or its process dies however it dies. A swtpm left running by a dead host does
/// not hold it (the descriptor is close-on-exec), so such an orphan is dealt with under it.
#[derive(Debug)]
pub(super) struct StateLock {
    dir: PathBuf,
    /// Open (and locked) for as long as the hold lasts.
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of `dir`, or fails with [`SwtpmError::StateLocked`] while another holder
    /// has it (it never waits).
    pub(super) fn take(dir: &Path) -> Result<Self, SwtpmError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                dir: dir.to_path_buf(),
                _file: file,
            }),
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(dir = %dir.display(), "state refused: another engine runs it");
                Err(SwtpmError::StateLocked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// The state directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn free_port_pair() -> std::io::Result<(u16, u16)> {
    // Both listeners stay bound until both ports are known, so the two differ.
    let a = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// What `/proc` says of a process that claims, by the pid file, to be the swtpm on `dir`;
/// `None` when no such swtpm runs (it exited, or the pid now names another program).
fn swtpm_on(pid: i32, dir: &Path) -> Option<u32> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    let program = Path::new(std::ffi::OsStr::from_bytes(args.next()?));
    let state_arg = format!("dir={}", dir.display());
    let is_ours = program.file_name() == Some(std::ffi::OsStr::new("swtpm"))
        && args.any(|a| a == state_arg.as_bytes());
    if !is_ours {
        return None;
    }
    // The parent is the field after the state, after the command name's closing parenthesis.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A swtpm left on `dir` by a host that died before its first data connection (so
/// `--terminate` never fired) holds swtpm's own lock on the directory, and no new swtpm could
/// start on it. Reparented to init, it serves nobody: it is ended. One whose parent lives
/// belongs to another program, and the state is refused rather than shared. `Ok` means the
/// pid file names no swtpm that still runs on `dir`.
async fn end_orphan(dir: &Path, pid_file: &Path) -> Result<(), SwtpmError> {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 1)
    else {
        return Ok(());
    };
    let Some(parent) = swtpm_on(pid, dir) else {
        return Ok(());
    };
    if parent != 1 {
        return Err(SwtpmError::StateInUse {
            dir: dir.to_path_buf(),
            pid,
            parent,
        });
    }
    tracing::warn!(pid, dir = %dir.display(), "ending an orphaned swtpm left on this state");
    let Some(target) = rustix::process::Pid::from_raw(pid) else {
        return Ok(());
    };
    // It may exit by itself meanwhile: then there is nothing left to end.
    let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
    if gone(pid, dir).await {
        return Ok(());
    }
    let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
    if gone(pid, dir).await {
        return Ok(());
    }
    // Not even SIGKILL ended it (stuck in the kernel, on storage say): it still holds the
    // state, and its pid file must stay.
    Err(SwtpmError::StateInUse {
        dir: dir.to_path_buf(),
        pid,
        parent,
    })
}

/// Whether the swtpm `pid` on `dir` ends within [`ORPHAN_WAITS`] looks.
async fn gone(pid: i32, dir: &Path) -> bool {
    for _ in 0..ORPHAN_WAITS {
        if swtpm_on(pid, dir).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// 10 ms apart: how long an orphaned swtpm gets to end on SIGTERM before SIGKILL (and after).
const ORPHAN_WAITS: usize = 200;

/// util-linux's `setpriv`: sets the parent-death signal, then execs the rest of its command
/// line, so the process keeps the pid it was spawned with.
const SETPRIV: &str = "setpriv";

/// Run by `sh` between `setpriv` and swtpm, with the host's pid as `$1`. The parent-death
/// signal only covers a parent that dies after `setpriv` set it: a host killed before that
/// (engines start together, so several can be in that window) sends none, and its child, now
/// init's, would start a swtpm nobody ever ends. Checked after the signal is set, the parent
/// leaves no gap: still the host, the signal will come when it dies; another, swtpm is not
/// started.
const PARENT_GUARD: &str = r#"test "$PPID" = "$1" || exit 1; shift; exec "$@""#;

/// Exit codes that mean swtpm never ran: a shell's (and `setpriv`'s) for a command not found
/// (127, also `setpriv`'s when it cannot set what it was asked to) or not executable (126).
const EXEC_FAILED: [i32; 2] = [127, 126];

/// `binary` with `args`: through `setpriv` and [`PARENT_GUARD`] when `setpriv` is given, else
/// directly.
fn command(binary: &Path, args: &[OsString], setpriv: Option<&str>) -> Command {
    let mut command = match setpriv {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--", "sh", "-c", PARENT_GUARD, "sh"])
                .arg(std::process::id().to_string())
                .arg(binary);
            c
        }
        None => Command::new(binary),
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Starts swtpm through `setpriv` (see [`PARENT_GUARD`]); without `setpriv` on the system,
/// directly, with a warning: `--terminate` then is all that ends a swtpm whose host was killed,
/// and only once the host had connected to it.
fn start(config: &SwtpmConfig, args: &[OsString], setpriv: &str) -> Result<Child, SwtpmError> {
    let spawn_error = |program: &Path, e: std::io::Error| {
        SwtpmError::Spawn(format!("{}: {e}", program.display()))
    };
    match command(&config.binary, args, Some(setpriv)).spawn() {
        // `setpriv` itself is missing (its exec is the only one done here).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    setpriv,
                    "setpriv (util-linux) not found: swtpm starts without a parent-death \
                     signal, and outlives a host killed before connecting to it"
                );
            });
            command(&config.binary, args, None)
                .spawn()
                .map_err(|e| spawn_error(&config.binary, e))
        }
        spawned => spawned.map_err(|e| spawn_error(Path::new(setpriv), e)),
    }
}

impl SwtpmProcess {
    /// Starts `swtpm socket --tpm2` on `state_dir` with fresh loopback ports, retrying on
    /// other ports when swtpm cannot bind them. Returns once swtpm has bound both ports. The
    /// directory's lock is taken first and held as long as the process object lives: while
    /// another holder (an engine, say) has it, this fails with [`SwtpmError::StateLocked`].
    ///
    /// # Threads
    ///
    /// swtpm gets SIGKILL when the *thread* that started it ends (that is what a parent-death
    /// signal watches), not only the process. A tokio runtime's threads live as long as the
    /// runtime (the worker threads of a multi-thread runtime, the thread of a current-thread
    /// one), which is as long as anything can use the process. A thread that ends earlier
    /// (a blocking-pool thread idling out, a worker that gave its place away in
    /// `block_in_place`) is not one to start swtpm from: the swtpm would die with it (an
    /// engine then sees a crash, and starts another). Nothing in this crate does.
    pub async fn spawn(config: &SwtpmConfig, state_dir: &Path) -> Result<Self, SwtpmError> {
        let lock = Arc::new(StateLock::take(state_dir)?);
        Self::spawn_locked(config, &lock).await
    }

    /// [`SwtpmProcess::spawn`] on the directory `lock` holds.
    pub(super) async fn spawn_locked(
        config: &SwtpmConfig,
        lock: &Arc<StateLock>,
    ) -> Result<Self, SwtpmError> {
        let mut last = String::from("no attempt made");
        for attempt in 0..config.spawn_attempts.max(1) {
            match Self::spawn_once(config, lock, SETPRIV).await {
                Ok(p) => return Ok(p),
                Err(SwtpmError::Spawn(why)) => {
                    tracing::debug!(attempt, why, "swtpm start failed, retrying on other ports");
                    last = why;
                }
                Err(e) => return Err(e),
            }
        }
        Err(SwtpmError::Spawn(last))
    }

    async fn spawn_once(
        config: &SwtpmConfig,
        lock: &Arc<StateLock>,
        setpriv: &str,
    ) -> Result<Self, SwtpmError> {
        let state_dir = lock.dir();
        let (data_port, ctrl_port) = free_port_pair()?;
        let pid_file = state_dir.join(PID_FILE);
        // The lock keeps every other engine off this directory, so a swtpm the pid file still
        // names is a dead host's (ended) or another program's (refused), never a competitor
        // starting at the same time.
        end_orphan(state_dir, &pid_file).await?;
        // The file now names no swtpm running here. It goes, so that a stale pid that the new
        // swtpm happens to reuse cannot pass for its own before it writes the file.
        match std::fs::remove_file(&pid_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let mut flags = String::from("not-need-init");
        if config.startup == Startup::Clear {
            flags.push_str(",startup-clear");
        }
        let args: Vec<OsString> = vec![
            "socket".into(),
            "--tpm2".into(),
            // Exit when the data connection goes: a manager that dies after connecting leaves
            // no swtpm behind even without the parent-death signal (no `setpriv`).
            "--terminate".into(),
            "--tpmstate".into(),
            format!("dir={}", state_dir.display()).into(),
            "--server".into(),
            format!("type=tcp,port={data_port},bindaddr=127.0.0.1").into(),
            "--ctrl".into(),
            format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1").into(),
            "--flags".into(),
            flags.into(),
            "--pid".into(),
            format!("file={}", pid_file.display()).into(),
            "--log".into(),
            format!("file={}", state_dir.join(LOG_FILE).display()).into(),
        ];
        let mut child = start(config, &args, setpriv)?;
        let pid = child
            .id()
            .ok_or_else(|| SwtpmError::Spawn("swtpm exited at once".into()))?;
        let deadline = tokio::time::Instant::now() + config.spawn_timeout;
        // swtpm writes its pid file only after binding both ports: until then nothing proves
        // that whoever listens on them is this process. Polling is the only signal it gives.
        // Under the lock only this child writes the file, and it is known by its own pid.
        loop {
            if let Some(status) = child.try_wait()? {
                let why = match status.code() {
                    Some(code) if EXEC_FAILED.contains(&code) => format!(
                        "{} never ran ({status}: not found, not executable, or setpriv failed)",
                        config.binary.display()
                    ),
                    _ => format!("swtpm exited with {status}: {}", log_tail(state_dir)),
                };
                return Err(SwtpmError::Spawn(why));
            }
            let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if written.trim().parse::<u32>().ok() == Some(pid) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(SwtpmError::Timeout(config.spawn_timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::debug!(pid, data_port, ctrl_port, dir = %state_dir.display(), "swtpm started");
        Ok(Self {
            child,
            pid,
            data_port,
            ctrl_port,
            _lock: lock.clone(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The data socket's address (raw TPM commands).
    pub fn data_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.data_port).into()
    }

    /// The control socket's address.
    pub fn ctrl_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.ctrl_port).into()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it if it does not.
    pub async fn finish(&mut self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    /// Kills the process and reaps it.
    pub async fn kill(&mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::debug!(pid = self.pid, error = %e, "swtpm already gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_is_held_by_one_lock_at_a_time_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::take(dir.path()).unwrap();
        let second = StateLock::take(dir.path());
        assert!(
            matches!(&second, Err(SwtpmError::StateLocked { dir: d }) if d == dir.path()),
            "{second:?}"
        );
        drop(first);
        StateLock::take(dir.path()).unwrap();
    }

    /// Through `setpriv` and its guard, or directly when `setpriv` is missing: either way the
    /// spawned pid is swtpm's, a child of this process.
    #[tokio::test]
    async fn swtpm_starts_with_and_without_setpriv_as_a_child_of_its_host() {
        for setpriv in [SETPRIV, "/nonexistent/setpriv"] {
            let dir = tempfile::tempdir().unwrap();
            let lock = Arc::new(StateLock::take(dir.path()).unwrap());
            let mut process = SwtpmProcess::spawn_once(&SwtpmConfig::default(), &lock, setpriv)
                .await
                .unwrap_or_else(|e| panic!("through {setpriv} (is swtpm installed?): {e}"));
            let pid = i32::try_from(process.pid()).unwrap();
            assert_eq!(
                swtpm_on(pid, dir.path()),
                Some(std::process::id()),
                "through {setpriv}"
            );
            process.kill().await;
        }
    }
}
