//! Reset on connect: every connection starts on a TPM that was just powered on, so a guest
//! never inherits the PCRs of its previous boot (or of the instance's previous guest); and a
//! disconnected guest's TPM is stopped. The TPM is a real swtpm (behind a scripted refusal
//! of `Init` where a broken reset is the subject).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

mod support;

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use support::device;
use support::serve;
use support::swtpm;
use support::within;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SwtpmEngine;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::tpm_command::pcr_digest_sha256;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::create_device;
use vtpm_ring::xenbus::keys;
use vtpm_ring::xenbus::read_state;

/// The digest of a one-PCR read; fails the test on anything else.
fn pcr_digest(response: &[u8]) -> [u8; 32] {
    pcr_digest_sha256(response).unwrap_or_else(|| panic!("not a one-PCR read: {response:02x?}"))
}

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

async fn reconnect_sees_a_reset_tpm(protocols: Protocols) {
    let state = tempfile::tempdir().unwrap();
    let engine = swtpm(state.path(), 1).await;
    let host = Host::new();
    serve(&host, vec![(1, engine.clone())], BackendConfig::default());
    let guest = host.create_domain(DomainId(2), 32).unwrap();
    create_device(&host.toolstack(), &device(guest.id(), 1)).unwrap();
    let config = FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    };

    let first = within(Frontend::connect(&guest, config)).await.unwrap();
    let fresh = pcr_digest(
        &within(first.transmit(&pcr_read_sha256(16).unwrap()))
            .await
            .unwrap(),
    );
    assert_eq!(fresh, [0; 32]);
    let r = within(first.transmit(&pcr_extend_sha256(16, &[7; 32])))
        .await
        .unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    let extended = pcr_digest(
        &within(first.transmit(&pcr_read_sha256(16).unwrap()))
            .await
            .unwrap(),
    );
    assert_ne!(extended, fresh);
    within(first.close()).await.unwrap();

    // Disconnected: the instance is stopped until the next connection (the backend stops
    // it before it says Closed, which `close` waited for); swtpm fails commands meanwhile.
    assert_eq!(engine.status().await.state, EngineState::Stopped);
    let r = within(engine.command(GET_RANDOM_8.to_vec(), 0))
        .await
        .unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::FAILURE));

    let second = within(Frontend::connect(&guest, config)).await.unwrap();
    let after = pcr_digest(
        &within(second.transmit(&pcr_read_sha256(16).unwrap()))
            .await
            .unwrap(),
    );
    assert_eq!(after, fresh, "PCR 16 survived the reconnect");
    // Started, as firmware would leave it: commands work at once.
    let r = within(second.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 8);
    assert_eq!(engine.status().await.state, EngineState::Running);
}

#[tokio::test]
async fn v2_reconnect_sees_a_reset_tpm() {
    reconnect_sees_a_reset_tpm(Protocols::V2_ONLY).await;
}

#[tokio::test]
async fn v1_reconnect_sees_a_reset_tpm() {
    reconnect_sees_a_reset_tpm(Protocols::V1_ONLY).await;
}

/// Refuses `Init` while `broken`; swtpm does everything else.
struct BrokenInit {
    inner: Arc<SwtpmEngine>,
    broken: AtomicBool,
}

#[async_trait]
impl TpmEngine for BrokenInit {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        if matches!(request, TpmRequest::Control(ControlOp::Init { .. }))
            && self.broken.load(Ordering::Relaxed)
        {
            return Err(EngineError::Failed("init refused".into()));
        }
        self.inner.execute(request).await
    }
}

#[tokio::test]
async fn a_tpm_that_cannot_be_reset_is_not_offered_and_the_device_recovers() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::new();
    let guest = host.create_domain(DomainId(2), 32).unwrap();
    let engine = Arc::new(BrokenInit {
        inner: swtpm(state.path(), 1).await,
        broken: AtomicBool::new(true),
    });
    let stats = serve(&host, vec![(1, engine.clone())], BackendConfig::default());
    create_device(&host.toolstack(), &device(guest.id(), 1)).unwrap();

    // Refused, and the reason is in the store for the toolstack to see.
    let refused = within(Frontend::connect(&guest, FrontendConfig::default())).await;
    assert_eq!(
        refused.unwrap_err(),
        FrontendError::BackendRefused(XenbusState::CLOSED)
    );
    assert_eq!(stats.snapshot().connects, 0);
    assert_eq!(stats.snapshot().failed_connects, 1);
    let bdir = backend_dir(DomainId(1), guest.id(), 0);
    let error = host
        .toolstack()
        .store()
        .try_read(&format!("{bdir}/{}", keys::ERROR))
        .unwrap();
    assert!(error.is_some_and(|e| e.contains("reset")));

    // Once the engine can be reset again, the same device connects.
    engine.broken.store(false, Ordering::Relaxed);
    let front = within(Frontend::connect(&guest, FrontendConfig::default()))
        .await
        .unwrap();
    assert_eq!(read_state(&guest.store(), &bdir), XenbusState::CONNECTED);
    let r = within(front.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
}
