//! The frontend facing a backend that does not play by the rules, or whose answers cross the
//! frontend's own moves: a stray doorbell on v1, a cancel that lands after the answer on v2.
//! (Found by review; each test failed before its fix.)

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::future::Future;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::event::EventChannel;
use vtpm_ring::event::Port;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::grant::GrantAccess;
use vtpm_ring::grant::GrantRef;
use vtpm_ring::grant::MappedPage;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::protocol::v1;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;
use vtpm_ring::tpm_command::pcr_digest_sha256;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::VtpmDevice;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::create_device;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::keys;
use vtpm_ring::xenbus::read_state;
use vtpm_ring::xenbus::write_state;

const GUEST: DomainId = DomainId(2);

/// Fails the test instead of hanging.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: bounded wait expired"))
}

fn short_timeout(protocols: Protocols) -> FrontendConfig {
    FrontendConfig {
        protocols,
        timeout: Some(Duration::from_secs(2)),
        ..FrontendConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A backend domain played by hand (no `Backend`): what a hostile backend can do.
// ---------------------------------------------------------------------------------------------

struct HandBackend {
    _host: Host,
    backend: Domain,
    guest: Domain,
    bdir: String,
    fdir: String,
}

impl HandBackend {
    /// A host with a backend domain that offers v2 when `v2` and a guest with device 0.
    fn new(v2: bool) -> Self {
        let host = Host::new();
        let backend = host.create_domain(BACKEND_DOMAIN, 4).unwrap();
        let guest = host.create_domain(GUEST, 32).unwrap();
        let dev = VtpmDevice {
            backend: BACKEND_DOMAIN,
            frontend: GUEST,
            handle: 0,
            instance: 1,
            uuid: uuid::Uuid::nil(),
        };
        create_device(&host.toolstack(), &dev).unwrap();
        let bdir = backend_dir(BACKEND_DOMAIN, GUEST, 0);
        let fdir = frontend_dir(GUEST, 0);
        let store = backend.store();
        if v2 {
            store
                .write(&format!("{bdir}/{}", keys::FEATURE_V2), "1")
                .unwrap();
        }
        write_state(&store, &bdir, XenbusState::INIT_WAIT).unwrap();
        Self {
            _host: host,
            backend,
            guest,
            bdir,
            fdir,
        }
    }

    /// Waits for the frontend to publish, maps its ring page, binds its channel, Connected.
    async fn accept(&self) -> (MappedPage, EventChannel) {
        let store = self.backend.store();
        loop {
            if read_state(&store, &self.fdir) == XenbusState::INITIALISED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ring_ref: u32 = store
            .read_num(&format!("{}/{}", self.fdir, keys::RING_REF))
            .unwrap();
        let port: u32 = store
            .read_num(&format!("{}/{}", self.fdir, keys::EVENT_CHANNEL))
            .unwrap();
        let page = self
            .backend
            .map_grant(GUEST, GrantRef(ring_ref), GrantAccess::ReadWrite)
            .unwrap();
        let event = self.backend.bind_interdomain(GUEST, Port(port)).unwrap();
        write_state(&store, &self.bdir, XenbusState::CONNECTED).unwrap();
        (page, event)
    }

    /// v1: maps the data page a ring entry names.
    fn map_data(&self, gref: u32) -> MappedPage {
        self.backend
            .map_grant(GUEST, GrantRef(gref), GrantAccess::ReadWrite)
            .unwrap()
    }

    /// v1: waits for a doorbell, reads the request, answers `response` like the backend does.
    async fn serve_v1_once(
        &self,
        ring: &MappedPage,
        event: &EventChannel,
        response: &[u8],
    ) -> Vec<u8> {
        event.wait().await.unwrap();
        let entries = v1::read_ring(ring).unwrap();
        let len = v1::packet_len(&entries).unwrap();
        let request = v1::read_packet(&entries, len, |r| Ok(self.map_data(r))).unwrap();
        v1::write_packet(ring, &entries, response, |r| Ok(self.map_data(r))).unwrap();
        event.notify().unwrap();
        request
    }
}

/// A well-formed 20-byte TPM2_GetRandom(8) response with recognisable bytes.
fn random_response(fill: u8) -> Vec<u8> {
    let mut r = vec![0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0, 0, 8];
    r.extend_from_slice(&[fill; 8]);
    r
}

/// A v1 backend that rings the frontend's doorbell once while nothing is outstanding (a stray
/// or replayed notification), then answers every command correctly. The frontend must return
/// the backend's answer to each command, never its own command bytes read back from the
/// pages, and never the previous command's answer.
#[tokio::test]
async fn v1_a_stray_backend_doorbell_never_makes_the_frontend_return_its_own_command() {
    let hb = HandBackend::new(false);
    let (front, (ring, event)) = bounded("connect", async {
        futures::join!(
            Frontend::connect(&hb.guest, short_timeout(Protocols::V1_ONLY)),
            hb.accept()
        )
    })
    .await;
    let front = front.unwrap();
    // One stray doorbell while the device is idle.
    event.notify().unwrap();

    let command = get_random(8);
    let (first, second) = (random_response(0x11), random_response(0x22));
    let (got, seen) = bounded("first command", async {
        futures::join!(
            front.transmit(&command),
            hb.serve_v1_once(&ring, &event, &first)
        )
    })
    .await;
    assert_eq!(seen, command, "the backend got the command");
    let got = got.unwrap();
    assert_ne!(
        got, command,
        "the frontend returned its own command as the response"
    );
    assert_eq!(got, random_response(0x11));

    // And the device stays in step: the second command gets the second answer.
    let (got, _) = bounded("second command", async {
        futures::join!(
            front.transmit(&command),
            hb.serve_v1_once(&ring, &event, &second)
        )
    })
    .await;
    assert_eq!(
        got.unwrap(),
        random_response(0x22),
        "answers are off by one"
    );
}

// ---------------------------------------------------------------------------------------------
// The real backend over SimTpm, polled on the test's thread.
// ---------------------------------------------------------------------------------------------

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    std::pin::Pin::new(f).poll(&mut cx)
}

/// v2: the backend has written FINISH (the command ran) before the frontend looked, and the
/// user's cancel lands on the page then. The backend sees CANCEL with nothing under way and
/// acknowledges IDLE, so the frontend reports `Canceled` for a command that ran: here a
/// PCR_Extend that did extend the PCR. The module docs promise a cancel ends in FINISH when the
/// command was under way, IDLE only when nothing was.
#[test]
fn v2_a_cancel_that_arrives_after_finish_still_returns_the_commands_response() {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let mut pool = LocalPool::new();
    pool.spawner().spawn_local(run).unwrap();
    let guest = bed.add_guest(GUEST).unwrap();
    bed.add_device(GUEST, 0, 1).unwrap();
    let front = pool
        .run_until(Frontend::connect(&guest, short_timeout(Protocols::V2_ONLY)))
        .unwrap();

    let extend = pcr_extend_sha256(16, &[0xaa; 32]);
    let mut transmit = Box::pin(front.transmit(&extend));
    assert!(poll_once(&mut transmit).is_pending(), "submitted");
    // The backend runs the command and writes FINISH; the frontend has not looked yet.
    pool.run_until_stalled();
    front.cancel().unwrap();
    pool.run_until_stalled();
    let result = pool.run_until(transmit);

    let read = pool
        .run_until(front.transmit(&pcr_read_sha256(16).unwrap()))
        .unwrap();
    let extended = pcr_digest_sha256(&read).unwrap() != [0; 32];
    assert!(
        extended,
        "the extend did not run (then Canceled would be right)"
    );
    match result {
        Ok(r) => assert_eq!(response_code(&r), Some(TpmRc::SUCCESS)),
        Err(e) => panic!("the extend ran, but the frontend reported {e:?}"),
    }
}

/// v2: a cancel raised after the command was submitted but before the backend looked at the
/// ring ends in `Canceled` (the backend acknowledges IDLE), never in the command's own bytes
/// read back as its response. (Found by review of the fix above: the backend had been made
/// to answer a cancel FINISH whenever its previous response was answered, and here the page
/// held the new request instead.)
#[test]
fn v2_a_cancel_before_the_backend_saw_the_command_ends_in_canceled_not_in_its_own_bytes() {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let mut pool = LocalPool::new();
    pool.spawner().spawn_local(run).unwrap();
    let guest = bed.add_guest(GUEST).unwrap();
    bed.add_device(GUEST, 0, 1).unwrap();
    let front = pool
        .run_until(Frontend::connect(&guest, short_timeout(Protocols::V2_ONLY)))
        .unwrap();
    let command = get_random(8);
    let first = pool.run_until(front.transmit(&command)).unwrap();
    assert_eq!(response_code(&first), Some(TpmRc::SUCCESS));

    let mut transmit = Box::pin(front.transmit(&command));
    assert!(poll_once(&mut transmit).is_pending(), "submitted");
    // The backend has not run since the SUBMIT.
    front.cancel().unwrap();
    let result = pool.run_until(transmit);
    assert_eq!(result, Err(FrontendError::Canceled));
    let next = pool.run_until(front.transmit(&command)).unwrap();
    assert_eq!(response_code(&next), Some(TpmRc::SUCCESS));
}
