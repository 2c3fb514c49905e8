//! Build and measure a 256 MiB SNP + TDX image; compare with the `igvm` crate's measurement
//! and with raw SHA-384 of the same bytes (one core, all cores).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "bench code")]

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use igvm::IgvmFile;
use igvm_defs::IgvmPlatformType;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::measure::MeasureOptions;
use rayon::prelude::*;
use sha2::Digest;
use sha2::Sha384;
use std::hint::black_box;
use std::time::Duration;

const IMAGE_BYTES: usize = 256 << 20;

fn image_data() -> Vec<u8> {
    // Cheap, non-repeating content so no page is trivially equal to another.
    (0..IMAGE_BYTES / 8)
        .flat_map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect()
}

fn build(data: &[u8]) -> IgvmFile {
    let mut b = IgvmBuilder::<X86Register>::new();
    for t in [IsolationType::Snp, IsolationType::Tdx] {
        b.add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap()
            .import_pages(
                0x100,
                (data.len() / 4096) as u64,
                "image",
                BootPageAcceptance::Exclusive,
                data,
            )
            .unwrap();
    }
    b.build().unwrap()
}

fn benches(c: &mut Criterion) {
    let data = image_data();
    let file = build(&data);
    let opts = MeasureOptions::default();
    let mut g = c.benchmark_group("256MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));

    g.bench_function("build_snp_tdx", |b| b.iter(|| black_box(build(&data))));
    g.bench_function("ours_snp_tdx", |b| {
        b.iter(|| igvm_loader::measure::measure_all(black_box(&file), &opts).unwrap());
    });
    g.bench_function("igvm_crate_snp_tdx", |b| {
        b.iter(|| igvm::IgvmSerializer::new(black_box(&file)).unwrap());
    });
    g.bench_function("ours_snp", |b| {
        b.iter(|| igvm_loader::measure::measure(black_box(&file), IsolationType::Snp, &opts));
    });
    g.bench_function("igvm_crate_snp", |b| {
        b.iter(|| {
            igvm::measurement::generate_snp_measurement(
                file.initializations(),
                black_box(file.directives()),
                1,
            )
            .unwrap()
        });
    });
    g.bench_function("ours_tdx", |b| {
        b.iter(|| igvm_loader::measure::measure(black_box(&file), IsolationType::Tdx, &opts));
    });
    g.bench_function("sha384_one_core", |b| {
        b.iter(|| Sha384::digest(black_box(&data)));
    });
    g.bench_function("sha384_all_cores", |b| {
        b.iter(|| {
            black_box(&data)
                .par_chunks(4096)
                .map(|p| <[u8; 48]>::from(Sha384::digest(p)))
                .collect::<Vec<_>>()
        });
    });
    g.finish();

    // The digests the bench compares are the same digests.
    // The igvm crate measures as Hyper-V launches.
    let ours = igvm_loader::measure::measure_all(
        &file,
        &MeasureOptions::for_vmm(igvm_loader::measure::Vmm::Hyperv),
    )
    .unwrap();
    let theirs = igvm::IgvmSerializer::new(&file).unwrap();
    for m in ours {
        let platform = match m.platform.as_str() {
            "snp" => IgvmPlatformType::SEV_SNP,
            _ => IgvmPlatformType::TDX,
        };
        assert_eq!(
            m.digest_bytes(),
            theirs.measurement_for(platform).unwrap().digest
        );
    }
}

criterion_group!(measure, benches);
criterion_main!(measure);
