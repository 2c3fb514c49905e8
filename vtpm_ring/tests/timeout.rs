//! Timeouts: an engine that does not answer costs the guest TPM_RC_FAILURE after the backend's
//! processing timeout, and a backend that never answers costs the frontend a timeout; both
//! sides stay usable. The engine hangs for real (it answers the command only once told to
//! cancel it, as swtpm ends a long command with TPM_RC_CANCELED), so no timing luck is
//! involved: only the configured timeouts end the waits. The manager runs an instance's
//! commands in order, so the next command runs once the canceled one has ended. Everything
//! but the hanging command is answered by a real swtpm.

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

/// TPM2_GetRandom(8): the command the engine never answers.
const HANGS: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
/// TPM2_GetRandom(4): answered at once.
const GET_RANDOM_4: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 4];

/// Answers GetRandom(8) only when canceled (TPM_RC_CANCELED), or never if `deaf`; everything
/// else goes to swtpm.
struct HangingEngine {
    inner: Arc<SwtpmEngine>,
    deaf: bool,
    cancels: AtomicU32,
    canceled: Notify,
    /// Ends the hanging command.
    cancel: Notify,
}

#[async_trait]
impl TpmEngine for HangingEngine {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        match &request {
            TpmRequest::Command { command, .. } if command.as_slice() == HANGS => {
                if self.deaf {
                    std::future::pending::<()>().await;
                }
                self.cancel.notified().await;
                Ok(TpmReply::Response(error_response(TpmRc::CANCELED)))
            }
            TpmRequest::Control(ControlOp::CancelCommand) => {
                self.cancels.fetch_add(1, Ordering::Relaxed);
                self.canceled.notify_one();
                self.cancel.notify_one();
                self.inner.execute(request).await
            }
            _ => self.inner.execute(request).await,
        }
    }
}

/// A backend with `processing_timeout` in front of a hanging-capable swtpm, and a guest's
/// frontend with `front`, connected.
async fn setup(
    processing_timeout: Option<Duration>,
    front: FrontendConfig,
    deaf: bool,
) -> (Arc<HangingEngine>, Frontend, tempfile::TempDir) {
    let backend = BackendConfig {
        processing_timeout,
        ..BackendConfig::default()
    };
    let state = tempfile::tempdir().unwrap();
    let host = Host::new();
    let guest = host.create_domain(DomainId(2), 32).unwrap();
    let engine = Arc::new(HangingEngine {
        inner: swtpm(state.path(), 1).await,
        deaf,
        cancels: AtomicU32::new(0),
        canceled: Notify::new(),
        cancel: Notify::new(),
    });
    serve(&host, vec![(1, engine.clone())], backend);
    create_device(&host.toolstack(), &device(guest.id(), 1)).unwrap();
    let front = within(Frontend::connect(&guest, front)).await.unwrap();
    (engine, front, state)
}

async fn engine_timeout_answers_failure(protocols: Protocols) {
    let config = FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    };
    let (engine, front, _state) = setup(Some(Duration::from_millis(100)), config, false).await;
    let r = within(front.transmit(&HANGS)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::FAILURE));
    // The engine is asked to stop working on it.
    within(engine.canceled.notified()).await;
    assert_eq!(engine.cancels.load(Ordering::Relaxed), 1);
    // The device is not stuck: the next command is served.
    let r = within(front.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 4);
}

#[tokio::test]
async fn v2_engine_that_does_not_answer_in_time_gets_tpm_rc_failure() {
    engine_timeout_answers_failure(Protocols::V2_ONLY).await;
}

#[tokio::test]
async fn v1_engine_that_does_not_answer_in_time_gets_tpm_rc_failure() {
    engine_timeout_answers_failure(Protocols::V1_ONLY).await;
}

async fn silent_backend_times_the_frontend_out(protocols: Protocols) {
    let config = FrontendConfig {
        protocols,
        timeout: Some(Duration::from_millis(100)),
        ..FrontendConfig::default()
    };
    let (_engine, front, _state) = setup(None, config, true).await;
    assert_eq!(
        within(front.transmit(&HANGS)).await.unwrap_err(),
        FrontendError::Timeout
    );
    // Still silent: the next call times out too, it does not hang or mix answers up.
    assert_eq!(
        within(front.transmit(&GET_RANDOM_4)).await.unwrap_err(),
        FrontendError::Timeout
    );
}

#[tokio::test]
async fn v2_silent_backend_times_the_frontend_out() {
    silent_backend_times_the_frontend_out(Protocols::V2_ONLY).await;
}

#[tokio::test]
async fn v1_silent_backend_times_the_frontend_out() {
    silent_backend_times_the_frontend_out(Protocols::V1_ONLY).await;
}

/// Each side keeps one timer per connection, re-armed lazily: a timer armed for an earlier,
/// quick command fires while a later one hangs. The later command must still get its whole
/// timeout, counted from its own start.
async fn a_timeout_counts_from_the_commands_own_start(protocols: Protocols) {
    let limit = Duration::from_millis(300);
    let config = FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    };
    let (engine, front, _state) = setup(Some(limit), config, false).await;
    let r = within(front.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    // Half the limit later (time passing is the subject here, not a synchronisation).
    tokio::time::sleep(limit / 2).await;
    let started = std::time::Instant::now();
    let r = within(front.transmit(&HANGS)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::FAILURE));
    assert!(
        started.elapsed() >= limit,
        "timed out after {:?}, before its own limit",
        started.elapsed()
    );
    within(engine.canceled.notified()).await;
    let r = within(front.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
}

#[tokio::test]
async fn v2_a_processing_timeout_counts_from_the_commands_own_start() {
    a_timeout_counts_from_the_commands_own_start(Protocols::V2_ONLY).await;
}

#[tokio::test]
async fn v1_a_processing_timeout_counts_from_the_commands_own_start() {
    a_timeout_counts_from_the_commands_own_start(Protocols::V1_ONLY).await;
}

#[tokio::test]
async fn a_frontend_timeout_counts_from_the_commands_own_start() {
    let limit = Duration::from_millis(300);
    let config = FrontendConfig {
        protocols: Protocols::V2_ONLY,
        timeout: Some(limit),
        ..FrontendConfig::default()
    };
    let (_engine, front, _state) = setup(None, config, true).await;
    let r = within(front.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    tokio::time::sleep(limit / 2).await;
    let started = std::time::Instant::now();
    assert_eq!(
        within(front.transmit(&HANGS)).await.unwrap_err(),
        FrontendError::Timeout
    );
    assert!(
        started.elapsed() >= limit,
        "timed out after {:?}, before its own limit",
        started.elapsed()
    );
}
