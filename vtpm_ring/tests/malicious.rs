//! A hostile frontend, built from the raw primitives (pages, grants, event channel, store),
//! against the real backend and a real swtpm: lying sizes, references it does not own,
//! packets changing while the backend reads, cancel storms. The backend must answer or
//! refuse, never panic or hang. The ring runs on the test's thread and advances in explicit
//! steps (`support/one_thread.rs`), so every interleaving is the test's (bar the one test
//! whose point is a frontend rewriting the page from another thread).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

#[path = "support/one_thread.rs"]
mod one_thread;

use one_thread::Harness;
use std::sync::Arc;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::Domain;
use vtpm_ring::domain::DomainId;
use vtpm_ring::event::EventChannel;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::grant::GrantAccess;
use vtpm_ring::grant::GrantRef;
use vtpm_ring::page::OwnPage;
use vtpm_ring::page::PageIo;
use vtpm_ring::protocol::v1;
use vtpm_ring::protocol::v2::V2State;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::frontend_dir;
use vtpm_ring::xenbus::read_state;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

/// TPM2_PCR_Extend of PCR 20 (SHA-256, empty password session): the PC Client profile lets
/// only localities 1-3 extend it, so swtpm's answer tells the locality it ran at.
fn extend_pcr_20() -> Vec<u8> {
    let mut c = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82, 0, 0, 0, 20];
    c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
    c.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
    c.extend_from_slice(&[7; 32]);
    c[5] = u8::try_from(c.len()).unwrap();
    c
}

fn start() -> (Harness, Domain) {
    let t = Harness::start(BackendConfig::default(), &[1]);
    let guest = t.bed.add_guest(DomainId(2)).unwrap();
    t.bed.add_device(guest.id(), 0, 1).unwrap();
    (t, guest)
}

/// A hand-made frontend: pages, grants, event channel and store keys, nothing checked.
struct Raw {
    pages: Vec<OwnPage>,
    grants: Vec<GrantRef>,
    event: EventChannel,
}

impl Raw {
    /// Publishes `ring_ref` (which may be a lie) and returns the backend's verdict.
    fn publish(
        t: &mut Harness,
        guest: &Domain,
        v2: bool,
        pages: Vec<OwnPage>,
        grants: Vec<GrantRef>,
        ring_ref: u32,
    ) -> (Option<Raw>, XenbusState) {
        let store = guest.store();
        let dir = frontend_dir(guest.id(), 0);
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        t.settle();
        assert_eq!(read_state(&store, &bdir), XenbusState::INIT_WAIT);
        let event = guest.alloc_unbound(BACKEND_DOMAIN).unwrap();
        store
            .write(&format!("{dir}/ring-ref"), &ring_ref.to_string())
            .unwrap();
        store
            .write(&format!("{dir}/event-channel"), &event.port().0.to_string())
            .unwrap();
        if v2 {
            store
                .write(&format!("{dir}/feature-protocol-v2"), "1")
                .unwrap();
        }
        store.write(&format!("{dir}/state"), "3").unwrap();
        t.settle();
        let st = read_state(&t.bed.backend.store(), &bdir);
        assert!(
            matches!(st, XenbusState::CONNECTED | XenbusState::CLOSED),
            "the backend settled in {st:?}"
        );
        let raw = (st == XenbusState::CONNECTED).then_some(Raw {
            pages,
            grants,
            event,
        });
        (raw, st)
    }

    fn alloc(guest: &Domain, n: usize, access: GrantAccess) -> (Vec<OwnPage>, Vec<GrantRef>) {
        let pages: Vec<OwnPage> = (0..n).map(|_| guest.alloc_page().unwrap()).collect();
        let grants = pages
            .iter()
            .map(|p| guest.grant_access(BACKEND_DOMAIN, p.gfn(), access).unwrap())
            .collect();
        (pages, grants)
    }

    /// A v2 connection with one extra page.
    fn v2(t: &mut Harness, guest: &Domain) -> Raw {
        let (pages, grants) = Self::alloc(guest, 2, GrantAccess::ReadWrite);
        pages[0].write(7, &[1]).unwrap();
        pages[0].write(8, &grants[1].0.to_le_bytes()).unwrap();
        let r = grants[0].0;
        Self::publish(t, guest, true, pages, grants, r).0.unwrap()
    }

    /// Writes `bytes` as the packet with length field `len`, then SUBMIT and notify (the
    /// backend acts at the test's next step).
    fn submit_v2(&self, bytes: &[u8], len: u32) {
        let shared = &self.pages[0];
        shared
            .write(12, &bytes[..bytes.len().min(4096 - 12)])
            .unwrap();
        shared.write(0, &len.to_le_bytes()).unwrap();
        shared.store_u8(4, V2State::SUBMIT.0).unwrap();
        self.event.notify().unwrap();
    }

    fn state(&self) -> V2State {
        V2State(self.pages[0].load_u8(4).unwrap())
    }

    fn response_v2(&self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.pages[0].read(0, &mut len).unwrap();
        let len = u32::from_le_bytes(len) as usize;
        let mut out = vec![0u8; len];
        self.pages[0].read(12, &mut out).unwrap();
        out
    }

    /// Settles, then reads the answer the backend must have finished with.
    fn answer_v2(&self, t: &mut Harness) -> Vec<u8> {
        t.settle();
        assert_eq!(self.state(), V2State::FINISH);
        self.response_v2()
    }
}

mod lying_sizes {
    use super::*;

    #[test]
    fn header_size_larger_than_bytes_sent_gets_command_size() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        raw.submit_v2(&GET_RANDOM_8, 10);
        assert_eq!(
            response_code(&raw.answer_v2(&mut t)),
            Some(TpmRc::COMMAND_SIZE)
        );
        assert_eq!(t.bed.stats.snapshot().malformed, 1);
        assert_eq!(t.bed.stats.snapshot().requests, 0);
    }

    #[test]
    fn length_beyond_the_shared_pages_gets_command_size() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        for len in [8192, 1 << 20, u32::MAX] {
            raw.pages[0].store_u8(4, 0).unwrap();
            raw.submit_v2(&GET_RANDOM_8, len);
            assert_eq!(
                response_code(&raw.answer_v2(&mut t)),
                Some(TpmRc::COMMAND_SIZE)
            );
        }
        let s = t.bed.stats.snapshot();
        assert_eq!((s.requests, s.malformed), (0, 3));
    }

    #[test]
    fn short_tpm12_and_bad_locality_packets_get_tpm_errors_and_good_ones_still_work() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        raw.submit_v2(&GET_RANDOM_8, 3);
        assert_eq!(
            response_code(&raw.answer_v2(&mut t)),
            Some(TpmRc::COMMAND_SIZE)
        );
        let mut tpm12 = GET_RANDOM_8;
        tpm12[0..2].copy_from_slice(&[0x00, 0xc1]);
        raw.submit_v2(&tpm12, 12);
        assert_eq!(response_code(&raw.answer_v2(&mut t)), Some(TpmRc::BAD_TAG));
        raw.pages[0].write(5, &[9]).unwrap();
        raw.submit_v2(&GET_RANDOM_8, 12);
        assert_eq!(response_code(&raw.answer_v2(&mut t)), Some(TpmRc::LOCALITY));
        raw.pages[0].write(5, &[0]).unwrap();
        raw.submit_v2(&GET_RANDOM_8, 12);
        let r = raw.answer_v2(&mut t);
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
        // Only the good one reached the TPM.
        assert_eq!(t.bed.stats.snapshot().requests, 1);
    }

    #[test]
    fn backend_writes_only_length_and_state_never_the_locality() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        raw.pages[0].write(5, &[3]).unwrap();
        raw.submit_v2(&GET_RANDOM_8, 12);
        assert_eq!(response_code(&raw.answer_v2(&mut t)), Some(TpmRc::SUCCESS));
        // The locality byte is the frontend's: still what it wrote.
        assert_eq!(raw.pages[0].load_u8(5).unwrap(), 3);
        // And swtpm ran the command at it: PCR 20 takes an extend from locality 3.
        let extend = extend_pcr_20();
        raw.submit_v2(&extend, u32::try_from(extend.len()).unwrap());
        assert_eq!(response_code(&raw.answer_v2(&mut t)), Some(TpmRc::SUCCESS));
        assert_eq!(raw.pages[0].load_u8(5).unwrap(), 3);
        // At locality 0 the same extend is refused by swtpm, not by the backend.
        raw.pages[0].write(5, &[0]).unwrap();
        raw.submit_v2(&extend, u32::try_from(extend.len()).unwrap());
        assert_eq!(response_code(&raw.answer_v2(&mut t)), Some(TpmRc::LOCALITY));
        let s = t.bed.stats.snapshot();
        assert_eq!((s.requests, s.malformed), (3, 0));
    }

    #[test]
    fn v1_sizes_that_do_not_add_up_get_command_size() {
        let (mut t, guest) = start();
        let (pages, grants) = Raw::alloc(&guest, 1 + v1::RING_SIZE, GrantAccess::ReadWrite);
        let mut ring = v1::Ring::default();
        for (e, g) in ring.iter_mut().zip(&grants[1..]) {
            e.gref = g.0.into();
        }
        v1::write_ring(&pages[0], &ring).unwrap();
        let r = grants[0].0;
        let raw = Raw::publish(&mut t, &guest, false, pages, grants, r)
            .0
            .unwrap();
        raw.pages[1].write(0, &GET_RANDOM_8).unwrap();
        // Entry 0 says 12 bytes, entry 1 says there is more.
        raw.pages[0].write(14, &12u16.to_le_bytes()).unwrap();
        raw.pages[0].write(16 + 14, &7u16.to_le_bytes()).unwrap();
        raw.event.notify().unwrap();
        t.settle();
        let s = t.bed.stats.snapshot();
        assert_eq!((s.requests, s.malformed), (0, 1));
        let mut head = [0u8; 10];
        raw.pages[1].read(0, &mut head).unwrap();
        assert_eq!(response_code(&head), Some(TpmRc::COMMAND_SIZE));
    }
}

mod grant_enforcement {
    use super::*;

    #[test]
    fn ring_ref_the_guest_never_granted_is_refused() {
        let (mut t, guest) = start();
        let (_, st) = Raw::publish(&mut t, &guest, true, vec![], vec![], 500);
        assert_eq!(st, XenbusState::CLOSED);
        assert_eq!(t.bed.stats.snapshot().failed_connects, 1);
    }

    #[test]
    fn read_only_shared_page_is_refused() {
        let (mut t, guest) = start();
        let (pages, grants) = Raw::alloc(&guest, 1, GrantAccess::ReadOnly);
        let r = grants[0].0;
        let (_, st) = Raw::publish(&mut t, &guest, true, pages, grants, r);
        assert_eq!(st, XenbusState::CLOSED);
    }

    #[test]
    fn page_granted_to_another_domain_is_refused() {
        let (mut t, guest) = start();
        let other = t.bed.add_guest(DomainId(9)).unwrap();
        let page = guest.alloc_page().unwrap();
        let gref = guest
            .grant_access(other.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        let (_, st) = Raw::publish(&mut t, &guest, true, vec![page], vec![gref], gref.0);
        assert_eq!(st, XenbusState::CLOSED);
    }

    #[test]
    fn another_domains_grant_cannot_be_smuggled_in_as_an_extra_page() {
        let (mut t, guest) = start();
        // A victim domain granted a page to the backend for its own purposes.
        let victim = t.bed.add_guest(DomainId(7)).unwrap();
        let secret = victim.alloc_page().unwrap();
        secret.write(0, b"victim secret").unwrap();
        // Refs are per granter: pick a number the guest itself has not used.
        let mut victim_ref = GrantRef(0);
        for _ in 0..5 {
            victim_ref = victim
                .grant_access(BACKEND_DOMAIN, secret.gfn(), GrantAccess::ReadWrite)
                .unwrap();
        }
        let (pages, grants) = Raw::alloc(&guest, 1, GrantAccess::ReadWrite);
        pages[0].write(7, &[1]).unwrap();
        pages[0].write(8, &victim_ref.0.to_le_bytes()).unwrap();
        let r = grants[0].0;
        let (_, st) = Raw::publish(&mut t, &guest, true, pages, grants, r);
        // The ref is looked up in the guest's own table, where it names nothing it owns.
        assert_eq!(st, XenbusState::CLOSED);
    }

    #[test]
    fn v1_entry_naming_an_ungranted_page_is_not_read() {
        let (mut t, guest) = start();
        let (pages, grants) = Raw::alloc(&guest, 1 + v1::RING_SIZE, GrantAccess::ReadWrite);
        let mut ring = v1::Ring::default();
        for (e, g) in ring.iter_mut().zip(&grants[1..]) {
            e.gref = g.0.into();
        }
        let good = ring[0].gref;
        ring[0].gref = 900.into();
        ring[0].size = 12.into();
        v1::write_ring(&pages[0], &ring).unwrap();
        let r = grants[0].0;
        let raw = Raw::publish(&mut t, &guest, false, pages, grants, r)
            .0
            .unwrap();
        raw.event.notify().unwrap();
        t.settle();
        // It cannot answer into a page it may not map, so it drops.
        let s = t.bed.stats.snapshot();
        assert_eq!((s.requests, s.dropped), (0, 1));
        // And keeps serving: the same request through the guest's own page gets swtpm's answer.
        ring[0].gref = good;
        v1::write_ring(&raw.pages[0], &ring).unwrap();
        raw.pages[1].write(0, &GET_RANDOM_8).unwrap();
        raw.event.notify().unwrap();
        t.settle();
        let mut head = [0u8; 10];
        raw.pages[1].read(0, &mut head).unwrap();
        assert_eq!(response_code(&head), Some(TpmRc::SUCCESS));
        assert_eq!(t.bed.stats.snapshot().requests, 1);
    }
}

mod races {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_guest_flooding_its_device_directory_neither_grows_the_backends_queue_nor_stalls_it() {
        let (mut t, guest) = start();
        let store = guest.store();
        let dir = frontend_dir(guest.id(), 0);
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        // In InitWait the backend watches the frontend's directory; nothing drains that queue
        // while the guest writes (the ring is not polled between the writes).
        t.settle();
        assert_eq!(read_state(&store, &bdir), XenbusState::INIT_WAIT);
        for i in 0..20 * vtpm_ring::store::MAX_WATCH_EVENTS {
            store.write(&format!("{dir}/junk"), &i.to_string()).unwrap();
        }
        let f = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        let r = t.run(f.transmit(&GET_RANDOM_8)).unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
        assert_eq!(t.bed.stats.snapshot().connects, 1);
    }

    #[test]
    fn packet_rewritten_while_the_backend_reads_never_breaks_it() {
        let (mut t, guest) = start();
        let raw = Arc::new(Raw::v2(&mut t, &guest));
        let stop = Arc::new(AtomicBool::new(false));
        // A guest vCPU rewriting length and packet all the time: this race is the point.
        let flipper = {
            let raw = raw.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    let len = [12u32, 4000, 3, 0xffff_ffff][(i % 4) as usize];
                    raw.pages[0].write(0, &len.to_le_bytes()).unwrap();
                    raw.pages[0].write(12 + 5, &[(i % 256) as u8]).unwrap();
                }
            })
        };
        // If an assertion fails, stop the flipper anyway.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _guard = StopOnDrop(stop.clone());
        for _ in 0..200 {
            raw.pages[0].store_u8(4, 0).unwrap();
            raw.submit_v2(&GET_RANDOM_8, 12);
            // Whatever the backend saw, it finished (the length it wrote is the flipper's to
            // overwrite, so only the state is checked here).
            t.settle();
            assert_eq!(raw.state(), V2State::FINISH);
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        raw.pages[0].write(12, &GET_RANDOM_8).unwrap();
        raw.pages[0].store_u8(4, 0).unwrap();
        raw.submit_v2(&GET_RANDOM_8, 12);
        let r = raw.answer_v2(&mut t);
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
        let s = t.bed.stats.snapshot();
        assert_eq!(s.requests + s.malformed, 201);
    }

    #[test]
    fn cancel_storm_always_settles_in_idle_or_finish() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        for i in 0..300 {
            if i % 3 == 0 {
                raw.submit_v2(&GET_RANDOM_8, 12);
                // The backend takes the command to the TPM, which does not answer yet.
                if i % 2 == 0 {
                    t.step();
                }
            }
            raw.pages[0].store_u8(4, V2State::CANCEL.0).unwrap();
            raw.event.notify().unwrap();
            if i % 5 == 0 {
                t.step();
            }
            if i % 7 == 0 {
                t.settle();
                assert!(
                    matches!(raw.state(), V2State::IDLE | V2State::FINISH),
                    "step {i}: {:?}",
                    raw.state()
                );
            }
        }
        t.settle();
        assert!(matches!(raw.state(), V2State::IDLE | V2State::FINISH));
        raw.submit_v2(&GET_RANDOM_8, 12);
        let r = raw.answer_v2(&mut t);
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
        let s = t.bed.stats.snapshot();
        // Cancels met commands at the TPM (forwarded) and idle rings (acknowledged).
        assert!(s.cancels >= 1, "{s:?}");
        assert!(s.cancel_acks >= 1, "{s:?}");
    }

    #[test]
    fn closing_mid_request_and_reconnecting_works() {
        let (mut t, guest) = start();
        let raw = Raw::v2(&mut t, &guest);
        raw.submit_v2(&GET_RANDOM_8, 12);
        // The command is at the TPM when the frontend closes.
        t.step();
        assert_eq!(t.bed.stats.snapshot().requests, 1);
        let store = guest.store();
        let dir = frontend_dir(guest.id(), 0);
        store.write(&format!("{dir}/state"), "5").unwrap();
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        t.settle();
        assert_eq!(read_state(&store, &bdir), XenbusState::CLOSED);
        // The backend unmapped everything: every grant can be revoked now.
        for g in &raw.grants {
            guest.end_access(*g).unwrap();
        }
        store.write(&format!("{dir}/state"), "6").unwrap();
        let f = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        let r = t.run(f.transmit(&GET_RANDOM_8)).unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
    }
}
