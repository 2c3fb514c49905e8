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
use vtpm_ring::engine::SwtpmEngine;
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

/// A backend serving two guests on swtpm: `busy` (domain 2, instance 1) and `quiet`
/// (domain 3, instance 2), both devices created; neither connected yet.
struct Bed {
    _dir: tempfile::TempDir,
    engines: [Arc<SwtpmEngine>; 2],
    _host: Host,
    busy: Domain,
    quiet: Domain,
}

impl Bed {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engines = [swtpm(dir.path(), 1).await, swtpm(dir.path(), 2).await];
        let host = Host::new();
        serve(
            &host,
            vec![(1, engines[0].clone()), (2, engines[1].clone())],
            BackendConfig::default(),
        );
        let busy = host.create_domain(DomainId(2), 16).unwrap();
        let quiet = host.create_domain(DomainId(3), 16).unwrap();
        let toolstack = host.toolstack();
        create_device(&toolstack, &device(busy.id(), 1)).unwrap();
        create_device(&toolstack, &device(quiet.id(), 2)).unwrap();
        Self {
            _dir: dir,
            engines,
            _host: host,
            busy,
            quiet,
        }
    }

    async fn shutdown(self) {
        for engine in &self.engines {
            engine.save_and_shutdown().await.unwrap();
        }
    }
}

/// Runs `act` without pause on a thread of its own; once it has run 1000 times (so the
/// backend has plenty queued before the first command), `quiet` must still be served.
async fn while_flooding(act: impl Fn(u64) + Send + 'static, quiet: &Frontend) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                act(count.fetch_add(1, Ordering::Relaxed));
            }
        })
    };
    while count.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    for _ in 0..20 {
        let r = within(quiet.transmit(&GET_RANDOM_8)).await.unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_ringing_its_doorbell_without_pause_starves_no_other_guest() {
    let bed = Bed::new().await;
    let (_page, event) = connect_raw(&bed.busy).await;
    let quiet = within(Frontend::connect(&bed.quiet, FrontendConfig::default()))
        .await
        .unwrap();
    while_flooding(move |_| event.notify().unwrap(), &quiet).await;
    within(quiet.close()).await.unwrap();
    bed.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_rewriting_its_directory_without_pause_starves_no_other_guest() {
    let bed = Bed::new().await;
    let busy = within(Frontend::connect(&bed.busy, FrontendConfig::default()))
        .await
        .unwrap();
    let quiet = within(Frontend::connect(&bed.quiet, FrontendConfig::default()))
        .await
        .unwrap();
    let store = bed.busy.store();
    let node = format!("{}/noise", frontend_dir(bed.busy.id(), 0));
    while_flooding(move |n| store.write(&node, &n.to_string()).unwrap(), &quiet).await;
    // The busy guest's own device keeps working too.
    let r = within(busy.transmit(&GET_RANDOM_8)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    within(quiet.close()).await.unwrap();
    within(busy.close()).await.unwrap();
    bed.shutdown().await;
}
