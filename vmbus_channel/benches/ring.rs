//! Ring benchmarks (placeholder until the ring lands).
fn main() {}
