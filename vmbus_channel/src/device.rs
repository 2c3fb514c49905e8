//! Putting a device on the bus in a few lines.
//!
//! Implement [`SimpleVmbusDevice`] (an offer and a packet handler), then
//! [`offer_device`] it to any [`ParentBus`] and run the returned [`DeviceRunner`] on your
//! executor. The runner answers the bus's requests (open, close, GPADLs, modify), reads the
//! guest's packets, hands each to the device and sends its reply back as a completion.
//!
//! Replies are sent in order; if the guest stops reading and the host-to-guest ring fills,
//! the runner waits for space and serves no control request meanwhile (a guest that wants to
//! close must keep reading).
//!
//! Each guest packet is peeked, handled, answered and only then committed: a packet whose
//! handling was interrupted by [`DeviceStop::stop`] stays in the ring and is handled again
//! after a restore (at least once, never lost).
//!
//! Servicing: [`DeviceRunner::stop_handle`] gives a [`DeviceStop`]; its `stop` pauses the
//! runner at its next safe point (a control request in progress is finished, packet handling
//! is abandoned before commit) and returns once [`DeviceRunner::run`] has returned. Stopping
//! does not revoke: only [`DeviceRunner::revoke`] or dropping the runner does.

use crate::bus::ChannelRequest;
use crate::bus::ChannelServerRequest;
use crate::bus::OfferInput;
use crate::bus::OfferParams;
use crate::bus::OfferResources;
use crate::bus::OpenRequest;
use crate::bus::OpenResult;
use crate::bus::ParentBus;
use crate::channel::ChannelError;
use crate::channel::RingChannel;
use crate::channel::Side;
use crate::gpadl::Gpadl;
use crate::gpadl::GpadlError;
use crate::gpadl::GpadlMap;
use crate::gpadl::GpadlTeardown;
use crate::gpadl::GpadlView;
use crate::interrupt::Event;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::protocol::GpadlId;
use crate::ring::IncomingPacket;
use crate::ring::OutgoingPacket;
use crate::ring::PacketType;
use crate::rpc::Rpc;
use crate::rpc::RpcError;
use crate::rpc::RpcSend;
use async_trait::async_trait;
use futures::FutureExt;
use futures::StreamExt;
use futures::channel::mpsc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// A device-side failure.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The bus refused the offer.
    #[error("offer failed: {0}")]
    Offer(String),
    /// The bus did not answer a request.
    #[error("bus request failed")]
    Rpc(#[from] RpcError),
    /// A GPADL was invalid.
    #[error("GPADL error")]
    Gpadl(#[from] GpadlError),
    /// The channel failed.
    #[error("channel error")]
    Channel(#[from] ChannelError),
    /// The device itself failed.
    #[error("device failed: {0}")]
    Device(String),
}

/// What the device sees while open: guest memory (shared or private, as negotiated) and the
/// channel's GPADLs (for external buffers named in packets).
#[derive(Debug)]
pub struct DeviceContext<'a> {
    /// Memory for external buffers (GPADLs, GPA-direct ranges).
    pub memory: &'a GuestMemory,
    /// The channel's GPADLs.
    pub gpadls: &'a GpadlMap,
    /// The open request.
    pub open_request: &'a OpenRequest,
    /// The VP the guest wants interrupts on (the open's, or the latest modify's).
    pub target_vp: u32,
}

/// A device with one channel that answers each guest packet.
#[async_trait]
pub trait SimpleVmbusDevice: Send + 'static {
    /// The offer to make.
    fn offer(&self) -> OfferParams;

    /// The guest opened the channel; an error refuses the open.
    async fn open(&mut self, _ctx: &DeviceContext<'_>) -> Result<(), DeviceError> {
        Ok(())
    }

    /// The guest closed the channel.
    async fn close(&mut self) {}

    /// Handles one guest packet. A returned payload is sent back as a completion with the
    /// packet's transaction id when the guest asked for one, else as an in-band packet.
    async fn handle_packet(
        &mut self,
        ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError>;
}

/// The open state of the channel.
#[derive(Debug)]
struct Open {
    request: OpenRequest,
    channel: RingChannel,
    /// Keeps the ring GPADL alive until close.
    _ring: GpadlView,
    /// A ring error stopped packet processing; the bus side still works.
    broken: bool,
}

#[derive(Debug, Default)]
struct StopState {
    requested: AtomicBool,
    /// Wakes the runner to look at `requested`.
    wake: Event,
    /// Set by the runner when it has stopped.
    stopped: Event,
}

/// Stops a [`DeviceRunner`] without revoking its offer.
#[derive(Debug, Clone)]
pub struct DeviceStop(Arc<StopState>);

impl DeviceStop {
    /// Asks the runner to stop and waits until its [`DeviceRunner::run`] has returned.
    ///
    /// The runner must be running (or start running) for this to complete.
    pub async fn stop(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.0.wake.signal();
        self.0.stopped.wait().await;
    }
}

/// Drives one offered device: run it with [`DeviceRunner::run`].
#[derive(Debug)]
pub struct DeviceRunner<D> {
    device: D,
    stop: Arc<StopState>,
    /// Reused for every packet handed to the device.
    scratch: IncomingPacket,
    requests: mpsc::UnboundedReceiver<ChannelRequest>,
    server_requests: mpsc::UnboundedSender<ChannelServerRequest>,
    resources: OfferResources,
    gpadls: GpadlMap,
    open: Option<Open>,
    teardowns: Vec<(GpadlTeardown, Rpc<GpadlId, ()>)>,
    target_vp: u32,
}

/// Offers `device` on `bus`. Run the returned runner to serve it.
pub async fn offer_device<D: SimpleVmbusDevice>(
    bus: &dyn ParentBus,
    device: D,
) -> Result<DeviceRunner<D>, DeviceError> {
    let params = device.offer();
    offer_with(bus, device, params).await
}

async fn offer_with<D: SimpleVmbusDevice>(
    bus: &dyn ParentBus,
    device: D,
    params: OfferParams,
) -> Result<DeviceRunner<D>, DeviceError> {
    let (request_send, requests) = mpsc::unbounded();
    let (server_requests, server_request_recv) = mpsc::unbounded();
    let resources = bus
        .add_child(OfferInput {
            params,
            request_send,
            server_request_recv,
        })
        .await
        .map_err(|e| DeviceError::Offer(format!("{e:#}")))?;
    Ok(DeviceRunner {
        device,
        stop: Arc::default(),
        scratch: IncomingPacket::default(),
        requests,
        server_requests,
        resources,
        gpadls: GpadlMap::new(),
        open: None,
        teardowns: Vec::new(),
        target_vp: 0,
    })
}

/// Offers `device` as subchannel `index` (1 or more) of the primary channel with the same
/// interface and instance: the guest opens and closes it on its own, with its own target VP.
pub async fn offer_subchannel<D: SimpleVmbusDevice>(
    bus: &dyn ParentBus,
    device: D,
    index: u16,
) -> Result<DeviceRunner<D>, DeviceError> {
    if index == 0 {
        return Err(DeviceError::Offer(
            "subchannel index 0 is the primary".into(),
        ));
    }
    let mut params = device.offer();
    params.subchannel_index = index;
    offer_with(bus, device, params).await
}

/// Offers a device's `count` subchannels, indexes 1 to `count`, each served by its own
/// device instance from `make(index)`.
pub async fn offer_subchannels<D: SimpleVmbusDevice>(
    bus: &dyn ParentBus,
    count: u16,
    mut make: impl FnMut(u16) -> D,
) -> Result<Vec<DeviceRunner<D>>, DeviceError> {
    let mut runners = Vec::with_capacity(usize::from(count));
    for index in 1..=count {
        runners.push(offer_subchannel(bus, make(index), index).await?);
    }
    Ok(runners)
}

impl<D: SimpleVmbusDevice> DeviceRunner<D> {
    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// True while the guest has the channel open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The target VP last set by the guest.
    pub fn target_vp(&self) -> u32 {
        self.target_vp
    }

    /// The handle that stops this runner (see [`DeviceStop`]).
    pub fn stop_handle(&self) -> DeviceStop {
        DeviceStop(self.stop.clone())
    }

    /// Restores the channel after the bus was restored from saved state: re-adds the GPADLs
    /// the device had accepted (the bus offers the others again) and, if the channel was
    /// open, re-attaches to its rings where they stopped (packets not committed are read
    /// again).
    pub async fn restore(&mut self) -> Result<(), DeviceError> {
        let event = Event::new();
        let open_result = OpenResult {
            guest_to_host_interrupt: Interrupt::from_event(event.clone()),
        };
        let result = self
            .server_requests
            .call_failable(ChannelServerRequest::Restore, Some(open_result))
            .await?;
        for gpadl in result.gpadls.iter().filter(|g| g.accepted) {
            let memory = self.resources.validation_memory();
            Gpadl::new(&gpadl.request, memory).and_then(|g| self.gpadls.add(g))?;
        }
        if let Some(request) = result.open_request {
            self.attach(request, event).await?;
        }
        Ok(())
    }

    /// Asks the bus to revoke the offer and waits until it has; returns the device.
    pub async fn revoke(self) -> D {
        if let Err(err) = self
            .server_requests
            .call(ChannelServerRequest::Revoke, ())
            .await
        {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "revoke not acknowledged"
            );
        }
        self.device
    }

    /// Serves the device until the bus drops the channel or [`DeviceStop::stop`] is called;
    /// returns the runner (to run again, inspect or revoke).
    pub async fn run(mut self) -> Self {
        loop {
            if self.stop.requested.swap(false, Ordering::SeqCst) {
                break;
            }
            let Self {
                device,
                requests,
                resources,
                gpadls,
                open,
                scratch,
                stop,
                target_vp,
                ..
            } = &mut self;
            // Wait for work. A control request is served to the end once received.
            let request = futures::select_biased! {
                () = stop.wake.wait().fuse() => continue,
                request = requests.next() => Some(request),
                ready = Self::packet_ready(open).fuse() => {
                    if !ready {
                        continue;
                    }
                    None
                },
            };
            match request {
                Some(Some(request)) => self.handle_request(request).await,
                Some(None) => break,
                // Handle one packet; only a stop abandons it (before its commit, so it
                // stays in the ring).
                None => {
                    futures::select_biased! {
                        () = stop.wake.wait().fuse() => continue,
                        () = Self::one_packet(device, resources, gpadls, open, scratch, *target_vp).fuse() => {},
                    }
                }
            }
            self.complete_teardowns();
        }
        self.stop.stopped.signal();
        self
    }

    /// Waits until a packet can be read (true) or the channel failed (false); never
    /// completes while the channel is closed.
    async fn packet_ready(open: &mut Option<Open>) -> bool {
        let Some(open) = open.as_mut().filter(|o| !o.broken) else {
            return std::future::pending().await;
        };
        match open.channel.peek().await {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(error = &err as &dyn std::error::Error, "channel stopped");
                open.broken = true;
                false
            }
        }
    }

    /// Handles the packet in the ring: peek, hand to the device, answer, commit.
    async fn one_packet(
        device: &mut D,
        resources: &OfferResources,
        gpadls: &GpadlMap,
        open: &mut Option<Open>,
        scratch: &mut IncomingPacket,
        target_vp: u32,
    ) {
        let Some(open) = open.as_mut().filter(|o| !o.broken) else {
            return;
        };
        let ctx = DeviceContext {
            memory: resources.guest_memory(&open.request),
            gpadls,
            open_request: &open.request,
            target_vp,
        };
        let result = async {
            let Some(view) = open.channel.try_peek()? else {
                return Ok(());
            };
            view.copy_into(scratch);
            Self::answer(device, &ctx, &mut open.channel, scratch).await?;
            // Consumed only now: a stop before this point leaves it in the ring.
            open.channel.commit()?;
            Ok::<_, DeviceError>(())
        }
        .await;
        if let Err(err) = result {
            tracing::error!(error = &err as &dyn std::error::Error, "channel stopped");
            open.broken = true;
        }
    }

    async fn answer(
        device: &mut D,
        ctx: &DeviceContext<'_>,
        channel: &mut RingChannel,
        packet: &IncomingPacket,
    ) -> Result<(), DeviceError> {
        if packet.packet_type == PacketType::COMPLETION {
            // Nothing here sends requests to the guest, so there is nothing to complete.
            return Ok(());
        }
        let Some(reply) = device.handle_packet(ctx, packet).await? else {
            return Ok(());
        };
        let payload = [reply.as_slice()];
        let out = if packet.completion_requested {
            OutgoingPacket::completion(packet.transaction_id, &payload)
        } else {
            OutgoingPacket::in_band(packet.transaction_id, false, &payload)
        };
        channel.send(&out).await?;
        Ok(())
    }

    async fn handle_request(&mut self, request: ChannelRequest) {
        match request {
            ChannelRequest::Open(rpc) => {
                let (request, reply) = rpc.split();
                let event = Event::new();
                let result = match self.attach(request, event.clone()).await {
                    Ok(()) => Some(OpenResult {
                        guest_to_host_interrupt: Interrupt::from_event(event),
                    }),
                    Err(err) => {
                        tracing::warn!(error = &err as &dyn std::error::Error, "open failed");
                        None
                    }
                };
                reply.send(result);
            }
            ChannelRequest::Close(rpc) => {
                if self.open.take().is_some() {
                    self.device.close().await;
                }
                rpc.complete(());
            }
            ChannelRequest::Gpadl(rpc) => {
                let memory = self.resources.validation_memory();
                let result = Gpadl::new(rpc.input(), memory).and_then(|g| self.gpadls.add(g));
                if let Err(err) = &result {
                    tracing::warn!(error = err as &dyn std::error::Error, "GPADL rejected");
                }
                rpc.complete(result.is_ok());
            }
            ChannelRequest::TeardownGpadl(rpc) => match self.gpadls.teardown(*rpc.input()) {
                Ok(teardown) => self.teardowns.push((teardown, rpc)),
                // Unknown id: nothing to wait for.
                Err(_) => rpc.complete(()),
            },
            ChannelRequest::Modify(rpc) => rpc.handle(|request| match request {
                crate::bus::ModifyRequest::TargetVp { target_vp } => {
                    self.target_vp = target_vp;
                    0
                }
            }),
        }
    }

    /// Opens the rings for `request` and tells the device.
    async fn attach(&mut self, request: OpenRequest, event: Event) -> Result<(), DeviceError> {
        let ring = self.gpadls.view(request.open_data.ring_gpadl_id)?;
        let channel = RingChannel::new(
            Side::Host,
            self.resources.ring_memory(&request),
            &ring,
            request.open_data.ring_offset,
            request.interrupt.clone(),
            event,
        )?;
        self.target_vp = request.open_data.target_vp;
        let ctx = DeviceContext {
            memory: self.resources.guest_memory(&request),
            gpadls: &self.gpadls,
            open_request: &request,
            target_vp: self.target_vp,
        };
        self.device.open(&ctx).await?;
        self.open = Some(Open {
            request,
            channel,
            _ring: ring,
            broken: false,
        });
        Ok(())
    }

    fn complete_teardowns(&mut self) {
        let mut i = 0;
        while let Some((teardown, _)) = self.teardowns.get_mut(i) {
            if teardown.is_complete() {
                let (_, rpc) = self.teardowns.swap_remove(i);
                rpc.complete(());
            } else {
                i += 1;
            }
        }
    }
}
