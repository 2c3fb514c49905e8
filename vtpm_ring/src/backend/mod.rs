//! The backend: serves every vTPM frontend of its domain.
//!
//! [`Backend::run`] watches `backend/vtpm` in its store home; for each device the toolstack
//! creates it runs one connection state machine (InitWait -> Connected -> Closed -> InitWait).
//! Connected, it maps only the pages the frontend granted, copies each request out of shared
//! memory exactly once, validates it (length within the shared pages, TPM header size equal to
//! the bytes received), and answers malformed requests itself with a TPM error response. Good
//! requests go to the vTPM manager over the one multiplexed stream ([`crate::manager`]),
//! prefixed with the device's instance id. A cancel always ends in FINISH (the response, if
//! the command was under way) or IDLE (nothing was). Every connection starts on a freshly
//! reset TPM and ends by stopping it (the policy is in `power`, see [`ResetPolicy`]). An
//! engine that takes longer than [`BackendConfig::processing_timeout`] costs the frontend a
//! TPM_RC_FAILURE response, never silence. A connection holds its instance while connected:
//! a second device on a connected instance is refused (Closed, with the reason under
//! `error`), and every refusal clears once the frontend tries again.
//!
//! With `feature-vtpm-control` negotiated (offered when [`BackendConfig::control`] is set), a
//! frontend may also send swtpm control operations on the ring: the TPM's power (INIT, STOP,
//! SHUTDOWN) and its established flag reach the instance's engine, everything else is refused
//! (`control` says which and why). Such a frontend owns its TPM's power: the backend still
//! sends `Init` before Connected and `Stop` after, but never `TPM2_Startup`, which the guest's
//! firmware sends after the VMM's INIT.
//!
//! Each protocol's shared-memory side is its own module (`v1`, `v2`); `requests` takes one
//! request from the doorbell to its answer, `control` decides what a control request does,
//! `power` resets the TPM around a connection. `device` runs one device's bus states and
//! `connection` the loop that serves it while connected; this module finds the devices and
//! holds the settings, errors and counters (`stats`) they share.
//!
//! The backend's domain needs a store quota sized for the devices it serves
//! ([`Backend::store_quota`]): a guest's default holds 63 devices' watches.

mod connection;
mod control;
mod device;
mod power;
mod requests;
mod stats;
mod v1;
mod v2;

pub use power::ResetPolicy;
pub use stats::BackendStats;
pub use stats::StatsSnapshot;

use connection::Connection;
use connection::Doorbell;
use connection::Stop;
use connection::Transport;
use connection::serve;
use device::DeviceConfig;
use device::device;

use requests::Forward;
use requests::forward;
use requests::forward_control;
use requests::on_event;
use requests::respond;

use crate::deadline;
use crate::domain::Domain;
use crate::domain::DomainId;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::CtrlCmd;
use crate::engine::CtrlResult;
use crate::engine::EngineError;
use crate::engine::ctrl;
use crate::event::EventChannel;
use crate::event::EventError;
use crate::event::Port;
use crate::grant::GrantError;
use crate::grant::GrantRef;
use crate::manager::FrameError;
use crate::manager::MuxClient;
use crate::manager::MuxRouter;
use crate::manager::StreamEnd;
use crate::manager::mux;
use crate::protocol::PacketKind;
use crate::protocol::ProtocolVersion;
use crate::protocol::Protocols;
use crate::protocol::RingError;
use crate::store::StoreError;
use crate::store::StoreHandle;
use crate::store::StoreQuota;
use crate::store::Watch;
use crate::task_set::TaskSet;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use crate::tpm_header::validate_command;
use crate::xenbus::XenbusState;
use crate::xenbus::backend_root;
use crate::xenbus::keys;
use crate::xenbus::read_state;
use crate::xenbus::write_state;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::pin_mut;
use futures::select_biased;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use thiserror::Error;
use tracing::Instrument;

/// Default [`BackendConfig::processing_timeout`]: ample for the slowest TPM commands (RSA key
/// generation in a software TPM takes seconds).
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(120);

/// Backend settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// Protocol versions offered.
    pub protocols: Protocols,
    /// How each connection's TPM is reset (see [`ResetPolicy`]).
    pub reset: ResetPolicy,
    /// How long the engine may take over one request (a command, or a reset step); past it
    /// the frontend gets TPM_RC_FAILURE (the original tpmback answered TPM_FAIL after a
    /// timeout), the engine is asked to cancel, and the late answer is dropped. `None`
    /// waits forever.
    pub processing_timeout: Option<Duration>,
    /// Most v2 extra pages a frontend may bring. Frontends default to none (as Linux and
    /// mini-os do); accepting some lets a frontend that opts into multi-page packets connect.
    pub max_extra_pages: u8,
    /// Offer `feature-vtpm-control`: control operations on the ring (see the module docs).
    pub control: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            protocols: Protocols::default(),
            reset: ResetPolicy::default(),
            processing_timeout: Some(DEFAULT_PROCESSING_TIMEOUT),
            max_extra_pages: crate::protocol::v2::MAX_EXTRA_PAGES,
            control: true,
        }
    }
}

/// Errors that stop the backend or one connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    /// A store operation failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A grant could not be mapped.
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    /// The event channel could not be bound.
    #[error("event channel: {0}")]
    Event(#[from] EventError),
    /// The shared layout is unusable.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// Frontend and backend share no protocol version.
    #[error("no protocol version in common with the frontend")]
    NoCommonProtocol,
    /// The instance's TPM could not be reset for a new connection.
    #[error("vTPM reset failed: {0}")]
    Reset(FrameError),
    /// The engine did not finish the reset within the processing timeout.
    #[error("vTPM reset timed out")]
    ResetTimeout,
    /// TPM2_Startup after the reset failed with this response code (`None`: the response
    /// had no TPM header).
    #[error("TPM2_Startup after the reset failed: {0:?}")]
    Startup(Option<TpmRc>),
    /// Another device already uses this instance.
    #[error("vTPM instance {0} is already connected")]
    InstanceInUse(u32),
}

/// The backend of one domain.
pub struct Backend {
    domain: Domain,
    config: BackendConfig,
    client: MuxClient,
    router: MuxRouter,
    stats: Arc<BackendStats>,
}

struct Shared {
    domain: Domain,
    store: StoreHandle,
    config: BackendConfig,
    client: MuxClient,
    stats: Arc<BackendStats>,
    instances: Mutex<BTreeSet<u32>>,
}

/// Store watches the backend holds for each device it serves: the device's directory, for
/// the toolstack's changes, and the frontend's, for the frontend's.
pub const WATCHES_PER_DEVICE: usize = 2;
/// Store nodes the backend itself creates in each device's directory: `feature-protocol-v2`,
/// `feature-vtpm-control` and `error` (the toolstack's nodes count against no quota).
pub const NODES_PER_DEVICE: usize = 3;

impl Backend {
    /// The store quota a backend domain serving `devices` devices needs, for the toolstack
    /// to set ([`crate::domain::Toolstack::set_store_quota`]): what each device takes
    /// ([`WATCHES_PER_DEVICE`], [`NODES_PER_DEVICE`]) on top of a guest's default, which
    /// leaves room for the root watch and anything else the domain keeps in the store.
    pub fn store_quota(devices: usize) -> StoreQuota {
        let default = StoreQuota::default();
        StoreQuota {
            nodes: devices
                .saturating_mul(NODES_PER_DEVICE)
                .saturating_add(default.nodes),
            watches: devices
                .saturating_mul(WATCHES_PER_DEVICE)
                .saturating_add(default.watches),
        }
    }

    /// A backend acting as `domain`, talking to the vTPM manager over `stream`.
    pub fn new(domain: Domain, stream: StreamEnd, config: BackendConfig) -> Self {
        let (client, router) = mux(stream);
        Self {
            domain,
            config,
            client,
            router,
            stats: Arc::default(),
        }
    }

    /// The backend's counters.
    pub fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    /// Serves devices until the vTPM manager closes the stream.
    pub async fn run(self) -> Result<(), BackendError> {
        let store = self.domain.store();
        let root = backend_root(self.domain.id());
        let mut watch = store.watch(&root)?;
        let shared = Arc::new(Shared {
            domain: self.domain,
            store: store.clone(),
            config: self.config,
            client: self.client,
            stats: self.stats,
            instances: Mutex::default(),
        });
        let mut known = BTreeSet::new();
        let mut devices = TaskSet::new();
        let router = self.router.run().fuse();
        pin_mut!(router);
        loop {
            select_biased! {
                () = router => {
                    tracing::info!("vTPM manager stream closed, backend stops");
                    return Ok(());
                }
                done = devices.select_next_some() => {
                    known.remove(&done);
                    // The toolstack may have created the device again while its old task
                    // was ending (stopping the TPM): the changes fired then found it known.
                    for dir in unserved(&store, &root, &mut known) {
                        devices.push(device(shared.clone(), dir));
                    }
                }
                changed = watch.next() => {
                    if changed.is_none() {
                        return Ok(());
                    }
                    for dir in unserved(&store, &root, &mut known) {
                        devices.push(device(shared.clone(), dir));
                    }
                }
            }
        }
    }
}

/// The device directories no task serves yet, now noted as served.
fn unserved(store: &StoreHandle, root: &str, known: &mut BTreeSet<String>) -> Vec<String> {
    device_dirs(store, root)
        .into_iter()
        .filter(|dir| known.insert(dir.clone()))
        .collect()
}

/// Every `<root>/<frontend>/<handle>` directory.
fn device_dirs(store: &StoreHandle, root: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    for front in store.directory(root).unwrap_or_default() {
        let front_dir = format!("{root}/{front}");
        for handle in store.directory(&front_dir).unwrap_or_default() {
            dirs.push(format!("{front_dir}/{handle}"));
        }
    }
    dirs
}
