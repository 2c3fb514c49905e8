//! A command of a previous boot that the engine runs late never lands on the next boot's
//! reset TPM. The engine (a real swtpm behind a gate the test holds) has not run boot 1's
//! PCR_Extend when boot 1 gives up on it (processing timeout) and leaves. The manager runs an
//! instance's frames in order, so boot 2's reset (`Init`) waits behind that command: while
//! the command is stuck, the connection is refused (the TPM cannot be reset), never offered
//! on a TPM the late command will change; once the engine has run it, the next connection
//! gets a reset TPM with PCR 16 zero. They need `swtpm` (`cargo xtask deps`).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

mod support;

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::SwtpmEngine;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::tpm_command::pcr_digest_sha256;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::create_device;

/// Holds the first command equal to `held` until released, then runs it on swtpm.
struct Gate {
    inner: Arc<SwtpmEngine>,
    held: Vec<u8>,
    holding: AtomicBool,
    release: Notify,
    ran: Notify,
}

#[async_trait]
impl TpmEngine for Gate {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        if let TpmRequest::Command { command, .. } = &request
            && *command == self.held
            && !self.holding.swap(true, Ordering::AcqRel)
        {
            self.release.notified().await;
            let r = self.inner.execute(request).await;
            self.ran.notify_one();
            return r;
        }
        self.inner.execute(request).await
    }
}

fn pcr16(response: &[u8]) -> [u8; 32] {
    assert_eq!(response_code(response), Some(TpmRc::SUCCESS));
    pcr_digest_sha256(response).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_boots_late_command_never_reaches_the_next_boots_reset_tpm() {
    let state = tempfile::tempdir().unwrap();
    let extend = pcr_extend_sha256(16, &[0x5a; 32]);
    let engine = Arc::new(Gate {
        inner: swtpm(state.path(), 1).await,
        held: extend.clone(),
        holding: AtomicBool::new(false),
        release: Notify::new(),
        ran: Notify::new(),
    });
    let host = Host::new();
    serve(
        &host,
        vec![(1, engine.clone())],
        BackendConfig {
            processing_timeout: Some(Duration::from_millis(300)),
            ..BackendConfig::default()
        },
    );
    let guest = host.create_domain(DomainId(2), 32).unwrap();
    create_device(&host.toolstack(), &device(guest.id(), 1)).unwrap();
    let config = FrontendConfig::default();

    // Boot 1: the engine sits on its PCR_Extend; the guest gets TPM_RC_FAILURE and leaves.
    let boot1 = within(Frontend::connect(&guest, config)).await.unwrap();
    let r = within(boot1.transmit(&extend)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::FAILURE));
    within(boot1.close()).await.unwrap();

    // Boot 2, while that command is still at the engine: its reset cannot come first.
    match within(Frontend::connect(&guest, config)).await {
        Err(FrontendError::BackendRefused(_)) => {}
        Err(e) => panic!("boot 2 failed otherwise: {e}"),
        Ok(_) => panic!("boot 2 was offered a TPM that boot 1's late command would change"),
    }

    // The engine runs the late command; the next boot gets a reset TPM.
    engine.release.notify_one();
    within(engine.ran.notified()).await;
    let boot3 = within(Frontend::connect(&guest, config)).await.unwrap();
    let r = within(boot3.transmit(&pcr_read_sha256(16).unwrap()))
        .await
        .unwrap();
    assert_eq!(pcr16(&r), [0; 32], "boot 1's PCR_Extend reached boot 3");
    within(boot3.close()).await.unwrap();
}
