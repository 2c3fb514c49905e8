//! Doorbells that announce nothing new: the backend must not take its own response for a
//! command. Everything runs on one thread, polled until it stalls, so each interleaving is
//! explicit.

#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::page::PageIo;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::v1;
use vtpm_ring::testbed::RawFrontend;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

struct V1 {
    pool: LocalPool,
    bed: Testbed,
    raw: RawFrontend,
}

impl V1 {
    fn connected() -> Self {
        let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let raw = RawFrontend::publish(&guest, ProtocolVersion::V1).unwrap();
        let mut pool = LocalPool::new();
        pool.spawner().spawn_local(run).unwrap();
        pool.run_until_stalled();
        Self { pool, bed, raw }
    }

    /// Writes `command` the v1 way (packet pages, then sizes) and rings.
    fn submit(&mut self, command: &[u8]) {
        let ring = v1::read_ring(&self.raw.pages[0]).unwrap();
        let pages = &self.raw.pages[1..];
        let grants = &self.raw.grants[1..];
        v1::write_packet(&self.raw.pages[0], &ring, command, |r| {
            grants
                .iter()
                .position(|g| g.0 == r)
                .map(|i| pages[i].clone())
                .ok_or(vtpm_ring::protocol::RingError::Inconsistent("ref"))
        })
        .unwrap();
        self.ring_doorbell();
    }

    fn ring_doorbell(&mut self) {
        self.raw.event.notify().unwrap();
        self.pool.run_until_stalled();
    }

    fn packet(&self) -> Vec<u8> {
        let ring = v1::read_ring(&self.raw.pages[0]).unwrap();
        let len = v1::packet_len(&ring).unwrap();
        let mut out = vec![0u8; len];
        self.raw.pages[1].read(0, &mut out).unwrap();
        out
    }
}

#[test]
fn v1_spurious_doorbell_after_an_exchange_is_not_a_command() {
    let mut t = V1::connected();
    t.submit(&GET_RANDOM_8);
    let response = t.packet();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    assert_eq!(response.len(), 10 + 2 + 8);
    assert_eq!(t.bed.stats.snapshot().requests, 1);

    // The frontend rings again without writing anything.
    for _ in 0..3 {
        t.ring_doorbell();
    }
    // The response is untouched and nothing reached the engine.
    assert_eq!(t.packet(), response);
    let s = t.bed.stats.snapshot();
    assert_eq!((s.requests, s.malformed, s.dropped), (1, 0, 0));

    // A real next command is served.
    t.submit(&GET_RANDOM_8);
    let next = t.packet();
    assert_eq!(response_code(&next), Some(TpmRc::SUCCESS));
    assert_ne!(next, response);
    assert_eq!(t.bed.stats.snapshot().requests, 2);
}

#[test]
fn v1_the_same_command_sent_twice_is_served_twice() {
    let mut t = V1::connected();
    for n in 1..=3 {
        t.submit(&GET_RANDOM_8);
        assert_eq!(response_code(&t.packet()), Some(TpmRc::SUCCESS));
        assert_eq!(t.bed.stats.snapshot().requests, n);
    }
}
