//! Cancel through the whole path: the frontend's cancel reaches a slow engine as a control
//! operation, the command ends early, and the device keeps working. The TPM is a real
//! swtpm; only the slowness of the first command is scripted in front of it (a real TPM's
//! cancel lands only inside long operations such as key generation, which would make the
//! test depend on timing).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

mod support;

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::device;
use support::serve;
use support::swtpm;
use support::within;
use tokio::sync::Notify;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::ControlReply;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SwtpmEngine;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::error_response;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::create_device;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

/// Takes 1 s over its first GetRandom unless canceled, like a TPM busy generating a key;
/// swtpm answers everything (the canceled command's TPM_RC_CANCELED aside).
struct SlowEngine {
    inner: Arc<SwtpmEngine>,
    commands: AtomicU32,
    /// Notified when the slow command has started.
    started: Notify,
    cancel: Notify,
    cancels: AtomicU32,
}

#[async_trait]
impl TpmEngine for SlowEngine {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        match request {
            TpmRequest::Command { command, locality } if command == GET_RANDOM_8 => {
                let delay = if self.commands.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.started.notify_one();
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        self.inner.execute(TpmRequest::Command { command, locality }).await
                    }
                    () = self.cancel.notified() => {
                        Ok(TpmReply::Response(error_response(TpmRc::CANCELED)))
                    }
                }
            }
            TpmRequest::Control(ControlOp::CancelCommand) => {
                self.cancels.fetch_add(1, Ordering::Relaxed);
                self.cancel.notify_waiters();
                Ok(TpmReply::Control(ControlReply::Done))
            }
            other => self.inner.execute(other).await,
        }
    }
}

async fn setup(protocols: Protocols) -> (Arc<SlowEngine>, Arc<Frontend>, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let host = Host::new();
    let guest = host.create_domain(DomainId(2), 32).unwrap();
    let engine = Arc::new(SlowEngine {
        inner: swtpm(state.path(), 4).await,
        commands: AtomicU32::new(0),
        started: Notify::new(),
        cancel: Notify::new(),
        cancels: AtomicU32::new(0),
    });
    serve(&host, vec![(4, engine.clone())], BackendConfig::default());
    create_device(&host.toolstack(), &device(guest.id(), 4)).unwrap();
    let config = FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    };
    let front = Arc::new(within(Frontend::connect(&guest, config)).await.unwrap());
    (engine, front, state)
}

#[tokio::test]
async fn v2_cancel_reaches_the_engine_and_ends_the_command() {
    let (engine, front, _state) = setup(Protocols::V2_ONLY).await;
    let pending = {
        let front = front.clone();
        tokio::spawn(async move { front.transmit(&GET_RANDOM_8).await })
    };
    within(engine.started.notified()).await;
    front.cancel().unwrap();
    let r = within(pending).await.unwrap();
    // The backend finished with the engine's answer to the cancel.
    assert_eq!(response_code(&r.unwrap()), Some(TpmRc::CANCELED));
    assert_eq!(engine.cancels.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn v1_cancel_returns_at_once_and_the_late_answer_is_drained() {
    let (engine, front, _state) = setup(Protocols::V1_ONLY).await;
    let pending = {
        let front = front.clone();
        tokio::spawn(async move { front.transmit(&GET_RANDOM_8).await })
    };
    within(engine.started.notified()).await;
    front.cancel().unwrap();
    assert_eq!(
        within(pending).await.unwrap().unwrap_err(),
        FrontendError::Canceled
    );
    // v1 has no cancel on the wire: the engine was not told.
    assert_eq!(engine.cancels.load(Ordering::Relaxed), 0);
    // The next command waits for the abandoned answer, then gets its own.
    let r = within(front.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 8);
}
