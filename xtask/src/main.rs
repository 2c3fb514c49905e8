//! The project's task runner: `cargo xtask <command>`.
//!
//! `cargo xtask test` is the one command CI runs (see `.ci/run`); `deps` installs the system
//! tools the tests need; `fuzz` discovers and runs the cargo-fuzz targets under `*/fuzz/`;
//! `bench` runs the criterion benches.

#![forbid(unsafe_code)]

mod bench;
mod deps;
mod fuzz;
mod run;
mod test;

use anyhow::Result;
use clap::Parser;
use clap::Subcommand;

/// Command-line interface of `cargo xtask`.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, fuzz and benchmark the workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format, lint, document, test and fuzz-smoke the whole workspace.
    Test(test::TestArgs),
    /// Check for the system tools the tests and demo need and install what is missing.
    Deps(deps::DepsArgs),
    /// List, run or smoke-test the fuzz targets.
    Fuzz(fuzz::FuzzArgs),
    /// Run the criterion benchmarks.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Deps(args) => deps::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
