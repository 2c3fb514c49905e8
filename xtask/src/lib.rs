//! The library half of the task runner: `cargo xtask demo`'s entry point, so that a test can run
//! the demo and check each step's result without reading the binary's text.
//!
//! Start with [`demo::run`]: it plays one confidential guest's life with the workspace's
//! library crates, as a VMM would, and returns a [`demo::Timeline`].

#![forbid(unsafe_code)]

pub mod demo;
