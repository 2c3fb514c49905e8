//! Ring tests: layout round trips, a proptest model, and a hostile peer.

use super::*;
use crate::memory::GuestMemory;
use crate::memory::PAGE_SIZE;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// Guest memory with the ring in the middle and sentinel pages around it.
struct Fixture {
    mem: GuestMemory,
    ring: PagedRingMem,
    pages: u64,
}

const SENTINEL: u8 = 0xa5;

impl Fixture {
    /// Control page at pfn 1, data pages scattered from pfn 3 on; pfns 0, 2 and the last are
    /// sentinels.
    fn new(data_pages: usize) -> Self {
        let total = 4 + 2 * data_pages;
        let mem = GuestMemory::new(total * PAGE_SIZE).unwrap();
        mem.fill_at(0, SENTINEL, total * PAGE_SIZE).unwrap();
        let mut pfns = vec![1u64];
        // Reverse order so that no two data pages are adjacent in the ring's view.
        pfns.extend((0..data_pages).rev().map(|i| 3 + 2 * i as u64));
        let ring = PagedRingMem::new(mem.clone(), &pfns).unwrap();
        ring.initialize().unwrap();
        for i in 0..data_pages {
            mem.fill_at((3 + 2 * i as u64) * PAGE_SIZE as u64, 0, PAGE_SIZE)
                .unwrap();
        }
        Self {
            mem,
            ring,
            pages: total as u64,
        }
    }

    fn sentinels_intact(&self) -> bool {
        let pages = self.pages;
        let ring_pages = 1 + self.ring.data_len() / PAGE_SIZE;
        (0..pages)
            .filter(|&p| p != 1 && !(p >= 3 && p % 2 == 1 && p < 3 + 2 * (ring_pages as u64 - 1)))
            .all(|p| {
                let mut buf = vec![0; PAGE_SIZE];
                self.mem.read_at(p * PAGE_SIZE as u64, &mut buf).unwrap();
                buf.iter().all(|&b| b == SENTINEL)
            })
    }

    fn pair(&self) -> (OutgoingRing<PagedRingMem>, IncomingRing<PagedRingMem>) {
        (
            OutgoingRing::new(self.ring.clone()).unwrap(),
            IncomingRing::new(self.ring.clone()).unwrap(),
        )
    }
}

mod layout_round_trip {
    use super::*;

    #[test]
    fn written_packet_has_reference_framing() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        w.try_write(&OutgoingPacket::in_band(7, true, &[b"abc"]))
            .unwrap();
        let mut raw = [0u8; 32];
        f.ring.read_data(0, &mut raw).unwrap();
        // descriptor: type 6, offset 2 (16 bytes), length 3 (24 bytes), flags 1, tid 7
        assert_eq!(
            &raw[..16],
            &[6, 0, 2, 0, 3, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&raw[16..24], b"abc\0\0\0\0\0");
        assert_eq!(&raw[24..32], &0u64.to_le_bytes()); // footer: started at offset 0
        assert_eq!(f.ring.load_control(ControlWord::WriteIndex).unwrap(), 32);
    }

    #[test]
    fn reader_returns_fields_and_advances_read_index() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        w.try_write(&OutgoingPacket::completion(99, &[b"hello", b" world"]))
            .unwrap();
        let (p, _) = r.try_read().unwrap().unwrap();
        assert_eq!(p.packet_type, PacketType::COMPLETION);
        assert_eq!(p.transaction_id, 99);
        assert!(!p.completion_requested);
        assert_eq!(&p.data()[..11], b"hello world");
        assert_eq!(p.data().len(), 16);
        assert_eq!(f.ring.load_control(ControlWord::ReadIndex).unwrap(), 40);
        assert!(r.try_read().unwrap().is_none());
    }

    #[test]
    fn gpa_direct_ranges_round_trip() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        let pfns = [10, 11, 12];
        let ranges = [PagedRange {
            byte_offset: 100,
            byte_count: 8200,
            pfns: &pfns,
        }];
        let packet = OutgoingPacket {
            transaction_id: 1,
            completion_requested: true,
            kind: OutgoingPayload::GpaDirect(&ranges),
            payload: &[b"req"],
        };
        w.try_write(&packet).unwrap();
        let (p, _) = r.try_read().unwrap().unwrap();
        assert_eq!(p.packet_type, PacketType::GPA_DIRECT);
        assert_eq!(p.gpa_ranges().unwrap(), vec![(100, 8200, pfns.to_vec())]);
        assert_eq!(&p.data()[..3], b"req");
    }

    #[test]
    fn large_packet_wraps_around_the_end() {
        let f = Fixture::new(2);
        let (mut w, mut r) = f.pair();
        let a = vec![1u8; 5000];
        let b: Vec<u8> = (0..6000).map(|i| i as u8).collect();
        w.try_write(&OutgoingPacket::in_band(1, false, &[&a]))
            .unwrap();
        r.try_read().unwrap().unwrap();
        // The second packet starts at 5024 and ends past 8192: it wraps.
        w.try_write(&OutgoingPacket::in_band(2, false, &[&b]))
            .unwrap();
        let (p, _) = r.try_read().unwrap().unwrap();
        assert_eq!(&p.data()[..6000], &b[..]);
        assert!(f.sentinels_intact());
    }
}

mod signalling {
    use super::*;

    #[test]
    fn first_packet_into_empty_ring_signals_reader() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        assert!(
            w.try_write(&OutgoingPacket::in_band(1, false, &[b"a"]))
                .unwrap()
                .signal_peer
        );
        assert!(
            !w.try_write(&OutgoingPacket::in_band(2, false, &[b"b"]))
                .unwrap()
                .signal_peer
        );
        r.try_read().unwrap();
        r.try_read().unwrap();
        assert!(
            w.try_write(&OutgoingPacket::in_band(3, false, &[b"c"]))
                .unwrap()
                .signal_peer
        );
    }

    #[test]
    fn masked_reader_is_not_signalled() {
        let f = Fixture::new(1);
        let (mut w, r) = f.pair();
        r.set_interrupt_mask(true).unwrap();
        assert!(
            !w.try_write(&OutgoingPacket::in_band(1, false, &[b"a"]))
                .unwrap()
                .signal_peer
        );
    }

    #[test]
    fn full_writer_sets_pending_size_and_reader_signals_once_space_frees() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        let big = vec![0u8; 1000];
        let mut written = 0;
        let needed = loop {
            match w.try_write(&OutgoingPacket::in_band(written, false, &[&big])) {
                Ok(_) => written += 1,
                Err(TryWriteError::Full { needed }) => break needed,
                Err(e) => panic!("{e}"),
            }
        };
        // Each packet takes 1024 bytes; a fourth would make write index == read index.
        assert_eq!(written, 3);
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            needed
        );
        let (_, signal) = r.try_read().unwrap().unwrap();
        assert!(
            signal,
            "freeing the space the writer waits for must signal it"
        );
        let (_, signal) = r.try_read().unwrap().unwrap();
        assert!(!signal, "only the read that crosses the threshold signals");
        w.try_write(&OutgoingPacket::in_band(9, false, &[&big]))
            .unwrap();
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            0
        );
    }

    #[test]
    fn packet_larger_than_ring_is_rejected_without_blocking() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        let big = vec![0u8; PAGE_SIZE];
        assert!(matches!(
            w.try_write(&OutgoingPacket::in_band(0, false, &[&big])),
            Err(TryWriteError::TooLarge(_))
        ));
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            0
        );
    }
}

mod model {
    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize),
        /// Peek and commit in one call.
        Read,
        Peek,
        Commit,
        /// The reader is dropped and attached again (a restore from guest memory).
        Reattach,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3000).prop_map(Op::Write),
            (0usize..40).prop_map(Op::Write),
            Just(Op::Read),
            Just(Op::Peek),
            Just(Op::Commit),
            Just(Op::Reattach),
        ]
    }

    fn expect_packet(p: PacketView<'_>, tid: u64, data: &[u8]) -> Result<(), TestCaseError> {
        prop_assert_eq!(p.transaction_id, tid);
        prop_assert_eq!(&p.data()[..data.len()], data);
        prop_assert!(p.data()[data.len()..].iter().all(|&b| b == 0));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any interleaving of writes, peeks, commits and re-attaches behaves like a queue
        /// with the ring's capacity whose head leaves only at commit.
        #[test]
        fn ring_matches_queue_model(pages in 1usize..4, ops in prop::collection::vec(op(), 1..120)) {
            let f = Fixture::new(pages);
            let (mut w, mut r) = f.pair();
            let capacity = pages * PAGE_SIZE;
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut peeked = false;
            let mut used = 0usize;
            let mut tid = 0u64;
            let size = |n| OutgoingRing::<PagedRingMem>::packet_size(0, n);
            for op in ops {
                match op {
                    Op::Write(n) => {
                        tid += 1;
                        let data: Vec<u8> = (0..n).map(|i| (i as u64 ^ tid) as u8).collect();
                        let result = w.try_write(&OutgoingPacket::in_band(tid, false, &[&data]));
                        if size(n) >= capacity {
                            let too_large = matches!(result, Err(TryWriteError::TooLarge(_)));
                            prop_assert!(too_large);
                        } else if size(n) < capacity - used {
                            prop_assert!(result.is_ok());
                            used += size(n);
                            model.push_back((tid, data));
                        } else {
                            let full = matches!(result, Err(TryWriteError::Full { .. }));
                            prop_assert!(full);
                        }
                    }
                    Op::Read => {
                        let got = r.try_read().unwrap();
                        peeked = false;
                        match model.pop_front() {
                            None => prop_assert!(got.is_none()),
                            Some((t, data)) => {
                                expect_packet(got.unwrap().0.view(), t, &data)?;
                                used -= size(data.len());
                            }
                        }
                    }
                    Op::Peek => {
                        let got = r.peek().unwrap();
                        match model.front() {
                            None => prop_assert!(got.is_none()),
                            Some((t, data)) => {
                                expect_packet(got.unwrap(), *t, data)?;
                                peeked = true;
                            }
                        }
                    }
                    Op::Commit => {
                        r.commit().unwrap();
                        if peeked {
                            let (_, data) = model.pop_front().unwrap();
                            used -= size(data.len());
                            peeked = false;
                        }
                    }
                    Op::Reattach => {
                        r = IncomingRing::new(f.ring.clone()).unwrap();
                        peeked = false;
                    }
                }
                prop_assert_eq!(r.peeked().is_some(), peeked);
            }
            prop_assert!(f.sentinels_intact());
        }
    }
}

mod peek_commit {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn read_index(f: &Fixture) -> u32 {
        f.ring.load_control(ControlWord::ReadIndex).unwrap()
    }

    #[test]
    fn read_index_moves_only_at_commit() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        w.try_write(&OutgoingPacket::in_band(5, true, &[b"request"]))
            .unwrap();
        let p = r.peek().unwrap().unwrap();
        assert_eq!((p.transaction_id, p.completion_requested), (5, true));
        assert_eq!(&p.data()[..7], b"request");
        assert_eq!(read_index(&f), 0);
        // Peeking again lends the same packet.
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 5);
        assert_eq!(read_index(&f), 0);
        assert!(!r.commit().unwrap());
        assert_eq!(read_index(&f), 32);
        assert!(r.peek().unwrap().is_none());
        assert!(r.peeked().is_none());
    }

    #[test]
    fn packet_peeked_but_not_committed_is_read_again_after_reattach() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        w.try_write(&OutgoingPacket::in_band(1, true, &[b"first"]))
            .unwrap();
        w.try_write(&OutgoingPacket::in_band(2, true, &[b"second"]))
            .unwrap();
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 1);
        // Saved and restored without an answer: the reader is built again from the ring.
        drop(r);
        let mut r = IncomingRing::new(f.ring.clone()).unwrap();
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 1);
        r.commit().unwrap();
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 2);
    }

    #[test]
    fn commit_without_peek_does_nothing() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        assert!(!r.commit().unwrap());
        w.try_write(&OutgoingPacket::in_band(1, false, &[b"x"]))
            .unwrap();
        assert!(!r.commit().unwrap());
        assert_eq!(read_index(&f), 0);
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 1);
    }

    /// Counts data reads, to show what touches shared memory.
    struct CountReads {
        inner: PagedRingMem,
        reads: AtomicUsize,
    }

    impl RingMem for CountReads {
        fn data_len(&self) -> usize {
            self.inner.data_len()
        }
        fn load_control(&self, word: ControlWord) -> Result<u32, RingMemError> {
            self.inner.load_control(word)
        }
        fn store_control(&self, word: ControlWord, value: u32) -> Result<(), RingMemError> {
            self.inner.store_control(word, value)
        }
        fn read_data(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingMemError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.read_data(offset, buf)
        }
        fn write_data(&self, offset: usize, buf: &[u8]) -> Result<(), RingMemError> {
            self.inner.write_data(offset, buf)
        }
    }

    #[test]
    fn peeking_again_does_not_read_shared_memory_again() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        w.try_write(&OutgoingPacket::in_band(1, false, &[&[7; 100]]))
            .unwrap();
        let mem = Arc::new(CountReads {
            inner: f.ring.clone(),
            reads: AtomicUsize::new(0),
        });
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        r.peek().unwrap().unwrap();
        let after_first = mem.reads.load(Ordering::SeqCst);
        assert_eq!(after_first, 1, "one copy of everything published");
        // The guest rewrites the packet; the peeked copy does not change.
        f.ring.write_data(16, &[9; 100]).unwrap();
        let p = r.peek().unwrap().unwrap();
        assert_eq!(&p.data()[..100], &[7; 100]);
        assert_eq!(mem.reads.load(Ordering::SeqCst), after_first);
    }

    #[test]
    fn packets_published_together_are_copied_once() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        for tid in 0..3u64 {
            w.try_write(&OutgoingPacket::in_band(tid, false, &[&[tid as u8; 40]]))
                .unwrap();
        }
        let mem = Arc::new(CountReads {
            inner: f.ring.clone(),
            reads: AtomicUsize::new(0),
        });
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        for tid in 0..3u64 {
            let p = r.peek().unwrap().unwrap();
            assert_eq!((p.transaction_id, p.data()), (tid, &[tid as u8; 40][..]));
            r.commit().unwrap();
        }
        assert_eq!(mem.reads.load(Ordering::SeqCst), 1);
        // Once the copy is used up, the next peek looks at the ring again.
        assert!(r.peek().unwrap().is_none());
        w.try_write(&OutgoingPacket::in_band(3, false, &[b"more"]))
            .unwrap();
        assert_eq!(r.peek().unwrap().unwrap().transaction_id, 3);
    }

    #[test]
    fn in_place_reads_reuse_one_buffer() {
        let f = Fixture::new(2);
        let (mut w, mut r) = f.pair();
        let mut addresses = Vec::new();
        for (tid, len) in [(1u64, 4000usize), (2, 100), (3, 4000), (4, 8)] {
            w.try_write(&OutgoingPacket::in_band(
                tid,
                false,
                &[&vec![tid as u8; len]],
            ))
            .unwrap();
            let p = r.peek().unwrap().unwrap();
            assert_eq!(&p.data()[..len], &vec![tid as u8; len][..]);
            assert_eq!(p.data().len(), len.next_multiple_of(8));
            addresses.push(p.data().as_ptr());
            r.commit().unwrap();
        }
        // The buffer grew once, for the first packet, and was reused for the others.
        assert!(addresses.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn blocked_writer_gets_space_and_signal_only_at_commit() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        let big = vec![0u8; 1000];
        for tid in 0..3 {
            w.try_write(&OutgoingPacket::in_band(tid, false, &[&big]))
                .unwrap();
        }
        let full = |w: &mut OutgoingRing<PagedRingMem>| {
            matches!(
                w.try_write(&OutgoingPacket::in_band(9, false, &[&big])),
                Err(TryWriteError::Full { .. })
            )
        };
        assert!(full(&mut w));
        r.peek().unwrap().unwrap();
        assert!(full(&mut w), "a peeked packet still occupies its space");
        assert!(
            r.commit().unwrap(),
            "the commit frees what the writer waits for"
        );
        assert!(!full(&mut w));
    }

    #[test]
    fn owned_copy_matches_the_view() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        w.try_write(&OutgoingPacket::in_band(3, true, &[b"abc", b"defgh"]))
            .unwrap();
        let view = r.peek().unwrap().unwrap();
        let owned = view.to_packet();
        assert_eq!(owned.view(), view);
        let mut reused = IncomingPacket::default();
        view.copy_into(&mut reused);
        assert_eq!(reused, owned);
        assert_eq!(&owned.data()[..8], b"abcdefgh");
    }
}

mod packet_checks {
    use super::*;
    use zerocopy::IntoBytes;
    use zerocopy::little_endian::U16;
    use zerocopy::little_endian::U64;

    /// Puts one raw packet at ring offset 0: the descriptor, `body`, a footer; the write index
    /// goes after it.
    fn put_raw(f: &Fixture, desc: PacketDescriptor, body: &[u8]) {
        f.ring.write_data(0, desc.as_bytes()).unwrap();
        f.ring.write_data(16, body).unwrap();
        let end = 16 + body.len() + 8;
        f.ring.write_data(end - 8, &[0; 8]).unwrap();
        f.ring
            .store_control(ControlWord::WriteIndex, end as u32)
            .unwrap();
    }

    fn desc(packet_type: u16, data_offset8: u16, length8: u16, flags: u16) -> PacketDescriptor {
        PacketDescriptor {
            packet_type: U16::new(packet_type),
            data_offset8: U16::new(data_offset8),
            length8: U16::new(length8),
            flags: U16::new(flags),
            transaction_id: U64::new(0x42),
        }
    }

    fn source(f: &Fixture) -> Result<(), PacketError> {
        let (_, mut r) = f.pair();
        match r.peek() {
            Ok(_) => Ok(()),
            Err(RingError::CorruptPacket { source, .. }) => Err(source),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn unknown_packet_type_is_rejected() {
        let f = Fixture::new(1);
        // 8 is Linux's VM_PKT_DATA_USING_GPADL, which no VMBus ring here carries.
        put_raw(&f, desc(8, 2, 3, 0), &[0; 8]);
        assert_eq!(source(&f), Err(PacketError::UnknownType(8)));
    }

    #[test]
    fn unknown_flags_are_rejected() {
        let f = Fixture::new(1);
        put_raw(&f, desc(6, 2, 3, 0x3), &[0; 8]);
        assert_eq!(source(&f), Err(PacketError::UnknownFlags(3)));
    }

    #[test]
    fn transfer_page_packet_without_room_for_its_header_is_rejected() {
        let f = Fixture::new(1);
        // data_offset8 = 2: no byte between descriptor and payload for the 8-byte header.
        put_raw(&f, desc(7, 2, 4, 0), &[0; 16]);
        assert!(matches!(
            source(&f),
            Err(PacketError::BadHeaderSize {
                packet_type: PacketType::TRANSFER_PAGES,
                data_offset: 16,
                ..
            })
        ));
    }

    #[test]
    fn transfer_page_ranges_must_fit_the_header_area() {
        let f = Fixture::new(1);
        // Header claims 2 ranges, header area holds one.
        let mut body = vec![0u8; 24];
        body[..8].copy_from_slice(&[3, 0, 1, 0, 2, 0, 0, 0]);
        put_raw(&f, desc(7, 4, 5, 0), &body);
        assert!(matches!(
            source(&f),
            Err(PacketError::BadHeaderSize { range_count: 2, .. })
        ));
    }

    #[test]
    fn transfer_page_packet_is_read_in_place() {
        let f = Fixture::new(1);
        let mut body = Vec::new();
        body.extend_from_slice(&[3, 0, 1, 0, 2, 0, 0, 0]); // set 3, sender owns, 2 ranges
        body.extend_from_slice(&[0x10, 0, 0, 0, 0x20, 0, 0, 0]); // 16 bytes at 0x20
        body.extend_from_slice(&[0x30, 0, 0, 0, 0x40, 0, 0, 0]); // 48 bytes at 0x40
        body.extend_from_slice(b"payload!");
        put_raw(&f, desc(7, 5, 6, 1), &body);
        let (_, mut r) = f.pair();
        let p = r.peek().unwrap().unwrap();
        let (header, ranges) = p.transfer_pages().unwrap();
        assert_eq!(header.transfer_page_set_id.get(), 3);
        assert_eq!(header.sender_owns_set, 1);
        let ranges: Vec<_> = ranges
            .iter()
            .map(|r| (r.byte_count.get(), r.byte_offset.get()))
            .collect();
        assert_eq!(ranges, [(0x10, 0x20), (0x30, 0x40)]);
        assert_eq!(p.data(), b"payload!");
    }

    #[test]
    fn gpa_direct_packet_without_ranges_is_rejected() {
        let f = Fixture::new(1);
        put_raw(&f, desc(9, 3, 3, 0), &[0; 8]);
        assert!(matches!(
            source(&f),
            Err(PacketError::BadHeaderSize {
                packet_type: PacketType::GPA_DIRECT,
                range_count: 0,
                ..
            })
        ));
    }

    #[test]
    fn in_band_packet_with_a_header_area_is_accepted() {
        let f = Fixture::new(1);
        put_raw(&f, desc(6, 3, 4, 0), &[1; 16]);
        assert_eq!(source(&f), Ok(()));
    }

    /// The validation rules, written independently of the reader.
    fn model_accepts(packet_type: u16, off8: u16, len8: u16, flags: u16, ranges: u32) -> bool {
        let (off, len) = (u32::from(off8) * 8, u32::from(len8) * 8);
        let room = off.saturating_sub(24);
        (16..=80).contains(&len)
            && off >= 16
            && off <= len
            && flags <= 1
            && match packet_type {
                6 | 11 => true,
                7 => off >= 24 && ranges * 8 <= room,
                9 => off >= 24 && ranges >= 1 && ranges * 16 <= room,
                _ => false,
            }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A descriptor is accepted exactly when the model says so, and an accepted one is
        /// presented as written.
        #[test]
        fn descriptor_checks_match_the_model(
            packet_type in prop_oneof![Just(6u16), Just(7), Just(9), Just(11), any::<u16>()],
            flags in prop_oneof![Just(0u16), Just(1), any::<u16>()],
            off8 in 0u16..12,
            len8 in 0u16..12,
            ranges in 0u32..6,
        ) {
            let f = Fixture::new(1);
            // 64 body bytes are always written: 88 bytes available in the ring.
            let mut body = [0u8; 64];
            body[4..8].copy_from_slice(&ranges.to_le_bytes());
            put_raw(&f, desc(packet_type, off8, len8, flags), &body);
            let (_, mut r) = f.pair();
            let result = r.peek();
            prop_assert_eq!(
                result.is_ok(),
                model_accepts(packet_type, off8, len8, flags, ranges),
                "{:?}", result
            );
            if let Ok(Some(p)) = result {
                prop_assert_eq!(p.packet_type.0, packet_type);
                prop_assert_eq!(p.transaction_id, 0x42);
                prop_assert_eq!(p.completion_requested, flags == 1);
                prop_assert_eq!(p.header_area().len(), usize::from(off8) * 8 - 16);
                prop_assert_eq!(p.data().len(), usize::from(len8 - off8) * 8);
            }
        }
    }
}

mod host_attach {
    use super::*;

    #[test]
    fn attach_host_advertises_pending_send_size_and_clears_a_stale_request() {
        let f = Fixture::new(1);
        f.ring.store_control(ControlWord::FeatureBits, 0x6).unwrap();
        f.ring
            .store_control(ControlWord::PendingSendSize, 1024)
            .unwrap();
        f.ring.store_control(ControlWord::WriteIndex, 64).unwrap();
        let w = OutgoingRing::attach_host(f.ring.clone()).unwrap();
        assert_eq!(f.ring.load_control(ControlWord::FeatureBits).unwrap(), 0x7);
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            0
        );
        // The write index is taken over, not reset.
        assert_eq!(f.ring.load_control(ControlWord::WriteIndex).unwrap(), 64);
        drop(w);
    }

    #[test]
    fn attach_host_refuses_a_corrupt_write_index_and_changes_nothing() {
        let f = Fixture::new(1);
        f.ring.store_control(ControlWord::FeatureBits, 0).unwrap();
        f.ring
            .store_control(ControlWord::PendingSendSize, 8)
            .unwrap();
        f.ring.store_control(ControlWord::WriteIndex, 12).unwrap();
        assert!(OutgoingRing::attach_host(f.ring.clone()).is_err());
        assert_eq!(f.ring.load_control(ControlWord::FeatureBits).unwrap(), 0);
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            8
        );
    }

    #[test]
    fn writer_blocked_before_a_restore_asks_again_and_is_signalled() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
        let big = vec![0u8; 1000];
        for tid in 0..3 {
            w.try_write(&OutgoingPacket::in_band(tid, false, &[&big]))
                .unwrap();
        }
        assert!(
            w.try_write(&OutgoingPacket::in_band(3, false, &[&big]))
                .is_err()
        );
        // Restore: the host writer is attached again; the old request is cleared ...
        let mut w = OutgoingRing::attach_host(f.ring.clone()).unwrap();
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            0
        );
        // ... and the retried write asks again, so the reader's commit signals it.
        let needed = match w.try_write(&OutgoingPacket::in_band(3, false, &[&big])) {
            Err(TryWriteError::Full { needed }) => needed,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            f.ring.load_control(ControlWord::PendingSendSize).unwrap(),
            needed
        );
        r.peek().unwrap().unwrap();
        assert!(r.commit().unwrap());
    }
}

mod hostile_peer {
    use super::*;

    fn write_one(f: &Fixture) {
        let (mut w, _) = f.pair();
        w.try_write(&OutgoingPacket::in_band(1, false, &[&[0x11; 40]]))
            .unwrap();
    }

    #[test]
    fn write_index_beyond_ring_is_an_error_and_poisons_the_reader() {
        let f = Fixture::new(1);
        let (_, mut r) = f.pair();
        f.ring
            .store_control(ControlWord::WriteIndex, 0x1_0000)
            .unwrap();
        assert!(matches!(r.try_read(), Err(RingError::CorruptIndex { .. })));
        f.ring.store_control(ControlWord::WriteIndex, 0).unwrap();
        assert!(matches!(r.try_read(), Err(RingError::Poisoned)));
    }

    #[test]
    fn misaligned_read_index_is_an_error_for_the_writer() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        f.ring.store_control(ControlWord::ReadIndex, 3).unwrap();
        assert!(matches!(
            w.try_write(&OutgoingPacket::in_band(1, false, &[b"x"])),
            Err(TryWriteError::Ring(RingError::CorruptIndex { .. }))
        ));
    }

    #[test]
    fn corrupt_read_index_is_caught_when_the_writer_next_needs_it() {
        let f = Fixture::new(1);
        let (mut w, _) = f.pair();
        let big = [0u8; 1000];
        w.try_write(&OutgoingPacket::in_band(0, false, &[&big]))
            .unwrap();
        f.ring.store_control(ControlWord::ReadIndex, 3).unwrap();
        // The writer keeps using its last valid copy (which only under-states the free space)
        // until that copy shows too little room; then it loads the index and refuses it.
        let mut writes = 1;
        let err = loop {
            match w.try_write(&OutgoingPacket::in_band(writes, false, &[&big])) {
                Ok(_) => writes += 1,
                Err(err) => break err,
            }
        };
        assert_eq!(writes, 3);
        assert!(matches!(
            err,
            TryWriteError::Ring(RingError::CorruptIndex { which: "read", .. })
        ));
        assert!(f.sentinels_intact());
    }

    #[test]
    fn corrupt_index_at_attach_is_rejected() {
        let f = Fixture::new(1);
        f.ring
            .store_control(ControlWord::ReadIndex, u32::MAX)
            .unwrap();
        assert!(IncomingRing::new(f.ring.clone()).is_err());
        f.ring.store_control(ControlWord::WriteIndex, 4097).unwrap();
        assert!(OutgoingRing::new(f.ring.clone()).is_err());
    }

    #[test]
    fn length_beyond_written_data_is_an_error() {
        let f = Fixture::new(1);
        write_one(&f);
        // length8 = 0xffff: wraps far past the end of the ring.
        f.ring.write_data(4, &0xffffu16.to_le_bytes()).unwrap();
        let (_, mut r) = f.pair();
        assert!(matches!(
            r.try_read(),
            Err(RingError::CorruptPacket {
                source: PacketError::BadLength { .. },
                ..
            })
        ));
        assert!(f.sentinels_intact());
    }

    #[test]
    fn data_offset_past_packet_end_is_an_error() {
        let f = Fixture::new(1);
        write_one(&f);
        f.ring.write_data(2, &100u16.to_le_bytes()).unwrap();
        let (_, mut r) = f.pair();
        assert!(matches!(
            r.try_read(),
            Err(RingError::CorruptPacket {
                source: PacketError::BadDataOffset { .. },
                ..
            })
        ));
    }

    #[test]
    fn zero_length_descriptor_is_an_error() {
        let f = Fixture::new(1);
        write_one(&f);
        f.ring.write_data(4, &0u16.to_le_bytes()).unwrap();
        let (_, mut r) = f.pair();
        assert!(r.try_read().is_err());
    }

    #[test]
    fn write_index_inside_a_descriptor_is_truncation() {
        let f = Fixture::new(1);
        f.ring.store_control(ControlWord::WriteIndex, 8).unwrap();
        let (_, mut r) = f.pair();
        assert!(matches!(
            r.try_read(),
            Err(RingError::CorruptPacket {
                source: PacketError::Truncated { .. },
                ..
            })
        ));
    }

    fn write_gpa_direct(f: &Fixture) {
        let (mut w, _) = f.pair();
        let ranges = [PagedRange {
            byte_offset: 0,
            byte_count: 4096,
            pfns: &[5],
        }];
        let packet = OutgoingPacket {
            transaction_id: 1,
            completion_requested: false,
            kind: OutgoingPayload::GpaDirect(&ranges),
            payload: &[],
        };
        w.try_write(&packet).unwrap();
    }

    #[test]
    fn gpa_range_count_beyond_the_header_area_is_rejected_at_read() {
        let f = Fixture::new(1);
        write_gpa_direct(&f);
        // Claim a million ranges in a 16-byte range list.
        f.ring
            .write_data(16 + 4, &1_000_000u32.to_le_bytes())
            .unwrap();
        let (_, mut r) = f.pair();
        assert!(matches!(
            r.try_read(),
            Err(RingError::CorruptPacket {
                source: PacketError::BadHeaderSize {
                    packet_type: PacketType::GPA_DIRECT,
                    range_count: 1_000_000,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn malformed_gpa_range_is_an_error_not_a_panic() {
        let f = Fixture::new(1);
        write_gpa_direct(&f);
        // The range word: byte offset 4096 is outside the first page.
        f.ring
            .write_data(16 + 8, &((4096u64 << 32) | 4096).to_le_bytes())
            .unwrap();
        let (_, mut r) = f.pair();
        let (p, _) = r.try_read().unwrap().unwrap();
        assert_eq!(p.gpa_ranges(), Err(PacketError::BadGpaRanges));
        let mut iter = p.view().gpa_range_iter();
        assert_eq!(iter.next(), Some(Err(PacketError::BadGpaRanges)));
        assert_eq!(iter.next(), None);
    }

    /// Ring memory whose data area changes right after each host read (a guest racing the
    /// host): every byte the host just read is inverted in guest memory.
    struct FlipAfterRead {
        inner: PagedRingMem,
        armed: AtomicBool,
    }

    impl RingMem for FlipAfterRead {
        fn data_len(&self) -> usize {
            self.inner.data_len()
        }
        fn load_control(&self, word: ControlWord) -> Result<u32, RingMemError> {
            self.inner.load_control(word)
        }
        fn store_control(&self, word: ControlWord, value: u32) -> Result<(), RingMemError> {
            self.inner.store_control(word, value)
        }
        fn read_data(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingMemError> {
            self.inner.read_data(offset, buf)?;
            if self.armed.load(Ordering::SeqCst) {
                let flipped: Vec<u8> = buf.iter().map(|b| !b).collect();
                self.inner.write_data(offset, &flipped)?;
            }
            Ok(())
        }
        fn write_data(&self, offset: usize, buf: &[u8]) -> Result<(), RingMemError> {
            self.inner.write_data(offset, buf)
        }
    }

    #[test]
    fn descriptor_changed_after_read_does_not_affect_the_host() {
        let f = Fixture::new(1);
        let flip = Arc::new(FlipAfterRead {
            inner: f.ring.clone(),
            armed: AtomicBool::new(true),
        });
        let mut w = OutgoingRing::new(f.ring.clone()).unwrap();
        let mut r = IncomingRing::new(flip.clone()).unwrap();
        for tid in 0..3u64 {
            w.try_write(&OutgoingPacket::in_band(tid, false, &[&[tid as u8; 24]]))
                .unwrap();
        }
        for tid in 0..3u64 {
            // The descriptor in memory is inverted after the host's single read of it; the
            // host keeps using its copy, so lengths and indices stay consistent.
            let (p, _) = r.try_read().unwrap().unwrap();
            assert_eq!(p.transaction_id, tid);
            assert_eq!(p.data(), &[tid as u8; 24]);
        }
        assert!(r.try_read().unwrap().is_none());
        assert_eq!(f.ring.load_control(ControlWord::ReadIndex).unwrap(), 3 * 48);
        assert!(f.sentinels_intact());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the guest puts in the control words and data area, the host's reader and
        /// writer return errors or packets, never panic, and never touch other pages.
        #[test]
        fn arbitrary_ring_contents_never_panic(
            pages in 1usize..3,
            write_index in any::<u32>(),
            read_index in any::<u32>(),
            pending in any::<u32>(),
            garbage in prop::collection::vec(any::<u8>(), 0..512),
            at in 0usize..8192,
        ) {
            let f = Fixture::new(pages);
            let at = at % f.ring.data_len();
            let n = garbage.len().min(f.ring.data_len() - at);
            f.ring.write_data(at, &garbage[..n]).unwrap();
            f.ring.store_control(ControlWord::ReadIndex, (read_index % 8192) & !7).unwrap();
            f.ring.store_control(ControlWord::PendingSendSize, pending).unwrap();
            if let Ok(mut r) = IncomingRing::new(f.ring.clone()) {
                f.ring.store_control(ControlWord::WriteIndex, write_index).unwrap();
                for _ in 0..4 {
                    if let Ok(Some((p, _))) = r.try_read() {
                        let _ = p.gpa_ranges();
                    }
                }
            }
            f.ring.store_control(ControlWord::WriteIndex, (write_index % 8192) & !7).unwrap();
            f.ring.store_control(ControlWord::ReadIndex, read_index).unwrap();
            if let Ok(mut w) = OutgoingRing::new(f.ring.clone()) {
                let _ = w.try_write(&OutgoingPacket::in_band(0, false, &[&garbage]));
            }
            prop_assert!(f.sentinels_intact());
        }
    }
}
