//! A connection's state machines converge: connects and closes dropped half-way or retried
//! while the backend still works on an abandoned attempt, devices removed or made unwritable
//! by the toolstack mid-way. Afterwards the state is defined, reported truthfully and
//! recoverable, and no page or grant is lost. Every wait is bounded; interleavings are driven
//! explicitly (a `LocalPool` the test runs, engines it gates). (Found by review; each test
//! failed before its fix.)

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use async_trait::async_trait;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SimTpm;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::store::Perm;
use vtpm_ring::store::Perms;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::RawFrontend;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::read_state;

const GUEST: DomainId = DomainId(2);

fn protocols(version: ProtocolVersion) -> Protocols {
    match version {
        ProtocolVersion::V1 => Protocols::V1_ONLY,
        ProtocolVersion::V2 => Protocols::default(),
    }
}

fn config(version: ProtocolVersion, timeout: Duration) -> FrontendConfig {
    FrontendConfig {
        protocols: protocols(version),
        timeout: Some(timeout),
        ..FrontendConfig::default()
    }
}

/// Pages the domain can still allocate (freed again at once).
fn free_pages(d: &Domain) -> usize {
    let mut pages = Vec::new();
    while let Ok(p) = d.alloc_page() {
        pages.push(p);
    }
    let n = pages.len();
    for p in pages {
        d.free_page(p);
    }
    n
}

fn poll_once<F: Future + ?Sized>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    f.poll(&mut Context::from_waker(&waker))
}

// ---------------------------------------------------------------------------------------
// A SimTpm whose control operations can be held at gates, and which records every request.

#[derive(Default)]
struct Gates {
    /// Names of the held operations (`"init"`, `"stop"`).
    closed: Mutex<Vec<&'static str>>,
    waiting: Mutex<Vec<(&'static str, futures::channel::oneshot::Sender<()>)>>,
    held: Mutex<Vec<&'static str>>,
    log: Mutex<Vec<TpmRequest>>,
}

fn op_name(request: &TpmRequest) -> Option<&'static str> {
    match request {
        TpmRequest::Control(ControlOp::Init { .. }) => Some("init"),
        TpmRequest::Control(ControlOp::Stop) => Some("stop"),
        _ => None,
    }
}

impl Gates {
    fn close(&self, name: &'static str) {
        self.closed.lock().unwrap().push(name);
    }
    fn open(&self, name: &'static str) {
        self.closed.lock().unwrap().retain(|n| *n != name);
        let mut waiting = self.waiting.lock().unwrap();
        let (go, stay): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(n, _)| *n == name);
        *waiting = stay;
        drop(waiting);
        for (_, tx) in go {
            let _ = tx.send(());
        }
    }
    fn held(&self, name: &'static str) -> usize {
        self.held
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == name)
            .count()
    }
    fn controls(&self) -> Vec<ControlOp> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                TpmRequest::Control(op) => Some(op.clone()),
                TpmRequest::Command { .. } => None,
            })
            .collect()
    }
}

struct Gated {
    sim: SimTpm,
    gates: Arc<Gates>,
}

#[async_trait]
impl TpmEngine for Gated {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        self.gates.log.lock().unwrap().push(request.clone());
        if let Some(name) = op_name(&request)
            && self.gates.closed.lock().unwrap().contains(&name)
        {
            let (tx, rx) = futures::channel::oneshot::channel();
            self.gates.waiting.lock().unwrap().push((name, tx));
            self.gates.held.lock().unwrap().push(name);
            let _ = rx.await;
        }
        self.sim.execute(request).await
    }
}

fn gated_bed() -> (Testbed<Gated>, LocalPool, Arc<Gates>) {
    let gates = Arc::new(Gates::default());
    let engine = Arc::new(Gated {
        sim: SimTpm::started(),
        gates: gates.clone(),
    });
    let (bed, run) = Testbed::with_engines(BackendConfig::default(), vec![(1, engine)]).unwrap();
    let pool = LocalPool::new();
    pool.spawner().spawn_local(run).unwrap();
    (bed, pool, gates)
}

/// Runs `f` as a task of `pool`; its output lands in the returned cell.
fn spawn_into<T: 'static>(
    pool: &LocalPool,
    f: impl Future<Output = T> + 'static,
) -> Rc<RefCell<Option<T>>> {
    let out = Rc::new(RefCell::new(None));
    let slot = out.clone();
    pool.spawner()
        .spawn_local(async move {
            let v = f.await;
            *slot.borrow_mut() = Some(v);
        })
        .unwrap();
    out
}

/// Runs the pool until `cell` is filled (each wait bounded by the frontend's own timeout,
/// which runs on its own timer thread; 10 s overall).
fn run_until_filled<T>(pool: &mut LocalPool, cell: &Rc<RefCell<Option<T>>>) -> T {
    let started = Instant::now();
    loop {
        pool.run_until_stalled();
        if let Some(v) = cell.borrow_mut().take() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "task did not finish within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Timeouts and toolstack races at connect.

/// The guest's connect times out while the backend, having mapped the guest's pages and bound
/// its event channel, is still powering the TPM on; the guest retries at once (the backend
/// still shows InitWait, so the retry publishes a new ring). When the old power-on finishes,
/// the backend says Connected for the ring of the attempt that gave up. The retry must not
/// then report a connection that cannot carry a command: either its connect fails, or the
/// device it returns works (a further connect must work in any case).
#[test]
fn a_connect_retried_while_the_backend_still_powers_on_for_the_abandoned_one_gets_a_working_device()
{
    for version in [ProtocolVersion::V2, ProtocolVersion::V1] {
        let (bed, mut pool, gates) = gated_bed();
        let guest = bed.add_guest(GUEST).unwrap();
        bed.add_device(GUEST, 0, 1).unwrap();
        pool.run_until_stalled();
        gates.close("init");
        let first = pool.run_until(Frontend::connect(
            &guest,
            config(version, Duration::from_millis(200)),
        ));
        assert_eq!(first.err(), Some(FrontendError::Timeout), "{version:?}");
        assert_eq!(gates.held("init"), 1, "the backend was powering the TPM on");

        // The retry publishes its ring while the backend still powers on for the first.
        let g = guest.clone();
        let retry = spawn_into(&pool, async move {
            Frontend::connect(&g, config(version, Duration::from_secs(3))).await
        });
        pool.run_until_stalled();
        let fdir = frontend_dir(GUEST, 0);
        assert_eq!(
            read_state(&guest.store(), &fdir),
            XenbusState::INITIALISED,
            "{version:?}: the retry has published its ring"
        );
        // The old power-on completes; the Stop after it takes its time (as swtpm's does).
        gates.close("stop");
        gates.open("init");
        let retried = run_until_filled(&mut pool, &retry);
        gates.open("stop");
        pool.run_until_stalled();
        match retried {
            Ok(front) => {
                let r = pool.run_until(front.transmit(&get_random(8)));
                assert!(
                    matches!(&r, Ok(resp) if response_code(resp) == Some(TpmRc::SUCCESS)),
                    "{version:?}: connect reported success, but the device cannot carry a \
                     command: {r:?} (backend state {:?})",
                    read_state(&bed.backend.store(), &backend_dir(BACKEND_DOMAIN, GUEST, 0))
                );
            }
            Err(e) => {
                // Truthful failure: a further attempt must work.
                let again = pool
                    .run_until(Frontend::connect(
                        &guest,
                        config(version, Duration::from_secs(3)),
                    ))
                    .unwrap_or_else(|e2| panic!("{version:?}: retry failed ({e}), then {e2}"));
                let r = pool.run_until(again.transmit(&get_random(8))).unwrap();
                assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
            }
        }
    }
}

/// The toolstack removes the device while the backend powers the TPM on for a connection.
/// The power-on completes, but the TPM must not be left running: the backend stops it (the
/// module's promise: after a connection ends "or the device is removed", `Stop`).
#[test]
fn a_device_removed_while_its_tpm_powers_on_gets_its_tpm_stopped() {
    let (bed, mut pool, gates) = gated_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    pool.run_until_stalled();
    gates.close("init");
    let g = guest.clone();
    let _connect = spawn_into(&pool, async move {
        Frontend::connect(&g, config(ProtocolVersion::V2, Duration::from_secs(2))).await
    });
    pool.run_until_stalled();
    assert_eq!(gates.held("init"), 1);
    bed.remove_device(&dev).unwrap();
    gates.open("init");
    pool.run_until_stalled();
    let controls = gates.controls();
    assert_eq!(
        controls.last(),
        Some(&ControlOp::Stop),
        "the TPM powered on for a device that is gone was never stopped: {controls:?}"
    );
}

/// The toolstack removes the device while the guest connects. Nothing can ever answer: the
/// guest must learn it promptly (not sit out its whole timeout, the default being 3 minutes,
/// and then blame the backend's silence).
#[test]
fn a_connect_to_a_device_the_toolstack_removes_fails_promptly_and_not_as_a_timeout() {
    let (bed, mut pool, _gates) = gated_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    pool.run_until_stalled();
    let mut connect = Box::pin(Frontend::connect(
        &guest,
        config(ProtocolVersion::V2, Duration::from_secs(4)),
    ));
    // One poll: the ring is published, the guest waits for Connected.
    assert!(poll_once(connect.as_mut()).is_pending());
    bed.remove_device(&dev).unwrap();
    let started = Instant::now();
    let result = pool.run_until(connect);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2) && !matches!(result, Err(FrontendError::Timeout)),
        "connect to a removed device returned {:?} after {took:?}",
        result.map(|_| ())
    );
}

/// Two connects of the same device at once (two drivers of one guest binding it, or a
/// retry racing an attempt still under way). The backend serves one ring; a connect must not
/// report success for the ring nobody serves: every frontend that connect returns carries
/// commands.
#[test]
fn two_connects_of_one_device_at_once_never_both_report_a_connection_only_one_has() {
    let (bed, mut pool, _gates) = gated_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    bed.add_device(GUEST, 0, 1).unwrap();
    pool.run_until_stalled();
    let mut a = Box::pin(Frontend::connect(
        &guest,
        config(ProtocolVersion::V2, Duration::from_secs(2)),
    ));
    let mut b = Box::pin(Frontend::connect(
        &guest,
        config(ProtocolVersion::V2, Duration::from_secs(2)),
    ));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    let (a, b) = pool.run_until(futures::future::join(a, b));
    for (name, front) in [("first", a), ("second", b)] {
        if let Ok(front) = front {
            let r = pool.run_until(front.transmit(&get_random(8)));
            assert!(
                matches!(&r, Ok(resp) if response_code(resp) == Some(TpmRc::SUCCESS)),
                "the {name} connect reported success, but its device cannot carry a command: \
                 {r:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cancellation safety of connect and close: nothing leaks.

/// A connect future dropped while it waits for the backend (a caller's own timeout, a task
/// aborted) must give its pages and grants back once the backend has let go, and the device
/// must connect again.
#[test]
fn a_connect_future_dropped_while_waiting_for_the_backend_gives_its_pages_back() {
    for version in [ProtocolVersion::V2, ProtocolVersion::V1] {
        let (bed, mut pool, _gates) = gated_bed();
        let guest = bed.add_guest(GUEST).unwrap();
        bed.add_device(GUEST, 0, 1).unwrap();
        pool.run_until_stalled();
        let before = free_pages(&guest);
        let mut connect = Box::pin(Frontend::connect(
            &guest,
            config(version, Duration::from_secs(3)),
        ));
        assert!(poll_once(connect.as_mut()).is_pending());
        assert_eq!(
            read_state(&guest.store(), &frontend_dir(GUEST, 0)),
            XenbusState::INITIALISED
        );
        drop(connect);
        pool.run_until_stalled();
        // The device still works.
        let front = pool
            .run_until(Frontend::connect(
                &guest,
                config(version, Duration::from_secs(3)),
            ))
            .unwrap_or_else(|e| panic!("{version:?}: reconnect after a dropped connect: {e}"));
        let r = pool.run_until(front.transmit(&get_random(8))).unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        pool.run_until(front.close()).unwrap();
        pool.run_until_stalled();
        let after = free_pages(&guest);
        assert_eq!(
            after, before,
            "{version:?}: pages lost by the dropped connect (free before {before}, after {after})"
        );
    }
}

/// A close future dropped after it told the backend Closing (a caller's own timeout, as
/// `VtpmStack::shutdown` puts on it) must still give the pages and grants back once the
/// backend has let go.
#[test]
fn a_close_future_dropped_half_way_gives_its_pages_back() {
    for version in [ProtocolVersion::V2, ProtocolVersion::V1] {
        let (bed, mut pool, _gates) = gated_bed();
        let guest = bed.add_guest(GUEST).unwrap();
        bed.add_device(GUEST, 0, 1).unwrap();
        pool.run_until_stalled();
        let before = free_pages(&guest);
        let front = pool
            .run_until(Frontend::connect(
                &guest,
                config(version, Duration::from_secs(3)),
            ))
            .unwrap();
        let mut close = Box::pin(front.close());
        assert!(poll_once(close.as_mut()).is_pending());
        drop(close);
        pool.run_until_stalled();
        // The device still works.
        let front = pool
            .run_until(Frontend::connect(
                &guest,
                config(version, Duration::from_secs(3)),
            ))
            .unwrap_or_else(|e| panic!("{version:?}: reconnect after a dropped close: {e}"));
        pool.run_until(front.close()).unwrap();
        pool.run_until_stalled();
        let after = free_pages(&guest);
        assert_eq!(
            after, before,
            "{version:?}: pages lost by the dropped close (free before {before}, after {after})"
        );
    }
}

/// The toolstack removed the device (a guest being torn down); the guest's close then fails,
/// which is fair, but its pages and grants must still come back once the backend let go.
#[test]
fn a_close_that_fails_because_the_device_is_gone_still_gives_the_pages_back() {
    let (bed, mut pool, _gates) = gated_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    pool.run_until_stalled();
    let before = free_pages(&guest);
    let front = pool
        .run_until(Frontend::connect(
            &guest,
            config(ProtocolVersion::V2, Duration::from_secs(3)),
        ))
        .unwrap();
    bed.remove_device(&dev).unwrap();
    pool.run_until_stalled();
    let closed = pool.run_until(front.close());
    pool.run_until_stalled();
    let after = free_pages(&guest);
    assert_eq!(
        after, before,
        "pages lost by a close that returned {closed:?} (free before {before}, after {after})"
    );
}

// ---------------------------------------------------------------------------------------
// The toolstack takes the backend's write access to a device's state node.

/// Runs a testbed's backend future on a thread of its own, one `run_until_stalled` per
/// request, so that a poll that never returns is seen (and survived) by the test.
struct Runner {
    go: std::sync::mpsc::Sender<()>,
    stalled: std::sync::mpsc::Receiver<()>,
}

impl Runner {
    fn start(run: impl Future<Output = ()> + Send + 'static) -> Self {
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (stalled_tx, stalled) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut pool = LocalPool::new();
            pool.spawner().spawn_local(run).unwrap();
            while go_rx.recv().is_ok() {
                pool.run_until_stalled();
                if stalled_tx.send(()).is_err() {
                    return;
                }
            }
        });
        Self { go, stalled }
    }

    /// Whether the backend stalled (did all it could) within `limit`.
    fn stall(&self, limit: Duration) -> bool {
        self.go.send(()).unwrap();
        self.stalled.recv_timeout(limit).is_ok()
    }
}

/// The toolstack makes a device's state node read-only for the backend (a misconfiguration,
/// or a toolstack revoking the device). The backend cannot serve that device, but it must
/// neither spin nor stop serving every other device: its task has to keep yielding.
#[test]
fn a_device_whose_state_the_backend_may_not_write_does_not_make_the_backend_spin() {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1, 2]).unwrap();
    let runner = Runner::start(run);
    let guest = bed.add_guest(GUEST).unwrap();
    bed.add_device(GUEST, 0, 1).unwrap();
    assert!(runner.stall(Duration::from_secs(5)));
    let bdir = backend_dir(BACKEND_DOMAIN, GUEST, 0);
    assert_eq!(
        read_state(&bed.backend.store(), &bdir),
        XenbusState::INIT_WAIT
    );
    let dom0 = bed.host.toolstack();
    let state = format!("{bdir}/state");
    let perms = dom0.store().get_perms(&state).unwrap();
    dom0.store()
        .set_perms(
            &state,
            Perms::private(DomainId::DOM0)
                .with(BACKEND_DOMAIN, Perm::Read)
                .with(GUEST, Perm::Read),
        )
        .unwrap();
    // The guest connects: the backend's write of Connected is refused.
    let _raw = RawFrontend::publish(&guest, ProtocolVersion::V2).unwrap();
    let stalled = runner.stall(Duration::from_secs(2));
    // Give the write access back, so that a spinning backend ends its poll.
    dom0.store().set_perms(&state, perms).unwrap();
    let recovered = runner.stall(Duration::from_secs(5));
    assert!(
        stalled,
        "the backend's task never yielded while it could not write a device's state \
         (it recovered once allowed again: {recovered})"
    );
}
