//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.

use crate::deps;
use crate::fuzz;
use crate::run::cargo;
use crate::run::on_path;
use crate::run::packages;
use crate::run::print_step_summary;
use crate::run::run as run_cmd;
use crate::run::rust_files;
use crate::run::step;
use crate::run::workspace_root;
use anyhow::Result;
use clap::Args;
use std::time::Instant;

/// Arguments of `cargo xtask test`.
#[derive(Args)]
pub(crate) struct TestArgs {
    /// Skip clippy, rustdoc and the fuzz smoke runs.
    #[arg(long)]
    quick: bool,
    /// Seconds each fuzz target runs in the smoke step (a smoke test: the long runs are
    /// `cargo xtask fuzz run`; 21 targets at 5 s keep CI well under its 25-minute budget).
    #[arg(long, default_value_t = 5)]
    fuzz_seconds: u64,
    /// Do not check or install system tools first.
    #[arg(long)]
    no_deps: bool,
}

pub(crate) fn run(args: &TestArgs) -> Result<()> {
    let start = Instant::now();
    let result = run_steps(args);
    print_step_summary(start.elapsed().as_secs_f64());
    match &result {
        Ok(()) => println!("all checks passed in {:.1}s", start.elapsed().as_secs_f64()),
        Err(err) => println!("{err:#}"),
    }
    result
}

fn run_steps(args: &TestArgs) -> Result<()> {
    if !args.no_deps {
        step("deps", || deps::run(&deps::DepsArgs::default()))?;
    }
    step("fmt", fmt)?;
    step("forbid unsafe", crate::policy::forbid_unsafe)?;
    if !args.quick {
        step("clippy", || {
            run_cmd(cargo().args([
                "clippy",
                "--locked",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        step("doc", || {
            run_cmd(
                cargo()
                    .args(["doc", "--locked", "--workspace", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings"),
            )
        })?;
    }
    step("tests", || {
        if on_path("cargo-nextest") {
            run_cmd(cargo().args(["nextest", "run", "--locked", "--workspace"]))
        } else {
            println!("cargo-nextest not installed; using cargo test");
            run_cmd(cargo().args([
                "test",
                "--locked",
                "--workspace",
                "--lib",
                "--bins",
                "--tests",
            ]))
        }
    })?;
    step("doc tests", || {
        run_cmd(cargo().args(["test", "--locked", "--workspace", "--doc"]))
    })?;
    step("examples", examples)?;
    if !args.quick {
        step("fuzz smoke", || fuzz::smoke(args.fuzz_seconds))?;
    }
    Ok(())
}

/// Formatting of the workspace and of every fuzz crate (those are separate workspaces).
fn fmt() -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    let mut dirs: Vec<_> = fuzz::discover()?.into_iter().map(|t| t.krate).collect();
    dirs.dedup();
    for krate in dirs {
        let manifest = workspace_root().join(krate).join("fuzz").join("Cargo.toml");
        run_cmd(
            cargo()
                .args(["fmt", "--check", "--manifest-path"])
                .arg(manifest),
        )?;
    }
    Ok(())
}

/// Runs every `<crate>/examples/<name>.rs`: each example is a runnable, self-checking program.
fn examples() -> Result<()> {
    let mut found = Vec::new();
    for package in packages(&workspace_root())? {
        let krate = package
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for path in rust_files(&package.join("examples"))? {
            if let Some(stem) = path.file_stem() {
                found.push((krate.clone(), stem.to_string_lossy().into_owned()));
            }
        }
    }
    found.sort();
    for (krate, example) in &found {
        run_cmd(cargo().args([
            "run",
            "--locked",
            "--quiet",
            "--package",
            krate,
            "--example",
            example,
        ]))?;
    }
    println!("{} examples ran", found.len());
    Ok(())
}
