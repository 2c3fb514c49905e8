//! Replies never cross reconnects or instances: a command abandoned by a guest that went away
//! is answered late, after the engine already answered the next guest of the same instance.
//! The engine is held and released by the test, so the interleaving is explicit.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vtpm_ring::backend::Backend;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SimTpm;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::manager::VtpmManager;
use vtpm_ring::manager::stream_pair;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::VtpmDevice;
use vtpm_ring::xenbus::create_device;
use vtpm_ring::xenbus::destroy_device;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
const GET_RANDOM_4: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 4];

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("bounded wait expired")
}

/// Holds every GetRandom(8) until released (a cancel does not release it: this engine
/// answers late whatever it is told); answers everything else at once.
struct GateEngine {
    inner: SimTpm,
    held: Notify,
    release: Notify,
    answered_4: Notify,
    canceled: Notify,
}

#[async_trait]
impl TpmEngine for GateEngine {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        if let TpmRequest::Command { command, .. } = &request {
            if command.as_slice() == GET_RANDOM_8 {
                self.held.notify_one();
                self.release.notified().await;
            }
            let reply = self.inner.execute(request.clone()).await;
            if command.as_slice() == GET_RANDOM_4 {
                self.answered_4.notify_one();
            }
            return reply;
        }
        if request == TpmRequest::Control(ControlOp::CancelCommand) {
            self.canceled.notify_one();
        }
        self.inner.execute(request).await
    }
}

struct Setup {
    host: Host,
    engine: Arc<GateEngine>,
}

fn setup() -> Setup {
    let host = Host::new();
    let back = host.create_domain(DomainId(1), 4).unwrap();
    let engine = Arc::new(GateEngine {
        inner: SimTpm::started(),
        held: Notify::new(),
        release: Notify::new(),
        answered_4: Notify::new(),
        canceled: Notify::new(),
    });
    let mut manager = VtpmManager::new();
    manager.add_instance(1, engine.clone());
    let (b, m) = stream_pair();
    tokio::spawn(manager.serve(m));
    tokio::spawn(Backend::new(back, b, BackendConfig::default()).run());
    Setup { host, engine }
}

fn device(frontend: DomainId) -> VtpmDevice {
    VtpmDevice {
        backend: DomainId(1),
        frontend,
        handle: 0,
        instance: 1,
        uuid: uuid::Uuid::nil(),
    }
}

#[tokio::test]
async fn late_answer_to_a_departed_guest_never_reaches_the_instances_next_guest() {
    let s = setup();
    let toolstack = s.host.toolstack();

    // Guest A sends GetRandom(8); the engine holds it.
    let guest_a = s.host.create_domain(DomainId(2), 32).unwrap();
    create_device(&toolstack, &device(guest_a.id())).unwrap();
    let a = Arc::new(
        within(Frontend::connect(&guest_a, FrontendConfig::default()))
            .await
            .unwrap(),
    );
    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.transmit(&GET_RANDOM_8).await })
    };
    within(s.engine.held.notified()).await;

    // A gives up and disconnects; the toolstack gives instance 1 to guest B.
    pending.abort();
    let _ = pending.await;
    let a = Arc::try_unwrap(a).expect("no other user of A's frontend");
    within(a.close()).await.unwrap();
    // The backend asked the engine to drop the command nobody waits for any more.
    within(s.engine.canceled.notified()).await;
    destroy_device(&toolstack, &device(guest_a.id())).unwrap();
    let guest_b = s.host.create_domain(DomainId(3), 32).unwrap();
    create_device(&toolstack, &device(guest_b.id())).unwrap();
    let b = Arc::new(
        within(Frontend::connect(&guest_b, FrontendConfig::default()))
            .await
            .unwrap(),
    );

    // B's GetRandom(4) is answered by the engine before A's, which comes last.
    let mine = {
        let b = b.clone();
        tokio::spawn(async move { b.transmit(&GET_RANDOM_4).await })
    };
    within(s.engine.answered_4.notified()).await;
    s.engine.release.notify_one();

    let r = within(mine).await.unwrap().unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 4, "B got someone else's answer: {r:02x?}");
    // And B's next command gets its own answer too.
    let r = within(b.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(r.len(), 10 + 2 + 4, "B got someone else's answer: {r:02x?}");
}
