//! Hostile request lengths on both rings (0, 1, 9, 10, a page, a page + 1,
//! the capacity and one past it, the field's maximum). Each must get a well-formed TPM
//! answer in the frontend's pages, and the connection must keep working. The backend runs
//! on this thread, polled by hand (SimTpm answers synchronously), so every step is
//! deterministic.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::page::PAGE_SIZE;
use vtpm_ring::page::PageIo;
use vtpm_ring::protocol::PacketKind;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::v1;
use vtpm_ring::protocol::v2::STATE_OFFSET;
use vtpm_ring::protocol::v2::V2State;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::RawFrontend;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_command::get_random;
use vtpm_ring::tpm_header::TpmHeader;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::read_state;

type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

fn settle(run: &mut Run) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..64 {
        assert!(run.as_mut().poll(&mut cx).is_pending());
    }
}

fn connected(version: ProtocolVersion) -> (Testbed, Run, RawFrontend) {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let mut run: Run = Box::pin(run);
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    settle(&mut run);
    let raw = RawFrontend::publish(&guest, version).unwrap();
    settle(&mut run);
    let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
    assert_eq!(read_state(&guest.store(), &bdir), XenbusState::CONNECTED);
    (bed, run, raw)
}

/// A header claiming `size`, then filler up to `len` bytes.
fn body(len: usize, size: u32) -> Vec<u8> {
    let mut b = vec![0x80, 0x01];
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0x01, 0x7b, 0, 8]);
    b.resize(len, 0x5a);
    b
}

const PACKET_OFFSET: usize = 12;

/// v2 (one extra page): writes `len` in the length field and up to the capacity of body.
fn submit_v2(run: &mut Run, raw: &RawFrontend, len: u32, packet: &[u8]) -> Vec<u8> {
    let cap = 2 * PAGE_SIZE - PACKET_OFFSET;
    let first = packet.len().min(PAGE_SIZE - PACKET_OFFSET);
    raw.pages[0].write(PACKET_OFFSET, &packet[..first]).unwrap();
    if packet.len() > first {
        raw.pages[1]
            .write(0, &packet[first..packet.len().min(cap)])
            .unwrap();
    }
    raw.pages[0].write(0, &len.to_le_bytes()).unwrap();
    raw.pages[0].write(5, &[0, 0]).unwrap();
    raw.pages[0]
        .store_u8(STATE_OFFSET, V2State::SUBMIT.0)
        .unwrap();
    raw.event.notify().unwrap();
    settle(run);
    assert_eq!(
        V2State(raw.pages[0].load_u8(STATE_OFFSET).unwrap()),
        V2State::FINISH,
        "length {len}: no answer"
    );
    let mut l = [0u8; 4];
    raw.pages[0].read(0, &mut l).unwrap();
    let rlen = u32::from_le_bytes(l) as usize;
    assert!(rlen <= cap, "length {len}: response length {rlen}");
    let mut r = vec![0u8; rlen];
    let first = rlen.min(PAGE_SIZE - PACKET_OFFSET);
    raw.pages[0].read(PACKET_OFFSET, &mut r[..first]).unwrap();
    if rlen > first {
        raw.pages[1].read(0, &mut r[first..]).unwrap();
    }
    r
}

#[test]
fn v2_hostile_lengths_get_tpm_answers_and_the_ring_keeps_working() {
    let (_bed, mut run, raw) = connected(ProtocolVersion::V2);
    let cap = 2 * PAGE_SIZE - PACKET_OFFSET;
    let lengths: [u32; 12] = [
        0,
        1,
        9,
        10,
        4084,
        4085,
        4096,
        4097,
        cap as u32,
        cap as u32 + 1,
        0x8000_0000,
        u32::MAX,
    ];
    for len in lengths {
        let packet = body((len as usize).min(cap), len);
        let r = submit_v2(&mut run, &raw, len, &packet);
        assert!(
            TpmHeader::read_from_prefix_checked(&r),
            "length {len}: answer {r:?} is no TPM response"
        );
        if len != 4096 {
            assert_ne!(response_code(&r), Some(TpmRc::SUCCESS), "length {len}");
        }
        let ok = submit_v2(&mut run, &raw, 12, &get_random(8));
        assert_eq!(
            response_code(&ok),
            Some(TpmRc::SUCCESS),
            "after length {len}"
        );
    }
}

fn submit_v1(run: &mut Run, raw: &RawFrontend, number: u8, size0: u16, packet: &[u8]) -> Vec<u8> {
    let ring = &raw.pages[0];
    for (i, chunk) in packet.chunks(PAGE_SIZE).take(v1::RING_SIZE).enumerate() {
        raw.pages[1 + i].write(0, chunk).unwrap();
    }
    v1::write_tag(ring, PacketKind::TPM_COMMAND, number).unwrap();
    if v1::write_sizes(ring, usize::from(size0)).is_err() {
        // Beyond the ring: entry 0 says so, the others say nothing.
        for i in 0..v1::RING_SIZE {
            let s: u16 = if i == 0 { size0 } else { 0 };
            ring.write(i * v1::ENTRY_SIZE + 14, &s.to_le_bytes())
                .unwrap();
        }
    }
    raw.event.notify().unwrap();
    settle(run);
    assert!(raw.event.try_take(), "size {size0}: no answer");
    let entries = v1::read_ring(ring).unwrap();
    let len = v1::packet_len(&entries).unwrap();
    let map = |r: u32| {
        let i = raw.grants.iter().position(|g| g.0 == r).unwrap();
        Ok(raw.pages[i].clone())
    };
    v1::read_packet(&entries, len, map).unwrap()
}

#[test]
fn v1_hostile_lengths_get_tpm_answers_and_the_ring_keeps_working() {
    let (_bed, mut run, raw) = connected(ProtocolVersion::V1);
    let max = v1::MAX_PACKET as u16;
    let sizes: [u16; 11] = [0, 1, 9, 10, 4095, 4096, 4097, 8192, max, max + 1, u16::MAX];
    let mut number = 0u8;
    for size in sizes {
        number = v1::next_request_number(number);
        let packet = body(usize::from(size).min(v1::MAX_PACKET), u32::from(size));
        let r = submit_v1(&mut run, &raw, number, size, &packet);
        assert!(
            TpmHeader::read_from_prefix_checked(&r),
            "size {size}: answer {r:?} is no TPM response"
        );
        if size != 4096 {
            assert_ne!(response_code(&r), Some(TpmRc::SUCCESS), "size {size}");
        }
        number = v1::next_request_number(number);
        let ok = submit_v1(&mut run, &raw, number, 12, &get_random(8));
        assert_eq!(
            response_code(&ok),
            Some(TpmRc::SUCCESS),
            "after size {size}"
        );
    }
}
