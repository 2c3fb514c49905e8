//! The ring on the test's thread, its TPMs real swtpm processes: for the tests that play a
//! hostile frontend step by step (doorbells, the store handshake, page contents).
//!
//! The backend and the manager run on a [`LocalPool`] the test polls; each instance's
//! [`SwtpmEngine`] runs on a tokio runtime of its own thread, reached through [`Remote`],
//! which counts the calls the manager is waiting on. [`Harness::settle`] is one explicit step:
//! the ring does everything it can, every TPM call in flight is answered, the ring finishes
//! with the answers, and again, until the ring is stalled with no call in flight.
//! [`Harness::step`] is the smaller step: the ring does everything it can while the TPM
//! answers nothing (calls made meanwhile wait to be sent until the next settle), so a test
//! can act while a command is at the TPM. Either way, the ring's state after a step is a
//! function of what the test did, never of how threads were scheduled; nothing sleeps. Every
//! wait is bounded (10 s: a hang, not a slow machine).
//!
//! Included with `#[path]` by the tests that use it (not through `mod support`, whose
//! tokio-runtime helpers they do not use). They need `swtpm` (`cargo xtask deps`).

#![expect(clippy::panic, reason = "test setup fails the test loudly")]

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::executor::LocalPool;
use futures::future::Either;
use futures::task::AtomicWaker;
use futures::task::LocalSpawnExt;
use futures_timer::Delay;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use tokio::runtime::Runtime;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::testbed::Testbed;

/// Longest wait for anything (a TPM answer, a frontend operation).
const LIMIT: Duration = Duration::from_secs(10);

/// Engine calls the manager has started and not yet got an answer to, and whether new ones
/// may go to the TPM.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    /// The settle step waiting for `count` to reach 0.
    idle: AtomicWaker,
    gate: Mutex<Gate>,
}

/// Closed during [`Harness::step`]: calls then wait here until it opens.
#[derive(Default)]
struct Gate {
    closed: bool,
    waiting: Vec<oneshot::Sender<()>>,
}

impl InFlight {
    /// Completes once no call is in flight.
    fn idle(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.idle.register(cx.waker());
            match self.count.load(Ordering::Acquire) {
                0 => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes when the gate is open.
    async fn pass(&self) {
        let wait = {
            let mut gate = self.gate();
            if !gate.closed {
                return;
            }
            let (tx, rx) = oneshot::channel();
            gate.waiting.push(tx);
            rx
        };
        // A dropped sender (a harness gone) lets the call through as well.
        let _ = wait.await;
    }

    fn close(&self) {
        self.gate().closed = true;
    }

    fn open(&self) {
        let waiting = {
            let mut gate = self.gate();
            gate.closed = false;
            std::mem::take(&mut gate.waiting)
        };
        for call in waiting {
            let _ = call.send(());
        }
    }
}

/// One call in flight, from the manager's first poll of it until its answer arrives (or the
/// manager drops it).
struct Call(Arc<InFlight>);

impl Call {
    fn start(calls: &Arc<InFlight>) -> Self {
        calls.count.fetch_add(1, Ordering::AcqRel);
        Self(calls.clone())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.idle.wake();
    }
}

/// A swtpm engine reached from any executor: each call runs on the engines' runtime and is
/// counted while the manager waits for it.
pub struct Remote {
    inner: Arc<SwtpmEngine>,
    runtime: tokio::runtime::Handle,
    calls: Arc<InFlight>,
}

#[async_trait]
impl TpmEngine for Remote {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        let _call = Call::start(&self.calls);
        self.calls.pass().await;
        let inner = self.inner.clone();
        // A JoinHandle is an executor-agnostic future: the manager's pool awaits it.
        self.runtime
            .spawn(async move { inner.execute(request).await })
            .await
            .unwrap_or_else(|e| Err(EngineError::Failed(format!("engine task: {e}"))))
    }
}

/// Fails the test if `future` takes longer than [`LIMIT`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    let future = std::pin::pin!(future);
    match futures::future::select(future, Delay::new(LIMIT)).await {
        Either::Left((value, _)) => value,
        Either::Right(_) => panic!("{what} did not finish within {LIMIT:?}"),
    }
}

/// A [`Testbed`] whose instances are swtpm processes, its backend and manager polled only
/// when the test says so.
pub struct Harness {
    /// The host, the backend's counters and the engines.
    pub bed: Testbed<Remote>,
    // Field order is drop order: the ring and its engines (swtpm is killed with the last
    // handle), then their state, then the runtime they ran on.
    pool: LocalPool,
    calls: Arc<InFlight>,
    _state: tempfile::TempDir,
    _runtime: Runtime,
}

impl Harness {
    /// A backend with `config` serving `instances`, each a fresh swtpm; the ring has done
    /// everything it can (see [`Harness::settle`]).
    pub fn start(config: BackendConfig, instances: &[u32]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("swtpm-engines")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("engine runtime: {e}"));
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("state dir: {e}"));
        let dirs = StateDirs::new(state.path());
        let swtpm_config = SwtpmConfig {
            io_timeout: LIMIT,
            ..SwtpmConfig::default()
        };
        let started = runtime.block_on(futures::future::join_all(
            instances
                .iter()
                .map(|&i| SwtpmEngine::start(i, &dirs, swtpm_config.clone())),
        ));
        let calls = Arc::new(InFlight::default());
        let engines = instances
            .iter()
            .zip(started)
            .map(|(&i, engine)| {
                let engine = engine.unwrap_or_else(|e| {
                    panic!("swtpm starts (is it installed? `cargo xtask deps`): {e}")
                });
                let remote = Remote {
                    inner: Arc::new(engine),
                    runtime: runtime.handle().clone(),
                    calls: calls.clone(),
                };
                (i, Arc::new(remote))
            })
            .collect();
        let (bed, run) =
            Testbed::with_engines(config, engines).unwrap_or_else(|e| panic!("testbed: {e}"));
        let pool = LocalPool::new();
        pool.spawner()
            .spawn_local(run)
            .unwrap_or_else(|e| panic!("spawn the ring: {e}"));
        let mut harness = Self {
            bed,
            pool,
            calls,
            _state: state,
            _runtime: runtime,
        };
        harness.settle();
        harness
    }

    /// Polls the ring with `future` (a frontend's operation, say) until `future` completes,
    /// then settles; returns its output.
    pub fn run<T>(&mut self, future: impl Future<Output = T>) -> T {
        self.calls.open();
        let out = self.pool.run_until(bounded("the test's future", future));
        loop {
            self.step();
            if self.calls.count.load(Ordering::Acquire) == 0 {
                return out;
            }
            self.calls.open();
            let calls = self.calls.clone();
            self.pool
                .run_until(bounded("a TPM call in flight", calls.idle()));
        }
    }

    /// One step: the ring does everything it can, the TPMs answer every call in flight, and
    /// the ring finishes with their answers, until it stalls with no call in flight.
    pub fn settle(&mut self) {
        self.run(std::future::ready(()));
    }

    /// The ring does everything it can, the TPMs answer nothing: calls the ring makes now
    /// (and any still waiting from an earlier step) wait for the next [`Harness::settle`] or
    /// [`Harness::run`].
    pub fn step(&mut self) {
        self.calls.close();
        self.pool.run_until_stalled();
    }
}
