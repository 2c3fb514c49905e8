//! A guest with control operations (a VMM standing in for swtpm) owns its TPM's power, up to
//! SHUTDOWN, which ends the swtpm process (and lets its state go): each next boot must still
//! find a working TPM on the same state, started again by the backend's INIT.

use super::init_tracing;
use super::rc;
use std::sync::Arc;
use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::ControlReply;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;

/// TPM2_Startup(CLEAR), the guest firmware's after the VMM's INIT.
const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_shuts_its_swtpm_down_each_boot_gets_a_working_tpm_at_the_next() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(5),
        ..SwtpmConfig::default()
    };
    let engine = Arc::new(
        SwtpmEngine::start(1, &StateDirs::new(root.path()), config)
            .await
            .unwrap(),
    );
    let (bed, run) =
        Testbed::with_engines(BackendConfig::default(), vec![(1, engine.clone())]).unwrap();
    let task = tokio::spawn(run);
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let front = FrontendConfig {
        control: true,
        timeout: Some(Duration::from_secs(20)),
        ..FrontendConfig::default()
    };
    for boot in 0..3 {
        let tpm = Frontend::connect(&guest, front).await.unwrap();
        assert!(tpm.has_control());
        tpm.transmit(&STARTUP_CLEAR).await.unwrap();
        let r = tpm.transmit(&get_random(8)).await.unwrap();
        assert_eq!(rc(&r), 0, "boot {boot}: GetRandom answered {:#x}", rc(&r));
        let reply = tpm.control(&ControlOp::Shutdown).await.unwrap();
        assert_eq!(reply, Ok(ControlReply::Done), "boot {boot}");
        assert_eq!(engine.status().await.state, EngineState::ShutDown);
        tpm.close().await.unwrap();
    }
    let tpm = Frontend::connect(&guest, front).await.unwrap();
    tpm.transmit(&STARTUP_CLEAR).await.unwrap();
    assert_eq!(rc(&tpm.transmit(&get_random(8)).await.unwrap()), 0);
    assert_eq!(engine.status().await.state, EngineState::Running);
    tpm.close().await.unwrap();
    task.abort();
}
