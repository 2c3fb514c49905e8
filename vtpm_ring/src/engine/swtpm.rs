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
//!
//! This module holds the settings, the errors, the reported state and the engine's entry
//! points; `supervise` the swtpm the engine runs (its start, restarts and failures), `data`
//! the commands on the data connection, `control` the control operations and the TPM's power,
//! `wire` the bytes on both sockets, `process` one swtpm process and `state_dirs` where each
//! instance's state lives.

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

mod control;
mod data;
mod process;
mod state_dirs;
mod supervise;
mod wire;

use data::DataLink;
use data::Progress;
use process::StateLock;
pub use process::SwtpmProcess;
pub use state_dirs::StateDirs;
use supervise::ChildExits;
use supervise::Current;
use supervise::Live;
use supervise::Slot;
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
        let live = current.serving();
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
}

#[async_trait]
impl TpmEngine for SwtpmEngine {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        match request {
            TpmRequest::Command { command, locality } => self
                .run_command(command, locality)
                .await
                .map(TpmReply::Response),
            // Boxed: rare, and as large as a command's future (see `live`).
            TpmRequest::Control(op) => Box::pin(self.control_op(op)).await.map(TpmReply::Control),
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
