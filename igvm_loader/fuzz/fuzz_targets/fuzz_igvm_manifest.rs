//! Arbitrary bytes -> manifest parser -> (when it parses) a build whose payload files are
//! the rest of the input: never panics, and a manifest that parses either builds or fails
//! with an error.
//!
//! Input: manifest text, a NUL byte, then payload bytes (every file the manifest names reads
//! as those bytes). Manifests asking for more than 1 GiB of RAM or large parameter areas are
//! only parsed, so each run stays fast.

#![no_main]
#![forbid(unsafe_code)]

use igvm_loader::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

const MAX_BUILD_MEMORY: u64 = 1 << 30;

fuzz_target!(|data: &[u8]| {
    let (text, payload) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text, "fuzz.toml") else {
        return;
    };
    let Ok(ram) = manifest.ram_ranges("fuzz.toml") else {
        return;
    };
    let small = ram
        .iter()
        .all(|&(base, size)| base.saturating_add(size) <= MAX_BUILD_MEMORY)
        && manifest.parameter_areas.iter().all(|a| a.pages <= 64);
    if small {
        let _ = igvm_loader::build::build(&manifest, "fuzz.toml", &|_| Ok(payload.to_vec()));
    }
});
