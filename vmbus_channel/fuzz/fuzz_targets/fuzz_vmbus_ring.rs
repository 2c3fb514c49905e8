//! A ring whose memory the fuzzer controls (control words and data bytes, changed between
//! operations as a racing guest would): the host reader and writer never panic, never touch
//! memory outside the ring, and keep returning errors once the ring is corrupt.
//!
//! Reads go through peek and commit as well as the one-call read: a peeked packet is lent in
//! place and must stay the same (whatever the guest writes meanwhile) until it is committed,
//! and a reader attached again (a restore) starts from the committed index.

#![forbid(unsafe_code)]
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::ring::ControlWord;
use vmbus_channel::ring::IncomingRing;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::OutgoingPayload;
use vmbus_channel::ring::OutgoingRing;
use vmbus_channel::ring::PagedRange;
use vmbus_channel::ring::PagedRingMem;
use vmbus_channel::ring::RingMem;

#[derive(Debug, Arbitrary)]
enum Op {
    /// The guest writes bytes into the data area.
    Poke { offset: u16, bytes: Vec<u8> },
    /// The guest sets a control word.
    SetControl { word: u8, value: u32 },
    /// The host reads a packet (peek and commit in one call).
    Read,
    /// The host peeks at the next packet in place and checks it is the one peeked before.
    Peek,
    /// The host commits the peeked packet.
    Commit,
    /// The host attaches its reader again, as after a restore.
    ReattachReader,
    /// The host attaches its writer again with the host attach helper.
    ReattachWriter,
    /// The host writes a packet.
    Write {
        len: u16,
        gpa_direct: bool,
        completion: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    data_pages: u8,
    initial: Vec<u8>,
    ops: Vec<Op>,
}

const GUARD: u8 = 0x5a;

fuzz_target!(|input: Input| {
    let data_pages = usize::from(input.data_pages % 3) + 1;
    // Page 0 guard, page 1 control, then data pages, then a guard page.
    let total = data_pages + 3;
    let mem = GuestMemory::new(total * PAGE_SIZE).unwrap();
    mem.fill_at(0, GUARD, total * PAGE_SIZE).unwrap();
    let pfns: Vec<u64> = (1..=(data_pages as u64 + 1)).collect();
    let ring = PagedRingMem::new(mem.clone(), &pfns).unwrap();
    let n = input.initial.len().min(ring.data_len());
    ring.write_data(0, &input.initial[..n]).unwrap();
    mem.fill_at(PAGE_SIZE as u64, 0, PAGE_SIZE).unwrap();

    let mut reader = IncomingRing::new(ring.clone()).ok();
    let mut writer = OutgoingRing::new(ring.clone()).ok();
    // The packet last peeked and not committed: (type, transaction id, header area, data).
    let mut peeked: Option<(u16, u64, Vec<u8>, Vec<u8>)> = None;
    let payload = vec![0xcc; 8192];
    for op in input.ops.iter().take(64) {
        match op {
            Op::Poke { offset, bytes } => {
                let at = usize::from(*offset) % ring.data_len();
                let n = bytes.len().min(ring.data_len() - at);
                ring.write_data(at, &bytes[..n]).unwrap();
            }
            Op::SetControl { word, value } => {
                let word = match word % 5 {
                    0 => ControlWord::WriteIndex,
                    1 => ControlWord::ReadIndex,
                    2 => ControlWord::InterruptMask,
                    3 => ControlWord::PendingSendSize,
                    _ => ControlWord::FeatureBits,
                };
                ring.store_control(word, *value).unwrap();
            }
            Op::Read => {
                if let Some(r) = reader.as_mut() {
                    if let Ok(Some((packet, _))) = r.try_read() {
                        let _ = packet.gpa_ranges();
                        let _ = packet.data().len();
                    }
                }
                peeked = None;
            }
            Op::Peek => {
                if let Some(r) = reader.as_mut() {
                    match r.peek() {
                        Ok(Some(view)) => {
                            let _ = view.gpa_range_iter().count();
                            let _ = view.transfer_pages();
                            let now = (
                                view.packet_type.0,
                                view.transaction_id,
                                view.header_area().to_vec(),
                                view.data().to_vec(),
                            );
                            // Until commit, peeking again lends the very same packet.
                            if let Some(before) = &peeked {
                                assert_eq!(before, &now);
                            }
                            assert!(r.peeked().is_some());
                            peeked = Some(now);
                        }
                        Ok(None) => assert!(peeked.is_none()),
                        Err(_) => peeked = None,
                    }
                }
            }
            Op::Commit => {
                if let Some(r) = reader.as_mut() {
                    let _ = r.commit();
                    assert!(r.peeked().is_none());
                }
                peeked = None;
            }
            Op::ReattachReader => {
                reader = IncomingRing::new(ring.clone()).ok();
                peeked = None;
            }
            Op::ReattachWriter => {
                writer = OutgoingRing::attach_host(ring.clone()).ok();
            }
            Op::Write {
                len,
                gpa_direct,
                completion,
            } => {
                if let Some(w) = writer.as_mut() {
                    let body = &payload[..usize::from(*len) % payload.len()];
                    let pfns = [7u64, 8];
                    let ranges = [PagedRange {
                        byte_offset: 0,
                        byte_count: 8192,
                        pfns: &pfns,
                    }];
                    let kind = match (gpa_direct, completion) {
                        (true, _) => OutgoingPayload::GpaDirect(&ranges),
                        (false, true) => OutgoingPayload::Completion,
                        (false, false) => OutgoingPayload::InBand,
                    };
                    let _ = w.try_write(&OutgoingPacket {
                        transaction_id: 1,
                        completion_requested: false,
                        kind,
                        payload: &[body],
                    });
                }
            }
        }
    }

    // Nothing outside the ring changed.
    let mut guard = vec![0; PAGE_SIZE];
    mem.read_at(0, &mut guard).unwrap();
    assert!(guard.iter().all(|&b| b == GUARD));
    mem.read_at(((data_pages + 2) * PAGE_SIZE) as u64, &mut guard)
        .unwrap();
    assert!(guard.iter().all(|&b| b == GUARD));
});
