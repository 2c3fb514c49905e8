//! Round trips through the whole split driver: frontend -> shared pages -> backend ->
//! multiplexed stream -> vTPM manager -> in-process engine -> back, for a 10-byte command
//! (TPM2_ReadClock header) and a 4 KiB command, on protocols v1 and v2. The reference in the
//! same run is the engine alone (`SimTpm::execute_command` on the same bytes).
//! Everything runs on one current-thread tokio runtime.

#![expect(clippy::unwrap_used, reason = "bench setup fails loudly")]

use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::engine::SimTpm;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::Testbed;

fn commands() -> [(&'static str, Vec<u8>); 2] {
    let small = vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x81];
    let mut big = vec![0u8; 4096];
    big[..10].copy_from_slice(&[0x80, 0x01, 0, 0, 0x10, 0x00, 0x20, 0, 0, 0]);
    [("10B", small), ("4KiB", big)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1, 2]).unwrap();
    rt.spawn(run);
    let mut fronts = Vec::new();
    for (i, (name, protocols)) in [("v1", Protocols::V1_ONLY), ("v2", Protocols::V2_ONLY)]
        .into_iter()
        .enumerate()
    {
        let guest = bed.add_guest(DomainId(2 + i as u16)).unwrap();
        bed.add_device(guest.id(), 0, 1 + i as u32).unwrap();
        let config = FrontendConfig {
            protocols,
            ..FrontendConfig::default()
        };
        fronts.push((
            name,
            rt.block_on(Frontend::connect(&guest, config)).unwrap(),
        ));
    }
    let engine = SimTpm::started();
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for (size, cmd) in commands() {
        group.bench_with_input(BenchmarkId::new("engine_only", size), &cmd, |b, cmd| {
            b.iter(|| black_box(engine.execute_command(cmd, 0).unwrap()));
        });
        for (name, front) in &fronts {
            group.bench_with_input(BenchmarkId::new(*name, size), &cmd, |b, cmd| {
                b.iter(|| black_box(rt.block_on(front.transmit(cmd)).unwrap()));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
