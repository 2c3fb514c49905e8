//! The swtpm the engine runs: starting it under the engine's hold of the state, noticing it
//! died (SIGCHLD), killing it after a failure and starting another, and publishing what runs
//! for [`SwtpmEngine::status`].

use super::*;

/// One swtpm process with its connections.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) process: Mutex<SwtpmProcess>,
    pub(super) pid: u32,
    pub(super) data_port: u16,
    pub(super) ctrl_port: u16,
    pub(super) data: Mutex<DataLink>,
    pub(super) ctrl: Mutex<Option<TcpStream>>,
    /// The locality swtpm applies to the next command; [`UNKNOWN_LOCALITY`] while a change
    /// of it is unconfirmed.
    pub(super) locality: AtomicU16,
}

/// What swtpm the engine runs now and in what state: what a request goes to, and what
/// [`SwtpmEngine::status`] reports. Behind a lock of its own, held for a few loads and stores
/// and never across an await, so that a status never waits on a start of swtpm (which holds
/// the [`Slot`] for up to the spawn timeout on each attempt).
#[derive(Debug)]
pub(super) struct Current {
    pub(super) live: Option<Arc<Live>>,
    pub(super) state: EngineState,
    pub(super) restarts: u64,
}

impl Current {
    /// The swtpm requests go to, if the state says one serves them: running, stopped, or
    /// with a power operation unsettled (not shut down, dead or being restarted).
    pub(super) fn serving(&self) -> Option<&Arc<Live>> {
        self.live.as_ref().filter(|_| {
            matches!(
                self.state,
                EngineState::Running | EngineState::Stopped | EngineState::Unsettled
            )
        })
    }
}

/// Held across a start of swtpm (a restart, the INIT after SHUTDOWN), so that one starts at a
/// time.
#[derive(Debug)]
pub(super) struct Slot {
    /// The engine's hold of the state directory: kept across crashes and restarts, so no
    /// other engine takes the state over between two of its processes; let go at a planned
    /// SHUTDOWN (the engine then runs nothing there), and taken again by the INIT after it.
    pub(super) hold: Option<Arc<StateLock>>,
}

/// A restart under way: [`EngineState::Restarting`] from its start until it is settled, and
/// [`EngineState::Dead`] again if its future is dropped first, since no start is under way
/// then.
pub(super) struct Restart<'a> {
    pub(super) engine: &'a SwtpmEngine,
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
pub(super) struct ChildExits {
    pub(super) flag: Arc<AtomicBool>,
    /// Ends with the engine.
    pub(super) watcher: Option<tokio::task::JoinHandle<()>>,
}

impl ChildExits {
    pub(super) fn watch() -> Self {
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

    /// Whether SIGCHLD is watched: without the watcher, every look says "maybe".
    fn watched(&self) -> bool {
        self.watcher.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// True if a child may have exited since the last call of
    /// [`Self::any_since_last_look`] (which it leaves to that call to forget).
    pub(super) fn any_to_look_at(&self) -> bool {
        !self.watched() || self.flag.load(Ordering::Acquire)
    }

    /// True if a child may have exited since the last call (and forgets it).
    pub(super) fn any_since_last_look(&self) -> bool {
        !self.watched() || self.flag.swap(false, Ordering::AcqRel)
    }
}

impl Drop for ChildExits {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

impl SwtpmEngine {
    /// Starts swtpm under the engine's `hold` of the state, taking it first if a planned
    /// shutdown let it go (and keeping it then only if swtpm starts).
    pub(super) async fn launch(
        &self,
        hold: &mut Option<Arc<StateLock>>,
    ) -> Result<Arc<Live>, SwtpmError> {
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
    pub(super) async fn live(&self) -> Result<Arc<Live>, EngineError> {
        // A command's usual case, without the start lock (a tokio lock, whose round trip
        // costs every command more than all of this): a swtpm runs and no child exited
        // since the last look. Anything else (a restart or an INIT under way, which hold
        // the start lock, a shutdown, a swtpm `status` found dead, an exit to check) goes
        // the long way.
        if !self.exits.any_to_look_at()
            && let Some(live) = self.current().serving()
        {
            return Ok(live.clone());
        }
        let mut slot = self.slot.lock().await;
        let (live, found_dead) = {
            let current = self.current();
            if current.state == EngineState::ShutDown {
                return Err(EngineError::NotRunning);
            }
            (current.live.clone(), current.state == EngineState::Dead)
        };
        // A swtpm that died since the last look (or that `status` found dead before the exit
        // was reported) is replaced before the request goes out; one that dies later fails
        // the request in flight (see `run_command`).
        if let Some(live) = live {
            let look = self.exits.any_since_last_look() || found_dead;
            if !(look && live.process.lock().await.has_exited()) {
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
        // Boxed, as every rare path under `run_command`: inline, a restart's state would
        // size the future of every command, past what the allocator serves from its cache.
        let launched = Box::pin(self.launch(&mut slot.hold)).await;
        restart.settle(launched)
    }

    /// Kills `live` after a failure (unless it was already replaced); the next request
    /// restarts swtpm.
    pub(super) async fn retire(&self, live: &Arc<Live>, why: &SwtpmError) {
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
}
