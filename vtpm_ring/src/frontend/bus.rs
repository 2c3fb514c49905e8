//! A frontend's life on the bus: the store handshake that connects it, the close that ends
//! it, and the shared pages and grants, released however it ends.

use super::*;

async fn wait_backend(
    store: &StoreHandle,
    backend_dir: &str,
    timeout: Option<Duration>,
    done: impl Fn(XenbusState) -> Option<Result<(), FrontendError>>,
) -> Result<(), FrontendError> {
    let mut watch = store.watch(backend_dir)?;
    let wait = async {
        loop {
            if store.try_read(backend_dir)?.is_none() {
                return Err(FrontendError::DeviceRemoved);
            }
            if let Some(r) = done(read_state(store, backend_dir)) {
                return r;
            }
            watch.next().await.ok_or(FrontendError::WatchEnded)?;
        }
    };
    deadline::within(timeout, wait)
        .await
        .unwrap_or(Err(FrontendError::Timeout))
}

/// The pages a frontend shares and their grants. However the frontend ends (closed, a connect
/// that failed or was dropped half-way, a frontend dropped without `close`), they are
/// released: a grant the backend still maps is released once it lets go
/// ([`Domain::release_grant`]), so its page is neither reused meanwhile nor lost.
pub(super) struct Granted {
    domain: Domain,
    pages: Vec<OwnPage>,
    grants: Vec<GrantRef>,
}

impl Granted {
    fn release(&mut self) -> Result<(), FrontendError> {
        let mut first_error = None;
        let pages = std::mem::take(&mut self.pages);
        let grants = std::mem::take(&mut self.grants);
        for (page, gref) in pages.into_iter().zip(grants) {
            if let Err(e) = self.domain.release_grant(gref, page) {
                tracing::warn!(error = %e, "grant could not be revoked; page not reused");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        // Errors were logged; a destructor has no one to report them to.
        let _ = self.release();
    }
}

/// Ends a connect that failed with `error`: undoes what it set up and reports `error`, what
/// went wrong, whatever the clean-up meets (it is logged).
fn abandon_connect(frontend: Frontend, error: FrontendError) -> FrontendError {
    if let Err(e) = frontend.teardown() {
        tracing::warn!(error = %e, "clean-up after a failed connect");
    }
    error
}

impl Frontend {
    /// Connects device `config.handle` of `domain` to its backend (the toolstack must have
    /// created the device). Completes when both sides are Connected.
    pub async fn connect(domain: &Domain, config: FrontendConfig) -> Result<Self, FrontendError> {
        let store = domain.store();
        let dir = frontend_dir(domain.id(), config.handle);
        let backend_dir = store.read(&format!("{dir}/{}", keys::BACKEND))?;
        let backend = DomainId(store.read_num(&format!("{dir}/{}", keys::BACKEND_ID))?);
        write_state(&store, &dir, XenbusState::INITIALISING)?;
        // A backend that refused an earlier attempt still shows Closed (with its reason)
        // until it sees this new one; it refuses only once the frontend has published, so
        // here anything but InitWait is just "not yet".
        wait_backend(&store, &backend_dir, config.timeout, |s| {
            (s == XenbusState::INIT_WAIT).then_some(Ok(()))
        })
        .await?;
        let peer_v2 = store
            .try_read(&format!("{backend_dir}/{}", keys::FEATURE_V2))?
            .is_some_and(|v| v.trim() == "1");
        let control = config.control
            && store
                .try_read(&format!("{backend_dir}/{}", keys::FEATURE_CONTROL))?
                .is_some_and(|v| v.trim() == "1");
        let version = config
            .protocols
            .negotiate(peer_v2)
            .ok_or(FrontendError::NoCommonProtocol)?;

        let page_count = match version {
            ProtocolVersion::V1 => 1 + v1::RING_SIZE,
            ProtocolVersion::V2 => 1 + usize::from(config.extra_pages),
        };
        // Released on every way out of this function but success (see `Granted`).
        let mut granted = Granted {
            domain: domain.clone(),
            pages: Vec::with_capacity(page_count),
            grants: Vec::with_capacity(page_count),
        };
        for _ in 0..page_count {
            let page = domain.alloc_page()?;
            match domain.grant_access(backend, page.gfn(), GrantAccess::ReadWrite) {
                Ok(gref) => {
                    granted.pages.push(page);
                    granted.grants.push(gref);
                }
                Err(e) => {
                    domain.free_page(page);
                    return Err(e.into());
                }
            }
        }
        let (pages, grants) = (&granted.pages, &granted.grants);
        let transport = (|| -> Result<Transport, FrontendError> {
            Ok(match version {
                ProtocolVersion::V2 => {
                    let view = V2Page::new(pages.clone())?;
                    let extra: Vec<u32> = grants.iter().skip(1).map(|g| g.0).collect();
                    view.init_header(&extra)?;
                    Transport::V2(view)
                }
                ProtocolVersion::V1 => {
                    let mut entries = v1::Ring::default();
                    for ((e, p), g) in entries.iter_mut().zip(&pages[1..]).zip(&grants[1..]) {
                        e.addr = U64::new(p.gfn().address());
                        e.gref = U32::new(g.0);
                    }
                    v1::write_ring(&pages[0], &entries)?;
                    Transport::V1 {
                        ring: pages[0].clone(),
                        data: pages[1..].to_vec(),
                        entries,
                    }
                }
            })
        })()?;
        let event = domain.alloc_unbound(backend)?;
        let frontend = Self {
            store: store.clone(),
            dir: dir.clone(),
            backend_dir: backend_dir.clone(),
            version,
            control,
            event,
            transport,
            granted,
            io: Mutex::new(IoState {
                v1: V1State::default(),
                watchdog: deadline::Watchdog::new(config.timeout),
            }),
            locality: AtomicU8::new(0),
            in_flight: AtomicBool::new(false),
            submit: std::sync::Mutex::new(()),
            timeout: config.timeout,
            cancel: Signal::default(),
        };
        // In place: a device the toolstack removed meanwhile is not written back.
        let published = (|| -> Result<(), StoreError> {
            store.write_in_place(
                &format!("{dir}/{}", keys::RING_REF),
                &frontend.granted.grants[0].0.to_string(),
            )?;
            store.write_in_place(
                &format!("{dir}/{}", keys::EVENT_CHANNEL),
                &frontend.event.port().0.to_string(),
            )?;
            for (key, on) in [
                (keys::FEATURE_V2, version == ProtocolVersion::V2),
                (keys::FEATURE_CONTROL, control),
            ] {
                let feature = format!("{dir}/{key}");
                if on {
                    store.write_in_place(&feature, "1")?;
                } else if store.try_read(&feature)?.is_some() {
                    store.rm(&feature)?;
                }
            }
            write_state(&store, &dir, XenbusState::INITIALISED)
        })();
        if let Err(e) = published {
            return Err(abandon_connect(frontend, e.into()));
        }
        let connected = wait_backend(&store, &backend_dir, config.timeout, |s| match s {
            // Connected to this attempt's channel; a backend still finishing an abandoned
            // attempt's connection says Connected for the old one, and then closes it.
            XenbusState::CONNECTED if frontend.event.is_connected() => Some(Ok(())),
            XenbusState::CLOSING | XenbusState::CLOSED => {
                Some(Err(FrontendError::BackendRefused(s)))
            }
            _ => None,
        })
        .await;
        if let Err(e) = connected {
            // Another attempt may have published its ring since (a second driver of the
            // device, or a retry): the device's state is then that one's, not ours to close.
            if frontend.published_last()
                && let Err(w) = write_state(&store, &dir, XenbusState::CLOSED)
            {
                tracing::warn!(error = %w, "Closed not written after a failed connect");
            }
            return Err(abandon_connect(frontend, e));
        }
        write_state(&store, &dir, XenbusState::CONNECTED)?;
        tracing::info!(dir, ?version, "vTPM frontend connected");
        Ok(frontend)
    }

    /// Whether the ring and channel the device's directory names are this frontend's.
    fn published_last(&self) -> bool {
        let read = |key: &str| {
            self.store
                .try_read(&format!("{}/{key}", self.dir))
                .ok()
                .flatten()
        };
        read(keys::RING_REF) == Some(self.granted.grants[0].0.to_string())
            && read(keys::EVENT_CHANNEL) == Some(self.event.port().0.to_string())
    }

    /// Closes the device: Closing, wait for the backend to unmap and close, revoke the
    /// grants, Closed. The device can be connected again afterwards.
    pub async fn close(self) -> Result<(), FrontendError> {
        write_state(&self.store, &self.dir, XenbusState::CLOSING)?;
        wait_backend(&self.store, &self.backend_dir, self.timeout, |s| {
            matches!(s, XenbusState::CLOSED | XenbusState::INIT_WAIT).then_some(Ok(()))
        })
        .await?;
        let store = self.store.clone();
        let dir = self.dir.clone();
        self.teardown()?;
        write_state(&store, &dir, XenbusState::CLOSED)?;
        Ok(())
    }

    fn teardown(self) -> Result<(), FrontendError> {
        let Frontend {
            event,
            mut granted,
            transport,
            ..
        } = self;
        drop(event);
        drop(transport);
        granted.release()
    }
}
