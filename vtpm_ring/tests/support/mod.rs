//! Shared by the tests that drive the split driver against real swtpm engines, some wrapped
//! in a test's own fault injector (held, slow or silent answers): the TPM behind every test
//! is swtpm; only the faults are scripted. They need `swtpm` (`cargo xtask deps`). The tests
//! that play a hostile frontend step by step (doorbells, handshake, page contents) poll the
//! ring on their own thread instead, with `one_thread.rs`.

#![expect(clippy::panic, reason = "test setup fails the test loudly")]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vtpm_ring::backend::Backend;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::backend::BackendStats;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::manager::VtpmManager;
use vtpm_ring::manager::stream_pair;
use vtpm_ring::xenbus::VtpmDevice;

/// The backend domain.
pub const BACKEND: DomainId = DomainId(1);

/// Fails the test if `f` takes more than 10 s (a hang, not a slow machine).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("bounded wait expired"))
}

/// A swtpm engine for `instance` with its state under `root`.
pub async fn swtpm(root: &Path, instance: u32) -> Arc<SwtpmEngine> {
    let config = SwtpmConfig {
        io_timeout: Duration::from_secs(10),
        ..SwtpmConfig::default()
    };
    Arc::new(
        SwtpmEngine::start(instance, &StateDirs::new(root), config)
            .await
            .unwrap_or_else(|e| panic!("swtpm starts (is it installed? `cargo xtask deps`): {e}")),
    )
}

/// Runs a backend (domain 1 of `host`) and a manager serving `engines` on the test's runtime.
pub fn serve(
    host: &Host,
    engines: Vec<(u32, Arc<dyn TpmEngine>)>,
    config: BackendConfig,
) -> Arc<BackendStats> {
    let domain = host
        .create_domain(BACKEND, 4)
        .unwrap_or_else(|e| panic!("backend domain: {e}"));
    let mut manager = VtpmManager::new();
    for (instance, engine) in engines {
        manager.add_instance(instance, engine);
    }
    let (b, m) = stream_pair();
    tokio::spawn(manager.serve(m));
    let backend = Backend::new(domain, b, config);
    let stats = backend.stats();
    tokio::spawn(backend.run());
    stats
}

/// Device 0 of `frontend`, on `instance`.
pub fn device(frontend: DomainId, instance: u32) -> VtpmDevice {
    VtpmDevice {
        backend: BACKEND,
        frontend,
        handle: 0,
        instance,
        uuid: uuid::Uuid::from_u128(u128::from(instance)),
    }
}
