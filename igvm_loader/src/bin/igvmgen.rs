//! igvmgen placeholder
fn main() {}
