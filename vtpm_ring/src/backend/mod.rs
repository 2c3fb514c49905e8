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
//! request from the doorbell to its answer, `control` decides what a control request does;
//! this module holds the connection state machine that drives them.

mod control;
mod power;
mod requests;
mod v1;
mod v2;

pub use power::ResetPolicy;

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
use crate::store::Watch;
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
use futures::stream::FuturesUnordered;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
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

/// Counters of what the backend did (all devices).
#[derive(Debug, Default)]
pub struct BackendStats {
    devices: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    failed_connects: AtomicU64,
    requests: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
    cancels: AtomicU64,
    cancel_acks: AtomicU64,
    controls: AtomicU64,
}

/// A copy of [`BackendStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Devices being served now (a gauge: each holds its instance until its directory goes).
    pub devices: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections torn down.
    pub disconnects: u64,
    /// Connection attempts refused (bad refs, ports, protocols).
    pub failed_connects: u64,
    /// Requests forwarded to the manager.
    pub requests: u64,
    /// Malformed requests answered with a TPM error by the backend itself.
    pub malformed: u64,
    /// Requests that could not even be answered (no writable page).
    pub dropped: u64,
    /// Cancels forwarded for a command under way.
    pub cancels: u64,
    /// Cancels acknowledged with IDLE.
    pub cancel_acks: u64,
    /// Control requests received on the ring (forwarded or answered by the backend).
    pub controls: u64,
}

impl BackendStats {
    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            devices: g(&self.devices),
            connects: g(&self.connects),
            disconnects: g(&self.disconnects),
            failed_connects: g(&self.failed_connects),
            requests: g(&self.requests),
            malformed: g(&self.malformed),
            dropped: g(&self.dropped),
            cancels: g(&self.cancels),
            cancel_acks: g(&self.cancel_acks),
            controls: g(&self.controls),
        }
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
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

impl Backend {
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
        let mut devices = FuturesUnordered::new();
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
                }
                changed = watch.next() => {
                    if changed.is_none() {
                        return Ok(());
                    }
                    for dir in device_dirs(&store, &root) {
                        if known.insert(dir.clone()) {
                            devices.push(device(shared.clone(), dir));
                        }
                    }
                }
            }
        }
    }
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

struct DeviceConfig {
    frontend: DomainId,
    front_dir: String,
    instance: u32,
}

fn read_device_config(store: &StoreHandle, dir: &str) -> Result<DeviceConfig, StoreError> {
    Ok(DeviceConfig {
        frontend: DomainId(store.read_num(&format!("{dir}/{}", keys::FRONTEND_ID))?),
        front_dir: store.read(&format!("{dir}/{}", keys::FRONTEND))?,
        instance: store.read_num(&format!("{dir}/{}", keys::INSTANCE))?,
    })
}

/// The protocol a device speaks, each in its own module; this module decides what to do.
enum Transport {
    // Boxed: the ring snapshot makes it far larger than v2's view.
    V1(Box<v1::V1Transport>),
    V2(v2::V2Transport),
}

/// What a doorbell announced, as the protocol module read it from shared memory.
enum Doorbell {
    /// Nothing to act on.
    Nothing,
    /// A request, copied out of shared memory (not validated yet). v1 has no locality on
    /// the wire (`None`): the connection's applies.
    Request {
        packet: Vec<u8>,
        locality: Option<u8>,
        kind: PacketKind,
    },
    /// The shared layout does not describe a packet.
    Malformed(RingError),
    /// v2: cancel the command under way.
    Cancel,
    /// v2: cancel with nothing under way.
    CancelIdle,
}

impl Transport {
    fn doorbell(&mut self, busy: bool) -> Doorbell {
        match self {
            Transport::V1(t) => t.doorbell(busy),
            Transport::V2(t) => t.doorbell(busy),
        }
    }

    fn write_response(&mut self, response: &[u8]) -> Result<(), RingError> {
        match self {
            Transport::V1(t) => t.write_response(response),
            Transport::V2(t) => t.write_response(response),
        }
    }

    fn answered(&mut self) {
        match self {
            Transport::V1(t) => t.answered(),
            Transport::V2(_) => {}
        }
    }
}

struct Connection {
    event: EventChannel,
    transport: Transport,
    version: ProtocolVersion,
    /// `feature-vtpm-control` negotiated.
    control: bool,
    /// v1's locality, set by the frontend's SET_LOCALITY (v2's travels with each command).
    locality: u8,
}

/// Why serving stopped.
enum Stop {
    Gone,
    Closed,
}

/// Runs one device until its directory disappears; returns the directory.
async fn device(shared: Arc<Shared>, dir: String) -> String {
    let span = tracing::info_span!("vtpm_backend", dir = %dir);
    BackendStats::bump(&shared.stats.devices);
    if let Err(e) = device_inner(&shared, &dir).instrument(span).await {
        tracing::warn!(dir, error = %e, "vTPM device stopped");
    }
    shared.stats.devices.fetch_sub(1, Ordering::Relaxed);
    dir
}

async fn next_change(own: &mut Watch, front: &mut Watch) -> bool {
    select_biased! {
        a = own.next() => a.is_some(),
        b = front.next() => b.is_some(),
    }
}

async fn device_inner(shared: &Shared, dir: &str) -> Result<(), BackendError> {
    let store = &shared.store;
    let mut own = store.watch(dir)?;
    let exists = || store.try_read(dir).ok().flatten().is_some();
    let config = loop {
        if !exists() {
            return Ok(());
        }
        match read_device_config(store, dir) {
            Ok(c) => break c,
            Err(_) => {
                if own.next().await.is_none() {
                    return Ok(());
                }
            }
        }
    };
    serve_device(shared, dir, &config, &mut own).await
}

/// A connection's hold on its instance: one connection per instance at a time.
struct Claim<'a> {
    shared: &'a Shared,
    instance: u32,
}

impl<'a> Claim<'a> {
    fn take(shared: &'a Shared, instance: u32) -> Result<Self, BackendError> {
        let inserted = shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance);
        if inserted {
            Ok(Self { shared, instance })
        } else {
            Err(BackendError::InstanceInUse(instance))
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.instance);
    }
}

async fn serve_device(
    shared: &Shared,
    dir: &str,
    config: &DeviceConfig,
    own: &mut Watch,
) -> Result<(), BackendError> {
    let store = &shared.store;
    let exists = || store.try_read(dir).ok().flatten().is_some();
    let mut front = store.watch(&config.front_dir)?;
    if shared.config.protocols.v2 {
        store.write(&format!("{dir}/{}", keys::FEATURE_V2), "1")?;
    }
    if shared.config.control {
        store.write(&format!("{dir}/{}", keys::FEATURE_CONTROL), "1")?;
    }
    write_state(store, dir, XenbusState::INIT_WAIT)?;
    loop {
        // Wait for the frontend to publish its ring.
        loop {
            if !exists() {
                return Ok(());
            }
            let st = read_state(store, &config.front_dir);
            if st == XenbusState::INITIALISED || st == XenbusState::CONNECTED {
                break;
            }
            if !next_change(own, &mut front).await {
                return Ok(());
            }
        }
        let connected = async {
            let claim = Claim::take(shared, config.instance)?;
            let conn = connect(shared, config)?;
            // A frontend with control owns the power: its VMM's INIT comes next, then the
            // guest firmware's TPM2_Startup.
            let reset = match conn.control {
                true => ResetPolicy::PowerCycleGuestStartup,
                false => shared.config.reset,
            };
            power::power_on(&shared.client, config.instance, &shared.config, reset).await?;
            Ok::<_, BackendError>((claim, conn))
        }
        .await;
        match connected {
            Ok((claim, mut conn)) => {
                BackendStats::bump(&shared.stats.connects);
                write_state(store, dir, XenbusState::CONNECTED)?;
                tracing::info!(frontend = %config.frontend, instance = config.instance, "vTPM connected");
                let stop = serve(shared, dir, config, &mut conn, own, &mut front).await;
                // Unmap and unbind before saying Closed: the frontend revokes its grants next.
                drop(conn);
                // Stopped before the instance is free and before Closed, so the next
                // connection's Init always comes after this Stop.
                power::power_off(&shared.client, config.instance, &shared.config).await;
                drop(claim);
                BackendStats::bump(&shared.stats.disconnects);
                if matches!(stop, Stop::Gone) {
                    return Ok(());
                }
            }
            Err(e) => {
                BackendStats::bump(&shared.stats.failed_connects);
                tracing::warn!(frontend = %config.frontend, error = %e, "vTPM connect refused");
                store.write(&format!("{dir}/{}", keys::ERROR), &e.to_string())?;
            }
        }
        write_state(store, dir, XenbusState::CLOSED)?;
        // Wait for the frontend to finish closing, then offer a new connection.
        loop {
            if !exists() {
                return Ok(());
            }
            let st = read_state(store, &config.front_dir);
            if matches!(
                st,
                XenbusState::CLOSED | XenbusState::INITIALISING | XenbusState::UNKNOWN
            ) {
                break;
            }
            if !next_change(own, &mut front).await {
                return Ok(());
            }
        }
        if store.try_read(&format!("{dir}/{}", keys::ERROR))?.is_some() {
            store.rm(&format!("{dir}/{}", keys::ERROR))?;
        }
        write_state(store, dir, XenbusState::INIT_WAIT)?;
    }
}

fn connect(shared: &Shared, config: &DeviceConfig) -> Result<Connection, BackendError> {
    let store = &shared.store;
    let fdir = &config.front_dir;
    let ring_ref = GrantRef(store.read_num(&format!("{fdir}/{}", keys::RING_REF))?);
    let port: u32 = store.read_num(&format!("{fdir}/{}", keys::EVENT_CHANNEL))?;
    let peer_v2 = store
        .try_read(&format!("{fdir}/{}", keys::FEATURE_V2))?
        .is_some_and(|v| v.trim() == "1");
    let control = shared.config.control
        && store
            .try_read(&format!("{fdir}/{}", keys::FEATURE_CONTROL))?
            .is_some_and(|v| v.trim() == "1");
    let version = shared
        .config
        .protocols
        .negotiate(peer_v2)
        .ok_or(BackendError::NoCommonProtocol)?;
    let domain = &shared.domain;
    let transport = match version {
        ProtocolVersion::V2 => Transport::V2(v2::V2Transport::map(
            domain,
            config.frontend,
            ring_ref,
            shared.config.max_extra_pages,
        )?),
        ProtocolVersion::V1 => Transport::V1(Box::new(v1::V1Transport::map(
            domain,
            config.frontend,
            ring_ref,
            control,
        )?)),
    };
    let event = domain.bind_interdomain(config.frontend, Port(port))?;
    tracing::debug!(?version, control, "protocol negotiated");
    Ok(Connection {
        event,
        transport,
        version,
        control,
        locality: 0,
    })
}

enum Action {
    Idle,
    Response(Vec<u8>),
    /// The command under way ran past the processing timeout.
    Expired,
    Event(Result<(), EventError>),
    OwnChanged(bool),
    FrontChanged(bool),
}

async fn serve(
    shared: &Shared,
    dir: &str,
    config: &DeviceConfig,
    conn: &mut Connection,
    own: &mut Watch,
    front: &mut Watch,
) -> Stop {
    let mut inflight: Option<BoxFuture<'static, Vec<u8>>> = None;
    // One timer for the connection, not one per command (see `deadline::Watchdog`).
    let mut watchdog = deadline::Watchdog::new(shared.config.processing_timeout);
    let mut cancel_sent = false;
    // What the frontend gets if the request under way expires: TPM_RC_FAILURE for a command,
    // TPM_FAIL for a control operation.
    let mut expiry_answer = Vec::new();
    // v2: a request may have been submitted before we bound the channel, and the state byte
    // says so. v1 has no such state: only a notification announces a request.
    let mut action = match conn.transport {
        Transport::V2(_) => Action::Event(Ok(())),
        Transport::V1(_) => Action::Idle,
    };
    let stop = loop {
        match action {
            Action::Idle => {}
            Action::Response(resp) => {
                inflight = None;
                watchdog.stop();
                cancel_sent = false;
                respond(shared, conn, &resp);
            }
            Action::Expired => {
                // Dropping the request frees its slot: its late answer will be dropped.
                inflight = None;
                cancel_sent = false;
                let timeout = shared.config.processing_timeout;
                tracing::warn!(
                    instance = config.instance,
                    ?timeout,
                    "engine did not answer in time"
                );
                if let Err(e) = shared
                    .client
                    .post_control(config.instance, ControlOp::CancelCommand)
                {
                    tracing::warn!(instance = config.instance, error = %e, "cancel after timeout not sent");
                }
                respond(shared, conn, &expiry_answer);
            }
            Action::Event(Err(_)) => break Stop::Closed,
            Action::Event(Ok(())) => {
                if let Some(req) =
                    on_event(shared, config, conn, inflight.is_some(), &mut cancel_sent)
                {
                    BackendStats::bump(&shared.stats.requests);
                    let client = shared.client.clone();
                    let (future, on_expiry) = match req {
                        Forward::Command { command, locality } => (
                            forward(client, config.instance, command, locality),
                            error_response(TpmRc::FAILURE),
                        ),
                        Forward::Control { cmd, op } => (
                            forward_control(client, config.instance, cmd, op),
                            ctrl::encode_reply(
                                cmd,
                                &Err(EngineError::Failed("processing timeout".into())),
                            ),
                        ),
                    };
                    inflight = Some(future);
                    expiry_answer = on_expiry;
                    watchdog.start();
                }
            }
            Action::OwnChanged(alive) => {
                if !alive || shared.store.try_read(dir).ok().flatten().is_none() {
                    break Stop::Gone;
                }
            }
            Action::FrontChanged(alive) => {
                let st = read_state(&shared.store, &config.front_dir);
                if !alive
                    || matches!(
                        st,
                        XenbusState::CLOSING
                            | XenbusState::CLOSED
                            | XenbusState::UNKNOWN
                            | XenbusState::INITIALISING
                    )
                {
                    break Stop::Closed;
                }
            }
        }
        action = {
            let resp = async {
                match inflight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }
            .fuse();
            let ev = conn.event.wait().fuse();
            let expired = watchdog.expired().fuse();
            pin_mut!(resp, ev, expired);
            select_biased! {
                r = resp => Action::Response(r),
                o = own.next() => Action::OwnChanged(o.is_some()),
                f = front.next() => Action::FrontChanged(f.is_some()),
                e = ev => Action::Event(e),
                () = expired => Action::Expired,
            }
        };
    };
    if inflight.is_some() && !cancel_sent {
        // Nobody waits for that answer any more (its slot went with `inflight`): ask the
        // engine to stop working on it before the instance is stopped.
        if let Err(e) = shared
            .client
            .post_control(config.instance, ControlOp::CancelCommand)
        {
            tracing::warn!(error = %e, "cancel at disconnect not sent");
        }
    }
    stop
}
