//! Replies never cross reconnects: a command abandoned by a guest that went away is answered
//! late, after the guest asked to close. The manager runs an instance's frames in order, so
//! the instance's `Stop` (and the next guest's reset) wait behind the late command, never the
//! other way round (see `late_command.rs`); the late answer, whose request is gone, is
//! dropped rather than handed to the instance's next guest. The instance is a real swtpm
//! behind a gate the test holds and releases.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

mod support;

use async_trait::async_trait;
use std::sync::Arc;
use support::device;
use support::serve;
use support::swtpm;
use support::within;
use tokio::sync::Notify;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SwtpmEngine;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::create_device;
use vtpm_ring::xenbus::destroy_device;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
const GET_RANDOM_4: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 4];

/// Holds every GetRandom(8) until released (a cancel does not release it: this engine
/// answers late whatever it is told), then lets swtpm answer it; everything else goes to
/// swtpm at once.
struct GateEngine {
    inner: Arc<SwtpmEngine>,
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
    _state: tempfile::TempDir,
}

async fn setup() -> Setup {
    let state = tempfile::tempdir().unwrap();
    let host = Host::new();
    let engine = Arc::new(GateEngine {
        inner: swtpm(state.path(), 1).await,
        held: Notify::new(),
        release: Notify::new(),
        answered_4: Notify::new(),
        canceled: Notify::new(),
    });
    serve(&host, vec![(1, engine.clone())], BackendConfig::default());
    Setup {
        host,
        engine,
        _state: state,
    }
}

#[tokio::test]
async fn late_answer_to_a_departed_guest_never_reaches_the_instances_next_guest() {
    let s = setup().await;
    let toolstack = s.host.toolstack();

    // Guest A sends GetRandom(8); the engine holds it.
    let guest_a = s.host.create_domain(DomainId(2), 32).unwrap();
    create_device(&toolstack, &device(guest_a.id(), 1)).unwrap();
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
    let closing = tokio::spawn(a.close());
    // The backend asked the engine to drop the command nobody waits for any more; the engine
    // answers it anyway, late, and then the instance stops.
    within(s.engine.canceled.notified()).await;
    s.engine.release.notify_one();
    within(closing).await.unwrap().unwrap();
    destroy_device(&toolstack, &device(guest_a.id(), 1)).unwrap();
    let guest_b = s.host.create_domain(DomainId(3), 32).unwrap();
    create_device(&toolstack, &device(guest_b.id(), 1)).unwrap();
    let b = within(Frontend::connect(&guest_b, FrontendConfig::default()))
        .await
        .unwrap();

    let r = within(b.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 4, "B got someone else's answer: {r:02x?}");
    // And B's next command gets its own answer too.
    let r = within(b.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(r.len(), 10 + 2 + 4, "B got someone else's answer: {r:02x?}");
}
