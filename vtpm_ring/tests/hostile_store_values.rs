//! Hostile values a guest writes in its own device directory: the backend refuses the
//! connection clearly (Closed, with `error`), whatever the value's length or content.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use futures::StreamExt;
use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::store::StoreHandle;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::read_state;

/// Waits (at most `limit`) for `dir`'s state to be `want`; returns the state last seen.
async fn wait_state(
    store: &StoreHandle,
    dir: &str,
    want: XenbusState,
    limit: Duration,
) -> XenbusState {
    let mut watch = store.watch(dir).unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let st = read_state(store, dir);
        if st == want {
            return st;
        }
        if tokio::time::timeout_at(deadline, watch.next())
            .await
            .is_err()
        {
            return st;
        }
    }
}

/// A guest publishes a `ring-ref` that is no number. Returns the backend's state and error.
async fn publish_garbage_ring_ref(ring_ref: &str) -> (XenbusState, Option<String>) {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let run = tokio::spawn(run);
    let store = guest.store();
    let dir = frontend_dir(guest.id(), 0);
    let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
    let limit = Duration::from_secs(3);
    assert_eq!(
        wait_state(&store, &bdir, XenbusState::INIT_WAIT, limit).await,
        XenbusState::INIT_WAIT
    );
    let event = guest.alloc_unbound(BACKEND_DOMAIN).unwrap();
    store.write(&format!("{dir}/ring-ref"), ring_ref).unwrap();
    store
        .write(&format!("{dir}/event-channel"), &event.port().0.to_string())
        .unwrap();
    store.write(&format!("{dir}/state"), "3").unwrap();
    let st = wait_state(&store, &bdir, XenbusState::CLOSED, limit).await;
    let error = store.try_read(&format!("{bdir}/error")).unwrap();
    run.abort();
    (st, error)
}

/// The short form: refused at once, with the reason.
#[tokio::test(flavor = "current_thread")]
async fn a_short_garbage_ring_ref_is_refused_with_a_reason() {
    let (st, error) = publish_garbage_ring_ref("x").await;
    assert_eq!(st, XenbusState::CLOSED);
    assert!(error.is_some());
}

/// The long form (4096 bytes, the store's value limit): the refusal's `error` text quotes
/// only the start of the value, so it fits in the store. (Quoted whole, it did not: the
/// write failed, the device task failed before Closed and was served again, forever, with
/// the backend in InitWait and the frontend left to its own timeout.)
#[tokio::test(flavor = "current_thread")]
async fn a_long_garbage_ring_ref_is_refused_with_a_reason() {
    let (st, error) = publish_garbage_ring_ref(&"x".repeat(4096)).await;
    assert_eq!(
        (st, error.is_some()),
        (XenbusState::CLOSED, true),
        "the backend never refused the connection"
    );
}

/// The same with 900 control bytes: escaped, each takes five characters (`\u{1}`), so a
/// value under a quarter of the store's limit made an unwritable error text when quoted
/// whole.
#[tokio::test(flavor = "current_thread")]
async fn a_short_value_of_control_bytes_is_refused_with_a_reason() {
    let (st, error) = publish_garbage_ring_ref(&"\u{1}".repeat(900)).await;
    assert_eq!(
        (st, error.is_some()),
        (XenbusState::CLOSED, true),
        "the backend never refused the connection"
    );
}
