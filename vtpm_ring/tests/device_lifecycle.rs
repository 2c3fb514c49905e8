//! A device's life on the bus as the toolstack changes it under a running backend: removed
//! and created again routed elsewhere, removed while its TPM stops, re-created while the old
//! device's task is still ending; and a guest whose connect fails while the backend still
//! holds its pages. (Found by review; each test failed before its fix.)

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use async_trait::async_trait;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SimTpm;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::read_state;
use vtpm_ring::xenbus::write_state;

const GUEST: DomainId = DomainId(2);

fn short_timeout(protocols: Protocols) -> FrontendConfig {
    FrontendConfig {
        protocols,
        timeout: Some(Duration::from_secs(2)),
        ..FrontendConfig::default()
    }
}

/// SimTpm that records every request it gets.
struct Recorder {
    name: u32,
    sim: SimTpm,
    log: Arc<Mutex<Vec<(u32, TpmRequest)>>>,
}

#[async_trait]
impl TpmEngine for Recorder {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        self.log.lock().unwrap().push((self.name, request.clone()));
        self.sim.execute(request).await
    }
}

type Log = Arc<Mutex<Vec<(u32, TpmRequest)>>>;

fn recorded_bed(instances: &[u32]) -> (Testbed<Recorder>, LocalPool, Log) {
    let log: Log = Arc::default();
    let engines = instances
        .iter()
        .map(|&i| {
            (
                i,
                Arc::new(Recorder {
                    name: i,
                    sim: SimTpm::started(),
                    log: log.clone(),
                }),
            )
        })
        .collect();
    let (bed, run) = Testbed::with_engines(BackendConfig::default(), engines).unwrap();
    let pool = LocalPool::new();
    pool.spawner().spawn_local(run).unwrap();
    (bed, pool, log)
}

fn commands_to(log: &Log, instance: u32) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(i, r)| *i == instance && matches!(r, TpmRequest::Command { .. }))
        .count()
}

/// The toolstack removes device 0 of a guest and creates it again at once, now routed to
/// instance 5 (a vtpm-detach / vtpm-attach, or instance 1 given to another guest). The
/// guest's commands must reach instance 5, never instance 1 any more.
#[test]
fn a_device_recreated_with_another_instance_is_routed_to_the_new_instance() {
    let (bed, mut pool, log) = recorded_bed(&[1, 5]);
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    let config = short_timeout(Protocols::default());
    let front = pool.run_until(Frontend::connect(&guest, config)).unwrap();
    let r = pool.run_until(front.transmit(&get_random(8))).unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert!(commands_to(&log, 1) > 0);

    // Detach and attach again, the backend not scheduled in between.
    bed.remove_device(&dev).unwrap();
    bed.add_device(GUEST, 0, 5).unwrap();
    drop(front);
    pool.run_until_stalled();
    log.lock().unwrap().clear();

    let front = pool.run_until(Frontend::connect(&guest, config));
    let front = front.unwrap_or_else(|e| panic!("reconnect after re-attach: {e}"));
    let r = pool.run_until(front.transmit(&get_random(8))).unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(
        commands_to(&log, 1),
        0,
        "instance 1 (no longer this guest's) got the guest's commands: {:?}",
        log.lock().unwrap()
    );
    assert!(commands_to(&log, 5) > 0);
}

/// A gate the test closes to hold every `Stop` an engine gets (a swtpm that takes its time to
/// stop), and opens to let them through.
#[derive(Default)]
struct StopGate {
    closed: std::sync::atomic::AtomicBool,
    waiting: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
    held: std::sync::atomic::AtomicUsize,
}

impl StopGate {
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn open(&self) {
        self.closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for w in self.waiting.lock().unwrap().drain(..) {
            let _ = w.send(());
        }
    }
    fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// SimTpm whose `Stop` waits at a [`StopGate`].
struct SlowStop {
    sim: SimTpm,
    gate: Arc<StopGate>,
    op: vtpm_ring::engine::ControlOp,
}

#[async_trait]
impl TpmEngine for SlowStop {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        if request == TpmRequest::Control(self.op.clone())
            && self.gate.closed.load(std::sync::atomic::Ordering::SeqCst)
        {
            let (tx, rx) = futures::channel::oneshot::channel();
            self.gate.waiting.lock().unwrap().push(tx);
            self.gate
                .held
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = rx.await;
        }
        self.sim.execute(request).await
    }
}

fn slow_stop_bed() -> (Testbed<SlowStop>, LocalPool, Arc<StopGate>) {
    slow_bed(vtpm_ring::engine::ControlOp::Stop)
}

fn slow_bed(op: vtpm_ring::engine::ControlOp) -> (Testbed<SlowStop>, LocalPool, Arc<StopGate>) {
    let gate = Arc::new(StopGate::default());
    let engine = Arc::new(SlowStop {
        sim: SimTpm::started(),
        gate: gate.clone(),
        op,
    });
    let (bed, run) = Testbed::with_engines(BackendConfig::default(), vec![(1, engine)]).unwrap();
    let pool = LocalPool::new();
    pool.spawner().spawn_local(run).unwrap();
    (bed, pool, gate)
}

/// The guest closes its device and the toolstack removes it (a guest shutting down) while the
/// backend is still stopping the TPM. Once done, the backend must not write its state into
/// the removed directory: that re-creates it, owned by the backend (counted against its store
/// quota), and leaves a device task serving a device that no longer exists.
#[test]
fn a_device_removed_while_its_tpm_stops_leaves_no_directory_behind() {
    let (bed, mut pool, gate) = slow_stop_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    let front = pool
        .run_until(Frontend::connect(
            &guest,
            short_timeout(Protocols::default()),
        ))
        .unwrap();
    let bdir = backend_dir(BACKEND_DOMAIN, GUEST, 0);

    gate.close();
    // The guest's side of a shutdown: Closing (its frontend then waits for Closed).
    write_state(
        &guest.store(),
        &frontend_dir(GUEST, 0),
        XenbusState::CLOSING,
    )
    .unwrap();
    pool.run_until_stalled();
    assert_eq!(gate.held(), 1, "the backend is stopping the TPM");
    // The toolstack removes the device meanwhile.
    bed.remove_device(&dev).unwrap();
    pool.run_until_stalled();
    gate.open();
    pool.run_until_stalled();
    drop(front);

    let dom0 = bed.host.toolstack();
    let left = dom0.store().try_read(&bdir).unwrap();
    let state = dom0.store().try_read(&format!("{bdir}/state")).unwrap();
    assert!(
        left.is_none(),
        "the removed device directory is back: {bdir} (state {state:?})"
    );
}

/// The toolstack removes a device and creates it again (same handle) while the backend is
/// still stopping the old device's TPM. The new device must be served: the backend must
/// announce InitWait and a frontend must connect.
#[test]
fn a_device_recreated_while_the_old_one_stops_is_served() {
    let (bed, mut pool, gate) = slow_stop_bed();
    let guest = bed.add_guest(GUEST).unwrap();
    let dev = bed.add_device(GUEST, 0, 1).unwrap();
    let config = short_timeout(Protocols::default());
    let front = pool.run_until(Frontend::connect(&guest, config)).unwrap();

    gate.close();
    bed.remove_device(&dev).unwrap();
    pool.run_until_stalled();
    assert_eq!(gate.held(), 1, "the backend is stopping the TPM");
    drop(front);
    bed.add_device(GUEST, 0, 1).unwrap();
    pool.run_until_stalled();
    gate.open();
    pool.run_until_stalled();

    let bdir = backend_dir(BACKEND_DOMAIN, GUEST, 0);
    let front = pool.run_until(Frontend::connect(&guest, config));
    let state = read_state(&bed.backend.store(), &bdir);
    let front = front.unwrap_or_else(|e| {
        panic!("the re-created device is not served: {e} (backend state {state:?})")
    });
    let r = pool.run_until(front.transmit(&get_random(8))).unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
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

/// The frontend's connect times out while the backend, having mapped the shared page, is
/// still powering the TPM on. The caller must be told `Timeout` (what happened), and once the
/// backend has let go the guest must get its pages back (a retrying guest must not lose two
/// pages and two grants per attempt).
#[test]
fn a_connect_that_times_out_while_the_backend_powers_on_reports_timeout_and_leaks_nothing() {
    let (bed, mut pool, gate) = slow_bed(vtpm_ring::engine::ControlOp::Init {
        delete_volatile: true,
    });
    let guest = bed.add_guest(GUEST).unwrap();
    bed.add_device(GUEST, 0, 1).unwrap();
    let before = free_pages(&guest);
    gate.close();
    let config = FrontendConfig {
        timeout: Some(Duration::from_millis(300)),
        ..FrontendConfig::default()
    };
    let result = pool.run_until(Frontend::connect(&guest, config));
    assert_eq!(gate.held(), 1, "the backend was powering the TPM on");
    gate.open();
    pool.run_until_stalled();
    let after = free_pages(&guest);
    let err = result.err();
    assert_eq!(
        err,
        Some(FrontendError::Timeout),
        "connect reported {err:?} (free pages before {before}, after {after})"
    );
    assert_eq!(after, before, "pages lost by the failed connect");
}
