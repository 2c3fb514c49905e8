//! Signals between the two ends of a channel.
//!
//! [`Interrupt`] replaces `vmcore::interrupt::Interrupt`: a cloneable callback that "rings the
//! doorbell". [`Event`] is the receiving end a task can await; `Interrupt::from_event` connects
//! the two.

use futures::task::AtomicWaker;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Poll;

/// A cloneable signal to the other side of a channel.
#[derive(Clone)]
pub struct Interrupt {
    func: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Interrupt")
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Self::null()
    }
}

impl Interrupt {
    /// An interrupt that runs `func` when delivered.
    pub fn from_fn(func: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            func: Arc::new(func),
        }
    }

    /// An interrupt that sets `event`.
    pub fn from_event(event: Event) -> Self {
        Self::from_fn(move || event.signal())
    }

    /// An interrupt that does nothing.
    pub fn null() -> Self {
        Self::from_fn(|| {})
    }

    /// Delivers the interrupt.
    pub fn deliver(&self) {
        (self.func)();
    }
}

#[derive(Debug, Default)]
struct EventInner {
    set: AtomicBool,
    waker: AtomicWaker,
}

/// An auto-reset event: [`Event::signal`] sets it, [`Event::wait`] waits for and clears it.
///
/// Meant for one waiting task at a time (the channel's reader or writer).
#[derive(Debug, Clone, Default)]
pub struct Event {
    inner: Arc<EventInner>,
}

impl Event {
    /// A new, unset event.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event and wakes the waiter.
    pub fn signal(&self) {
        self.inner.set.store(true, Ordering::SeqCst);
        self.inner.waker.wake();
    }

    /// Clears the event if set; returns whether it was set.
    pub fn try_wait(&self) -> bool {
        self.inner.set.swap(false, Ordering::SeqCst)
    }

    /// Waits until the event is set, then clears it.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.try_wait() {
                return Poll::Ready(());
            }
            self.inner.waker.register(cx.waker());
            if self.try_wait() {
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
    use futures::executor::block_on;

    #[test]
    fn interrupt_sets_event_once() {
        let event = Event::new();
        let irq = Interrupt::from_event(event.clone());
        assert!(!event.try_wait());
        irq.deliver();
        irq.deliver();
        block_on(event.wait());
        assert!(!event.try_wait());
    }

    #[test]
    fn wait_wakes_on_signal_from_another_thread() {
        let event = Event::new();
        let e2 = event.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            e2.signal();
        });
        block_on(event.wait());
        t.join().unwrap();
    }
}
