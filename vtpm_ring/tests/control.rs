//! Control operations on the ring (`feature-vtpm-control`), both protocol versions: what a
//! frontend standing in for swtpm toward QEMU sends, what reaches the instance's engine, and
//! what never does. The engine records every request it gets, so each test sees exactly
//! what crossed the ring.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use vtpm_ring::backend::Backend;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::BlobType;
use vtpm_ring::engine::ControlOp;
use vtpm_ring::engine::ControlReply;
use vtpm_ring::engine::CtrlResult;
use vtpm_ring::engine::EngineError;
use vtpm_ring::engine::StateFlags;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::TpmReply;
use vtpm_ring::engine::TpmRequest;
use vtpm_ring::engine::ctrl;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::manager::VtpmManager;
use vtpm_ring::manager::stream_pair;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::VtpmDevice;
use vtpm_ring::xenbus::create_device;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
const TPM2_STARTUP: [u8; 4] = [0, 0, 0x01, 0x44];

/// An engine that records what it is asked and answers every command with success.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<TpmRequest>>,
    /// STOP does not answer until `unhang` (a wedged engine).
    hang_stop: bool,
    unhang: tokio::sync::Notify,
}

impl Recorder {
    fn take(&self) -> Vec<TpmRequest> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

#[async_trait]
impl TpmEngine for Recorder {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        self.log.lock().unwrap().push(request.clone());
        if self.hang_stop && request == TpmRequest::Control(ControlOp::Stop) {
            self.unhang.notified().await;
        }
        Ok(match request {
            TpmRequest::Command { .. } => {
                TpmReply::Response(vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0])
            }
            TpmRequest::Control(ControlOp::GetTpmEstablished) => {
                TpmReply::Control(ControlReply::TpmEstablished(true))
            }
            TpmRequest::Control(ControlOp::ResetTpmEstablished(_)) => {
                return Err(EngineError::Refused(CtrlResult::BAD_LOCALITY));
            }
            TpmRequest::Control(_) => TpmReply::Control(ControlReply::Done),
        })
    }
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("bounded wait expired")
}

struct Bed {
    _host: Host,
    guest: Domain,
    engine: Arc<Recorder>,
}

fn bed(backend_config: BackendConfig) -> Bed {
    bed_with(backend_config, Recorder::default())
}

fn bed_with(backend_config: BackendConfig, engine: Recorder) -> Bed {
    let host = Host::new();
    let backend = host.create_domain(DomainId(1), 16).unwrap();
    let guest = host.create_domain(DomainId(2), 64).unwrap();
    let engine = Arc::new(engine);
    let mut manager = VtpmManager::new();
    manager.add_instance(1, engine.clone());
    create_device(
        &host.toolstack(),
        &VtpmDevice {
            backend: DomainId(1),
            frontend: DomainId(2),
            handle: 0,
            instance: 1,
            uuid: uuid::Uuid::from_u128(1),
        },
    )
    .unwrap();
    let (back_end, manager_end) = stream_pair();
    let server = Backend::new(backend, back_end, backend_config);
    tokio::spawn(async move {
        let _ = futures::join!(server.run(), manager.serve(manager_end));
    });
    Bed {
        _host: host,
        guest,
        engine,
    }
}

fn config(protocols: Protocols, control: bool) -> FrontendConfig {
    FrontendConfig {
        protocols,
        control,
        ..FrontendConfig::default()
    }
}

fn is_startup(r: &TpmRequest) -> bool {
    matches!(r, TpmRequest::Command { command, .. } if command[6..10] == TPM2_STARTUP)
}

async fn power_and_flag_reach_the_engine(protocols: Protocols) {
    let bed = bed(BackendConfig::default());
    let tpm = within(Frontend::connect(&bed.guest, config(protocols, true)))
        .await
        .unwrap();
    assert!(tpm.has_control());
    // The frontend owns the power: Init on connect, and no TPM2_Startup from the backend.
    let at_connect = bed.engine.take();
    assert_eq!(
        at_connect,
        vec![TpmRequest::Control(ControlOp::Init {
            delete_volatile: true
        })]
    );
    for op in [
        ControlOp::Stop,
        ControlOp::Init {
            delete_volatile: false,
        },
        ControlOp::Shutdown,
    ] {
        assert_eq!(
            within(tpm.control(&op)).await.unwrap(),
            Ok(ControlReply::Done)
        );
    }
    assert_eq!(
        within(tpm.control(&ControlOp::GetTpmEstablished))
            .await
            .unwrap(),
        Ok(ControlReply::TpmEstablished(true))
    );
    // The engine's own refusal comes back with its swtpm result code.
    assert_eq!(
        within(tpm.control(&ControlOp::ResetTpmEstablished(1)))
            .await
            .unwrap(),
        Err(CtrlResult::BAD_LOCALITY)
    );
    let seen: Vec<_> = bed.engine.take();
    assert_eq!(
        seen,
        [
            ControlOp::Stop,
            ControlOp::Init {
                delete_volatile: false
            },
            ControlOp::Shutdown,
            ControlOp::GetTpmEstablished,
            ControlOp::ResetTpmEstablished(1),
        ]
        .map(TpmRequest::Control)
    );
    // Commands still work between controls.
    let r = within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    within(tpm.close()).await.unwrap();
}

#[tokio::test]
async fn v1_power_and_established_flag_reach_the_engine() {
    power_and_flag_reach_the_engine(Protocols::V1_ONLY).await;
}

#[tokio::test]
async fn v2_power_and_established_flag_reach_the_engine() {
    power_and_flag_reach_the_engine(Protocols::V2_ONLY).await;
}

async fn what_never_crosses(protocols: Protocols) {
    let bed = bed(BackendConfig::default());
    let tpm = within(Frontend::connect(&bed.guest, config(protocols, true)))
        .await
        .unwrap();
    bed.engine.take();
    let refused = [
        ControlOp::SetStateBlob {
            blob: BlobType::VOLATILE,
            flags: StateFlags::new(),
            data: vec![0x55; 64],
        },
        ControlOp::GetStateBlob {
            blob: BlobType::PERMANENT,
            flags: StateFlags::new(),
            offset: 0,
        },
        ControlOp::StoreVolatile,
        ControlOp::SetBufferSize(4096),
        ControlOp::GetConfig,
        ControlOp::CancelCommand,
    ];
    for op in &refused {
        assert_eq!(
            within(tpm.control(op)).await.unwrap(),
            Err(CtrlResult::BAD_ORDINAL),
            "{op:?}"
        );
    }
    let Ok(ControlReply::Capabilities(caps)) = within(tpm.control(&ControlOp::GetCapability))
        .await
        .unwrap()
    else {
        panic!("no capabilities")
    };
    assert!(caps.init() && caps.stop() && caps.shutdown() && caps.get_tpm_established());
    assert!(!caps.get_stateblob() && !caps.set_stateblob() && !caps.store_volatile());
    assert_eq!(bed.engine.take(), vec![], "nothing reached the engine");
    within(tpm.close()).await.unwrap();
}

#[tokio::test]
async fn v1_state_blobs_and_host_operations_never_reach_the_engine() {
    what_never_crosses(Protocols::V1_ONLY).await;
}

#[tokio::test]
async fn v2_state_blobs_and_host_operations_never_reach_the_engine() {
    what_never_crosses(Protocols::V2_ONLY).await;
}

#[tokio::test]
async fn v1_carries_the_locality_only_when_it_changes() {
    let bed = bed(BackendConfig::default());
    let tpm = within(Frontend::connect(
        &bed.guest,
        config(Protocols::V1_ONLY, true),
    ))
    .await
    .unwrap();
    bed.engine.take();
    within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    tpm.set_locality(3).unwrap();
    within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    tpm.set_locality(0).unwrap();
    within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    let localities: Vec<u8> = bed
        .engine
        .take()
        .into_iter()
        .map(|r| match r {
            TpmRequest::Command { locality, .. } => locality,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(localities, [0, 3, 3, 0]);
    within(tpm.close()).await.unwrap();
}

#[tokio::test]
async fn v2_carries_the_locality_in_the_page() {
    let bed = bed(BackendConfig::default());
    let tpm = within(Frontend::connect(
        &bed.guest,
        config(Protocols::V2_ONLY, true),
    ))
    .await
    .unwrap();
    bed.engine.take();
    tpm.set_locality(2).unwrap();
    within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(
        bed.engine.take(),
        vec![TpmRequest::Command {
            command: GET_RANDOM_8.to_vec(),
            locality: 2
        }]
    );
    // v2's locality is the page's: SET_LOCALITY as a control is refused.
    assert_eq!(
        within(tpm.control(&ControlOp::SetLocality(1)))
            .await
            .unwrap(),
        Err(CtrlResult::BAD_ORDINAL)
    );
    within(tpm.close()).await.unwrap();
}

/// A guest's TPM command that happens to be byte-identical to a control request stays a TPM
/// command: the kind travels outside the packet.
#[tokio::test]
async fn packet_bytes_can_never_pose_as_a_control_request() {
    for protocols in [Protocols::V1_ONLY, Protocols::V2_ONLY] {
        let bed = bed(BackendConfig::default());
        let tpm = within(Frontend::connect(&bed.guest, config(protocols, true)))
            .await
            .unwrap();
        bed.engine.take();
        let init = ctrl::encode_request(&ControlOp::Init {
            delete_volatile: true,
        });
        // Not a TPM command at all: the backend answers it itself, the engine sees nothing.
        let r = within(tpm.transmit(&init)).await.unwrap();
        assert_ne!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(bed.engine.take(), vec![]);
        within(tpm.close()).await.unwrap();
    }
}

#[tokio::test]
async fn without_the_feature_there_is_no_control_and_the_backend_starts_the_tpm() {
    for (backend_offers, frontend_asks) in [(false, true), (true, false)] {
        let bed = bed(BackendConfig {
            control: backend_offers,
            ..BackendConfig::default()
        });
        let tpm = within(Frontend::connect(
            &bed.guest,
            config(Protocols::V2_ONLY, frontend_asks),
        ))
        .await
        .unwrap();
        assert!(!tpm.has_control());
        assert!(matches!(
            within(tpm.control(&ControlOp::Stop)).await,
            Err(FrontendError::NoControl)
        ));
        let at_connect = bed.engine.take();
        assert!(at_connect.iter().any(is_startup), "{at_connect:?}");
        within(tpm.close()).await.unwrap();
    }
}

/// A control operation the engine does not answer costs the frontend swtpm's `TPM_FAIL` after
/// the processing timeout (not a TPM response, which a control reader could not parse). The
/// instance's next operation waits behind it at the manager (nothing overtakes an earlier
/// operation of the same instance), so it fails in time as well, truthfully; once the engine
/// answers, the ring serves the next request.
#[tokio::test]
async fn a_control_the_engine_never_answers_fails_with_tpm_fail_in_time() {
    for protocols in [Protocols::V1_ONLY, Protocols::V2_ONLY] {
        let bed = bed_with(
            BackendConfig {
                processing_timeout: Some(Duration::from_millis(200)),
                ..BackendConfig::default()
            },
            Recorder {
                hang_stop: true,
                ..Recorder::default()
            },
        );
        let tpm = within(Frontend::connect(&bed.guest, config(protocols, true)))
            .await
            .unwrap();
        assert_eq!(
            within(tpm.control(&ControlOp::Stop)).await.unwrap(),
            Err(CtrlResult::FAIL)
        );
        assert_eq!(
            within(tpm.control(&ControlOp::GetTpmEstablished))
                .await
                .unwrap(),
            Err(CtrlResult::FAIL)
        );
        bed.engine.unhang.notify_one();
        assert_eq!(
            within(tpm.control(&ControlOp::GetTpmEstablished))
                .await
                .unwrap(),
            Ok(ControlReply::TpmEstablished(true))
        );
        let r = within(tpm.transmit(&GET_RANDOM_8)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    }
}
