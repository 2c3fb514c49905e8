//! The guest end of a TDISP VMBus channel: a [`GuestTransport`] over a `vmbus_channel` client
//! channel.
//!
//! The transport is split in two so that the blocking [`TdispGuestRequestInterface`] calls
//! can run on any thread while the channel is driven by any executor:
//!
//! - [`VmbusTransport`] (the `GuestTransport`) gives each command a fresh transaction id,
//!   frames it ([`tdisp_proto::wire::frame()`]) and waits for the answer at most its per-command
//!   timeout. A [`CancelHandle`] cancels the command in flight from another thread.
//! - [`VmbusTransportWorker`] owns the channel: it sends each command as an in-band packet
//!   asking for a completion and hands each completion to the command whose transaction id it
//!   carries. A completion for a transaction that timed out or was cancelled (stale) or was never
//!   sent (unknown), and any packet that is not a completion, is dropped and logged; the
//!   command in flight keeps waiting for its own answer.
//!
//! Run the worker on an executor thread that is not the one calling the client: the client
//! blocks its thread while it waits.
//!
//! [`TdispGuestRequestInterface`]: tdisp_proto::TdispGuestRequestInterface

use crate::client::TdispGuestClient;
use crate::transport::GuestTransport;
use crate::transport::TransportError;
use futures::FutureExt;
use futures::StreamExt;
use futures::channel::mpsc;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tdisp_proto::wire::MAX_MESSAGE_SIZE;
use tdisp_proto::wire::frame;
use tdisp_proto::wire::frame::FRAME_HEADER_SIZE;
use tdisp_proto::wire::frame::TDISP_VMBUS_INTERFACE_ID;
use tdisp_proto::wire::frame::device_id_of_instance;
use tdisp_proto::wire::unframe;
use vmbus_channel::client::ClientChannel;
use vmbus_channel::client::ClientError;
use vmbus_channel::client::OfferInfo;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::PacketType;

/// Data pages per ring of a TDISP channel: room for the largest response
/// ([`MAX_MESSAGE_SIZE`] behind its frame, the 16-byte packet descriptor and the 8-byte footer)
/// with a page to spare, so the host can always write its answer.
pub const TDISP_RING_PAGES: u32 = {
    let packet = MAX_MESSAGE_SIZE + FRAME_HEADER_SIZE + 16 + 8;
    (packet.div_ceil(PAGE_SIZE) + 1) as u32
};

/// The per-command timeout a transport starts with.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many timed-out or cancelled transaction ids are remembered to tell a late (stale) reply
/// from one for a transaction never sent; only the log message differs.
const FORGOTTEN_KEPT: usize = 64;

type ReplySender = std::sync::mpsc::Sender<Result<Vec<u8>, TransportError>>;

/// What the transport asks of its worker.
enum WorkerRequest {
    /// Send `message` (framed) as transaction `tid` and answer on `reply`.
    Send {
        tid: u64,
        message: Vec<u8>,
        reply: ReplySender,
    },
    /// Transaction `tid` timed out or was cancelled: its answer, if any, is stale.
    Forget { tid: u64 },
}

/// Counters shared by a transport and its worker.
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
}

/// The command a transport is waiting for.
#[derive(Debug)]
struct InFlight {
    tid: u64,
    reply: ReplySender,
}

/// Creates a transport and the worker that drives `channel` for it.
pub fn vmbus_transport(
    channel: ClientChannel,
    timeout: Duration,
) -> (VmbusTransport, VmbusTransportWorker) {
    let (requests, incoming) = mpsc::unbounded();
    let counters = Arc::new(Counters::default());
    (
        VmbusTransport {
            requests,
            timeout,
            next_tid: 1,
            in_flight: Arc::new(Mutex::new(None)),
            counters: counters.clone(),
        },
        VmbusTransportWorker {
            channel,
            requests: incoming,
            pending: Pending::default(),
            counters,
        },
    )
}

/// A [`GuestTransport`] over a TDISP VMBus channel; see the module docs.
#[derive(Debug)]
pub struct VmbusTransport {
    requests: mpsc::UnboundedSender<WorkerRequest>,
    timeout: Duration,
    next_tid: u64,
    in_flight: Arc<Mutex<Option<InFlight>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for WorkerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send { tid, message, .. } => f
                .debug_struct("Send")
                .field("tid", tid)
                .field("len", &message.len())
                .finish(),
            Self::Forget { tid } => f.debug_struct("Forget").field("tid", tid).finish(),
        }
    }
}

impl VmbusTransport {
    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the per-command timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A handle that cancels the command in flight, from any thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            in_flight: self.in_flight.clone(),
            requests: self.requests.clone(),
        }
    }

    /// Packets the worker dropped: completions for stale or unknown transactions, and packets
    /// that are not completions.
    pub fn dropped_packets(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    fn take_tid(&mut self) -> u64 {
        let tid = self.next_tid;
        // Zero is never used, so a zeroed descriptor never matches a command.
        self.next_tid = tid.checked_add(1).unwrap_or(1);
        tid
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl GuestTransport for VmbusTransport {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let message = frame(command).map_err(|e| TransportError::Failed(e.to_string()))?;
        let tid = self.take_tid();
        let (reply, answer) = std::sync::mpsc::channel();
        *self.in_flight() = Some(InFlight {
            tid,
            reply: reply.clone(),
        });
        if self
            .requests
            .unbounded_send(WorkerRequest::Send {
                tid,
                message,
                reply,
            })
            .is_err()
        {
            self.in_flight().take();
            return Err(TransportError::Closed);
        }
        let result = match answer.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(TransportError::Timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::Closed),
        };
        self.in_flight().take();
        if matches!(result, Err(TransportError::Timeout)) {
            tracing::warn!(tid, timeout = ?self.timeout, "TDISP command timed out");
            // Harmless if the worker is gone.
            let _ = self.requests.unbounded_send(WorkerRequest::Forget { tid });
        }
        result
    }
}

/// Cancels the command a [`VmbusTransport`] is waiting for.
#[derive(Debug, Clone)]
pub struct CancelHandle {
    in_flight: Arc<Mutex<Option<InFlight>>>,
    requests: mpsc::UnboundedSender<WorkerRequest>,
}

impl CancelHandle {
    /// Cancels the command in flight, if any: its call fails with
    /// [`TransportError::Cancelled`] and its answer, should it come, is dropped as stale.
    /// Returns whether a command was in flight. A cancel that races with the answer loses:
    /// if the answer reached the waiting call first, the call returns it (the host did run the
    /// command) and the cancel changes nothing.
    pub fn cancel(&self) -> bool {
        let taken = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match taken {
            Some(in_flight) => {
                let _ = in_flight.reply.send(Err(TransportError::Cancelled));
                let _ = self
                    .requests
                    .unbounded_send(WorkerRequest::Forget { tid: in_flight.tid });
                tracing::info!(tid = in_flight.tid, "TDISP command cancelled");
                true
            }
            None => false,
        }
    }
}

/// Where a completion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// To the command waiting for it.
    Delivered,
    /// Nowhere: its command timed out or was cancelled.
    Stale,
    /// Nowhere: no command had this transaction id.
    Unknown,
}

/// The transactions a worker waits for, and the ones it gave up on.
#[derive(Debug, Default)]
struct Pending {
    waiting: BTreeMap<u64, ReplySender>,
    forgotten: VecDeque<u64>,
}

impl Pending {
    /// Whether transaction `tid` should still be sent: not if it was cancelled before the
    /// worker saw it (its caller has already returned).
    fn wanted(&self, tid: u64) -> bool {
        !self.forgotten.contains(&tid)
    }

    fn insert(&mut self, tid: u64, reply: ReplySender) {
        self.waiting.insert(tid, reply);
    }

    fn forget(&mut self, tid: u64) {
        self.waiting.remove(&tid);
        if self.forgotten.len() == FORGOTTEN_KEPT {
            self.forgotten.pop_front();
        }
        self.forgotten.push_back(tid);
    }

    fn complete(&mut self, tid: u64, result: Result<Vec<u8>, TransportError>) -> Delivery {
        match self.waiting.remove(&tid) {
            Some(reply) => {
                // The transport may have given up a moment ago; then this is stale after all.
                match reply.send(result) {
                    Ok(()) => Delivery::Delivered,
                    Err(_) => Delivery::Stale,
                }
            }
            None if self.forgotten.contains(&tid) => Delivery::Stale,
            None => Delivery::Unknown,
        }
    }

    fn fail_all(&mut self, error: &TransportError) {
        for (_, reply) in std::mem::take(&mut self.waiting) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// Drives the channel of a [`VmbusTransport`]; see the module docs.
#[derive(Debug)]
pub struct VmbusTransportWorker {
    channel: ClientChannel,
    requests: mpsc::UnboundedReceiver<WorkerRequest>,
    pending: Pending,
    counters: Arc<Counters>,
}

/// What woke the worker.
enum Wake {
    Request(Option<WorkerRequest>),
    Packet(Result<IncomingPacket, ClientError>),
}

impl VmbusTransportWorker {
    /// Serves the transport until it is dropped or the channel fails; returns the channel (to
    /// close it) if it is still usable.
    pub async fn run(mut self) -> Option<ClientChannel> {
        loop {
            let wake = {
                let request = self.requests.next().fuse();
                let packet = self.channel.recv().fuse();
                futures::pin_mut!(request, packet);
                futures::select_biased! {
                    request = request => Wake::Request(request),
                    packet = packet => Wake::Packet(packet),
                }
            };
            match wake {
                Wake::Request(None) => return Some(self.channel),
                Wake::Request(Some(WorkerRequest::Send { tid, .. }))
                    if !self.pending.wanted(tid) =>
                {
                    tracing::debug!(tid, "TDISP command cancelled before it was sent");
                }
                Wake::Request(Some(WorkerRequest::Send {
                    tid,
                    message,
                    reply,
                })) => {
                    let payload = [message.as_slice()];
                    match self
                        .channel
                        .send_packet(&OutgoingPacket::in_band(tid, true, &payload))
                        .await
                    {
                        Ok(()) => self.pending.insert(tid, reply),
                        Err(error) => {
                            tracing::warn!(tid, %error, "TDISP command not sent");
                            let _ = reply.send(Err(TransportError::Failed(error.to_string())));
                        }
                    }
                }
                Wake::Request(Some(WorkerRequest::Forget { tid })) => self.pending.forget(tid),
                Wake::Packet(Ok(packet)) => self.on_packet(&packet),
                Wake::Packet(Err(error)) => {
                    tracing::error!(%error, "TDISP channel failed");
                    self.pending
                        .fail_all(&TransportError::Failed(error.to_string()));
                    return None;
                }
            }
        }
    }

    fn on_packet(&mut self, packet: &IncomingPacket) {
        let tid = packet.transaction_id;
        if packet.packet_type != PacketType::COMPLETION {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tid, packet_type = ?packet.packet_type, "unsolicited TDISP packet dropped");
            return;
        }
        let result = unframe(packet.data())
            .map(<[u8]>::to_vec)
            .map_err(|error| TransportError::Failed(format!("bad frame from host: {error}")));
        match self.pending.complete(tid, result) {
            Delivery::Delivered => {}
            delivery => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tid, ?delivery, "TDISP reply for no waiting command dropped");
            }
        }
    }
}

/// A TDISP channel the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdispOffer {
    /// The device id the offer's instance id carries.
    pub device_id: u64,
    /// The offer.
    pub offer: OfferInfo,
}

/// The TDISP channels `client` sees, one per assigned device.
pub fn tdisp_offers(client: &VmbusClient) -> Vec<TdispOffer> {
    client
        .offers()
        .into_iter()
        .filter(|o| o.key.interface_id.as_u128() == TDISP_VMBUS_INTERFACE_ID)
        .filter_map(|offer| {
            let device_id = device_id_of_instance(offer.key.instance_id.as_u128());
            if device_id.is_none() {
                tracing::warn!(instance = %offer.key.instance_id, "TDISP offer with a foreign instance id ignored");
            }
            Some(TdispOffer {
                device_id: device_id?,
                offer,
            })
        })
        .collect()
}

/// Opens `offer`'s channel ([`TDISP_RING_PAGES`] per ring) and returns the guest client for its
/// device, whose commands time out after `timeout`, plus the worker to run.
pub async fn open_tdisp_client(
    client: &VmbusClient,
    offer: &TdispOffer,
    timeout: Duration,
) -> Result<(TdispGuestClient<VmbusTransport>, VmbusTransportWorker), ClientError> {
    let channel = client.open(&offer.offer, TDISP_RING_PAGES).await?;
    let (transport, worker) = vmbus_transport(channel, timeout);
    Ok((TdispGuestClient::new(transport, offer.device_id), worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_hold_the_largest_response() {
        let ring = TDISP_RING_PAGES as usize * PAGE_SIZE;
        assert!(ring > MAX_MESSAGE_SIZE + FRAME_HEADER_SIZE + 24 + PAGE_SIZE / 2);
    }

    #[test]
    fn completions_reach_only_the_waiting_transaction() {
        let mut pending = Pending::default();
        let (reply, answer) = std::sync::mpsc::channel();
        pending.insert(3, reply);
        assert_eq!(pending.complete(4, Ok(vec![4])), Delivery::Unknown);
        assert_eq!(pending.complete(3, Ok(vec![3])), Delivery::Delivered);
        assert_eq!(answer.try_recv(), Ok(Ok(vec![3])));
        // A replay of the same completion finds nobody.
        assert_eq!(pending.complete(3, Ok(vec![3])), Delivery::Unknown);
    }

    #[test]
    fn a_forgotten_transaction_is_stale_and_its_answer_goes_nowhere() {
        let mut pending = Pending::default();
        let (reply, answer) = std::sync::mpsc::channel();
        pending.insert(9, reply);
        pending.forget(9);
        assert_eq!(pending.complete(9, Ok(vec![1])), Delivery::Stale);
        assert!(answer.try_recv().is_err());
    }

    #[test]
    fn a_command_cancelled_before_the_worker_saw_it_is_not_sent() {
        let mut pending = Pending::default();
        assert!(pending.wanted(5));
        pending.forget(5);
        assert!(!pending.wanted(5));
        assert!(pending.wanted(6));
    }

    #[test]
    fn forgotten_ids_are_bounded() {
        let mut pending = Pending::default();
        for tid in 0..(FORGOTTEN_KEPT as u64 + 10) {
            pending.forget(tid);
        }
        assert_eq!(pending.forgotten.len(), FORGOTTEN_KEPT);
        assert_eq!(pending.complete(0, Ok(vec![])), Delivery::Unknown);
    }

    #[test]
    fn a_reply_after_the_waiter_left_is_stale() {
        let mut pending = Pending::default();
        let (reply, answer) = std::sync::mpsc::channel();
        pending.insert(1, reply);
        drop(answer);
        assert_eq!(pending.complete(1, Ok(vec![])), Delivery::Stale);
    }
}
