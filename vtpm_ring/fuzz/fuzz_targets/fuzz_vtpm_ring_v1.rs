//! Protocol v1: a hostile frontend writes arbitrary bytes into its shared pages, sets any state
//! and rings the doorbell in any order. The backend must never panic, and afterwards must still
//! answer a well-formed request (it never gets stuck).

#![no_main]

#[path = "harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;
use vtpm_ring::protocol::ProtocolVersion;

fuzz_target!(|ops: Vec<harness::Op>| {
    let mut h = harness::Harness::new(ProtocolVersion::V1);
    for op in ops.iter().take(256) {
        h.apply(op);
    }
    h.check_still_serves();
});
