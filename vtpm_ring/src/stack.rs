//! A whole vTPM host in one process, with real swtpm engines: the library entry point behind
//! `vtpmctl run` (and for `cargo xtask demo`).
//!
//! [`VtpmStack::start`] creates a host, a backend domain (domain 1) and `guests` guest domains
//! (domains 2, 3, ...). Guest `i` gets vTPM device 0 routed to instance `first_instance + i`,
//! whose [`SwtpmEngine`] keeps its state in `<state_root>/instance-<n>`: the same root gives
//! every guest its own TPM back after a restart. Each guest's frontend connects over the ring
//! and is served as a TPM socket ([`crate::socket`]) on a data port and the control port after
//! it; with a base port `P`, guest `i` gets `P + 2i` and `P + 2i + 1`.
//!
//! [`VtpmStack::shutdown`] closes every frontend, then stops every engine the planned way
//! (STORE_VOLATILE, SHUTDOWN). Permanent state (NV, persistent keys, seeds) is on disk
//! whatever happens; volatile state is stored only for a TPM still running at that point, and
//! under the backend's reset policy the TPM was already stopped when its frontend left (and the
//! next connection starts with a fresh INIT that drops volatile state anyway). It needs a
//! tokio runtime (swtpm and the sockets are process edges); the backend and the manager run as
//! two tasks on it.
//!
//! The engines use [`Startup::Clear`](crate::engine::swtpm::Startup): a swtpm restarted after a
//! crash is usable at once. The backend's own `TPM2_Startup` on connect is then answered
//! `TPM_RC_INITIALIZE`, which its reset policy accepts.
//!
//! Guests for QEMU ([`StackConfig::qemu_sockets`], after the TCP guests) are different: each
//! frontend negotiates control operations and is served on a unix socket for QEMU's
//! `-tpmdev emulator` ([`crate::qemu`]); their engines send no `TPM2_Startup` (the guest's
//! firmware does, after QEMU's INIT), and v2 uses one extra page so a 4096-byte command fits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vtpm_ring::stack::StackError> {
//! use vtpm_ring::stack::{StackConfig, VtpmStack};
//! let stack = VtpmStack::start(StackConfig::new("/tmp/vtpm-state", 1)).await?;
//! let guest = &stack.guests()[0];
//! println!("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port={}", guest.data_addr().port());
//! stack.shutdown().await?;
//! # Ok(()) }
//! ```

use crate::backend::Backend;
use crate::backend::BackendConfig;
use crate::domain::DomainError;
use crate::domain::DomainId;
use crate::domain::Host;
use crate::engine::EngineError;
use crate::engine::swtpm::EngineStatus;
use crate::engine::swtpm::Startup;
use crate::engine::swtpm::StateDirs;
use crate::engine::swtpm::SwtpmConfig;
use crate::engine::swtpm::SwtpmEngine;
use crate::engine::swtpm::SwtpmError;
use crate::frontend::Frontend;
use crate::frontend::FrontendConfig;
use crate::frontend::FrontendError;
use crate::manager::VtpmManager;
use crate::manager::stream_pair;
use crate::qemu::QemuSocket;
use crate::socket::TpmSocket;
use crate::socket::bind_pair;
use crate::store::StoreError;
use crate::xenbus::VtpmDevice;
use crate::xenbus::create_device;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use uuid::Uuid;

/// The backend domain's id.
pub const BACKEND_DOMAIN: DomainId = DomainId(1);
/// Most guests one stack runs (domain ids stay below the store's limits).
pub const MAX_GUESTS: u16 = 1000;
/// How long a frontend may take to close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`VtpmStack`].
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Guest domains.
    pub guests: u16,
    /// Where instance state directories live.
    pub state_root: PathBuf,
    /// The first guest's instance id; guest `i` uses `first_instance + i`.
    pub first_instance: u32,
    /// swtpm settings.
    pub swtpm: SwtpmConfig,
    /// Backend settings.
    pub backend: BackendConfig,
    /// Frontend settings (every guest).
    pub frontend: FrontendConfig,
    /// First data port; `None` picks free port pairs.
    pub base_port: Option<u16>,
    /// One more guest per path, served to QEMU on a unix socket there.
    pub qemu_sockets: Vec<PathBuf>,
}

impl StackConfig {
    /// `guests` guests with state under `state_root`, instances from 1, free ports.
    pub fn new(state_root: impl Into<PathBuf>, guests: u16) -> Self {
        Self {
            guests,
            state_root: state_root.into(),
            first_instance: 1,
            swtpm: SwtpmConfig::default(),
            backend: BackendConfig::default(),
            frontend: FrontendConfig::default(),
            base_port: None,
            qemu_sockets: Vec::new(),
        }
    }
}

/// Failures bringing a stack up or down.
#[derive(Debug, Error)]
pub enum StackError {
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A domain could not be created.
    #[error("domain: {0}")]
    Domain(#[from] DomainError),
    /// The toolstack's store writes failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// swtpm could not be started.
    #[error("swtpm: {0}")]
    Swtpm(#[from] SwtpmError),
    /// A frontend failed to connect or close.
    #[error("frontend: {0}")]
    Frontend(#[from] FrontendError),
    /// An engine failed to stop.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// A guest's TPM socket ports could not be bound (taken by another vtpmctl or swtpm?).
    #[error(
        "cannot bind the TPM socket ports {} on 127.0.0.1 (in use by another vTPM host or \
         swtpm? choose other ports, or let the system pick free ones): {source}",
        describe_ports(*.port)
    )]
    Ports {
        /// The data port asked for (`None`: any free pair).
        port: Option<u16>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sockets.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// `P and P+1`, or what the system picks.
fn describe_ports(port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{p} and {}", u32::from(p) + 1),
        None => "the system picked".into(),
    }
}

/// One guest's vTPM: its domain, its instance, its connected frontend and `S`, what serves
/// the frontend to a client ([`TpmSocket`] for tpm2-tools, [`QemuSocket`] for QEMU).
#[derive(Debug)]
pub struct Guest<S> {
    domain: DomainId,
    instance: u32,
    frontend: Arc<Frontend>,
    socket: S,
}

/// A guest served as a TPM socket (data and control port), for tpm2-tools' `swtpm:` TCTI.
pub type GuestTpm = Guest<TpmSocket>;

/// A guest served on a unix socket for QEMU's `-tpmdev emulator`.
pub type QemuGuest = Guest<QemuSocket>;

impl<S> Guest<S> {
    /// The guest domain.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Its vTPM instance.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// The connected frontend (what the guest's `/dev/tpm0` would use).
    pub fn frontend(&self) -> &Arc<Frontend> {
        &self.frontend
    }
}

impl Guest<QemuSocket> {
    /// The unix socket for `-chardev socket,path=...`.
    pub fn path(&self) -> &std::path::Path {
        self.socket.path()
    }
}

impl Guest<TpmSocket> {
    /// The TPM socket's data port.
    pub fn data_addr(&self) -> SocketAddr {
        self.socket.data_addr()
    }

    /// The TPM socket's control port.
    pub fn ctrl_addr(&self) -> SocketAddr {
        self.socket.ctrl_addr()
    }
}

/// A guest as `vtpmctl list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestStatus {
    /// Guest domain id.
    pub domain: u16,
    /// Its instance's engine.
    pub engine: EngineStatus,
    /// Data port of its TPM socket (none for a QEMU guest).
    pub data_port: Option<u16>,
    /// Control port of its TPM socket (none for a QEMU guest).
    pub ctrl_port: Option<u16>,
    /// The QEMU control socket of a QEMU guest.
    pub qemu_socket: Option<PathBuf>,
    /// Protocol version its frontend negotiated.
    pub protocol: String,
}

/// A running host with swtpm-backed vTPMs (see the module docs).
pub struct VtpmStack {
    host: Host,
    guests: Vec<GuestTpm>,
    qemu_guests: Vec<QemuGuest>,
    engines: BTreeMap<u32, Arc<SwtpmEngine>>,
    tasks: Tasks,
}

/// The backend's and the manager's tasks, ended when the stack is dropped (a failed start, a
/// stack never shut down): a detached task would keep the engines, and their swtpm
/// processes, running for as long as the runtime.
struct Tasks {
    backend: tokio::task::JoinHandle<()>,
    manager: tokio::task::JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.backend.abort();
        self.manager.abort();
    }
}

impl std::fmt::Debug for VtpmStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtpmStack")
            .field("guests", &self.guests)
            .field("instances", &self.engines.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl VtpmStack {
    /// Brings the host up: engines, backend and manager, guests, frontends, sockets.
    pub async fn start(config: StackConfig) -> Result<Self, StackError> {
        let total = usize::from(config.guests) + config.qemu_sockets.len();
        if total > usize::from(MAX_GUESTS) {
            return Err(StackError::Config(format!("at most {MAX_GUESTS} guests")));
        }
        let tcp_guests = usize::from(config.guests);
        // Checked above: fits in u32.
        let instances: Vec<u32> = (0..total as u32)
            .map(|i| config.first_instance.checked_add(i))
            .collect::<Option<_>>()
            .filter(|v: &Vec<u32>| v.iter().all(|&i| i <= crate::manager::MAX_INSTANCE))
            .ok_or_else(|| StackError::Config("instance ids out of range".into()))?;
        // The sockets first: a port or path that is taken fails the start before any swtpm
        // runs.
        if let Some(p) = config.base_port
            && u32::from(p) + 2 * u32::from(config.guests) > 65536
        {
            return Err(StackError::Config(format!(
                "{} guests from port {p} need ports beyond 65535",
                config.guests
            )));
        }
        let mut tcp_listeners = Vec::with_capacity(tcp_guests);
        for i in 0..config.guests {
            // Checked above: no overflow.
            let base = config.base_port.map(|p| p + 2 * i);
            let pair = bind_pair(base)
                .await
                .map_err(|source| StackError::Ports { port: base, source })?;
            tcp_listeners.push(pair);
        }
        let qemu_listeners = config
            .qemu_sockets
            .iter()
            .map(|path| QemuSocket::bind(path).map(|l| (path, l)))
            .collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(&config.state_root)?;
        let dirs = StateDirs::new(&config.state_root);
        let engine_config = |index: usize| {
            let mut c = config.swtpm.clone();
            if index >= tcp_guests {
                c.startup = Startup::None;
            }
            c
        };
        let started = futures::future::join_all(
            instances
                .iter()
                .enumerate()
                .map(|(n, &i)| SwtpmEngine::start(i, &dirs, engine_config(n))),
        )
        .await;
        let mut engines = BTreeMap::new();
        for (&instance, engine) in instances.iter().zip(started) {
            engines.insert(instance, Arc::new(engine?));
        }

        let host = Host::new();
        let backend_domain = host.create_domain(BACKEND_DOMAIN, 16)?;
        // The guests keep the default quota; the backend domain serves them all.
        let toolstack = host.toolstack();
        toolstack.set_store_quota(BACKEND_DOMAIN, Backend::store_quota(instances.len()))?;
        let mut manager = VtpmManager::new();
        for (&instance, engine) in &engines {
            manager.add_instance(instance, engine.clone());
        }
        // The toolstack writes every device before the backend starts watching: a backend
        // that sees a half-written device could announce InitWait before the toolstack's
        // own write of the initial state lands on top of it.
        let mut domains = Vec::with_capacity(instances.len());
        for (i, &instance) in (0u16..).zip(&instances) {
            let domain = DomainId(2 + i);
            let guest = host.create_domain(domain, 64)?;
            create_device(
                &toolstack,
                &VtpmDevice {
                    backend: BACKEND_DOMAIN,
                    frontend: domain,
                    handle: 0,
                    instance,
                    uuid: Uuid::from_u128(u128::from(instance)),
                },
            )?;
            domains.push((instance, domain, guest));
        }
        let (back_end, manager_end) = stream_pair();
        let server = Backend::new(backend_domain, back_end, config.backend);
        // Two tasks, as two domains would be: each is polled only when its own side has
        // work (one task joining both polled the idle half at every wakeup of the other;
        // measured: about 0.15 us a command more; a join polling only the woken half, each
        // hand-over within one poll, still took 350 instructions a command more than two
        // tasks, counted with callgrind).
        let manager = tokio::spawn(manager.serve(manager_end));
        let backend = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "backend stopped");
            }
        });
        // From here on, a failure drops the stack, whose tasks then end (and with them
        // their hold on the engines, whose swtpm processes are killed when dropped).
        let mut stack = Self {
            host,
            guests: Vec::new(),
            qemu_guests: Vec::new(),
            engines,
            tasks: Tasks { backend, manager },
        };
        let qemu_domains = domains.split_off(tcp_guests);
        for ((instance, domain, guest), (path, listener)) in
            qemu_domains.into_iter().zip(qemu_listeners)
        {
            let front_config = FrontendConfig {
                control: true,
                extra_pages: config.frontend.extra_pages.max(1),
                ..config.frontend
            };
            let frontend = Arc::new(Frontend::connect(&guest, front_config).await?);
            let socket = QemuSocket::serve(frontend.clone(), listener)?;
            tracing::info!(%domain, instance, path = %path.display(), "QEMU guest vTPM served");
            stack.qemu_guests.push(QemuGuest {
                domain,
                instance,
                frontend,
                socket,
            });
        }
        for ((instance, domain, guest), (data, ctrl)) in domains.into_iter().zip(tcp_listeners) {
            let frontend = Arc::new(Frontend::connect(&guest, config.frontend).await?);
            let socket = TpmSocket::serve(frontend.clone(), data, ctrl)?;
            tracing::info!(%domain, instance, data = %socket.data_addr(), "guest vTPM served");
            stack.guests.push(GuestTpm {
                domain,
                instance,
                frontend,
                socket,
            });
        }
        Ok(stack)
    }

    /// The host (domains, store, grant tables).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The guests, in domain order.
    pub fn guests(&self) -> &[GuestTpm] {
        &self.guests
    }

    /// The QEMU guests, in domain order (after the TCP guests).
    pub fn qemu_guests(&self) -> &[QemuGuest] {
        &self.qemu_guests
    }

    /// The engine of `instance`.
    pub fn engine(&self, instance: u32) -> Option<&Arc<SwtpmEngine>> {
        self.engines.get(&instance)
    }

    /// A snapshot of every guest.
    pub async fn status(&self) -> Vec<GuestStatus> {
        // (domain, instance, frontend, data and control ports, QEMU socket)
        let tcp = self.guests.iter().map(|g| {
            let ports = (Some(g.data_addr().port()), Some(g.ctrl_addr().port()));
            (g.domain, g.instance, &g.frontend, ports, None)
        });
        let qemu = self.qemu_guests.iter().map(|g| {
            let socket = Some(g.path().to_path_buf());
            (g.domain, g.instance, &g.frontend, (None, None), socket)
        });
        let mut out = Vec::with_capacity(self.guests.len() + self.qemu_guests.len());
        for (domain, instance, frontend, (data_port, ctrl_port), qemu_socket) in tcp.chain(qemu) {
            let Some(engine) = self.engines.get(&instance) else {
                continue;
            };
            out.push(GuestStatus {
                domain: domain.0,
                engine: engine.status().await,
                data_port,
                ctrl_port,
                qemu_socket,
                protocol: format!("{:?}", frontend.protocol()),
            });
        }
        out
    }

    /// Closes every frontend, then stops every engine the planned way (STORE_VOLATILE,
    /// SHUTDOWN). Reports the first failure after trying everything.
    pub async fn shutdown(self) -> Result<(), StackError> {
        let mut first: Option<StackError> = None;
        let mut leaving = Vec::new();
        for guest in self.guests {
            guest.socket.stop().await;
            leaving.push((guest.domain, guest.frontend));
        }
        for guest in self.qemu_guests {
            guest.socket.stop().await;
            leaving.push((guest.domain, guest.frontend));
        }
        for (domain, frontend) in leaving {
            match Arc::try_unwrap(frontend) {
                Ok(frontend) => match tokio::time::timeout(CLOSE_TIMEOUT, frontend.close()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        first.get_or_insert(e.into());
                    }
                    Err(_) => tracing::warn!(%domain, "frontend close timed out"),
                },
                Err(_) => {
                    tracing::warn!(%domain, "frontend still in use; not closed");
                }
            }
        }
        for (instance, engine) in &self.engines {
            if let Err(e) = engine.save_and_shutdown().await {
                tracing::warn!(instance, error = %e, "engine did not stop cleanly");
                first.get_or_insert(e.into());
            }
        }
        drop(self.tasks);
        first.map_or(Ok(()), Err)
    }
}
