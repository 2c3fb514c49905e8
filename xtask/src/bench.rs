//! `cargo xtask bench`: the criterion benches.

use crate::run::cargo;
use crate::run::run as run_cmd;
use anyhow::Result;
use clap::Args;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Only this package's benches (default: every package).
    #[arg(short, long)]
    package: Option<String>,
    /// Only this bench target.
    #[arg(long)]
    bench: Option<String>,
    /// Extra arguments for criterion (after `--`), e.g. a filter or `--quick`.
    #[arg(last = true)]
    criterion_args: Vec<String>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "--locked"]);
    match &args.package {
        Some(p) => cmd.args(["--package", p]),
        None => cmd.arg("--workspace"),
    };
    if let Some(b) = &args.bench {
        cmd.args(["--bench", b]);
    }
    if !args.criterion_args.is_empty() {
        cmd.arg("--").args(&args.criterion_args);
    }
    run_cmd(&mut cmd)
}
