//! Arbitrary bytes -> parse -> measure every platform under both VMM presets and the
//! PAGE_TYPE_ZERO convention: never panics, never measures more pages than the limit, and a
//! repeated platform list gives one result per platform.
//!
//! The first byte picks whether the header checksum is repaired first, so the fuzzer gets
//! past the CRC and into the header and measurement code.

#![no_main]
#![forbid(unsafe_code)]

use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::Vmm;
use igvm_loader::measure::ZeroPages;
use libfuzzer_sys::fuzz_target;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Sets the fixed header's checksum to the CRC of the headers, when the offsets allow it.
fn repair_checksum(bytes: &mut [u8]) {
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (Some(offset), Some(size)) = (word(bytes, 8), word(bytes, 12)) else {
        return;
    };
    let Some(end) = offset.checked_add(size).map(|e| e as usize) else {
        return;
    };
    if end > bytes.len() || end < 24 {
        return;
    }
    bytes[20..24].fill(0);
    let crc = crc32(&bytes[..end]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        repair_checksum(&mut bytes);
    }
    let Ok(file) = igvm_loader::parse(&bytes) else {
        return;
    };
    let _ = igvm_loader::dump::dump(&file);
    // Keep each input fast: hostile files may declare huge areas of empty pages.
    const MAX_PAGES: u64 = 1 << 12;
    let zero = MeasureOptions {
        zero_pages: ZeroPages::Zero,
        ..MeasureOptions::for_vmm(Vmm::Qemu)
    };
    for options in [
        MeasureOptions::for_vmm(Vmm::Qemu),
        MeasureOptions::for_vmm(Vmm::Hyperv),
        zero,
    ] {
        let options = MeasureOptions {
            max_pages: MAX_PAGES,
            ..options
        };
        let platforms: Vec<_> = igvm_loader::measure::measurable_platforms(&file)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let twice: Vec<_> = platforms.iter().chain(&platforms).copied().collect();
        if let Ok(results) =
            igvm_loader::measure::measure_platforms_with_progress(&file, &twice, &options, &())
        {
            assert!(results.len() <= platforms.len());
            for m in &results {
                assert!(m.pages <= MAX_PAGES, "{} pages measured", m.pages);
            }
        }
    }
});
