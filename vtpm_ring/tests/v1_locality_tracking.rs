//! v1 with control: the locality a command runs at is the one the frontend says it uses,
//! after a raw SET_LOCALITY and after one that timed out (review wave 9).

#![forbid(unsafe_code)]

use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;

/// A v1 frontend with `feature-vtpm-control` on a testbed (kept for the test's length), its
/// instance's engine, and the spawned task that serves the backend.
#[expect(clippy::unwrap_used, reason = "test setup fails loudly")]
async fn v1_with_control() -> (
    Testbed,
    std::sync::Arc<vtpm_ring::engine::SimTpm>,
    tokio::task::JoinHandle<()>,
    Frontend,
) {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let engine = bed.engines[&1].clone();
    let run = tokio::spawn(run);
    let config = FrontendConfig {
        protocols: Protocols::V1_ONLY,
        control: true,
        timeout: Some(Duration::from_secs(5)),
        ..FrontendConfig::default()
    };
    let f = Frontend::connect(&guest, config).await.unwrap();
    (bed, engine, run, f)
}

/// v1 with `feature-vtpm-control`: the public `Frontend::control` sends a SET_LOCALITY over
/// the ring, the backend applies it to the connection, and the frontend's own notion of the
/// locality (the one `set_locality` and `transmit` go by) stays 0. The next command, which
/// the frontend sends at locality 0 (it sends no SET_LOCALITY since it believes the backend
/// is at 0), runs at locality 3. Expected: either `control` refuses SET_LOCALITY (it has
/// `set_locality` for that) or the frontend tracks it; never a command at a locality
/// nobody set through `set_locality`.
#[tokio::test(flavor = "current_thread")]
async fn a_v1_control_set_locality_does_not_desync_the_frontends_locality() {
    let (_bed, engine, run, f) = v1_with_control().await;
    assert!(f.has_control());
    // Startup: with control the guest owns power-on (PowerCycleGuestStartup).
    let startup = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    f.transmit(&startup).await.unwrap();
    let answered = f.control(&ControlOp::SetLocality(3)).await.unwrap();
    // The frontend says locality 0 (explicitly, too).
    f.set_locality(0).unwrap();
    f.transmit(&get_random(8)).await.unwrap();
    assert_eq!(
        (answered.is_ok(), engine.last_locality()),
        (answered.is_ok(), 0),
        "the command ran at a locality the frontend does not use"
    );
    run.abort();
}

/// The backend's task runs only while the gate is open (a backend the test holds still).
struct Gate {
    open: std::sync::atomic::AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Gate {
    fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        self.waker.wake();
    }
}

struct Gated<F> {
    inner: std::pin::Pin<Box<F>>,
    gate: std::sync::Arc<Gate>,
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.gate.waker.register(cx.waker());
        if !self.gate.open.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

/// Lets every ready task of the (current-thread) runtime run.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// The same desync after a failure: v1 with control, the frontend's SET_LOCALITY exchange
/// times out (the backend is held still), the backend applies it once it runs, and the
/// frontend, which counts the locality as set only when it saw the answer, still believes
/// the backend is at 0. When the user goes back to locality 0, the frontend sends no
/// SET_LOCALITY, and the command runs at the timed-out exchange's locality 3. (The swtpm
/// engine treats a SET_LOCALITY it dropped half-way as unknown and sets it again; the
/// frontend does not.)
#[tokio::test(flavor = "current_thread")]
async fn a_v1_set_locality_that_timed_out_does_not_leave_the_backend_at_it() {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let engine = bed.engines[&1].clone();
    let gate = std::sync::Arc::new(Gate {
        open: std::sync::atomic::AtomicBool::new(true),
        waker: futures::task::AtomicWaker::new(),
    });
    let run = tokio::spawn(Gated {
        inner: Box::pin(run),
        gate: gate.clone(),
    });
    let config = FrontendConfig {
        protocols: Protocols::V1_ONLY,
        control: true,
        timeout: Some(Duration::from_millis(300)),
        ..FrontendConfig::default()
    };
    let f = Frontend::connect(&guest, config).await.unwrap();
    let startup = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    f.transmit(&startup).await.unwrap();
    f.transmit(&get_random(8)).await.unwrap();
    assert_eq!(engine.last_locality(), 0);

    // The backend is held: the SET_LOCALITY before the command times out.
    gate.set(false);
    f.set_locality(3).unwrap();
    let timed_out = f.transmit(&get_random(8)).await;
    assert!(timed_out.is_err(), "{timed_out:?}");
    // The backend runs again and takes the SET_LOCALITY it was sent.
    gate.set(true);
    settle().await;

    f.set_locality(0).unwrap();
    f.transmit(&get_random(8)).await.unwrap();
    assert_eq!(
        engine.last_locality(),
        0,
        "the command ran at the locality of a SET_LOCALITY that timed out"
    );
    run.abort();
}

/// v1 with control: a SET_LOCALITY sent through `Frontend::control` and acknowledged is the
/// locality of the following commands, as `set_locality` would make it.
#[tokio::test(flavor = "current_thread")]
async fn a_v1_control_set_locality_acknowledged_is_the_next_commands_locality() {
    let (_bed, engine, run, f) = v1_with_control().await;
    let startup = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    f.transmit(&startup).await.unwrap();
    assert!(f.control(&ControlOp::SetLocality(3)).await.unwrap().is_ok());
    f.transmit(&get_random(8)).await.unwrap();
    assert_eq!(engine.last_locality(), 3);
    // One the backend refuses changes nothing.
    assert!(
        f.control(&ControlOp::SetLocality(5))
            .await
            .unwrap()
            .is_err()
    );
    f.transmit(&get_random(8)).await.unwrap();
    assert_eq!(engine.last_locality(), 3);
    run.abort();
}
