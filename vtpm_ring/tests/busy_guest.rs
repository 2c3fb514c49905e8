//! A guest that keeps its side busy from another thread (ringing its doorbell without pause,
//! or rewriting a node of its frontend directory, which fires the backend's watch on every
//! write) costs the backend work, but must not starve the other guests served by the same
//! backend task, nor the manager on the same (single) runtime thread.
//!
//! The bound itself is proved deterministically beside the code: the backend's loops take at
//! most a share of actions per poll of their task, whatever the executor (`pace.rs`; a guest
//! that rings back from inside the backend's notify, in `backend/connection.rs`), and the
//! event channels and watch streams draw on tokio's cooperative budget too (`event.rs`,
//! `store/watch.rs`).
//! A thread here cannot be made to keep ahead of the backend on every single poll (a poll that
//! finds nothing yields anyway), so these tests check the outcome a user sees: the other
//! guest's commands complete while the flood goes on. They need `swtpm` (`cargo xtask deps`).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use support::device;
use support::serve;
use support::swtpm;
use support::within;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::event::EventChannel;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::grant::GrantAccess;
use vtpm_ring::page::OwnPage;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::create_device;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::read_state;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

/// Connects device 0 of `guest` by hand (v2, one shared page, no extra pages) and returns
/// its page and event channel: a frontend that can ring its doorbell as it likes.
async fn connect_raw(guest: &Domain) -> (OwnPage, EventChannel) {
    let page = guest.alloc_page().unwrap();
    let grant = guest
        .grant_access(support::BACKEND, page.gfn(), GrantAccess::ReadWrite)
        .unwrap();
    let event = guest.alloc_unbound(support::BACKEND).unwrap();
    let store = guest.store();
    let dir = frontend_dir(guest.id(), 0);
    let bdir = backend_dir(support::BACKEND, guest.id(), 0);
    within(async {
        while read_state(&store, &bdir) != XenbusState::INIT_WAIT {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for (key, value) in [
        ("ring-ref", grant.0.to_string()),
        ("event-channel", event.port().0.to_string()),
        ("feature-protocol-v2", "1".to_owned()),
        ("state", "3".to_owned()),
    ] {
        store.write(&format!("{dir}/{key}"), &value).unwrap();
    }
    within(async {
        while read_state(&store, &bdir) != XenbusState::CONNECTED {
            tokio::task::yield_now().await;
        }
    })
    .await;
    (page, event)
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_ringing_its_doorbell_without_pause_starves_no_other_guest() {
    let dir = tempfile::tempdir().unwrap();
    let busy_engine = swtpm(dir.path(), 1).await;
    let quiet_engine = swtpm(dir.path(), 2).await;
    let host = Host::new();
    serve(
        &host,
        vec![(1, busy_engine.clone()), (2, quiet_engine.clone())],
        BackendConfig::default(),
    );
    let busy = host.create_domain(DomainId(2), 16).unwrap();
    let quiet = host.create_domain(DomainId(3), 16).unwrap();
    let toolstack = host.toolstack();
    create_device(&toolstack, &device(busy.id(), 1)).unwrap();
    create_device(&toolstack, &device(quiet.id(), 2)).unwrap();
    let (_page, event) = connect_raw(&busy).await;
    let quiet_front = within(Frontend::connect(&quiet, FrontendConfig::default()))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let rings = Arc::new(AtomicU64::new(0));
    let ringer = {
        let (stop, rings) = (stop.clone(), rings.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rings.fetch_add(1, Ordering::Relaxed);
                event.notify().unwrap();
            }
        })
    };
    while rings.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    for _ in 0..20 {
        let r = within(quiet_front.transmit(&GET_RANDOM_8)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    }
    stop.store(true, Ordering::Relaxed);
    ringer.join().unwrap();

    within(quiet_front.close()).await.unwrap();
    busy_engine.save_and_shutdown().await.unwrap();
    quiet_engine.save_and_shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_rewriting_its_directory_without_pause_starves_no_other_guest() {
    let dir = tempfile::tempdir().unwrap();
    let busy_engine = swtpm(dir.path(), 1).await;
    let quiet_engine = swtpm(dir.path(), 2).await;
    let host = Host::new();
    serve(
        &host,
        vec![(1, busy_engine.clone()), (2, quiet_engine.clone())],
        BackendConfig::default(),
    );
    let busy = host.create_domain(DomainId(2), 16).unwrap();
    let quiet = host.create_domain(DomainId(3), 16).unwrap();
    let toolstack = host.toolstack();
    create_device(&toolstack, &device(busy.id(), 1)).unwrap();
    create_device(&toolstack, &device(quiet.id(), 2)).unwrap();
    let busy_front = within(Frontend::connect(&busy, FrontendConfig::default()))
        .await
        .unwrap();
    let quiet_front = within(Frontend::connect(&quiet, FrontendConfig::default()))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let store = busy.store();
        let node = format!("{}/noise", frontend_dir(busy.id(), 0));
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = writes.fetch_add(1, Ordering::Relaxed);
                store.write(&node, &n.to_string()).unwrap();
            }
        })
    };
    // Let the flood get going, so the backend has a full watch queue before the first command.
    while writes.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    for _ in 0..20 {
        let r = within(quiet_front.transmit(&GET_RANDOM_8)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    }
    // The busy guest's own device keeps working too.
    let r = within(busy_front.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    within(quiet_front.close()).await.unwrap();
    within(busy_front.close()).await.unwrap();
    busy_engine.save_and_shutdown().await.unwrap();
    quiet_engine.save_and_shutdown().await.unwrap();
}
