//! Interleaved timing of the measurement paths on one 256 MiB SNP + TDX image, printed as
//! ratios. Rounds alternate between the contenders so that load from other processes on the
//! machine hits all of them alike; each figure is the best of its rounds.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "bench code")]

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
use std::time::Instant;

const IMAGE_BYTES: usize = 256 << 20;
const ROUNDS: usize = 5;

fn main() {
    let data: Vec<u8> = (0..IMAGE_BYTES / 8)
        .flat_map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect();
    let mut b = IgvmBuilder::<X86Register>::new();
    for t in [IsolationType::Snp, IsolationType::Tdx] {
        b.add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap()
            .import_pages(
                0x100,
                (IMAGE_BYTES / 4096) as u64,
                "image",
                BootPageAcceptance::Exclusive,
                &data,
            )
            .unwrap();
    }
    let file = b.build().unwrap();
    let opts = MeasureOptions::default();

    type Job<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let jobs: Vec<Job<'_>> = vec![
        (
            "sha384_one_core",
            Box::new(|| {
                black_box(Sha384::digest(&data));
            }),
        ),
        (
            "sha384_all_cores",
            Box::new(|| {
                black_box(
                    data.par_chunks(4096)
                        .map(|p| <[u8; 48]>::from(Sha384::digest(p)))
                        .collect::<Vec<_>>(),
                );
            }),
        ),
        (
            "ours_snp",
            Box::new(|| {
                black_box(igvm_loader::measure::measure(&file, IsolationType::Snp, &opts).unwrap());
            }),
        ),
        (
            "igvm_crate_snp",
            Box::new(|| {
                black_box(
                    igvm::measurement::generate_snp_measurement(
                        file.initializations(),
                        file.directives(),
                        1,
                    )
                    .unwrap(),
                );
            }),
        ),
        (
            "ours_tdx",
            Box::new(|| {
                black_box(igvm_loader::measure::measure(&file, IsolationType::Tdx, &opts).unwrap());
            }),
        ),
        (
            "igvm_crate_tdx",
            Box::new(|| {
                black_box(
                    igvm::measurement::generate_tdx_measurement(file.directives(), 2).unwrap(),
                );
            }),
        ),
        (
            "ours_snp_tdx",
            Box::new(|| {
                black_box(igvm_loader::measure::measure_all(&file, &opts).unwrap());
            }),
        ),
        (
            "igvm_crate_snp_tdx",
            Box::new(|| {
                black_box(igvm::IgvmSerializer::new(&file).unwrap());
            }),
        ),
    ];
    let mut best = vec![Duration::MAX; jobs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, job)) in jobs.iter().enumerate() {
            let start = Instant::now();
            job();
            best[i] = best[i].min(start.elapsed());
        }
    }
    let get = |name: &str| {
        let i = jobs.iter().position(|(n, _)| *n == name).unwrap();
        best[i].as_secs_f64()
    };
    for ((name, _), t) in jobs.iter().zip(&best) {
        println!("{name:>20}: {:8.1} ms", t.as_secs_f64() * 1e3);
    }
    println!(
        "ratio igvm_crate_snp / ours_snp           = {:.2}",
        get("igvm_crate_snp") / get("ours_snp")
    );
    println!(
        "ratio igvm_crate_snp_tdx / ours_snp_tdx   = {:.2}",
        get("igvm_crate_snp_tdx") / get("ours_snp_tdx")
    );
    println!(
        "ratio ours_snp / sha384_one_core          = {:.2}",
        get("ours_snp") / get("sha384_one_core")
    );
    println!(
        "ratio ours_snp / sha384_all_cores         = {:.2}",
        get("ours_snp") / get("sha384_all_cores")
    );
    println!("rayon threads: {}", rayon::current_num_threads());
}
