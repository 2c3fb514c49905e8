//! Arbitrary bytes -> parse -> measure every platform with both SNP conventions: never panics.
//!
//! The first byte picks whether the header checksum is repaired first, so the fuzzer gets
//! past the CRC and into the header and measurement code.

#![no_main]
#![forbid(unsafe_code)]

use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::VmsaGpa;
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
    for (zero_pages, vmsa_gpa) in [
        (ZeroPages::Zero, VmsaGpa::Kvm),
        (ZeroPages::Normal, VmsaGpa::File),
    ] {
        let options = MeasureOptions {
            zero_pages,
            vmsa_gpa,
            // Keep each input fast: hostile files may declare huge areas of empty pages.
            max_pages: 1 << 12,
        };
        let _ = igvm_loader::measure::measure_all(&file, &options);
    }
});
