//! Replies never cross instances when engines answer out of order: instance 1's engine holds
//! its command while instance 2's guest is answered many times, then instance 1 answers. A
//! shared multiplexed stream that matched replies by arrival order would hand instance 2's
//! answers to guest A (or the other way round); the lengths differ, so a crossing shows.
//! Both instances are real swtpms; the test holds and releases instance 1's in front of it,
//! so the interleaving is explicit.

#![forbid(unsafe_code)]

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

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
const GET_RANDOM_4: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 4];

/// Holds the first GetRandom(8) until released, then lets swtpm answer it; everything else
/// goes to swtpm at once.
struct HoldFirst {
    inner: Arc<SwtpmEngine>,
    held: Notify,
    release: Notify,
    holding: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl TpmEngine for HoldFirst {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        if let TpmRequest::Command { command, .. } = &request
            && command.as_slice() == GET_RANDOM_8
            && !self.holding.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.held.notify_one();
            self.release.notified().await;
        }
        self.inner.execute(request).await
    }
}

#[tokio::test]
async fn a_held_instance_answering_last_gets_its_own_reply_and_the_other_instance_its_own() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::new();
    let slow = Arc::new(HoldFirst {
        inner: swtpm(state.path(), 1).await,
        held: Notify::new(),
        release: Notify::new(),
        holding: false.into(),
    });
    let other = swtpm(state.path(), 2).await;
    serve(
        &host,
        vec![(1, slow.clone()), (2, other)],
        BackendConfig::default(),
    );
    let toolstack = host.toolstack();
    let guest_a = host.create_domain(DomainId(2), 32).unwrap();
    let guest_b = host.create_domain(DomainId(3), 32).unwrap();
    create_device(&toolstack, &device(guest_a.id(), 1)).unwrap();
    create_device(&toolstack, &device(guest_b.id(), 2)).unwrap();
    let a = Arc::new(
        within(Frontend::connect(&guest_a, FrontendConfig::default()))
            .await
            .unwrap(),
    );
    let b = within(Frontend::connect(&guest_b, FrontendConfig::default()))
        .await
        .unwrap();

    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.transmit(&GET_RANDOM_8).await })
    };
    within(slow.held.notified()).await;
    // Instance 1 is held: every answer guest B gets now was produced after A's request.
    for i in 0..20 {
        let r = within(b.transmit(&GET_RANDOM_4)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 4, "B's command {i} got another answer");
    }
    assert!(
        !pending.is_finished(),
        "A was answered while its engine held"
    );
    slow.release.notify_one();
    let r = within(pending).await.unwrap().unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 8, "A got another answer: {r:02x?}");
    // Both go on with their own answers.
    let r = within(a.transmit(&GET_RANDOM_4)).await.unwrap();
    assert_eq!(r.len(), 10 + 2 + 4);
    let r = within(b.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(r.len(), 10 + 2 + 8);
}
