//! Event channels: inter-domain doorbells.
//!
//! One side allocates an unbound port naming the remote domain allowed to bind it; the remote
//! binds to it and both ends are connected. `notify` sets the peer's pending flag and wakes its
//! waiter; `wait` completes once the own pending flag is set (and clears it). Notifications do
//! not queue: like Xen, several notifies before a wait collapse into one, so a waiter always
//! re-reads shared state after waking. Closing either end wakes the other with an error.

use crate::domain::DomainId;
use futures::task::AtomicWaker;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Poll;
use thiserror::Error;

/// Most event channel ports one domain may hold.
pub const MAX_PORTS_PER_DOMAIN: usize = 1024;

/// An event channel port number, local to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

/// Errors binding or using event channels.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// No such port, or it is not an unbound port offered to the binder.
    #[error("domain {domain} has no unbound port {port:?} for this domain")]
    NoSuchPort {
        /// The domain named as remote.
        domain: DomainId,
        /// The port asked for.
        port: Port,
    },
    /// Notify on a port that has no peer yet.
    #[error("port is not bound")]
    NotBound,
    /// The channel (or its peer) was closed.
    #[error("event channel closed")]
    Closed,
    /// The domain has too many ports.
    #[error("domain {0} has too many event channel ports")]
    TooManyPorts(DomainId),
}

/// One side of a channel: its pending flag, whether it closed, and its waiter.
#[derive(Debug, Default)]
struct End {
    pending: AtomicBool,
    closed: AtomicBool,
    waker: AtomicWaker,
}

/// A channel: both sides in one place, so that a notify reaches the peer's side without
/// taking a reference to it (the ends used to hold weak references to each other, and every
/// notify and every wait upgraded one).
#[derive(Debug, Default)]
struct Link {
    /// Side 0 allocated the port unbound; side 1 bound it.
    ends: [End; 2],
    bound: AtomicBool,
}

impl Link {
    /// Bound once, but the other side has closed.
    fn peer_gone(&self, side: usize) -> bool {
        self.bound.load(Ordering::Acquire) && self.ends[1 - side].closed.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct PortEntry {
    link: Arc<Link>,
    /// For an unbound port: who may bind. Once bound: `None`.
    unbound_for: Option<DomainId>,
}

/// All ports of all domains (the host owns one).
#[derive(Debug, Default, Clone)]
pub(crate) struct EventTable {
    ports: Arc<Mutex<BTreeMap<DomainId, BTreeMap<u32, PortEntry>>>>,
}

impl EventTable {
    fn insert(
        ports: &mut BTreeMap<DomainId, BTreeMap<u32, PortEntry>>,
        domain: DomainId,
        entry: PortEntry,
    ) -> Result<Port, EventError> {
        let table = ports.entry(domain).or_default();
        if table.len() >= MAX_PORTS_PER_DOMAIN {
            return Err(EventError::TooManyPorts(domain));
        }
        // Port 0 is reserved in Xen; keep that so a zeroed store value is never a valid port.
        let port = (1u32..)
            .find(|p| !table.contains_key(p))
            .ok_or(EventError::TooManyPorts(domain))?;
        table.insert(port, entry);
        Ok(Port(port))
    }

    pub(crate) fn alloc_unbound(
        &self,
        domain: DomainId,
        remote: DomainId,
    ) -> Result<EventChannel, EventError> {
        let link = Arc::new(Link::default());
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let port = Self::insert(
            &mut ports,
            domain,
            PortEntry {
                link: link.clone(),
                unbound_for: Some(remote),
            },
        )?;
        Ok(EventChannel {
            domain,
            port,
            link,
            side: 0,
            table: self.clone(),
        })
    }

    pub(crate) fn bind_interdomain(
        &self,
        domain: DomainId,
        remote: DomainId,
        remote_port: Port,
    ) -> Result<EventChannel, EventError> {
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let no_port = EventError::NoSuchPort {
            domain: remote,
            port: remote_port,
        };
        let remote_entry = ports
            .get_mut(&remote)
            .and_then(|t| t.get_mut(&remote_port.0))
            .ok_or(no_port.clone())?;
        if remote_entry.unbound_for != Some(domain) {
            return Err(no_port);
        }
        let link = remote_entry.link.clone();
        let port = Self::insert(
            &mut ports,
            domain,
            PortEntry {
                link: link.clone(),
                unbound_for: None,
            },
        )?;
        if let Some(entry) = ports
            .get_mut(&remote)
            .and_then(|t| t.get_mut(&remote_port.0))
        {
            entry.unbound_for = None;
        }
        link.bound.store(true, Ordering::Release);
        Ok(EventChannel {
            domain,
            port,
            link,
            side: 1,
            table: self.clone(),
        })
    }

    fn remove(&self, domain: DomainId, port: Port) {
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = ports.get_mut(&domain) {
            t.remove(&port.0);
        }
    }
}

/// One end of an event channel, owned by a domain. Dropping it closes the channel.
#[derive(Debug)]
pub struct EventChannel {
    domain: DomainId,
    port: Port,
    link: Arc<Link>,
    /// This end's side of the link.
    side: usize,
    table: EventTable,
}

impl EventChannel {
    /// The local port number (what a frontend publishes in the store).
    pub fn port(&self) -> Port {
        self.port
    }

    /// Signals the peer.
    pub fn notify(&self) -> Result<(), EventError> {
        if self.own().closed.load(Ordering::Acquire) {
            return Err(EventError::Closed);
        }
        if !self.link.bound.load(Ordering::Acquire) {
            return Err(EventError::NotBound);
        }
        let peer = self.peer();
        if peer.closed.load(Ordering::Acquire) {
            return Err(EventError::Closed);
        }
        peer.pending.store(true, Ordering::Release);
        peer.waker.wake();
        Ok(())
    }

    fn own(&self) -> &End {
        &self.link.ends[self.side]
    }

    fn peer(&self) -> &End {
        &self.link.ends[1 - self.side]
    }

    /// Whether the peer has bound this channel and neither end has closed it: a frontend
    /// knows from it that the backend that says Connected is connected to this channel, not
    /// to one of an abandoned attempt.
    pub fn is_connected(&self) -> bool {
        self.link.bound.load(Ordering::Acquire)
            && !self
                .link
                .ends
                .iter()
                .any(|e| e.closed.load(Ordering::Acquire))
    }

    /// Takes a pending notification without waiting.
    pub fn try_take(&self) -> bool {
        self.own().pending.swap(false, Ordering::AcqRel)
    }

    /// Waits for a notification from the peer. A pending notification completes at once.
    /// Fails once either end is closed (pending notifications are still delivered first).
    pub async fn wait(&self) -> Result<(), EventError> {
        poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// [`EventChannel::wait`] as a poll: ready once a notification is pending (taking it) or
    /// the channel closed.
    pub(crate) fn poll_wait(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), EventError>> {
        let own = self.own();
        // The peer may notify from another thread as fast as it likes: without drawing on
        // tokio's cooperative budget, a waiter that finds a notification on every poll would
        // never yield, and it would starve every other task of its runtime thread. Asked
        // before the flag is taken, so a refused poll leaves the notification pending.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        // Checked before registering too: a waiter woken by a notify (the usual case) then
        // takes it without touching the waker.
        if own.pending.swap(false, Ordering::AcqRel) {
            coop.made_progress();
            return Poll::Ready(Ok(()));
        }
        own.waker.register(cx.waker());
        if own.pending.swap(false, Ordering::AcqRel) {
            coop.made_progress();
            return Poll::Ready(Ok(()));
        }
        if own.closed.load(Ordering::Acquire) || self.link.peer_gone(self.side) {
            return Poll::Ready(Err(EventError::Closed));
        }
        Poll::Pending
    }

    /// Closes the channel; the peer's waiter wakes with [`EventError::Closed`].
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        let own = self.own();
        own.closed.store(true, Ordering::Release);
        own.waker.wake();
        self.peer().waker.wake();
        self.table.remove(self.domain, self.port);
    }
}

/// A local one-shot-at-a-time flag with a waker (a cancel request inside one domain).
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn reset(&self) {
        self.raised.store(false, Ordering::Release);
    }

    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.raised.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Host;
    use futures::FutureExt;

    fn pair() -> (EventChannel, EventChannel) {
        let host = Host::new();
        let a = host.create_domain(DomainId(1), 1).unwrap();
        let b = host.create_domain(DomainId(2), 1).unwrap();
        let ea = a.alloc_unbound(b.id()).unwrap();
        let eb = b.bind_interdomain(a.id(), ea.port()).unwrap();
        (ea, eb)
    }

    #[test]
    fn notify_wakes_the_peer_only() {
        let (a, b) = pair();
        a.notify().unwrap();
        assert!(b.wait().now_or_never().unwrap().is_ok());
        assert!(a.wait().now_or_never().is_none());
        assert!(b.wait().now_or_never().is_none());
    }

    #[test]
    fn notifications_collapse() {
        let (a, b) = pair();
        a.notify().unwrap();
        a.notify().unwrap();
        assert!(b.try_take());
        assert!(!b.try_take());
    }

    #[test]
    fn unbound_port_cannot_notify() {
        let host = Host::new();
        let a = host.create_domain(DomainId(1), 1).unwrap();
        let ea = a.alloc_unbound(DomainId(2)).unwrap();
        assert_eq!(ea.notify().unwrap_err(), EventError::NotBound);
    }

    #[test]
    fn only_the_named_remote_can_bind_and_only_once() {
        let host = Host::new();
        let a = host.create_domain(DomainId(1), 1).unwrap();
        let b = host.create_domain(DomainId(2), 1).unwrap();
        let c = host.create_domain(DomainId(3), 1).unwrap();
        let ea = a.alloc_unbound(b.id()).unwrap();
        assert!(c.bind_interdomain(a.id(), ea.port()).is_err());
        let _eb = b.bind_interdomain(a.id(), ea.port()).unwrap();
        assert!(b.bind_interdomain(a.id(), ea.port()).is_err());
    }

    #[test]
    fn closing_wakes_the_peer_with_an_error() {
        let (a, b) = pair();
        a.close();
        assert_eq!(
            b.wait().now_or_never().unwrap().unwrap_err(),
            EventError::Closed
        );
        assert_eq!(b.notify().unwrap_err(), EventError::Closed);
    }

    #[test]
    fn a_notification_sent_before_the_close_is_still_delivered_once() {
        for binder_closes in [false, true] {
            let (a, b) = pair();
            let (closing, staying) = if binder_closes { (b, a) } else { (a, b) };
            closing.notify().unwrap();
            closing.close();
            assert!(staying.wait().now_or_never().unwrap().is_ok());
            assert_eq!(
                staying.wait().now_or_never().unwrap().unwrap_err(),
                EventError::Closed
            );
            assert_eq!(staying.notify().unwrap_err(), EventError::Closed);
        }
    }

    /// A peer that notifies between every two polls (as one on another thread can) would
    /// otherwise keep the waiter ready forever, and its runtime thread with it.
    #[tokio::test]
    async fn a_peer_notifying_without_pause_cannot_keep_the_waiter_from_yielding() {
        let (a, b) = pair();
        let mut taken = 0;
        let refused = loop {
            a.notify().unwrap();
            match b.wait().now_or_never() {
                Some(r) => r.unwrap(),
                None => break true,
            }
            taken += 1;
            if taken == 10_000 {
                break false;
            }
        };
        assert!(refused, "{taken} notifications taken without yielding");
        // The refused poll took nothing: after yielding, the notification is still there.
        tokio::task::yield_now().await;
        assert_eq!(b.wait().now_or_never(), Some(Ok(())));
    }

    #[tokio::test]
    async fn wait_completes_when_notified_from_another_task() {
        let (a, b) = pair();
        let waiter = tokio::spawn(async move { b.wait().await });
        tokio::task::yield_now().await;
        a.notify().unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_ok());
    }
}
