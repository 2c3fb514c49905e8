//! Store quotas meant for hostile guests do not cap the backend domain: the toolstack gives
//! it a quota sized for the devices it serves (`Backend::store_quota`), the testbed for as
//! many as a stack serves (`MAX_GUESTS`, 1000), while guests keep the default.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

/// 64 guests, one device each: the backend holds one root watch and two per device (its own
/// directory and the frontend's), so the 64th device needs watch 129. With a guest's quota
/// of 128, its backend task failed with `Quota` forever (retried with a pause), and that
/// guest never connected.
#[tokio::test(flavor = "current_thread")]
async fn a_backend_serves_sixty_four_guests() {
    serve_guests(64).await;
}

/// The old boundary: 63 guests (1 + 2 * 63 = 127 watches) connected even then.
#[tokio::test(flavor = "current_thread")]
async fn a_backend_serves_sixty_three_guests() {
    serve_guests(63).await;
}

async fn serve_guests(n: u16) {
    let instances: Vec<u32> = (1..=u32::from(n)).collect();
    let (bed, run) = Testbed::new(BackendConfig::default(), &instances).unwrap();
    let mut guests = Vec::new();
    for i in 0..n {
        let g = bed.add_guest(DomainId(2 + i)).unwrap();
        bed.add_device(g.id(), 0, u32::from(i) + 1).unwrap();
        guests.push(g);
    }
    let run = tokio::spawn(run);
    let config = FrontendConfig {
        timeout: Some(Duration::from_secs(3)),
        ..FrontendConfig::default()
    };
    let results =
        futures::future::join_all(guests.iter().map(|g| Frontend::connect(g, config))).await;
    let failed: Vec<(u16, String)> = results
        .iter()
        .zip(&guests)
        .filter_map(|(r, g)| r.as_ref().err().map(|e| (g.id().0, e.to_string())))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {n} guests could not connect: {failed:?}",
        failed.len()
    );
    for f in results.into_iter().flatten() {
        let r = f.transmit(&get_random(8)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    }
    run.abort();
}
