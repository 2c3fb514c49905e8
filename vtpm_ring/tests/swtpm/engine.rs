//! The swtpm engine carries every control operation QEMU's tpm-emulator uses, data included,
//! and reports swtpm's own result codes.

use super::get_random;
use super::init_tracing;
use super::rc;
use std::time::Duration;
use vtpm_ring::engine::BlobType;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::ControlReply;
use vtpm_ring::engine::CtrlResult;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::StateFlags;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::EngineState;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;

async fn engine(dirs: &StateDirs, instance: u32) -> SwtpmEngine {
    init_tracing();
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(10),
        ..SwtpmConfig::default()
    };
    SwtpmEngine::start(instance, dirs, config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_operation_reaches_swtpm_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(dir.path());
    let tpm = engine(&dirs, 3).await;

    let ControlReply::Capabilities(caps) = tpm.control(ControlOp::GetCapability).await.unwrap()
    else {
        panic!("capabilities expected")
    };
    // What QEMU needs for TPM 2.0 (SET_DATAFD aside: it is for unix sockets).
    assert!(caps.init() && caps.stop() && caps.set_buffersize() && caps.get_stateblob());
    assert!(matches!(
        tpm.control(ControlOp::GetConfig).await.unwrap(),
        ControlReply::Config(_)
    ));
    assert_eq!(
        tpm.control(ControlOp::GetTpmEstablished).await.unwrap(),
        ControlReply::TpmEstablished(false)
    );
    tpm.control(ControlOp::ResetTpmEstablished(3))
        .await
        .unwrap();
    tpm.control(ControlOp::SetLocality(2)).await.unwrap();
    assert_eq!(
        tpm.control(ControlOp::SetLocality(7)).await.unwrap_err(),
        EngineError::Refused(CtrlResult::BAD_LOCALITY)
    );
    tpm.control(ControlOp::CancelCommand).await.unwrap();
    tpm.control(ControlOp::StoreVolatile).await.unwrap();
    // A running TPM refuses a new buffer size; a query is fine.
    let ControlReply::BufferSize(sizes) = tpm.control(ControlOp::SetBufferSize(0)).await.unwrap()
    else {
        panic!("buffer sizes expected")
    };
    assert!(sizes.min <= sizes.size && sizes.size <= sizes.max);
    assert_eq!(
        tpm.control(ControlOp::SetBufferSize(sizes.max))
            .await
            .unwrap_err(),
        EngineError::Refused(CtrlResult::BAD_ORDINAL)
    );

    // Migration: read the permanent blob, stop, write it back, power on.
    let ControlReply::StateBlob(blob) = tpm
        .control(ControlOp::GetStateBlob {
            blob: BlobType::PERMANENT,
            flags: StateFlags::new(),
            offset: 0,
        })
        .await
        .unwrap()
    else {
        panic!("blob expected")
    };
    assert!(!blob.data.is_empty());
    assert_eq!(blob.total_length as usize, blob.data.len());
    tpm.control(ControlOp::Stop).await.unwrap();
    assert_eq!(tpm.status().await.state, EngineState::Stopped);
    // Stopped: commands fail inside swtpm, control operations that need a running TPM too.
    let r = tpm.command(get_random(8), 2).await.unwrap();
    assert_eq!(rc(&r), 0x101);
    assert_eq!(
        tpm.control(ControlOp::GetTpmEstablished).await.unwrap_err(),
        EngineError::Refused(CtrlResult::BAD_ORDINAL)
    );
    tpm.control(ControlOp::SetBufferSize(sizes.max))
        .await
        .unwrap();
    tpm.control(ControlOp::SetStateBlob {
        blob: BlobType::PERMANENT,
        flags: blob.flags,
        data: blob.data.clone(),
    })
    .await
    .unwrap();
    tpm.control(ControlOp::Init {
        delete_volatile: true,
    })
    .await
    .unwrap();
    assert_eq!(tpm.status().await.state, EngineState::Running);
    // The engine's Startup(CLEAR) after INIT made the TPM usable again.
    assert_eq!(rc(&tpm.command(get_random(8), 0).await.unwrap()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_swtpm_and_init_starts_it_again_on_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = StateDirs::new(dir.path());
    let tpm = engine(&dirs, 4).await;
    let first = tpm.status().await.pid.unwrap();
    tpm.save_and_shutdown().await.unwrap();
    let status = tpm.status().await;
    assert_eq!((status.state, status.pid), (EngineState::ShutDown, None));
    assert_eq!(
        tpm.command(get_random(8), 0).await.unwrap_err(),
        EngineError::NotRunning
    );
    tpm.control(ControlOp::Init {
        delete_volatile: false,
    })
    .await
    .unwrap();
    let status = tpm.status().await;
    assert_eq!(status.state, EngineState::Running);
    assert_ne!(status.pid, Some(first));
    assert_eq!(status.restarts, 0, "a requested restart is not a failure");
    assert_eq!(rc(&tpm.command(get_random(8), 0).await.unwrap()), 0);
    assert_eq!(dirs.instances().unwrap(), [4]);
}
