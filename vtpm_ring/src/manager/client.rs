//! The backend's side of the stream: sends requests for any instance and matches replies.
//!
//! Each request gets a tag no other outstanding request has; the [`MuxRouter`] hands a reply
//! only to the request whose tag, instance and kind it carries. A caller that stops waiting
//! (its device disconnected, its timeout expired) drops its slot, so the late reply finds no
//! one and is dropped: it can never answer a later request, of this guest or the next.

use super::StreamEnd;
use super::codec::Frame;
use super::codec::FrameError;
use super::codec::MAX_INSTANCE;
use super::codec::decode_control_reply;
use super::codec::encode_control;
use super::router::MuxRouter;
use super::stream::FrameTx;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::task::Poll;
use std::task::Waker;

/// Most requests one instance may have outstanding.
const MAX_OUTSTANDING: usize = 8;

/// A request waiting for its reply. The reply is left here, in the table, for the waiting
/// call to take: no channel is made per request.
#[derive(Debug)]
pub(super) struct Slot {
    /// Distinguishes this slot from a later one that reuses the tag.
    id: u64,
    pub(super) instance: u32,
    pub(super) control: bool,
    /// What the router delivered: the reply, or `None` when the request failed (a reply
    /// that does not match it, or the end of the stream).
    pub(super) outcome: Option<Option<Vec<u8>>>,
    /// The waiting call's waker.
    pub(super) waker: Option<Waker>,
}

impl Slot {
    /// Settles the request unless it already is (the first outcome stands); returns the
    /// waker to wake once the table's lock is released.
    pub(super) fn settle(&mut self, outcome: Option<Vec<u8>>) -> Option<Waker> {
        if self.outcome.is_some() {
            return None;
        }
        self.outcome = Some(outcome);
        self.waker.take()
    }
}

/// The outstanding requests, by tag.
#[derive(Debug, Default)]
pub(super) struct Table {
    next_tag: u32,
    next_id: u64,
    /// A B-tree rather than a hash map: a few entries, looked up several times per
    /// request, where hashing each tag would cost more than the search.
    pub(super) slots: BTreeMap<u32, Slot>,
    /// The router has ended: no reply will come.
    pub(super) closed: bool,
}

impl Table {
    /// A tag no outstanding request uses (there are at most a few per instance).
    fn fresh_tag(&mut self) -> u32 {
        loop {
            let tag = self.next_tag;
            self.next_tag = self.next_tag.wrapping_add(1);
            if !self.slots.contains_key(&tag) {
                return tag;
            }
        }
    }
}

pub(super) type Pending = Arc<Mutex<Table>>;

pub(super) fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, Table> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backend's side of the stream: sends requests for any instance and matches replies.
#[derive(Clone, Debug)]
pub struct MuxClient {
    tx: FrameTx,
    pending: Pending,
}

/// Splits the backend's stream end into a client and its router.
pub fn mux(end: StreamEnd) -> (MuxClient, MuxRouter) {
    let pending = Pending::default();
    (
        MuxClient {
            tx: end.tx,
            pending: pending.clone(),
        },
        MuxRouter::new(end.rx, pending),
    )
}

/// Removes its slot when the caller stops waiting, so a late reply is dropped.
struct SlotGuard<'a> {
    pending: &'a Pending,
    tag: u32,
    id: u64,
}

impl SlotGuard<'_> {
    /// Waits for the router to settle the slot.
    async fn reply(&self) -> Result<Vec<u8>, FrameError> {
        std::future::poll_fn(|cx| {
            let mut table = lock(self.pending);
            let closed = table.closed;
            let Some(slot) = table.slots.get_mut(&self.tag).filter(|s| s.id == self.id) else {
                return Poll::Ready(Err(FrameError::Closed));
            };
            match &mut slot.outcome {
                // Taken, but the slot stays settled until the guard removes it: another
                // frame with this tag meanwhile finds it settled and is dropped.
                Some(outcome) => Poll::Ready(outcome.take().ok_or(FrameError::Closed)),
                None if closed => Poll::Ready(Err(FrameError::Closed)),
                None => {
                    match &mut slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        w => *w = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut table = lock(self.pending);
        if table.slots.get(&self.tag).is_some_and(|s| s.id == self.id) {
            table.slots.remove(&self.tag);
        }
    }
}

impl MuxClient {
    /// Sends the frame `build` makes from a fresh tag; registers a slot unless `posted`.
    fn send(
        &self,
        instance: u32,
        control: bool,
        posted: bool,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Option<SlotGuard<'_>>, FrameError> {
        if instance > MAX_INSTANCE {
            return Err(FrameError::BadInstance(instance));
        }
        let mut table = lock(&self.pending);
        if table.closed {
            return Err(FrameError::Closed);
        }
        let outstanding = table
            .slots
            .values()
            .filter(|s| s.instance == instance)
            .count();
        if outstanding >= MAX_OUTSTANDING {
            return Err(FrameError::Busy(instance));
        }
        let tag = table.fresh_tag();
        self.tx.send(build(tag)).map_err(|_| FrameError::Closed)?;
        if posted {
            return Ok(None);
        }
        let id = table.next_id;
        table.next_id = table.next_id.wrapping_add(1);
        table.slots.insert(
            tag,
            Slot {
                id,
                instance,
                control,
                outcome: None,
                waker: None,
            },
        );
        Ok(Some(SlotGuard {
            pending: &self.pending,
            tag,
            id,
        }))
    }

    async fn request(
        &self,
        instance: u32,
        control: bool,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Vec<u8>, FrameError> {
        let guard = self
            .send(instance, control, false, build)?
            .ok_or(FrameError::Closed)?;
        guard.reply().await
    }

    /// Sends a TPM command for `instance` at `locality` and waits for its response.
    pub async fn command(
        &self,
        instance: u32,
        command: Vec<u8>,
        locality: u8,
    ) -> Result<Vec<u8>, FrameError> {
        self.request(instance, false, |tag| {
            Frame::Command {
                instance,
                tag,
                locality,
                command,
            }
            .encode()
        })
        .await
    }

    /// Sends a control operation for `instance` without waiting for (or routing) its reply:
    /// for a cancel, whose effect shows in the command's own response.
    pub fn post_control(&self, instance: u32, op: ControlOp) -> Result<(), FrameError> {
        self.send(instance, true, true, |tag| {
            Frame::Control {
                instance,
                tag,
                payload: encode_control(&op),
            }
            .encode()
        })
        .map(drop)
    }

    /// Sends a control operation for `instance` and waits for its reply.
    pub async fn control(&self, instance: u32, op: ControlOp) -> Result<ControlReply, FrameError> {
        let payload = self
            .request(instance, true, |tag| {
                Frame::Control {
                    instance,
                    tag,
                    payload: encode_control(&op),
                }
                .encode()
            })
            .await?;
        decode_control_reply(&op, &payload)
    }

    /// Requests still waiting for a reply (all instances).
    pub fn outstanding(&self) -> usize {
        lock(&self.pending).slots.len()
    }
}
