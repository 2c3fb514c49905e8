//! One device's life on the bus: from the toolstack's directory, through InitWait and each
//! connection, to Closed and the next InitWait, until the directory goes. It claims the
//! instance, maps what the frontend granted and powers the TPM on and off around each
//! connection; `connection` serves the connection in between.

use super::*;
use crate::pace::Pace;
use std::task::Poll;

/// What the toolstack configured for a device. A device task serves one configuration: if the
/// toolstack removes the directory and creates it again routed elsewhere (another instance,
/// another frontend), the task ends and a new one serves the new device, so a guest can
/// never keep reaching an instance that is no longer its own.
#[derive(PartialEq, Eq)]
pub(super) struct DeviceConfig {
    pub(super) frontend: DomainId,
    pub(super) front_dir: String,
    pub(super) instance: u32,
}

fn read_device_config(store: &StoreHandle, dir: &str) -> Result<DeviceConfig, StoreError> {
    Ok(DeviceConfig {
        frontend: DomainId(store.read_num(&format!("{dir}/{}", keys::FRONTEND_ID))?),
        front_dir: store.read(&format!("{dir}/{}", keys::FRONTEND))?,
        instance: store.read_num(&format!("{dir}/{}", keys::INSTANCE))?,
    })
}

/// Whether `dir` still holds the device `config` describes.
pub(super) fn is_current(store: &StoreHandle, dir: &str, config: &DeviceConfig) -> bool {
    read_device_config(store, dir).is_ok_and(|c| c == *config)
}

/// First pause before a device that failed is served again; it doubles with each failure in
/// a row, up to [`RETRY_LONGEST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two attempts at a failing device.
const RETRY_LONGEST: Duration = Duration::from_secs(10);

/// Runs one device until its directory disappears or is configured anew; returns the
/// directory. A device that fails (its store writes refused, say) is served again after a
/// pause, by this task: a task that ended at once and was started again at once would hold
/// the backend in one poll, and every other device with it.
pub(super) async fn device(shared: Arc<Shared>, dir: String) -> String {
    let span = tracing::info_span!("vtpm_backend", dir = %dir);
    BackendStats::bump(&shared.stats.devices);
    let mut pause = RETRY_FIRST;
    loop {
        match device_inner(&shared, &dir).instrument(span.clone()).await {
            Ok(()) => break,
            // The toolstack removed the directory between a check and a write: the device
            // is gone, which is no failure.
            Err(BackendError::Store(StoreError::NotFound(_)))
                if shared.store.try_read(&dir).ok().flatten().is_none() =>
            {
                tracing::debug!(dir, "vTPM device removed");
                break;
            }
            Err(e) => {
                tracing::warn!(dir, error = %e, ?pause, "vTPM device failed; served again after a pause");
                futures_timer::Delay::new(pause).await;
                pause = pause.saturating_mul(2).min(RETRY_LONGEST);
            }
        }
    }
    shared.stats.devices.fetch_sub(1, Ordering::Relaxed);
    dir
}

/// Waits for a change to the device's or the frontend's directory (the toolstack's first);
/// false once a watch ended. `pace` keeps a frontend that rewrites its directory without
/// pause from holding the task (see [`Pace`]).
pub(super) async fn next_change(pace: &mut Pace, own: &mut Watch, front: &mut Watch) -> bool {
    std::future::poll_fn(|cx| {
        pace.poll(cx, |cx| {
            if let Poll::Ready(a) = own.poll_next_unpin(cx) {
                return Poll::Ready(a.is_some());
            }
            front.poll_next_unpin(cx).map(|b| b.is_some())
        })
    })
    .await
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
    // Checked before every step that acts on the device, and every write is in place: a
    // removed directory is never written back.
    let still_mine = || is_current(store, dir, config);
    let mut front = store.watch(&config.front_dir)?;
    let mut pace = Pace::default();
    if shared.config.protocols.v2 {
        store.write_in_place(&format!("{dir}/{}", keys::FEATURE_V2), "1")?;
    }
    if shared.config.control {
        store.write_in_place(&format!("{dir}/{}", keys::FEATURE_CONTROL), "1")?;
    }
    write_state(store, dir, XenbusState::INIT_WAIT)?;
    loop {
        // Wait for the frontend to publish its ring.
        loop {
            if !still_mine() {
                return Ok(());
            }
            let st = read_state(store, &config.front_dir);
            if st == XenbusState::INITIALISED || st == XenbusState::CONNECTED {
                break;
            }
            if !next_change(&mut pace, own, &mut front).await {
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
            Ok((claim, conn)) if !conn.event.is_connected() => {
                // The frontend gave this attempt up while the TPM powered on (its connect
                // timed out) and may have published another ring since: stop the TPM and
                // serve what the frontend publishes now, without a Closed it never asked for.
                tracing::info!(frontend = %config.frontend, "vTPM frontend left during power-on");
                drop(conn);
                power::power_off(&shared.client, config.instance, &shared.config).await;
                drop(claim);
                continue;
            }
            Ok((claim, mut conn)) => {
                BackendStats::bump(&shared.stats.connects);
                let announced = write_state(store, dir, XenbusState::CONNECTED);
                let stop = match announced {
                    Ok(()) => {
                        tracing::info!(frontend = %config.frontend, instance = config.instance, "vTPM connected");
                        serve(shared, dir, config, &mut conn, own, &mut front).await
                    }
                    Err(_) => Stop::Gone,
                };
                // Unmap and unbind before saying Closed: the frontend revokes its grants next.
                drop(conn);
                // Stopped before the instance is free and before Closed, so the next
                // connection's Init always comes after this Stop; and stopped whatever
                // ended the connection, a refused Connected included.
                power::power_off(&shared.client, config.instance, &shared.config).await;
                drop(claim);
                BackendStats::bump(&shared.stats.disconnects);
                announced?;
                // The directory may have gone (or been re-created for another device)
                // while the TPM stopped.
                if matches!(stop, Stop::Gone) || !still_mine() {
                    return Ok(());
                }
            }
            Err(e) => {
                BackendStats::bump(&shared.stats.failed_connects);
                tracing::warn!(frontend = %config.frontend, error = %e, "vTPM connect refused");
                if !still_mine() {
                    return Ok(());
                }
                // The refusal must reach the frontend whatever happens to its reason: a
                // failed write of `error` that ended the task here would leave the device
                // in InitWait and serve it again, forever, without Closed.
                if let Err(write) =
                    store.write_in_place(&format!("{dir}/{}", keys::ERROR), &e.to_string())
                {
                    tracing::warn!(error = %write, "vTPM refusal's reason not written");
                }
            }
        }
        write_state(store, dir, XenbusState::CLOSED)?;
        // Wait for the frontend to finish closing, then offer a new connection.
        loop {
            if !still_mine() {
                return Ok(());
            }
            let st = read_state(store, &config.front_dir);
            if matches!(
                st,
                XenbusState::CLOSED | XenbusState::INITIALISING | XenbusState::UNKNOWN
            ) {
                break;
            }
            if !next_change(&mut pace, own, &mut front).await {
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
