//! Ring benchmarks: the raw data-copy layer against a plain `memcpy` of the same bytes, whole
//! packets on one thread, and a producer and a consumer on two threads.
//!
//! Run with `cargo bench -p vmbus_channel --bench ring -- --warm-up-time 1 --measurement-time 2`.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use cpu_time::ThreadTime;
use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use std::time::Duration;
use std::time::Instant;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::ring::IncomingRing;
use vmbus_channel::ring::OutgoingPacket;
use vmbus_channel::ring::OutgoingRing;
use vmbus_channel::ring::PagedRingMem;
use vmbus_channel::ring::RingMem;
use vmbus_channel::ring::TryWriteError;

fn ring_mem(pfns: &[u64]) -> PagedRingMem {
    let mem = GuestMemory::new(64 * PAGE_SIZE).unwrap();
    let ring = PagedRingMem::new(mem, pfns).unwrap();
    ring.initialize().unwrap();
    ring
}

/// A host buffer whose usable part starts on a page boundary, so a baseline `memcpy` can
/// use the same in-page offsets as the ring copy it is compared with (copy speed depends on
/// the relative alignment of source and destination).
struct PageAligned {
    buf: Vec<u8>,
    start: usize,
}

impl PageAligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + PAGE_SIZE];
        let start = (PAGE_SIZE - buf.as_ptr() as usize % PAGE_SIZE) % PAGE_SIZE;
        Self { buf, start }
    }

    fn at(&mut self, offset: usize, len: usize) -> &mut [u8] {
        &mut self.buf[self.start + offset..self.start + offset + len]
    }
}

/// Two `memcpy`s of the same bytes, in the same places, in the same memory as the ring: the
/// payload of consecutive packets copied into the ring's data pages at the offset the ring
/// puts it (each packet starts where the last ended, and a payload running past the end
/// continues at the start), then the whole packet copied out. Plain copies through
/// [`RingMem`], with no framing, indices or checks: what the ring costs beyond this is its
/// own per-packet work.
struct RingPlaced {
    ring: PagedRingMem,
    size: usize,
    packet_start: usize,
}

impl RingPlaced {
    fn new(ring: PagedRingMem) -> Self {
        let size = ring.data_len();
        Self {
            ring,
            size,
            packet_start: 0,
        }
    }

    fn copy_in_out(&mut self, src: &[u8], dst: &mut [u8]) {
        let (len, total) = (src.len(), dst.len());
        let start = (self.packet_start + 16) % self.size;
        let first = len.min(self.size - start);
        self.ring.write_data(start, &src[..first]).unwrap();
        self.ring.write_data(0, &src[first..]).unwrap();
        let first = total.min(self.size - self.packet_start);
        let (a, b) = dst.split_at_mut(first);
        self.ring.read_data(self.packet_start, a).unwrap();
        self.ring.read_data(0, b).unwrap();
        self.packet_start = (self.packet_start + total) % self.size;
    }
}

/// Copies of 16 B, 256 B and 8 KiB that straddle a page boundary, through the ring's copy
/// layer (scattered and contiguous pages) and through `memcpy`.
fn copy_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy");
    // Control page 1; data pages out of order so that each page is its own piece.
    let scattered = ring_mem(&[1, 10, 4, 7, 12]);
    let contiguous = ring_mem(&[1, 2, 3, 4, 5]);
    for len in [16usize, 256, 8192] {
        let offset = PAGE_SIZE - len.min(PAGE_SIZE) / 2;
        let src: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut dst = vec![0u8; len];
        let mut host = PageAligned::new(3 * PAGE_SIZE);
        group.throughput(Throughput::Bytes(len as u64));
        // Baselines: the same bytes to/from a page-aligned host buffer at the ring's offset.
        group.bench_function(BenchmarkId::new("memcpy_in", len), |b| {
            b.iter(|| black_box(host.at(offset, len)).copy_from_slice(black_box(&src[..])));
        });
        group.bench_function(BenchmarkId::new("memcpy_out", len), |b| {
            b.iter(|| black_box(&mut dst[..]).copy_from_slice(black_box(host.at(offset, len))));
        });
        for (name, ring) in [("scattered", &scattered), ("contiguous", &contiguous)] {
            group.bench_function(BenchmarkId::new(format!("write_{name}"), len), |b| {
                b.iter(|| ring.write_data(black_box(offset), black_box(&src)).unwrap());
            });
            group.bench_function(BenchmarkId::new(format!("read_{name}"), len), |b| {
                b.iter(|| {
                    ring.read_data(black_box(offset), black_box(&mut dst))
                        .unwrap();
                });
            });
        }
    }
    group.finish();
}

/// One packet written and read back on one thread (descriptor, payload, footer, both index
/// updates), against two `memcpy`s of the payload (the bytes go in once and out once): at a
/// fixed, favourable offset in host memory (`memcpy_x2`, the review's reference) and at the
/// ring's own offsets in the ring's own memory (`memcpy_x2_ring_memory`).
///
/// Times are on-CPU time of the benchmark thread.
///
/// `write_peek_commit` is the in-place path (the packet is copied once into the reader's
/// buffer and lent out); `write_read_into` also copies it into a caller's packet.
fn whole_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("packet_one_thread");
    // Two data pages: the smallest ring a 4 KiB packet fits, so the ring stays cache-hot like
    // the memcpy buffers it is compared with.
    let ring = ring_mem(&[1, 2, 3]);
    let mut writer = OutgoingRing::new(ring.clone()).unwrap();
    let mut reader = IncomingRing::new(ring).unwrap();
    for len in [64usize, 1024, 4096] {
        let payload = vec![0x5au8; len];
        let mut dst = vec![0u8; len];
        let mut host = PageAligned::new(2 * PAGE_SIZE);
        let mut packet = IncomingPacket::default();
        group.throughput(Throughput::Bytes(len as u64));
        // Baseline: the payload copied in behind a 16-byte descriptor and copied out again.
        group.bench_function(BenchmarkId::new("memcpy_x2", len), |b| {
            b.iter_custom(|iters| {
                on_cpu(iters, || {
                    black_box(host.at(16, len)).copy_from_slice(black_box(&payload[..]));
                    black_box(&mut dst[..]).copy_from_slice(black_box(host.at(16, len)));
                })
            });
        });
        // Descriptor, payload padded to 8, footer.
        let mut whole = vec![0u8; 16 + len.next_multiple_of(8) + 8];
        let mut placed = RingPlaced::new(ring_mem(&[1, 2, 3]));
        group.bench_function(BenchmarkId::new("memcpy_x2_ring_memory", len), |b| {
            b.iter_custom(|iters| {
                on_cpu(iters, || {
                    placed.copy_in_out(black_box(&payload), black_box(&mut whole));
                })
            });
        });
        group.bench_function(BenchmarkId::new("write_peek_commit", len), |b| {
            b.iter_custom(|iters| {
                on_cpu(iters, || {
                    writer
                        .try_write(&OutgoingPacket::in_band(1, false, &[black_box(&payload)]))
                        .unwrap();
                    let view = reader.peek().unwrap().unwrap();
                    assert_eq!(black_box(view.data()).len(), len);
                    reader.commit().unwrap();
                })
            });
        });
        group.bench_function(BenchmarkId::new("write_read_into", len), |b| {
            b.iter_custom(|iters| {
                on_cpu(iters, || {
                    writer
                        .try_write(&OutgoingPacket::in_band(1, false, &[black_box(&payload)]))
                        .unwrap();
                    reader.try_read_into(&mut packet).unwrap().unwrap();
                    assert_eq!(black_box(packet.data()).len(), len);
                })
            });
        });
    }
    group.finish();
}

/// Runs `f` `iters` times and returns the time this thread spent on a CPU meanwhile: the
/// machines these run on are shared, and wall time would also count other processes' turns.
fn on_cpu(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = ThreadTime::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// A producer thread and a consumer thread, polling (no interrupts).
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc");
    for len in [64usize, 1024, 4096] {
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("packets", len), |b| {
            b.iter_custom(|iters| {
                // 16 data pages (64 KiB) per ring.
                let pfns: Vec<u64> = (1..=17).collect();
                let ring = ring_mem(&pfns);
                let mut writer = OutgoingRing::new(ring.clone()).unwrap();
                let mut reader = IncomingRing::new(ring).unwrap();
                let consumer = std::thread::spawn(move || {
                    let mut packet = IncomingPacket::default();
                    let mut n = 0;
                    while n < iters {
                        if reader.try_read_into(&mut packet).unwrap().is_some() {
                            n += 1;
                        } else {
                            // Yield rather than spin: the cores are shared.
                            std::thread::yield_now();
                        }
                    }
                });
                let payload = vec![0x5au8; len];
                let start = Instant::now();
                let mut n = 0;
                while n < iters {
                    match writer.try_write(&OutgoingPacket::in_band(n, false, &[&payload])) {
                        Ok(_) => n += 1,
                        Err(TryWriteError::Full { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
                consumer.join().unwrap();
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = copy_layer, whole_packet, two_threads
}
criterion_main!(benches);
