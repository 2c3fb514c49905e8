//! A connected device: the protocol it speaks and the loop that serves it, one request at a
//! time, until the frontend or the toolstack ends the connection.

use super::*;
use crate::pace::Pace;
use crate::wake_set::WakeSet;
use std::task::Context;
use std::task::Poll;

/// The protocol a device speaks, each in its own module; this module decides what to do.
pub(super) enum Transport {
    // Boxed: the ring snapshot makes it far larger than v2's view.
    V1(Box<v1::V1Transport>),
    V2(v2::V2Transport),
}

/// What a doorbell announced, as the protocol module read it from shared memory.
pub(super) enum Doorbell {
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
    pub(super) fn doorbell(&mut self, busy: bool) -> Doorbell {
        match self {
            Transport::V1(t) => t.doorbell(busy),
            Transport::V2(t) => t.doorbell(busy),
        }
    }

    pub(super) fn write_response(&mut self, response: &[u8]) -> Result<(), RingError> {
        match self {
            Transport::V1(t) => t.write_response(response),
            Transport::V2(t) => t.write_response(response),
        }
    }

    pub(super) fn answered(&mut self) {
        match self {
            Transport::V1(t) => t.answered(),
            Transport::V2(_) => {}
        }
    }
}

pub(super) struct Connection {
    pub(super) event: EventChannel,
    pub(super) transport: Transport,
    pub(super) version: ProtocolVersion,
    /// `feature-vtpm-control` negotiated.
    pub(super) control: bool,
    /// v1's locality, set by the frontend's SET_LOCALITY (v2's travels with each command).
    pub(super) locality: u8,
}

/// Why serving stopped.
pub(super) enum Stop {
    Gone,
    Closed,
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

/// The kind of request under way, which decides the answer should it expire.
enum Expiry {
    /// A TPM command: TPM_RC_FAILURE.
    Command,
    /// A control operation: swtpm's TPM_FAIL in the layout of its reply.
    Control(CtrlCmd),
}

impl Expiry {
    fn answer(&self) -> Vec<u8> {
        match self {
            Expiry::Command => error_response(TpmRc::FAILURE),
            Expiry::Control(cmd) => {
                ctrl::encode_reply(*cmd, &Err(EngineError::Failed("processing timeout".into())))
            }
        }
    }
}

/// What the connection waits on, in the order it looks at them (see [`next_action`]).
const RESPONSE: usize = 0;
const OWN: usize = 1;
const FRONT: usize = 2;
const EVENT: usize = 3;
const EXPIRY: usize = 4;
const SOURCES: usize = 5;

/// The next thing to act on: the engine's response first, then the toolstack's and the
/// frontend's store changes, then a doorbell, then the processing timeout. Each source is
/// polled only when its own waker fired (or the loop marked it), not on every wakeup.
fn next_action(
    wake: &WakeSet,
    inflight: &mut Option<BoxFuture<'_, Vec<u8>>>,
    conn: &Connection,
    own: &mut Watch,
    front: &mut Watch,
    watchdog: &mut deadline::Watchdog,
    cx: &mut Context<'_>,
) -> Poll<Action> {
    let woken = wake.take(cx);
    let ready = |source: usize, action: Action| {
        wake.defer_from(woken, source);
        Poll::Ready(action)
    };
    if woken.has(RESPONSE)
        && let Some(f) = inflight.as_mut()
        && let Poll::Ready(r) = f.as_mut().poll(&mut wake.context(RESPONSE))
    {
        return ready(RESPONSE, Action::Response(r));
    }
    if woken.has(OWN)
        && let Poll::Ready(o) = own.poll_next_unpin(&mut wake.context(OWN))
    {
        return ready(OWN, Action::OwnChanged(o.is_some()));
    }
    if woken.has(FRONT)
        && let Poll::Ready(f) = front.poll_next_unpin(&mut wake.context(FRONT))
    {
        return ready(FRONT, Action::FrontChanged(f.is_some()));
    }
    if woken.has(EVENT)
        && let Poll::Ready(e) = conn.event.poll_wait(&mut wake.context(EVENT))
    {
        return ready(EVENT, Action::Event(e));
    }
    if woken.has(EXPIRY)
        && let Poll::Ready(()) = watchdog.poll_expired(&mut wake.context(EXPIRY))
    {
        return ready(EXPIRY, Action::Expired);
    }
    Poll::Pending
}

pub(super) async fn serve(
    shared: &Shared,
    dir: &str,
    config: &DeviceConfig,
    conn: &mut Connection,
    own: &mut Watch,
    front: &mut Watch,
) -> Stop {
    let mut inflight: Option<BoxFuture<'_, Vec<u8>>> = None;
    // One timer for the connection, not one per command (see `deadline::Watchdog`).
    let mut watchdog = deadline::Watchdog::new(shared.config.processing_timeout);
    let mut cancel_sent = false;
    // What the request under way is, for the answer should it expire (built only then: a
    // command's round trip allocates nothing for an answer it almost never needs).
    let mut under_way = Expiry::Command;
    // v2: a request may have been submitted before we bound the channel, and the state byte
    // says so. v1 has no such state: only a notification announces a request.
    let mut action = match conn.transport {
        Transport::V2(_) => Action::Event(Ok(())),
        Transport::V1(_) => Action::Idle,
    };
    let wake = WakeSet::new(SOURCES);
    let mut pace = Pace::default();
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
                respond(shared, conn, &under_way.answer());
            }
            Action::Event(Err(_)) => break Stop::Closed,
            Action::Event(Ok(())) => {
                if let Some(req) =
                    on_event(shared, config, conn, inflight.is_some(), &mut cancel_sent)
                {
                    BackendStats::bump(&shared.stats.requests);
                    let client = &shared.client;
                    let (future, kind) = match req {
                        Forward::Command { command, locality } => (
                            forward(client, config.instance, command, locality),
                            Expiry::Command,
                        ),
                        Forward::Control { cmd, op } => (
                            forward_control(client, config.instance, cmd, op),
                            Expiry::Control(cmd),
                        ),
                    };
                    inflight = Some(future);
                    under_way = kind;
                    watchdog.start();
                    wake.mark(RESPONSE);
                    wake.mark(EXPIRY);
                }
            }
            Action::OwnChanged(alive) => {
                if !alive || !device::is_current(&shared.store, dir, config) {
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
        action = std::future::poll_fn(|cx| {
            pace.poll(cx, |cx| {
                next_action(&wake, &mut inflight, conn, own, front, &mut watchdog, cx)
            })
        })
        .await;
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

#[cfg(test)]
mod tests {
    use crate::backend::BackendConfig;
    use crate::domain::DomainId;
    use crate::event::EventChannel;
    use crate::pace::ACTIONS_PER_POLL;
    use crate::page::OwnPage;
    use crate::page::PageIo;
    use crate::protocol::ProtocolVersion;
    use crate::protocol::v2::STATE_OFFSET;
    use crate::protocol::v2::V2State;
    use crate::testbed::BACKEND_DOMAIN;
    use crate::testbed::RawFrontend;
    use crate::testbed::Testbed;
    use crate::xenbus::XenbusState;
    use crate::xenbus::backend_dir;
    use crate::xenbus::read_state;
    use futures::task::ArcWake;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::Weak;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::task::Context;

    /// A guest whose vCPU answers every notification from the backend at once with a new
    /// doorbell, played deterministically: its event channel waker, which the backend's
    /// notify runs, writes CANCEL (with nothing under way, the backend acknowledges IDLE and
    /// notifies again) and rings.
    struct Echo {
        event: Weak<EventChannel>,
        page: OwnPage,
        rings: AtomicUsize,
    }

    /// Far more than a fair share: a backend still running at this count never yielded.
    const GIVE_UP: usize = 10_000;

    impl Echo {
        fn arm(me: &Arc<Self>) {
            let Some(event) = me.event.upgrade() else {
                return;
            };
            let waker = futures::task::waker(me.clone());
            let mut cx = Context::from_waker(&waker);
            while std::pin::pin!(event.wait()).poll(&mut cx).is_ready() {}
        }
    }

    impl ArcWake for Echo {
        fn wake_by_ref(me: &Arc<Self>) {
            if me.rings.fetch_add(1, Ordering::SeqCst) >= GIVE_UP {
                return;
            }
            let Some(event) = me.event.upgrade() else {
                return;
            };
            me.page.store_u8(STATE_OFFSET, V2State::CANCEL.0).unwrap();
            event.notify().unwrap();
            Echo::arm(me);
        }
    }

    #[test]
    fn a_guest_ringing_back_at_once_cannot_hold_the_backend_in_one_poll() {
        let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let raw = RawFrontend::publish(&guest, ProtocolVersion::V2).unwrap();
        let mut run = Box::pin(run);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        for _ in 0..100 {
            assert!(run.as_mut().poll(&mut cx).is_pending());
            if read_state(&guest.store(), &bdir) == XenbusState::CONNECTED {
                break;
            }
        }
        assert_eq!(read_state(&guest.store(), &bdir), XenbusState::CONNECTED);

        let event = Arc::new(raw.event);
        let echo = Arc::new(Echo {
            event: Arc::downgrade(&event),
            page: raw.pages[0].clone(),
            rings: AtomicUsize::new(0),
        });
        Echo::arm(&echo);
        raw.pages[0]
            .store_u8(STATE_OFFSET, V2State::CANCEL.0)
            .unwrap();
        event.notify().unwrap();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let rings = echo.rings.load(Ordering::SeqCst);
        assert!(
            rings <= ACTIONS_PER_POLL as usize,
            "one poll of the backend took {rings} doorbells"
        );
        // Yielding lost nothing: the next poll takes the next share.
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert!(echo.rings.load(Ordering::SeqCst) > rings);
    }
}
