//! Doorbells that announce nothing new: the backend must not take its own response, or the
//! command it is still executing, for a new command. The TPM is a real swtpm; the ring runs on
//! the test's thread and advances in explicit steps (`support/one_thread.rs`), so every
//! interleaving is the test's.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

#[path = "support/one_thread.rs"]
mod one_thread;

use one_thread::Harness;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::page::PageIo;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::v1;
use vtpm_ring::protocol::v2::V2State;
use vtpm_ring::testbed::RawFrontend;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
/// Where a v2 packet starts on the shared page with one extra page (`RawFrontend`'s layout).
const V2_PACKET: usize = 12;

struct Raw {
    t: Harness,
    raw: RawFrontend,
}

impl Raw {
    fn connected(version: ProtocolVersion) -> Self {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        t.bed.add_device(guest.id(), 0, 1).unwrap();
        let raw = RawFrontend::publish(&guest, version).unwrap();
        t.settle();
        assert_eq!(t.bed.stats.snapshot().connects, 1);
        Self { t, raw }
    }

    /// Writes `command` the v1 way (packet pages, then sizes) and rings; the TPM answers.
    fn submit_v1(&mut self, command: &[u8]) {
        self.write_v1(command);
        self.ring_doorbell();
    }

    /// Writes `command` the v1 way and rings; the backend forwards it to the TPM, which
    /// does not answer yet.
    fn submit_v1_held(&mut self, command: &[u8]) {
        self.write_v1(command);
        self.ring_held();
    }

    fn write_v1(&mut self, command: &[u8]) {
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
    }

    /// Writes `command` the v2 way (packet, length, then SUBMIT) and rings; the TPM answers.
    fn submit_v2(&mut self, command: &[u8]) {
        self.write_v2(command);
        self.ring_doorbell();
    }

    /// Writes `command` the v2 way and rings; the backend forwards it to the TPM, which does
    /// not answer yet.
    fn submit_v2_held(&mut self, command: &[u8]) {
        self.write_v2(command);
        self.ring_held();
    }

    fn write_v2(&mut self, command: &[u8]) {
        let shared = &self.raw.pages[0];
        shared.write(V2_PACKET, command).unwrap();
        shared
            .write(0, &u32::try_from(command.len()).unwrap().to_le_bytes())
            .unwrap();
        shared.store_u8(4, V2State::SUBMIT.0).unwrap();
    }

    /// Rings; the backend acts and the TPM answers whatever reaches it.
    fn ring_doorbell(&mut self) {
        self.raw.event.notify().unwrap();
        self.t.settle();
    }

    /// Rings; the backend acts, the TPM answers nothing yet.
    fn ring_held(&mut self) {
        self.raw.event.notify().unwrap();
        self.t.step();
    }

    fn packet_v1(&self) -> Vec<u8> {
        let ring = v1::read_ring(&self.raw.pages[0]).unwrap();
        let len = v1::packet_len(&ring).unwrap();
        let mut out = vec![0u8; len];
        self.raw.pages[1].read(0, &mut out).unwrap();
        out
    }

    fn state_v2(&self) -> V2State {
        V2State(self.raw.pages[0].load_u8(4).unwrap())
    }

    fn packet_v2(&self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.raw.pages[0].read(0, &mut len).unwrap();
        let mut out = vec![0u8; u32::from_le_bytes(len) as usize];
        self.raw.pages[0].read(V2_PACKET, &mut out).unwrap();
        out
    }
}

#[test]
fn v1_spurious_doorbell_after_an_exchange_is_not_a_command() {
    let mut t = Raw::connected(ProtocolVersion::V1);
    t.submit_v1(&GET_RANDOM_8);
    let response = t.packet_v1();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    assert_eq!(response.len(), 10 + 2 + 8);
    assert_eq!(t.t.bed.stats.snapshot().requests, 1);

    // The frontend rings again without writing anything.
    for _ in 0..3 {
        t.ring_doorbell();
    }
    // The response is untouched and nothing reached the engine.
    assert_eq!(t.packet_v1(), response);
    let s = t.t.bed.stats.snapshot();
    assert_eq!((s.requests, s.malformed, s.dropped), (1, 0, 0));

    // A real next command is served.
    t.submit_v1(&GET_RANDOM_8);
    let next = t.packet_v1();
    assert_eq!(response_code(&next), Some(TpmRc::SUCCESS));
    assert_eq!(next.len(), 10 + 2 + 8);
    assert_ne!(next, response);
    assert_eq!(t.t.bed.stats.snapshot().requests, 2);
}

#[test]
fn v1_the_same_command_sent_twice_is_served_twice() {
    let mut t = Raw::connected(ProtocolVersion::V1);
    let mut answers = Vec::new();
    for n in 1..=3 {
        t.submit_v1(&GET_RANDOM_8);
        let r = t.packet_v1();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        assert_eq!(r.len(), 10 + 2 + 8);
        assert_eq!(t.t.bed.stats.snapshot().requests, n);
        answers.push(r);
    }
    // Each answer is the TPM's fresh one, not a replay of the first.
    assert_ne!(answers[0], answers[1]);
    assert_ne!(answers[1], answers[2]);
}

/// A 10-byte error response is also a well-formed command header (TPM_RC_COMMAND_SIZE, 0x142,
/// reads as TPM_CC_IncrementalSelfTest), so a guest may send exactly the response it just got.
/// A frontend that numbers its requests is served; its doorbell without a new number is still
/// nothing.
#[test]
fn v1_a_numbered_command_equal_to_the_last_response_is_served() {
    let mut t = Raw::connected(ProtocolVersion::V1);
    let kind = vtpm_ring::protocol::PacketKind::TPM_COMMAND;
    v1::write_tag(&t.raw.pages[0], kind, 1).unwrap();
    // The header says 20 bytes, 10 are sent: the backend answers TPM_RC_COMMAND_SIZE itself.
    t.submit_v1(&[0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7b]);
    let response = t.packet_v1();
    let incremental_self_test = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x42];
    assert_eq!(response, incremental_self_test);
    let s = t.t.bed.stats.snapshot();
    assert_eq!((s.malformed, s.requests), (1, 0));

    v1::write_tag(&t.raw.pages[0], kind, 2).unwrap();
    t.submit_v1(&incremental_self_test);
    let s = t.t.bed.stats.snapshot();
    assert_eq!(
        s.requests, 1,
        "the command equal to the last response was dropped"
    );
    let answer = t.packet_v1();
    assert!(response_code(&answer).is_some(), "{answer:02x?}");

    // Ringing again with the same number announces nothing.
    t.ring_doorbell();
    assert_eq!(t.t.bed.stats.snapshot().requests, 1);
    assert_eq!(t.packet_v1(), answer);
}

#[test]
fn v2_spurious_doorbell_after_finish_is_not_a_command() {
    let mut t = Raw::connected(ProtocolVersion::V2);
    t.submit_v2(&GET_RANDOM_8);
    assert_eq!(t.state_v2(), V2State::FINISH);
    let response = t.packet_v2();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    assert_eq!(response.len(), 10 + 2 + 8);

    for _ in 0..3 {
        t.ring_doorbell();
    }
    assert_eq!(t.state_v2(), V2State::FINISH);
    assert_eq!(t.packet_v2(), response);
    let s = t.t.bed.stats.snapshot();
    assert_eq!((s.requests, s.malformed, s.dropped), (1, 0, 0));

    t.submit_v2(&GET_RANDOM_8);
    assert_eq!(t.state_v2(), V2State::FINISH);
    let next = t.packet_v2();
    assert_eq!(response_code(&next), Some(TpmRc::SUCCESS));
    assert_ne!(next, response);
    assert_eq!(t.t.bed.stats.snapshot().requests, 2);
}

#[test]
fn v1_doorbells_while_the_command_is_at_the_tpm_are_not_commands() {
    let mut t = Raw::connected(ProtocolVersion::V1);
    t.submit_v1_held(&GET_RANDOM_8);
    assert_eq!(t.t.bed.stats.snapshot().requests, 1);
    // The pages still hold the command; the frontend rings over and over.
    for _ in 0..3 {
        t.ring_held();
    }
    assert_eq!(t.packet_v1(), GET_RANDOM_8);
    // The TPM answers the one command; the doorbells added nothing.
    t.t.settle();
    let response = t.packet_v1();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    assert_eq!(response.len(), 10 + 2 + 8);
    let s = t.t.bed.stats.snapshot();
    assert_eq!((s.requests, s.malformed, s.dropped), (1, 0, 0));
}

#[test]
fn v2_doorbells_and_resubmits_while_the_command_is_at_the_tpm_are_not_commands() {
    let mut t = Raw::connected(ProtocolVersion::V2);
    t.submit_v2_held(&GET_RANDOM_8);
    assert_eq!(t.t.bed.stats.snapshot().requests, 1);
    assert_eq!(t.state_v2(), V2State::SUBMIT);
    // A frontend ahead of itself submits again while the first command is at the TPM.
    for _ in 0..3 {
        t.submit_v2_held(&GET_RANDOM_8);
    }
    assert_eq!(t.t.bed.stats.snapshot().requests, 1);
    // It gets the answer to the command under way, and only that.
    t.t.settle();
    assert_eq!(t.state_v2(), V2State::FINISH);
    let response = t.packet_v2();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    assert_eq!(response.len(), 10 + 2 + 8);
    let s = t.t.bed.stats.snapshot();
    assert_eq!((s.requests, s.malformed, s.dropped), (1, 0, 0));
}
