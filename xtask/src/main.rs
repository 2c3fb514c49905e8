//! The project's task runner: `cargo xtask <command>`.
//!
//! `cargo xtask test` is the one command CI runs (see `.ci/run`); `deps` installs the system
//! tools the tests need; `fuzz` discovers and runs the cargo-fuzz targets under `*/fuzz/`;
//! `bench` runs the criterion benches; `demo` plays one confidential guest's life end to end.

#![forbid(unsafe_code)]

mod bench;
mod deps;
mod fuzz;
mod interop;
mod policy;
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
    /// Run our SPDM stack against an external peer (opt-in; needs the peer's binaries).
    Interop(interop::InteropArgs),
    /// Play one confidential guest's life: measured image, device attestation, vTPM quote.
    Demo(DemoArgs),
}

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
struct DemoArgs {
    /// Platforms to build the image for (repeat the flag; default: snp, tdx and native).
    #[arg(long = "platform", value_enum)]
    platforms: Vec<xtask::demo::Platform>,
    /// TDISP devices the host assigns to the guest.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Leave the vTPM served afterwards for tpm2-tools, and print how to reach it.
    #[arg(long)]
    keep: bool,
    /// Also write the timeline as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Build the image from this kernel instead of Debian's /boot/vmlinuz-*.
    #[arg(long)]
    kernel: Option<std::path::PathBuf>,
    /// Do not check or install system tools first.
    #[arg(long)]
    no_deps: bool,
}

fn demo(args: &DemoArgs) -> Result<()> {
    if !args.no_deps {
        run::step("deps", || deps::run(&deps::DepsArgs::default()))?;
    }
    let mut options = xtask::demo::DemoOptions {
        devices: args.devices,
        keep: args.keep,
        kernel: args.kernel.clone(),
        ..Default::default()
    };
    if !args.platforms.is_empty() {
        options.platforms.clone_from(&args.platforms);
    }
    let (timeline, result) = xtask::demo::run(&options);
    println!("{}", xtask::demo::render(&timeline));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&timeline)?)?;
        println!("timeline written to {}", path.display());
    }
    result
}

fn main() -> Result<()> {
    // Library diagnostics (refusals, timeouts) go to stderr; RUST_LOG=debug shows more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Deps(args) => deps::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Interop(args) => interop::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo(&args),
    }
}
