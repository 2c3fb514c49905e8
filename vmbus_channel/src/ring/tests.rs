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
        Read,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3000).prop_map(Op::Write),
            (0usize..40).prop_map(Op::Write),
            Just(Op::Read),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any interleaving of writes and reads behaves like a queue with the ring's capacity.
        #[test]
        fn ring_matches_queue_model(pages in 1usize..4, ops in prop::collection::vec(op(), 1..120)) {
            let f = Fixture::new(pages);
            let (mut w, mut r) = f.pair();
            let capacity = pages * PAGE_SIZE;
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut used = 0usize;
            let mut tid = 0u64;
            for op in ops {
                match op {
                    Op::Write(n) => {
                        tid += 1;
                        let data: Vec<u8> = (0..n).map(|i| (i as u64 ^ tid) as u8).collect();
                        let size = OutgoingRing::<PagedRingMem>::packet_size(0, n);
                        let result = w.try_write(&OutgoingPacket::in_band(tid, false, &[&data]));
                        if size >= capacity {
                            let too_large = matches!(result, Err(TryWriteError::TooLarge(_)));
                            prop_assert!(too_large);
                        } else if size < capacity - used {
                            prop_assert!(result.is_ok());
                            used += size;
                            model.push_back((tid, data));
                        } else {
                            let full = matches!(result, Err(TryWriteError::Full { .. }));
                            prop_assert!(full);
                        }
                    }
                    Op::Read => {
                        let got = r.try_read().unwrap();
                        match model.pop_front() {
                            None => prop_assert!(got.is_none()),
                            Some((t, data)) => {
                                let (p, _) = got.unwrap();
                                prop_assert_eq!(p.transaction_id, t);
                                prop_assert_eq!(&p.data()[..data.len()], &data[..]);
                                prop_assert!(p.data()[data.len()..].iter().all(|&b| b == 0));
                                used -= OutgoingRing::<PagedRingMem>::packet_size(0, data.len());
                            }
                        }
                    }
                }
            }
            prop_assert!(f.sentinels_intact());
        }
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

    #[test]
    fn malformed_gpa_range_list_is_an_error_not_a_panic() {
        let f = Fixture::new(1);
        let (mut w, mut r) = f.pair();
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
        // Claim a million ranges.
        f.ring
            .write_data(16 + 4, &1_000_000u32.to_le_bytes())
            .unwrap();
        let (p, _) = r.try_read().unwrap().unwrap();
        assert_eq!(p.gpa_ranges(), Err(PacketError::BadGpaRanges));
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
