//! The seam between a VMBus server and client: what a hypervisor's synthetic interrupt
//! controller gives them.
//!
//! A [`MessagePort`] carries control messages of at most [`MAX_MESSAGE_SIZE`] bytes to the
//! peer (one connection, [`crate::control::MESSAGE_CONNECTION_ID`]) and signals the peer's
//! events: the guest signals the host with a channel's connection id, the host signals the
//! guest with a channel's event flag. Each side registers what to run when the peer signals
//! one of its events.
//!
//! [`InProcessPort::pair`] joins a server and a client in one process. They exchange only
//! message bytes and event numbers through it; a real hypervisor port could replace either
//! end.

use crate::control::MAX_MESSAGE_SIZE;
use crate::control::MessageBuf;
use crate::interrupt::Interrupt;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;

/// A port operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The message is longer than one synthetic interrupt controller message.
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_SIZE}")]
    TooLong(usize),
    /// The peer end is gone.
    #[error("the peer is gone")]
    Disconnected,
}

/// One end of a VMBus message connection.
pub trait MessagePort: Send + Sync + fmt::Debug {
    /// Posts a message to the peer.
    fn post_message(&self, message: &[u8]) -> Result<(), PortError>;

    /// Ready with `true` when a message is queued (it stays queued until
    /// [`MessagePort::try_recv`]), with `false` once the peer is gone and nothing is queued.
    /// Any number of tasks may wait; all are woken by a new message.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<bool>;

    /// The next message from the peer if one is queued.
    fn try_recv(&self) -> Option<MessageBuf>;

    /// Signals the peer's event `id`.
    fn signal_event(&self, id: u32);

    /// Sets what runs when the peer signals event `id` (`None` removes it).
    fn set_event_handler(&self, id: u32, handler: Option<Interrupt>);
}

/// Waits until `port` has a message queued; `false` if the peer is gone.
pub async fn ready(port: &dyn MessagePort) -> bool {
    std::future::poll_fn(|cx| port.poll_ready(cx)).await
}

/// Waits for the next message on `port`; `None` once the peer is gone.
pub async fn recv(port: &dyn MessagePort) -> Option<MessageBuf> {
    loop {
        if let Some(m) = port.try_recv() {
            return Some(m);
        }
        if !ready(port).await {
            return port.try_recv();
        }
    }
}

#[derive(Debug, Default)]
struct Direction {
    queue: VecDeque<MessageBuf>,
    wakers: Vec<Waker>,
    /// Handlers of this direction's receiver, by event id.
    handlers: HashMap<u32, Interrupt>,
    /// The sending end was dropped.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    /// Index 0: to the host; index 1: to the guest.
    directions: [Mutex<Direction>; 2],
}

impl Shared {
    fn direction(&self, index: usize) -> MutexGuard<'_, Direction> {
        self.directions[index & 1]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which end of an in-process pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Host = 0,
    Guest = 1,
}

/// One end of an in-process message connection.
pub struct InProcessPort {
    shared: Arc<Shared>,
    end: End,
}

impl fmt::Debug for InProcessPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InProcessPort({:?})", self.end)
    }
}

impl InProcessPort {
    /// A connected pair: `(host end, guest end)`.
    pub fn pair() -> (Self, Self) {
        let shared = Arc::new(Shared::default());
        (
            Self {
                shared: shared.clone(),
                end: End::Host,
            },
            Self {
                shared,
                end: End::Guest,
            },
        )
    }

    fn inbound(&self) -> usize {
        self.end as usize
    }

    fn outbound(&self) -> usize {
        1 - self.end as usize
    }
}

impl Drop for InProcessPort {
    fn drop(&mut self) {
        let wakers = {
            let mut out = self.shared.direction(self.outbound());
            out.closed = true;
            std::mem::take(&mut out.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl MessagePort for InProcessPort {
    fn post_message(&self, message: &[u8]) -> Result<(), PortError> {
        let buf = MessageBuf::from_bytes(message).ok_or(PortError::TooLong(message.len()))?;
        let wakers = {
            let mut out = self.shared.direction(self.outbound());
            out.queue.push_back(buf);
            std::mem::take(&mut out.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut inbound = self.shared.direction(self.inbound());
        if !inbound.queue.is_empty() {
            return Poll::Ready(true);
        }
        if inbound.closed {
            return Poll::Ready(false);
        }
        if !inbound.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            inbound.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn try_recv(&self) -> Option<MessageBuf> {
        self.shared.direction(self.inbound()).queue.pop_front()
    }

    fn signal_event(&self, id: u32) {
        // Run the peer's handler outside the lock: it may signal back.
        let handler = self
            .shared
            .direction(self.outbound())
            .handlers
            .get(&id)
            .cloned();
        match handler {
            Some(h) => h.deliver(),
            None => tracing::trace!(id, end = ?self.end, "signal for an event nobody handles"),
        }
    }

    fn set_event_handler(&self, id: u32, handler: Option<Interrupt>) {
        let mut inbound = self.shared.direction(self.inbound());
        match handler {
            Some(h) => inbound.handlers.insert(id, h),
            None => inbound.handlers.remove(&id),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    #[test]
    fn messages_flow_both_ways_in_order() {
        let (host, guest) = InProcessPort::pair();
        guest.post_message(&[1; 8]).unwrap();
        guest.post_message(&[2; 16]).unwrap();
        host.post_message(&[3; 240]).unwrap();
        assert_eq!(block_on(recv(&host)).unwrap().as_bytes(), &[1; 8]);
        assert_eq!(host.try_recv().unwrap().as_bytes(), &[2; 16]);
        assert!(host.try_recv().is_none());
        assert_eq!(guest.try_recv().unwrap().as_bytes().len(), 240);
    }

    #[test]
    fn oversized_message_is_refused() {
        let (_host, guest) = InProcessPort::pair();
        assert_eq!(guest.post_message(&[0; 241]), Err(PortError::TooLong(241)));
    }

    #[test]
    fn dropped_peer_ends_the_stream_after_queued_messages() {
        let (host, guest) = InProcessPort::pair();
        guest.post_message(&[9; 8]).unwrap();
        drop(guest);
        assert!(block_on(recv(&host)).is_some());
        assert!(block_on(recv(&host)).is_none());
    }

    #[test]
    fn events_reach_the_handler_registered_on_the_other_end() {
        let (host, guest) = InProcessPort::pair();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        host.set_event_handler(
            0x2001,
            Some(Interrupt::from_fn(move || {
                h.fetch_add(1, Ordering::SeqCst);
            })),
        );
        guest.signal_event(0x2001);
        guest.signal_event(0x2002);
        // The host's own signals go to the guest's handlers, not its own.
        host.signal_event(0x2001);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        host.set_event_handler(0x2001, None);
        guest.signal_event(0x2001);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
