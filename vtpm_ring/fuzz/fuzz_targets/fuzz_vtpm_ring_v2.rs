//! Protocol v2: a hostile frontend writes arbitrary bytes into its shared pages, sets any state
//! and rings the doorbell in any order. The backend must never panic, and afterwards must still
//! answer a well-formed request (it never gets stuck). With or without `feature-vtpm-control`
//! (the first input value), so control requests tagged in the pages get the same treatment.

#![forbid(unsafe_code)]
#![no_main]

#[path = "harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;
use vtpm_ring::protocol::ProtocolVersion;

fuzz_target!(|input: (bool, Vec<harness::Op>)| {
    let (control, ops) = input;
    let mut h = harness::Harness::new(ProtocolVersion::V2, control);
    for op in ops.iter().take(256) {
        h.apply(op);
    }
    h.check_still_serves();
});
