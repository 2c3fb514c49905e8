//! A ready-made host for the crate's doc example, fuzzing and the ring's integration tests: a
//! backend domain and a [`VtpmManager`] serving one engine per vTPM instance, plus helpers
//! to add guests and devices, and [`RawFrontend`] for playing a hostile guest.
//!
//! [`Testbed::new`] serves in-process [`SimTpm`] instances: no processes and no runtime, for
//! the executor-free doc example and the fuzz targets. [`Testbed::with_engines`] serves any
//! engines; the ring's integration tests (doorbells, the store handshake, hostile frontends)
//! give it real swtpm engines. It stays executor-agnostic: both return the future that runs
//! the backend and the manager, for the caller to spawn or poll.

use crate::backend::Backend;
use crate::backend::BackendConfig;
use crate::backend::BackendStats;
use crate::domain::Domain;
use crate::domain::DomainError;
use crate::domain::DomainId;
use crate::domain::Host;
use crate::engine::SimTpm;
use crate::engine::TpmEngine;
use crate::event::EventChannel;
use crate::event::EventError;
use crate::grant::GrantAccess;
use crate::grant::GrantError;
use crate::grant::GrantRef;
use crate::manager::VtpmManager;
use crate::manager::stream_pair;
use crate::page::OwnPage;
use crate::page::PageIo;
use crate::protocol::ProtocolVersion;
use crate::protocol::RingError;
use crate::protocol::v1;
use crate::store::StoreError;
use crate::xenbus::VtpmDevice;
use crate::xenbus::XenbusState;
use crate::xenbus::create_device;
use crate::xenbus::destroy_device;
use crate::xenbus::frontend_dir;
use crate::xenbus::keys;
use crate::xenbus::write_state;
use futures::Future;
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// The backend domain's id in a testbed.
pub const BACKEND_DOMAIN: DomainId = DomainId(1);

/// A host with a running backend (once its future is driven), serving engines of type `E`.
pub struct Testbed<E = SimTpm> {
    /// The host.
    pub host: Host,
    /// The backend domain.
    pub backend: Domain,
    /// The backend's counters.
    pub stats: Arc<BackendStats>,
    /// The engine of each instance.
    pub engines: BTreeMap<u32, Arc<E>>,
}

impl Testbed<SimTpm> {
    /// A host whose backend serves `instances` (each a started [`SimTpm`]). Drive the returned
    /// future (it runs until dropped) for the backend and manager to work.
    pub fn new(
        config: BackendConfig,
        instances: &[u32],
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), DomainError> {
        let engines = instances
            .iter()
            .map(|&i| (i, Arc::new(SimTpm::started())))
            .collect();
        Self::with_engines(config, engines)
    }
}

impl<E: TpmEngine + 'static> Testbed<E> {
    /// A host whose backend serves each `(instance, engine)` pair (a later pair for the same
    /// instance replaces an earlier one). Drive the returned future (it runs until dropped)
    /// for the backend and manager to work; the engines run wherever their own calls run.
    pub fn with_engines(
        config: BackendConfig,
        engines: Vec<(u32, Arc<E>)>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), DomainError> {
        let host = Host::new();
        let backend = host.create_domain(BACKEND_DOMAIN, 16)?;
        // Room for as many devices as a stack serves, however many a test adds.
        let devices = usize::from(crate::stack::MAX_GUESTS);
        host.toolstack()
            .set_store_quota(BACKEND_DOMAIN, Backend::store_quota(devices))?;
        let mut manager = VtpmManager::new();
        let mut by_instance = BTreeMap::new();
        for (i, engine) in engines {
            manager.add_instance(i, engine.clone());
            by_instance.insert(i, engine);
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
                engines: by_instance,
            },
            run,
        ))
    }
}

impl<E> Testbed<E> {
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
        create_device(&self.host.toolstack(), &dev)?;
        Ok(dev)
    }

    /// The toolstack removes a device.
    pub fn remove_device(&self, dev: &VtpmDevice) -> Result<(), StoreError> {
        destroy_device(&self.host.toolstack(), dev)
    }
}

/// Errors setting up a [`RawFrontend`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RawError {
    /// Domain memory.
    #[error("domain: {0}")]
    Domain(#[from] DomainError),
    /// Grants.
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    /// Event channel.
    #[error("event channel: {0}")]
    Event(#[from] EventError),
    /// Store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Layout.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
}

/// A frontend that only sets up the shared pages and publishes them, then leaves the pages
/// and the event channel to its user: the tool for testing the backend against a hostile
/// guest. Page 0 is the ring (v1) or shared page (v2); v1 has [`v1::RING_SIZE`] data pages
/// after it, v2 one extra page.
pub struct RawFrontend {
    /// The pages, granted read-write to the backend.
    pub pages: Vec<OwnPage>,
    /// Their grant references.
    pub grants: Vec<GrantRef>,
    /// The frontend's end of the event channel.
    pub event: EventChannel,
}

impl RawFrontend {
    /// Lays out `version`'s pages for device 0 of `guest` and publishes them (state
    /// Initialised); the backend connects once it runs.
    pub fn publish(guest: &Domain, version: ProtocolVersion) -> Result<Self, RawError> {
        Self::publish_with(guest, version, false)
    }

    /// [`Self::publish`], asking for `feature-vtpm-control` when `control` is set.
    pub fn publish_with(
        guest: &Domain,
        version: ProtocolVersion,
        control: bool,
    ) -> Result<Self, RawError> {
        let n = match version {
            ProtocolVersion::V1 => 1 + v1::RING_SIZE,
            ProtocolVersion::V2 => 2,
        };
        let mut pages = Vec::with_capacity(n);
        let mut grants = Vec::with_capacity(n);
        for _ in 0..n {
            let page = guest.alloc_page()?;
            grants.push(guest.grant_access(BACKEND_DOMAIN, page.gfn(), GrantAccess::ReadWrite)?);
            pages.push(page);
        }
        let (ring, data_pages) = pages
            .split_first()
            .ok_or(RingError::Inconsistent("no pages"))?;
        match version {
            ProtocolVersion::V1 => {
                let mut entries = v1::Ring::default();
                for ((e, p), g) in entries
                    .iter_mut()
                    .zip(data_pages)
                    .zip(grants.iter().skip(1))
                {
                    e.addr = p.gfn().address().into();
                    e.gref = g.0.into();
                }
                v1::write_ring(ring, &entries)?;
            }
            ProtocolVersion::V2 => {
                let extra = grants
                    .get(1)
                    .ok_or(RingError::Inconsistent("no extra page"))?;
                ring.write(7, &[1]).map_err(RingError::from)?;
                ring.write(8, &extra.0.to_le_bytes())
                    .map_err(RingError::from)?;
            }
        }
        let event = guest.alloc_unbound(BACKEND_DOMAIN)?;
        let store = guest.store();
        let dir = frontend_dir(guest.id(), 0);
        let ring_ref = grants.first().ok_or(RingError::Inconsistent("no pages"))?;
        store.write(
            &format!("{dir}/{}", keys::RING_REF),
            &ring_ref.0.to_string(),
        )?;
        store.write(
            &format!("{dir}/{}", keys::EVENT_CHANNEL),
            &event.port().0.to_string(),
        )?;
        if version == ProtocolVersion::V2 {
            store.write(&format!("{dir}/{}", keys::FEATURE_V2), "1")?;
        }
        if control {
            store.write(&format!("{dir}/{}", keys::FEATURE_CONTROL), "1")?;
        }
        write_state(&store, &dir, XenbusState::INITIALISED)?;
        Ok(Self {
            pages,
            grants,
            event,
        })
    }
}
