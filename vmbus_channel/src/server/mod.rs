//! A VMBus server: devices offer channels through [`ParentBus`]; a guest speaks the control
//! protocol to it through a [`MessagePort`].
//!
//! Three parts, each in one place:
//! * [`channels::ControlState`] decides: the connection and every channel and GPADL, driven
//!   by guest messages and device answers, with no I/O.
//! * [`ServerRunner`] acts: it reads the guest's messages from the port, carries each
//!   decision out (a message to the guest, a request to a device) and feeds the devices'
//!   answers back.
//! * [`VmbusServer`] is the handle devices and the embedder hold: offers, stop, save,
//!   restore.
//!
//! Servicing: stop the devices ([`crate::device::DeviceStop::stop`]), [`VmbusServer::stop`]
//! the server (it stops reading guest messages; they wait in the port), [`VmbusServer::save`].
//! The saved state is consistent whenever it is taken: a request a device had not answered
//! is saved as pending and asked again after restore. Restore with
//! [`VmbusServer::restore_with_port`] on the same port (the guest notices nothing) or
//! [`VmbusServer::restore`] on a new one (the in-process client then
//! [re-attaches](crate::client::VmbusClient::reattach)); devices offer themselves again and
//! send [`ChannelServerRequest::Restore`]. Guest messages are read again once every saved
//! channel is restored (or [`VmbusServer::post_restore`] gave up on the missing ones).
//!
//! Only an explicit [`ChannelServerRequest::Revoke`] or dropping the device's end of the
//! offer revokes a channel; stopping a device does not.

pub mod channels;
mod saved_state;

use crate::bus::ChannelRequest;
use crate::bus::ChannelServerRequest;
use crate::bus::ModifyRequest;
use crate::bus::OfferInput;
use crate::bus::OfferResources;
use crate::bus::OpenRequest;
use crate::bus::ParentBus;
use crate::bus::RestoreResult;
use crate::control;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::port::InProcessPort;
use crate::port::MessagePort;
use crate::protocol::host_offer;
use crate::rpc::RemoteError;
use crate::rpc::RpcSend;
use async_trait::async_trait;
use channels::ControlState;
use channels::DeviceAction;
use channels::DeviceResult;
use channels::OfferId;
use channels::Output;
use futures::FutureExt;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::stream::FuturesUnordered;
use futures::stream::SelectAll;
use saved_state::Envelope;
use saved_state::SAVED_STATE_VERSION;
pub use saved_state::SavedState;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::Weak;

/// A server operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Saved state could not be encoded or decoded.
    #[error("bad saved state")]
    SavedState(#[from] postcard::Error),
    /// Saved state has an unknown version.
    #[error("unsupported saved state version {0}")]
    SavedStateVersion(u32),
}

/// A device answer, with the route for the guest's signals when an open succeeded.
struct Completion {
    offer: OfferId,
    generation: u64,
    result: DeviceResult,
    route: Option<(u32, Interrupt)>,
}

type DeviceRequests = BoxStream<'static, (OfferId, u64, Option<ChannelServerRequest>)>;

enum RunnerInput {
    Device(DeviceRequests),
    Pending(BoxFuture<'static, Completion>),
    /// Something changed whether guest messages are read.
    Wake,
}

struct Shared {
    state: ControlState,
    devices: HashMap<OfferId, mpsc::UnboundedSender<ChannelRequest>>,
    stopped: bool,
}

struct Inner {
    untrusted: GuestMemory,
    private: Option<GuestMemory>,
    port: Arc<dyn MessagePort>,
    guest_port: Option<Arc<dyn MessagePort>>,
    shared: Mutex<Shared>,
    runner_send: mpsc::UnboundedSender<RunnerInput>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("port", &self.port).finish()
    }
}

/// The VMBus server. Cheap to clone; all clones are the same server.
///
/// Dropping the last handle shuts the server down: its [`ServerRunner`] returns and, unless
/// the host end of the port was handed on ([`VmbusServer::host_port`]), the guest's port
/// reports the host gone (the in-process client's waiting calls fail with
/// [`crate::port::PortError::Disconnected`]).
#[derive(Debug, Clone)]
pub struct VmbusServer {
    inner: Arc<Inner>,
}

/// Reads the guest's messages and the devices' answers; run it on your executor.
pub struct ServerRunner {
    inner: Weak<Inner>,
    port: Arc<dyn MessagePort>,
    inputs: mpsc::UnboundedReceiver<RunnerInput>,
}

impl std::fmt::Debug for ServerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad("ServerRunner")
    }
}

impl VmbusServer {
    /// A server for a guest with `untrusted` (shared) memory and, in a hardware-isolated
    /// guest, `private` memory, with an in-process port whose guest end is
    /// [`VmbusServer::guest_port`].
    pub fn new(untrusted: GuestMemory, private: Option<GuestMemory>) -> (Self, ServerRunner) {
        let supports_confidential = private.is_some();
        let (host, guest) = InProcessPort::pair();
        Self::build(
            untrusted,
            private,
            Arc::new(host),
            Some(Arc::new(guest)),
            ControlState::new(supports_confidential),
        )
    }

    /// A server on an existing port (e.g. a hypervisor's, or one kept across servicing).
    pub fn with_port(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        port: Arc<dyn MessagePort>,
    ) -> (Self, ServerRunner) {
        let supports_confidential = private.is_some();
        Self::build(
            untrusted,
            private,
            port,
            None,
            ControlState::new(supports_confidential),
        )
    }

    fn build(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        port: Arc<dyn MessagePort>,
        guest_port: Option<Arc<dyn MessagePort>>,
        state: ControlState,
    ) -> (Self, ServerRunner) {
        let (runner_send, inputs) = mpsc::unbounded();
        let inner = Arc::new(Inner {
            untrusted,
            private,
            port: port.clone(),
            guest_port,
            shared: Mutex::new(Shared {
                state,
                devices: HashMap::new(),
                stopped: false,
            }),
            runner_send,
        });
        let runner = ServerRunner {
            inner: Arc::downgrade(&inner),
            port,
            inputs,
        };
        (Self { inner }, runner)
    }

    /// The guest end of the in-process port, if this server made one.
    pub fn guest_port(&self) -> Option<Arc<dyn MessagePort>> {
        self.inner.guest_port.clone()
    }

    /// The host end of the port, to hand to a restored server.
    pub fn host_port(&self) -> Arc<dyn MessagePort> {
        self.inner.port.clone()
    }

    /// Stops the server: guest messages wait in the port, device answers and requests wait
    /// in their channels. Returns once no guest message is being handled; nothing the
    /// server does after this reaches the guest (until [`VmbusServer::start`]). Stop the
    /// devices first so they finish the control requests they are serving.
    pub fn stop(&self) {
        self.inner.shared().stopped = true;
        let _ = self.inner.runner_send.unbounded_send(RunnerInput::Wake);
    }

    /// Runs again after [`VmbusServer::stop`].
    pub fn start(&self) {
        self.inner.shared().stopped = false;
        let _ = self.inner.runner_send.unbounded_send(RunnerInput::Wake);
    }

    /// Saves the control plane. Consistent at any time; take it after stopping the devices
    /// and the server so nothing changes after it.
    pub fn save(&self) -> Result<Vec<u8>, ServerError> {
        let state = self.inner.shared().state.save();
        Ok(postcard::to_allocvec(&Envelope {
            version: SAVED_STATE_VERSION,
            state,
        })?)
    }

    /// A server restored from [`VmbusServer::save`] output, with a new in-process port.
    pub fn restore(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        saved: &[u8],
    ) -> Result<(Self, ServerRunner), ServerError> {
        let state = Self::decode(saved, private.is_some())?;
        let (host, guest) = InProcessPort::pair();
        Ok(Self::build(
            untrusted,
            private,
            Arc::new(host),
            Some(Arc::new(guest)),
            state,
        ))
    }

    /// A server restored from [`VmbusServer::save`] output on an existing port (the one
    /// the saved server used, so the guest's queued messages are read by the new server).
    pub fn restore_with_port(
        untrusted: GuestMemory,
        private: Option<GuestMemory>,
        port: Arc<dyn MessagePort>,
        saved: &[u8],
    ) -> Result<(Self, ServerRunner), ServerError> {
        let state = Self::decode(saved, private.is_some())?;
        Ok(Self::build(untrusted, private, port, None, state))
    }

    fn decode(saved: &[u8], supports_confidential: bool) -> Result<ControlState, ServerError> {
        let envelope: Envelope = postcard::from_bytes(saved)?;
        if envelope.version != SAVED_STATE_VERSION {
            return Err(ServerError::SavedStateVersion(envelope.version));
        }
        Ok(ControlState::restore(envelope.state, supports_confidential))
    }

    /// Revokes saved channels whose devices did not come back, so guest messages are read
    /// again.
    pub fn post_restore(&self) {
        let mut shared = self.inner.shared();
        let mut out = Vec::new();
        shared.state.post_restore(&mut out);
        self.inner.act(&mut shared, out);
        drop(shared);
        let _ = self.inner.runner_send.unbounded_send(RunnerInput::Wake);
    }

    /// A copy of the control state, for inspection and tests.
    pub fn control_state(&self) -> ControlState {
        self.inner.shared().state.clone()
    }
}

impl Inner {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An interrupt that signals the guest's event `event_flag` through the port. It does
    /// not keep the port alive: once the server is gone the guest sees its host gone,
    /// whatever devices still hold.
    fn guest_interrupt(&self, event_flag: u16) -> Interrupt {
        let port = Arc::downgrade(&self.port);
        Interrupt::from_fn(move || {
            if let Some(port) = port.upgrade() {
                port.signal_event(u32::from(event_flag));
            }
        })
    }

    /// Carries out the state machine's decisions.
    fn act(&self, shared: &mut Shared, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Guest(message) => {
                    if let Err(err) = self.port.post_message(message.as_bytes()) {
                        tracing::warn!(error = %err, "message to the guest lost");
                    }
                }
                Output::ClearHostEvent(connection_id) => {
                    self.port.set_event_handler(connection_id, None);
                }
                Output::Device {
                    offer,
                    generation,
                    action,
                } => {
                    let Some(send) = shared.devices.get(&offer).cloned() else {
                        continue;
                    };
                    let future = self.device_call(send, offer, generation, action);
                    let _ = self
                        .runner_send
                        .unbounded_send(RunnerInput::Pending(future));
                }
            }
        }
    }

    fn device_call(
        &self,
        send: mpsc::UnboundedSender<ChannelRequest>,
        offer: OfferId,
        generation: u64,
        action: DeviceAction,
    ) -> BoxFuture<'static, Completion> {
        let done = move |result, route| Completion {
            offer,
            generation,
            result,
            route,
        };
        match action {
            DeviceAction::Open {
                open_data,
                features,
                offer_flags,
            } => {
                let request = OpenRequest::new(
                    open_data,
                    self.guest_interrupt(open_data.event_flag),
                    features,
                    offer_flags,
                );
                async move {
                    match send.call(ChannelRequest::Open, request).await {
                        Ok(Some(result)) => done(
                            DeviceResult::Opened(true),
                            Some((open_data.connection_id, result.guest_to_host_interrupt)),
                        ),
                        _ => done(DeviceResult::Opened(false), None),
                    }
                }
                .boxed()
            }
            // A device that cannot answer (gone) has nothing open or held any more.
            DeviceAction::Close => async move {
                let _ = send.call(ChannelRequest::Close, ()).await;
                done(DeviceResult::Closed, None)
            }
            .boxed(),
            DeviceAction::Gpadl(request) => {
                let id = request.id;
                async move {
                    let r = send.call(ChannelRequest::Gpadl, request).await;
                    done(DeviceResult::GpadlCreated(id, r == Ok(true)), None)
                }
                .boxed()
            }
            DeviceAction::TeardownGpadl(id) => async move {
                let _ = send.call(ChannelRequest::TeardownGpadl, id).await;
                done(DeviceResult::GpadlTornDown(id), None)
            }
            .boxed(),
            DeviceAction::Modify(target_vp) => async move {
                let r = send
                    .call(
                        ChannelRequest::Modify,
                        ModifyRequest::TargetVp { target_vp },
                    )
                    .await;
                done(
                    DeviceResult::Modified(r.unwrap_or(control::STATUS_UNSUCCESSFUL)),
                    None,
                )
            }
            .boxed(),
        }
    }

    /// Applies a device answer; hands it back if the server was stopped meanwhile.
    fn complete(&self, completion: Completion) -> Result<(), Held> {
        let mut shared = self.shared();
        if shared.stopped {
            return Err(Held::Completion(completion));
        }
        if let Some((connection_id, irq)) = completion.route {
            // Route the guest's signals before the guest learns the channel is open.
            self.port.set_event_handler(connection_id, Some(irq));
        }
        let mut out = Vec::new();
        shared.state.device_done(
            completion.offer,
            completion.generation,
            completion.result,
            &mut out,
        );
        self.act(&mut shared, out);
        Ok(())
    }

    /// Handles the next queued guest message, unless stopped: the check and the take happen
    /// under the lock [`VmbusServer::stop`] takes, so after `stop` no message is taken.
    fn guest_message(&self) {
        let mut shared = self.shared();
        if shared.stopped || shared.state.restore_pending() {
            return;
        }
        let Some(message) = self.port.try_recv() else {
            return;
        };
        let mut out = Vec::new();
        shared
            .state
            .handle_guest_message(message.as_bytes(), &mut out);
        self.act(&mut shared, out);
    }

    /// `(stopped, reads guest messages)`.
    fn activity(&self) -> (bool, bool) {
        let shared = self.shared();
        (
            shared.stopped,
            !shared.stopped && !shared.state.restore_pending(),
        )
    }

    /// Serves a device's request; hands it back if the server was stopped meanwhile.
    fn device_request(
        &self,
        offer: OfferId,
        generation: u64,
        request: Option<ChannelServerRequest>,
    ) -> Result<(), Held> {
        let mut shared = self.shared();
        if shared.stopped {
            return Err(Held::Device(offer, generation, request));
        }
        let mut out = Vec::new();
        let current = shared.state.device_generation(offer) == Some(generation);
        match request {
            Some(ChannelServerRequest::Revoke(rpc)) => {
                if current {
                    shared.state.revoke(offer, &mut out);
                    shared.devices.remove(&offer);
                }
                self.act(&mut shared, out);
                rpc.complete(());
            }
            Some(ChannelServerRequest::Restore(rpc)) => {
                let (open_result, reply) = rpc.split();
                let restored = if current {
                    shared
                        .state
                        .restore_channel(offer, open_result.is_some(), &mut out)
                        .map_err(|e| RemoteError::new(&e))
                } else {
                    Err(RemoteError("the offer was replaced".into()))
                };
                let result = restored.map(|restored| {
                    let open_request = match (restored.open, open_result) {
                        (Some((open_data, features, offer_flags)), Some(result)) => {
                            self.port.set_event_handler(
                                open_data.connection_id,
                                Some(result.guest_to_host_interrupt),
                            );
                            Some(OpenRequest::new(
                                open_data,
                                self.guest_interrupt(open_data.event_flag),
                                features,
                                offer_flags,
                            ))
                        }
                        _ => None,
                    };
                    RestoreResult {
                        open_request,
                        gpadls: restored.gpadls,
                    }
                });
                reply.send(result);
                // Requests asked again go out after the device has its restore answer.
                self.act(&mut shared, out);
            }
            // The device dropped its end of the offer.
            None => {
                if current {
                    shared.state.revoke(offer, &mut out);
                    shared.devices.remove(&offer);
                }
                self.act(&mut shared, out);
            }
        }
        Ok(())
    }
}

impl ServerRunner {
    /// Serves the guest and the devices until the server is dropped.
    pub async fn run(mut self) {
        // Never-ending members keep the sets from reporting "finished" while empty.
        let mut devices: SelectAll<DeviceRequests> = SelectAll::new();
        devices.push(futures::stream::pending().boxed());
        let mut pending: FuturesUnordered<BoxFuture<'static, Completion>> = FuturesUnordered::new();
        pending.push(futures::future::pending().boxed());
        let port = self.port.clone();
        // Taken in just as the server stopped; applied once it runs again.
        let mut held: std::collections::VecDeque<Held> = std::collections::VecDeque::new();
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let (stopped, reads_guest) = inner.activity();
            if !stopped && let Some(h) = held.pop_front() {
                let again = match h {
                    Held::Completion(c) => inner.complete(c),
                    Held::Device(offer, generation, r) => {
                        inner.device_request(offer, generation, r)
                    }
                };
                if let Err(h) = again {
                    held.push_front(h);
                }
                continue;
            }
            drop(inner);
            if stopped {
                // Nothing moves while stopped: answers and device requests wait (a save
                // records what they would have changed as still pending).
                match self.inputs.next().await {
                    Some(RunnerInput::Device(stream)) => devices.push(stream),
                    Some(RunnerInput::Pending(future)) => pending.push(future),
                    Some(RunnerInput::Wake) => {}
                    None => return,
                }
                continue;
            }
            let guest = async {
                if reads_guest {
                    crate::port::ready(&*port).await
                } else {
                    std::future::pending().await
                }
            };
            let event = futures::select_biased! {
                input = self.inputs.next() => match input {
                    Some(RunnerInput::Device(stream)) => { devices.push(stream); continue; }
                    Some(RunnerInput::Pending(future)) => { pending.push(future); continue; }
                    Some(RunnerInput::Wake) => continue,
                    None => return,
                },
                completion = pending.next() => Step::Completion(completion),
                request = devices.next() => Step::Device(request),
                ready = guest.fuse() => Step::Guest(ready),
            };
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let result = match event {
                Step::Completion(Some(c)) => inner.complete(c),
                Step::Device(Some((offer, generation, request))) => {
                    inner.device_request(offer, generation, request)
                }
                Step::Guest(true) => {
                    inner.guest_message();
                    Ok(())
                }
                Step::Guest(false) => {
                    tracing::info!("guest port closed");
                    return;
                }
                Step::Completion(None) | Step::Device(None) => Ok(()),
            };
            if let Err(h) = result {
                held.push_back(h);
            }
        }
    }
}

/// Something taken in while the server was stopping.
enum Held {
    Completion(Completion),
    Device(OfferId, u64, Option<ChannelServerRequest>),
}

enum Step {
    Completion(Option<Completion>),
    Device(Option<(OfferId, u64, Option<ChannelServerRequest>)>),
    Guest(bool),
}

#[async_trait]
impl ParentBus for VmbusServer {
    async fn add_child(&self, request: OfferInput) -> anyhow::Result<OfferResources> {
        let OfferInput {
            params,
            request_send,
            server_request_recv,
        } = request;
        let key = params.key();
        if params.mnf_interrupt_latency.is_some() {
            // Monitor pages are not implemented: the offer never asks for monitored
            // notification, interrupts are always direct.
            tracing::debug!(%key, "monitored notification requested; using direct interrupts");
        }
        let (offer, generation) = {
            let mut shared = self.inner.shared();
            let mut out = Vec::new();
            let (offer, generation) = shared.state.offer(key, host_offer(&params), &mut out)?;
            shared.devices.insert(offer, request_send);
            self.inner.act(&mut shared, out);
            (offer, generation)
        };
        let stream = server_request_recv
            .map(move |r| (offer, generation, Some(r)))
            .chain(futures::stream::once(
                async move { (offer, generation, None) },
            ))
            .boxed();
        if self
            .inner
            .runner_send
            .unbounded_send(RunnerInput::Device(stream))
            .is_err()
        {
            tracing::warn!(%key, "server runner is gone; revoke and restore will not be served");
        }
        tracing::info!(%key, name = params.interface_name, "offered");
        Ok(OfferResources::new(
            self.inner.untrusted.clone(),
            self.inner.private.clone(),
        ))
    }

    fn clone_bus(&self) -> Box<dyn ParentBus> {
        Box::new(self.clone())
    }

    fn use_event(&self) -> bool {
        false
    }
}
