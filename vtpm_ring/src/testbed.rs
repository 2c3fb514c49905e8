//! A ready-made host for examples, tests, benches and fuzzing: a backend domain serving
//! in-process [`SimTpm`] instances through a [`VtpmManager`], plus helpers to add guests and
//! devices. It stays executor-agnostic: [`Testbed::new`] returns the future that runs the
//! backend and the manager, for the caller to spawn or poll.

use crate::backend::Backend;
use crate::backend::BackendConfig;
use crate::backend::BackendStats;
use crate::domain::Domain;
use crate::domain::DomainError;
use crate::domain::DomainId;
use crate::domain::Host;
use crate::engine::SimTpm;
use crate::manager::VtpmManager;
use crate::manager::stream_pair;
use crate::store::StoreError;
use crate::xenbus::VtpmDevice;
use crate::xenbus::create_device;
use crate::xenbus::destroy_device;
use futures::Future;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The backend domain's id in a testbed.
pub const BACKEND_DOMAIN: DomainId = DomainId(1);

/// A host with a running backend (once its future is driven).
pub struct Testbed {
    /// The host.
    pub host: Host,
    /// The backend domain.
    pub backend: Domain,
    /// The backend's counters.
    pub stats: Arc<BackendStats>,
    /// The engine of each instance.
    pub engines: BTreeMap<u32, Arc<SimTpm>>,
}

impl Testbed {
    /// A host whose backend serves `instances` (each a started [`SimTpm`]). Drive the returned
    /// future (it runs until dropped) for the backend and manager to work.
    pub fn new(
        config: BackendConfig,
        instances: &[u32],
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), DomainError> {
        let host = Host::new();
        let backend = host.create_domain(BACKEND_DOMAIN, 16)?;
        let mut manager = VtpmManager::new();
        let mut engines = BTreeMap::new();
        for &i in instances {
            let engine = Arc::new(SimTpm::started());
            manager.add_instance(i, engine.clone());
            engines.insert(i, engine);
        }
        let (back_end, manager_end) = stream_pair();
        let server = Backend::new(backend.clone(), back_end, config);
        let stats = server.stats();
        let run = async move {
            let backend = async {
                if let Err(e) = server.run().await {
                    tracing::error!(error = %e, "backend stopped");
                }
            };
            futures::join!(backend, manager.serve(manager_end));
        };
        Ok((
            Self {
                host,
                backend,
                stats,
                engines,
            },
            run,
        ))
    }

    /// Creates a guest domain with enough memory for a few devices.
    pub fn add_guest(&self, id: DomainId) -> Result<Domain, DomainError> {
        self.host.create_domain(id, 64)
    }

    /// The toolstack creates vTPM device `handle` of `frontend`, routed to `instance`.
    pub fn add_device(
        &self,
        frontend: DomainId,
        handle: u32,
        instance: u32,
    ) -> Result<VtpmDevice, StoreError> {
        let dev = VtpmDevice {
            backend: BACKEND_DOMAIN,
            frontend,
            handle,
            instance,
            uuid: Uuid::from_u128(u128::from(instance)),
        };
        create_device(&self.host.store_as(DomainId::DOM0), &dev)?;
        Ok(dev)
    }

    /// The toolstack removes a device.
    pub fn remove_device(&self, dev: &VtpmDevice) -> Result<(), StoreError> {
        destroy_device(&self.host.store_as(DomainId::DOM0), dev)
    }
}
