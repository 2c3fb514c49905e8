//! The swtpm engine: one `swtpm socket --tpm2` process per vTPM instance.
//!
//! [`SwtpmEngine::start`] gives the instance its own state directory ([`StateDirs`] maps
//! instance ids to directories, so a restarted manager hands every guest its own TPM back: NV
//! indices, persistent keys and seeds live in swtpm's `tpm2-00.permall` there) and starts
//! swtpm on two loopback TCP ports it picks (data, control). Port choice cannot be made
//! race-free from outside swtpm, so a start only counts once swtpm has written its pid file,
//! which it does after binding both ports; a swtpm that lost a port to another process exits,
//! and the engine retries on fresh ports.
//!
//! Commands go over the data socket one at a time (raw TPM packets, as swtpm's `socket`
//! interface takes them). swtpm reads a command as long as its header says, so one whose
//! header's size is not its length is answered `TPM_RC_COMMAND_SIZE` without reaching swtpm. Control operations go over the control socket exactly as QEMU's
//! tpm-emulator drives it ([`super::ctrl`]), concurrently with a command so a cancel is not
//! stuck behind it. The locality of each command is applied with SET_LOCALITY first when it
//! changes.
//!
//! Cancellation: a request whose caller goes away half-way (its future dropped) leaves
//! nothing to be read as the next one's answer. swtpm still runs a command it got and
//! answers it; the next command reads that answer off first, before it sets its locality or
//! goes out itself, so the swtpm and its volatile state stay. A control operation's
//! connection is dropped with it, and the next operation connects afresh. A power operation
//! (STOP, INIT, SHUTDOWN) leaves the state [`EngineState::Unsettled`] from when it goes out
//! until its answer is read: dropped in between, swtpm may have done it or not, and the next
//! power operation settles the state.
//!
//! Faults: a data or control socket that fails or times out means the process is dead or
//! wedged. The engine kills it, fails the request in flight with [`EngineError::Failed`]
//! (which the manager answers as `TPM_RC_FAILURE`: a guest never waits on silence) and starts
//! a new swtpm on the same state directory at the next request. A swtpm that exits between
//! requests is noticed through SIGCHLD (no system call per command) and replaced before the
//! next request goes out; one whose exit is not delivered yet fails that request instead.
//! While the new one starts, [`SwtpmEngine::status`] answers at once with
//! [`EngineState::Restarting`]: what it reports is kept apart from the lock a start holds.
//! Volatile state (PCRs, loaded objects, sessions) is lost in a crash, as on real hardware;
//! permanent state is not.
//!
//! Ownership: an engine holds its instance's state directory from its start, across swtpm
//! restarts after a crash, until it is dropped or shut down the planned way (SHUTDOWN; the
//! INIT after it takes the state again), so a second engine on the same state (another
//! manager or stack on the same root) is refused with [`SwtpmError::StateLocked`] instead of
//! racing it. Every swtpm it starts dies with it: killed when the engine drops it, and by the
//! kernel when the host process dies, however it dies ([`SwtpmProcess::spawn`]).
//!
//! Lifecycle: swtpm starts powered on (`--flags not-need-init`). [`Startup::Clear`] (the
//! default) also sends `TPM2_Startup(CLEAR)` after every power-on and every INIT, so clients
//! such as tpm2-tools, which never send it, find a usable TPM; [`Startup::None`] leaves it to
//! the guest (firmware and kernels send it themselves). SHUTDOWN ends the swtpm process, as
//! swtpm defines it; the next INIT starts a new one on the same state.
//! [`SwtpmEngine::save_and_shutdown`] is the planned stop: STORE_VOLATILE, then SHUTDOWN.

use super::ControlOp;
use super::ControlReply;
use super::EngineError;
use super::TpmEngine;
use super::TpmReply;
use super::TpmRequest;
use super::ctrl;
use super::ctrl::CtrlCmd;
use super::ctrl::CtrlError;
use super::ctrl::CtrlResult;
use crate::deadline::Watchdog;
use crate::tpm_header::TPM_HEADER_SIZE;
use crate::tpm_header::TpmHeader;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use async_trait::async_trait;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU16;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::atomic::fence;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::process::Command;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;
use tokio::sync::Mutex;
use tokio::sync::watch;
use zerocopy::FromBytes;

mod process;
mod state_dirs;
mod wire;

use process::StateLock;
pub use process::SwtpmProcess;
pub use state_dirs::StateDirs;
use wire::Counted;
pub use wire::ctrl_round_trip;
pub use wire::data_round_trip;
use wire::discard_response;
use wire::first_read_buffer;
use wire::read_response;

/// `TPM2_Startup(TPM_SU_CLEAR)`.
const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
/// Name of the pid file swtpm writes into the state directory once its ports are bound.
const PID_FILE: &str = "swtpm.pid";
/// Name of swtpm's log file in the state directory.
const LOG_FILE: &str = "swtpm.log";
/// Name of the file in the state directory an engine holds locked while it runs the instance
/// (not swtpm's own `.lock`, which is taken and dropped with each swtpm process).
const LOCK_FILE: &str = "engine.lock";
/// [`Live::locality`] while a SET_LOCALITY is unconfirmed: no locality a command asks for.
const UNKNOWN_LOCALITY: u16 = u16::MAX;

/// What the engine sends after swtpm powers on or is re-initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Startup {
    /// Nothing: the guest sends `TPM2_Startup` itself (firmware, kernels).
    None,
    /// `TPM2_Startup(CLEAR)`, as swtpm's `--flags startup-clear` does at process start.
    #[default]
    Clear,
}

/// swtpm engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwtpmConfig {
    /// The swtpm binary.
    pub binary: PathBuf,
    /// What to send after power-on and INIT.
    pub startup: Startup,
    /// Longest wait for one command's response or one control reply; then swtpm is
    /// considered wedged, killed and restarted.
    pub io_timeout: Duration,
    /// Longest wait for a new swtpm to bind its ports.
    pub spawn_timeout: Duration,
    /// Start attempts (fresh ports each) before giving up.
    pub spawn_attempts: u32,
}

impl Default for SwtpmConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("swtpm"),
            startup: Startup::Clear,
            io_timeout: Duration::from_secs(30),
            spawn_timeout: Duration::from_secs(10),
            spawn_attempts: 5,
        }
    }
}

/// Failures starting or talking to swtpm.
#[derive(Debug, Error)]
pub enum SwtpmError {
    /// swtpm could not be started.
    #[error("cannot start swtpm: {0}")]
    Spawn(String),
    /// Socket or file I/O.
    #[error("swtpm I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("swtpm did not answer within {0:?}")]
    Timeout(Duration),
    /// swtpm sent something that does not parse.
    #[error("malformed data from swtpm: {0}")]
    Protocol(String),
    /// A control reply that does not parse.
    #[error("malformed control reply from swtpm: {0}")]
    Ctrl(#[from] CtrlError),
    /// A command's caller went away while the command was partly written: swtpm waits for
    /// the rest, which nobody has, so its data connection cannot carry another command.
    #[error("a command was dropped with {sent} of its {length} bytes sent")]
    DroppedMidWrite {
        /// Bytes written.
        sent: usize,
        /// The command's length.
        length: usize,
    },
    /// Another host's swtpm runs on the instance's state (its parent lives, or it would not
    /// end), so the state is not shared; starting again cannot help until that one ends.
    #[error("{dir} is in use by swtpm pid {pid} (parent {parent})")]
    StateInUse {
        /// The state directory.
        dir: PathBuf,
        /// The swtpm running on it.
        pid: i32,
        /// Its parent.
        parent: u32,
    },
    /// Another engine runs the instance's state (another manager or stack on the same state
    /// root, in this process or another), so the state is not shared. Its hold ends with that
    /// engine, or with its process however that ends.
    #[error("{dir} is locked by another engine running this instance")]
    StateLocked {
        /// The state directory.
        dir: PathBuf,
    },
}

/// Lifecycle state of an instance's TPM, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EngineState {
    /// swtpm runs and the TPM is powered on.
    Running,
    /// swtpm runs, the TPM is stopped (CMD_STOP); INIT powers it on.
    Stopped,
    /// swtpm ended on request (CMD_SHUTDOWN); INIT starts it again.
    ShutDown,
    /// swtpm died or was killed; the next request restarts it.
    Dead,
    /// swtpm died or was killed and a new one is starting on the same state (a request
    /// found it gone); no process runs for the instance until it has bound its ports.
    Restarting,
    /// A power operation (STOP, INIT, SHUTDOWN) went to swtpm and its answer is not in: it
    /// is under way, or its caller went away after sending it, and swtpm may have done it or
    /// not. The answer to it, or to the next power operation, settles the state.
    Unsettled,
}

/// A snapshot of an engine, for `vtpmctl list` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    /// The vTPM instance.
    pub instance: u32,
    /// Lifecycle state.
    pub state: EngineState,
    /// The swtpm process, when one runs.
    pub pid: Option<u32>,
    /// swtpm's data port, when one runs.
    pub data_port: Option<u16>,
    /// swtpm's control port, when one runs.
    pub ctrl_port: Option<u16>,
    /// Restarts after a failure.
    pub restarts: u64,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// The data connection and what bounds each command on it.
#[derive(Debug)]
struct DataLink {
    /// `None` after a failure, until the next command connects again.
    stream: Option<TcpStream>,
    /// [`SwtpmConfig::io_timeout`] per command, with one timer for the connection rather
    /// than one per command.
    watchdog: Watchdog,
    /// Where each response's first read lands.
    scratch: Vec<u8>,
    /// How far the command under way got, for when its caller goes away.
    progress: Progress,
}

impl DataLink {
    /// Drops the connection after a failure (swtpm, run with `--terminate`, ends with it).
    fn close(&mut self) {
        self.stream = None;
        self.progress = Progress::default();
    }
}

/// How far the command under way on the data connection got.
///
/// It lives with the connection, not in the future that sends the command, so that it
/// outlasts that future: a caller that goes away half-way (its future dropped: a timeout of
/// its own, an aborted task) leaves swtpm with a command it still runs and answers, and that
/// answer has to be read off before the next command's, or every later command gets the
/// answer before its own. Closing the connection instead is no way out: swtpm runs with
/// `--terminate` and ends when its data connection closes, and the TPM's volatile state
/// (PCRs, sessions, loaded objects) with it. Keeping count costs a few stores per command,
/// no allocation and no system call; the next command reads what is left (see
/// [`SwtpmEngine::settle`]).
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Length of the command under way; 0 when none is.
    command: usize,
    /// Bytes of it written to swtpm.
    written: usize,
    /// Bytes of its response read (the first of them, up to a header's worth, at the start
    /// of the link's scratch buffer).
    read: usize,
}

/// One swtpm process with its connections.
#[derive(Debug)]
struct Live {
    process: Mutex<SwtpmProcess>,
    pid: u32,
    data_port: u16,
    ctrl_port: u16,
    data: Mutex<DataLink>,
    ctrl: Mutex<Option<TcpStream>>,
    /// The locality swtpm applies to the next command; [`UNKNOWN_LOCALITY`] while a change
    /// of it is unconfirmed.
    locality: AtomicU16,
}

/// What swtpm the engine runs now and in what state: what a request goes to, and what
/// [`SwtpmEngine::status`] reports. Behind a lock of its own, held for a few loads and stores
/// and never across an await, so that a status never waits on a start of swtpm (which holds
/// the [`Slot`] for up to the spawn timeout on each attempt).
#[derive(Debug)]
struct Current {
    live: Option<Arc<Live>>,
    state: EngineState,
    restarts: u64,
}

/// Held across a start of swtpm (a restart, the INIT after SHUTDOWN), so that one starts at a
/// time.
#[derive(Debug)]
struct Slot {
    /// The engine's hold of the state directory: kept across crashes and restarts, so no
    /// other engine takes the state over between two of its processes; let go at a planned
    /// SHUTDOWN (the engine then runs nothing there), and taken again by the INIT after it.
    hold: Option<Arc<StateLock>>,
}

/// A restart under way: [`EngineState::Restarting`] from its start until it is settled, and
/// [`EngineState::Dead`] again if its future is dropped first, since no start is under way
/// then.
struct Restart<'a> {
    engine: &'a SwtpmEngine,
}

impl<'a> Restart<'a> {
    fn begin(engine: &'a SwtpmEngine) -> Self {
        let mut current = engine.current();
        current.restarts += 1;
        current.state = EngineState::Restarting;
        Self { engine }
    }

    /// Publishes the new swtpm, or the failure to start one.
    fn settle(self, launched: Result<Arc<Live>, SwtpmError>) -> Result<Arc<Live>, EngineError> {
        let mut current = self.engine.current();
        match launched {
            Ok(live) => {
                current.live = Some(live.clone());
                current.state = EngineState::Running;
                Ok(live)
            }
            Err(e) => {
                current.state = EngineState::Dead;
                Err(EngineError::Failed(e.to_string()))
            }
        }
    }
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        let mut current = self.engine.current();
        if current.state == EngineState::Restarting {
            current.state = EngineState::Dead;
        }
    }
}

/// Whether any child process of ours has exited since the last look: SIGCHLD, as tokio's
/// signal driver reports it to a small task that raises a flag. Looking costs an atomic
/// swap, so a command asks the system about its swtpm (a `wait4` behind a lock) only after
/// some child did exit.
#[derive(Debug)]
struct ChildExits {
    flag: Arc<AtomicBool>,
    /// Ends with the engine.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl ChildExits {
    fn watch() -> Self {
        // Raised from the start: the first look checks for real.
        let flag = Arc::new(AtomicBool::new(true));
        let watcher = match signal(SignalKind::child()) {
            Ok(mut sigchld) => {
                let flag = flag.clone();
                Some(tokio::spawn(async move {
                    while sigchld.recv().await.is_some() {
                        flag.store(true, Ordering::Release);
                    }
                    // No more deliveries: every look says "maybe" from now on.
                    flag.store(true, Ordering::Release);
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "SIGCHLD not watched; checking swtpm every time");
                None
            }
        };
        Self { flag, watcher }
    }

    /// True if a child may have exited since the last call (and forgets it).
    fn any_since_last_look(&self) -> bool {
        match &self.watcher {
            Some(w) if !w.is_finished() => self.flag.swap(false, Ordering::AcqRel),
            _ => true,
        }
    }
}

impl Drop for ChildExits {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// The engine of one vTPM instance: a supervised swtpm process (see the module docs).
#[derive(Debug)]
pub struct SwtpmEngine {
    instance: u32,
    state_dir: PathBuf,
    config: SwtpmConfig,
    slot: Mutex<Slot>,
    current: std::sync::Mutex<Current>,
    /// Commands written to swtpm, and a watch of that count for whoever subscribes.
    sent_count: AtomicU64,
    sent: watch::Sender<u64>,
    exits: ChildExits,
}

impl SwtpmEngine {
    /// Starts the engine of `instance` with its state in `dirs` (created if new). The engine
    /// runs that state alone until it is dropped or shut down (see the module docs): while
    /// another engine runs it, this fails at once with [`SwtpmError::StateLocked`].
    pub async fn start(
        instance: u32,
        dirs: &StateDirs,
        config: SwtpmConfig,
    ) -> Result<Self, SwtpmError> {
        let state_dir = dirs.create(instance)?;
        let hold = Arc::new(StateLock::take(&state_dir)?);
        let engine = Self {
            instance,
            state_dir,
            config,
            slot: Mutex::new(Slot { hold: Some(hold) }),
            current: std::sync::Mutex::new(Current {
                live: None,
                state: EngineState::Dead,
                restarts: 0,
            }),
            sent_count: AtomicU64::new(0),
            sent: watch::channel(0).0,
            // Subscribed before the first swtpm starts, so no exit of it goes unseen.
            exits: ChildExits::watch(),
        };
        {
            let mut slot = engine.slot.lock().await;
            let live = engine.launch(&mut slot.hold).await?;
            let mut current = engine.current();
            current.live = Some(live);
            current.state = EngineState::Running;
        }
        Ok(engine)
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Nothing panics while it is held; a poisoned lock still holds a whole value.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The instance id.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Counts commands written to swtpm so far; a test waits on it to know a command is in
    /// flight.
    pub fn commands_sent(&self) -> watch::Receiver<u64> {
        // Brought up to date first, so the receiver starts with nothing unseen.
        self.publish_sent(self.sent_count.load(Ordering::SeqCst));
        let receiver = self.sent.subscribe();
        // Pairs with the fence after a command is counted: that command either sees this
        // receiver and publishes, or its count is published here.
        fence(Ordering::SeqCst);
        self.publish_sent(self.sent_count.load(Ordering::SeqCst));
        receiver
    }

    /// Raises the watched count to `sent` (never lowers it: commands race the subscriber).
    fn publish_sent(&self, sent: u64) {
        self.sent.send_if_modified(|n| {
            let raised = sent > *n;
            *n = (*n).max(sent);
            raised
        });
    }

    /// A snapshot of the engine. It never waits on a request or a start of swtpm: during a
    /// restart it says [`EngineState::Restarting`].
    pub async fn status(&self) -> EngineStatus {
        let mut current = self.current();
        // A swtpm whose process is busy (killed, reaped) is being dealt with already.
        if let Some(live) = &current.live
            && current.state != EngineState::ShutDown
            && live.process.try_lock().is_ok_and(|mut p| p.has_exited())
        {
            current.state = EngineState::Dead;
        }
        let live = current.live.as_ref().filter(|_| {
            matches!(
                current.state,
                EngineState::Running | EngineState::Stopped | EngineState::Unsettled
            )
        });
        EngineStatus {
            instance: self.instance,
            state: current.state,
            pid: live.map(|l| l.pid),
            data_port: live.map(|l| l.data_port),
            ctrl_port: live.map(|l| l.ctrl_port),
            restarts: current.restarts,
            state_dir: self.state_dir.clone(),
        }
    }

    /// The planned stop: STORE_VOLATILE (so the volatile state is on disk), then SHUTDOWN
    /// (swtpm writes its state and exits). The next INIT starts swtpm again. An engine already
    /// shut down the orderly way (a VMM's SHUTDOWN) has nothing left to do.
    pub async fn save_and_shutdown(&self) -> Result<(), EngineError> {
        // Already shut down the orderly way (a VMM's SHUTDOWN through the ring): done.
        if self.current().state == EngineState::ShutDown {
            return Ok(());
        }
        match self.control_op(ControlOp::StoreVolatile).await {
            // A stopped TPM has no volatile state to store.
            Ok(_) | Err(EngineError::Refused(CtrlResult::BAD_ORDINAL)) => {}
            Err(e) => return Err(e),
        }
        self.control_op(ControlOp::Shutdown).await.map(|_| ())
    }

    /// Starts swtpm under the engine's `hold` of the state, taking it first if a planned
    /// shutdown let it go (and keeping it then only if swtpm starts).
    async fn launch(&self, hold: &mut Option<Arc<StateLock>>) -> Result<Arc<Live>, SwtpmError> {
        let lock = match hold {
            Some(lock) => lock.clone(),
            None => Arc::new(StateLock::take(&self.state_dir)?),
        };
        let process = SwtpmProcess::spawn_locked(&self.config, &lock).await?;
        let data = TcpStream::connect(process.data_addr()).await?;
        data.set_nodelay(true)?;
        let ctrl = TcpStream::connect(process.ctrl_addr()).await?;
        ctrl.set_nodelay(true)?;
        tracing::info!(
            instance = self.instance,
            pid = process.pid(),
            "swtpm running"
        );
        *hold = Some(lock);
        Ok(Arc::new(Live {
            pid: process.pid(),
            data_port: process.data_port,
            ctrl_port: process.ctrl_port,
            process: Mutex::new(process),
            data: Mutex::new(DataLink {
                stream: Some(data),
                watchdog: Watchdog::new(Some(self.config.io_timeout)),
                scratch: first_read_buffer(),
                progress: Progress::default(),
            }),
            ctrl: Mutex::new(Some(ctrl)),
            locality: AtomicU16::new(0),
        }))
    }

    /// The live process, restarted first if it died. `None` after a requested shutdown.
    async fn live(&self) -> Result<Arc<Live>, EngineError> {
        let mut slot = self.slot.lock().await;
        let live = {
            let current = self.current();
            if current.state == EngineState::ShutDown {
                return Err(EngineError::NotRunning);
            }
            current.live.clone()
        };
        // A swtpm that died since the last look is replaced before the request goes out;
        // one that dies later fails the request in flight (see `run_command`).
        if let Some(live) = live {
            if !(self.exits.any_since_last_look() && live.process.lock().await.has_exited()) {
                return Ok(live);
            }
            {
                let mut current = self.current();
                current.live = None;
                current.state = EngineState::Dead;
            }
            live.process.lock().await.kill().await;
        }
        let restart = Restart::begin(self);
        tracing::warn!(
            instance = self.instance,
            "swtpm is gone; restarting on its state"
        );
        let launched = self.launch(&mut slot.hold).await;
        restart.settle(launched)
    }

    /// Kills `live` after a failure (unless it was already replaced); the next request
    /// restarts swtpm.
    async fn retire(&self, live: &Arc<Live>, why: &SwtpmError) {
        tracing::warn!(instance = self.instance, pid = live.pid, error = %why, "swtpm failed; killing it");
        let slot = self.slot.lock().await;
        {
            let mut current = self.current();
            if current.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
                current.live = None;
                current.state = EngineState::Dead;
            }
        }
        drop(slot);
        live.process.lock().await.kill().await;
    }

    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, SwtpmError>>,
    ) -> Result<T, SwtpmError> {
        tokio::time::timeout(self.config.io_timeout, f)
            .await
            .map_err(|_| SwtpmError::Timeout(self.config.io_timeout))?
    }

    async fn send_command(&self, live: &Live, command: &[u8]) -> Result<Vec<u8>, SwtpmError> {
        let mut data = live.data.lock().await;
        self.send_on(live, &mut data, command).await
    }

    /// Sends `command` on the data connection the caller holds. A failure closes the
    /// connection.
    async fn send_on(
        &self,
        live: &Live,
        data: &mut DataLink,
        command: &[u8],
    ) -> Result<Vec<u8>, SwtpmError> {
        let result = self.round_trip(live, data, command).await;
        if result.is_err() {
            data.close();
        }
        result
    }

    async fn round_trip(
        &self,
        live: &Live,
        data: &mut DataLink,
        command: &[u8],
    ) -> Result<Vec<u8>, SwtpmError> {
        self.settle(data).await?;
        let DataLink {
            stream: link,
            watchdog,
            scratch,
            progress,
        } = data;
        let stream = match link.as_mut() {
            Some(s) => s,
            None => link.insert(TcpStream::connect(("127.0.0.1", live.data_port)).await?),
        };
        watchdog
            .within(async {
                // Counted as it goes, in case this future is dropped (see `Progress`).
                *progress = Progress {
                    command: command.len(),
                    written: 0,
                    read: 0,
                };
                while progress.written < command.len() {
                    let n = stream.write(&command[progress.written..]).await?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    progress.written += n;
                }
                let sent = self.sent_count.fetch_add(1, Ordering::SeqCst) + 1;
                // The watch's lock is taken only for someone watching (see `commands_sent`).
                fence(Ordering::SeqCst);
                if self.sent.receiver_count() > 0 {
                    self.publish_sent(sent);
                }
                let mut counted = Counted {
                    inner: stream,
                    count: &mut progress.read,
                };
                let response = read_response(&mut counted, scratch).await?;
                *progress = Progress::default();
                Ok::<_, SwtpmError>(response)
            })
            .await
            .unwrap_or(Err(SwtpmError::Timeout(self.config.io_timeout)))
    }

    /// Clears what a round trip dropped half-way left on the data connection (see
    /// [`Progress`]): the rest of the answer to its command is read and dropped, so the next
    /// command reads its own. Costs one comparison when nothing was left. An error leaves the
    /// connection to be closed.
    async fn settle(&self, data: &mut DataLink) -> Result<(), SwtpmError> {
        if data.progress.command == 0 {
            return Ok(());
        }
        let DataLink {
            stream,
            watchdog,
            scratch,
            progress,
        } = data;
        let abandoned = *progress;
        let Some(stream) = stream.as_mut().filter(|_| abandoned.written > 0) else {
            // Nothing of it reached swtpm.
            *progress = Progress::default();
            return Ok(());
        };
        if abandoned.written < abandoned.command {
            return Err(SwtpmError::DroppedMidWrite {
                sent: abandoned.written,
                length: abandoned.command,
            });
        }
        tracing::info!(
            instance = self.instance,
            read = abandoned.read,
            "reading off the answer to a command whose caller went away"
        );
        // A dropped wait here is taken up again by the next command: `read` counts on.
        let size = watchdog
            .within(discard_response(stream, scratch, &mut progress.read))
            .await
            .unwrap_or(Err(SwtpmError::Timeout(self.config.io_timeout)))?;
        *progress = Progress::default();
        tracing::debug!(instance = self.instance, size, "answer dropped");
        Ok(())
    }

    async fn send_control(
        &self,
        live: &Live,
        op: &ControlOp,
    ) -> Result<Result<ControlReply, CtrlResult>, SwtpmError> {
        let mut ctrl = live.ctrl.lock().await;
        // The connection is taken out for the round trip and put back only once its reply
        // was read whole. So a round trip dropped half-way (its caller went away) leaves no
        // connection whose next read would be its reply: the next operation connects
        // afresh. swtpm serves one control connection at a time: it answers what the old
        // one carried, sees it closed, and only then accepts the new one, so the replies
        // cannot mix. (Unlike the data connection's, this one's end does not end
        // swtpm, and control operations are rare: a new connection is cheap enough.)
        let mut stream = match ctrl.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(("127.0.0.1", live.ctrl_port)).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        let result = self.timed(ctrl_round_trip(&mut stream, op)).await;
        // After a refusal swtpm may or may not send more; the next one starts afresh.
        if matches!(result, Ok(Ok(_))) {
            *ctrl = Some(stream);
        }
        result
    }

    async fn run_command(&self, command: Vec<u8>, locality: u8) -> Result<Vec<u8>, EngineError> {
        let mut live = self.live().await?;
        // swtpm reads a command as long as its header's size says. One claiming more bytes
        // than it has would leave swtpm waiting for the rest, and the next command waiting on
        // swtpm until the I/O timeout kills it; one claiming fewer would leave the rest to be
        // read as a command of its own. Answered here, as a TPM answers a wrong size field,
        // and nothing goes to swtpm.
        if !TpmHeader::read_from_prefix_checked(&command) {
            return Ok(error_response(TpmRc::COMMAND_SIZE));
        }
        let mut on_new_swtpm = false;
        loop {
            // Locality and command go out under one hold of the data lock: a command
            // abandoned after a timeout may still be inside, and it must never run at the next
            // one's locality (or the next one at its).
            let mut data = live.data.lock().await;
            // The answer to a command whose caller went away is read off before anything else
            // goes to swtpm, the SET_LOCALITY included: swtpm may not even have read that
            // command yet, and it reads its control connection before its data connection,
            // so a locality set now could apply to it.
            if let Err(e) = self.settle(&mut data).await {
                data.close();
                drop(data);
                self.retire(&live, &e).await;
                if on_new_swtpm {
                    return Err(EngineError::Failed(e.to_string()));
                }
                // This command has not gone out: a new swtpm runs it.
                on_new_swtpm = true;
                live = self.live().await?;
                continue;
            }
            if live.locality.load(Ordering::Acquire) != u16::from(locality) {
                self.control_on(&live, ControlOp::SetLocality(locality))
                    .await?;
            }
            return match self.send_on(&live, &mut data, &command).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    self.retire(&live, &e).await;
                    Err(EngineError::Failed(e.to_string()))
                }
            };
        }
    }

    async fn startup(&self, live: &Live) {
        if self.config.startup != Startup::Clear {
            return;
        }
        match self.send_command(live, &STARTUP_CLEAR).await {
            Ok(r) => tracing::debug!(
                instance = self.instance,
                rc = ?crate::tpm_header::response_code(&r),
                "TPM2_Startup(CLEAR) after INIT"
            ),
            Err(e) => tracing::warn!(instance = self.instance, error = %e, "TPM2_Startup failed"),
        }
    }

    async fn control_on(
        &self,
        live: &Arc<Live>,
        op: ControlOp,
    ) -> Result<ControlReply, EngineError> {
        if let ControlOp::SetLocality(_) = op {
            // Unknown until swtpm confirms the new one: if this is dropped once swtpm has it,
            // the next command sets its own again instead of trusting the old value.
            live.locality.store(UNKNOWN_LOCALITY, Ordering::Release);
        }
        // Likewise the power state: from before the operation goes out until its answer is
        // read, swtpm may be in the state before it or after it, and a caller that goes away
        // in between must not leave the state before it reported.
        let before = match op {
            ControlOp::Stop | ControlOp::Init { .. } | ControlOp::Shutdown => Some(
                std::mem::replace(&mut self.current().state, EngineState::Unsettled),
            ),
            _ => None,
        };
        match self.send_control(live, &op).await {
            Ok(Ok(reply)) => {
                match op {
                    ControlOp::SetLocality(l) => {
                        live.locality.store(u16::from(l), Ordering::Release);
                    }
                    ControlOp::Stop => self.current().state = EngineState::Stopped,
                    ControlOp::Init { .. } => {
                        self.current().state = EngineState::Running;
                        self.startup(live).await;
                    }
                    ControlOp::Shutdown => {
                        let mut current = self.current();
                        current.state = EngineState::ShutDown;
                        current.live = None;
                    }
                    _ => {}
                }
                Ok(reply)
            }
            Ok(Err(rc)) => {
                // Refused: swtpm stays as it was.
                if let Some(before) = before {
                    let mut current = self.current();
                    if current.state == EngineState::Unsettled {
                        current.state = before;
                    }
                }
                Err(EngineError::Refused(rc))
            }
            Err(e) => {
                self.retire(live, &e).await;
                Err(EngineError::Failed(e.to_string()))
            }
        }
    }

    async fn control_op(&self, op: ControlOp) -> Result<ControlReply, EngineError> {
        match op {
            ControlOp::Init { .. } => {
                // INIT after SHUTDOWN powers on a new swtpm on the same state.
                let mut slot = self.slot.lock().await;
                if self.current().state == EngineState::ShutDown {
                    let live = self
                        .launch(&mut slot.hold)
                        .await
                        .map_err(|e| EngineError::Failed(e.to_string()))?;
                    let mut current = self.current();
                    current.live = Some(live);
                    current.state = EngineState::Running;
                }
                drop(slot);
                let live = self.live().await?;
                self.control_on(&live, op).await
            }
            ControlOp::Shutdown => {
                let live = self.live().await?;
                let reply = self.control_on(&live, op).await?;
                // swtpm exits after answering; reap it (or kill a straggler).
                live.process
                    .lock()
                    .await
                    .finish(self.config.io_timeout)
                    .await;
                // Now that swtpm is gone the state is let go, so that another engine (the next
                // manager on this root) may run it; unless an INIT came meanwhile.
                let mut slot = self.slot.lock().await;
                if self.current().state == EngineState::ShutDown {
                    slot.hold = None;
                }
                drop(slot);
                tracing::info!(instance = self.instance, "swtpm shut down");
                Ok(reply)
            }
            op => {
                let live = self.live().await?;
                self.control_on(&live, op).await
            }
        }
    }
}

#[async_trait]
impl TpmEngine for SwtpmEngine {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        match request {
            TpmRequest::Command { command, locality } => self
                .run_command(command, locality)
                .await
                .map(TpmReply::Response),
            TpmRequest::Control(op) => self.control_op(op).await.map(TpmReply::Control),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_swtpm_binary_is_a_spawn_error_not_a_hang() {
        let root = tempfile::tempdir().unwrap();
        let config = SwtpmConfig {
            binary: root.path().join("no-such-swtpm"),
            spawn_attempts: 2,
            ..SwtpmConfig::default()
        };
        let err = SwtpmEngine::start(1, &StateDirs::new(root.path()), config)
            .await
            .unwrap_err();
        assert!(matches!(err, SwtpmError::Spawn(_)), "{err}");
    }
}
