//! Round-trip bench (filled in below).

fn main() {}
