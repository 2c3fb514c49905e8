//! Placeholder replaced by the cycle bench.
fn main() {}
