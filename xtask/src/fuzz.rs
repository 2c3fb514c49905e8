//! `cargo xtask fuzz`: discovers and runs the cargo-fuzz targets of every crate.
//!
//! Layout: `<crate>/fuzz/` is a cargo-fuzz crate (libfuzzer-sys + arbitrary) whose `[[bin]]`
//! tables name its targets (sources in `fuzz_targets/`). cargo-fuzz passes nightly-only
//! flags (`-Zsanitizer=address`) to rustc, so on the stable toolchain every invocation sets
//! `RUSTC_BOOTSTRAP=1`. All fuzz crates share `target/fuzz` so dependencies build once.

use crate::run::cargo;
use crate::run::describe;
use crate::run::run as run_cmd;
use crate::run::workspace_root;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use clap::Args;
use clap::Subcommand;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Instant;

/// Arguments of `cargo xtask fuzz`.
#[derive(Args)]
pub(crate) struct FuzzArgs {
    #[command(subcommand)]
    command: FuzzCommand,
}

#[derive(Subcommand)]
enum FuzzCommand {
    /// List every fuzz target as `crate/target`.
    List,
    /// Fuzz one target for a while (or replay one input).
    Run {
        /// Target name, e.g. `fuzz_tdisp_decode`.
        target: String,
        /// Seconds to fuzz for.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Replay this input (a crash artifact) instead of fuzzing.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Build every target and fuzz each one briefly.
    Smoke {
        /// Seconds per target.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// One discovered fuzz target.
pub(crate) struct FuzzTarget {
    /// The crate folder holding `fuzz/`, e.g. `tdisp_proto`.
    pub(crate) krate: String,
    /// The target (binary) name.
    pub(crate) name: String,
}

impl FuzzTarget {
    fn fuzz_dir(&self) -> PathBuf {
        workspace_root().join(&self.krate).join("fuzz")
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.fuzz_dir().join("artifacts").join(&self.name)
    }
}

pub(crate) fn run(args: &FuzzArgs) -> Result<()> {
    match &args.command {
        FuzzCommand::List => {
            for t in discover()? {
                println!("{}/{}", t.krate, t.name);
            }
            Ok(())
        }
        FuzzCommand::Run {
            target,
            seconds,
            input,
        } => {
            let t = find(target)?;
            match input {
                Some(input) => replay(&t, input),
                None => fuzz_one(&t, *seconds),
            }
        }
        FuzzCommand::Smoke { seconds } => smoke(*seconds),
    }
}

/// Builds every fuzz crate, then fuzzes each target for `seconds`.
///
/// Output is one line per target (runs, time, result); a build's or a run's whole log is
/// printed only when it fails, so a green smoke reads in a screen.
pub(crate) fn smoke(seconds: u64) -> Result<()> {
    let targets = discover()?;
    if targets.is_empty() {
        bail!("no fuzz targets found in */fuzz/Cargo.toml");
    }
    let fuzz_dirs: BTreeSet<PathBuf> = targets.iter().map(FuzzTarget::fuzz_dir).collect();
    for dir in &fuzz_dirs {
        let start = Instant::now();
        let log = log_path(dir, "build");
        run_logged(&mut cargo_fuzz("build", dir), &log)?;
        println!(
            "fuzz build {:<40} ok {:>6.1}s",
            dir.strip_prefix(workspace_root()).unwrap_or(dir).display(),
            start.elapsed().as_secs_f64()
        );
    }
    for t in &targets {
        let start = Instant::now();
        let log = log_path(&t.fuzz_dir(), &t.name);
        let outcome = fuzz_logged(t, seconds, &log);
        let secs = start.elapsed().as_secs_f64();
        let runs = std::fs::read_to_string(&log)
            .ok()
            .and_then(|text| libfuzzer_runs(&text))
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let result = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!(
            "fuzz {:<40} {:>12} runs {:>6.1}s {result}",
            format!("{}/{}", t.krate, t.name),
            runs,
            secs
        );
        outcome?;
    }
    println!(
        "fuzz smoke: {} targets, {seconds}s each, no crashes",
        targets.len()
    );
    Ok(())
}

/// Where the captured log of one fuzz build or run goes.
fn log_path(fuzz_dir: &Path, what: &str) -> PathBuf {
    let krate = fuzz_dir
        .parent()
        .and_then(Path::file_name)
        .map_or_else(|| "fuzz".into(), |n| n.to_string_lossy().into_owned());
    workspace_root()
        .join("target")
        .join("fuzz-logs")
        .join(format!("{krate}-{what}.log"))
}

/// Runs `cmd` with stdout and stderr captured in `log`; on failure prints the log and fails.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let line = describe(cmd);
    let status = cmd
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        println!("$ {line}");
        if let Ok(text) = std::fs::read_to_string(log) {
            println!("{text}");
        }
        bail!("`{line}` exited with {status} (log: {})", log.display());
    }
    Ok(())
}

/// The run count libFuzzer reports when it finishes (`Done N runs in S second(s)`), or the last
/// progress line's count (`#N ...`) when it stopped early.
fn libfuzzer_runs(log: &str) -> Option<u64> {
    let done = log.lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix("Done ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    done.or_else(|| {
        log.lines().rev().find_map(|l| {
            l.strip_prefix('#')
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    })
}

/// Fuzzes one target with its output in `log`, reporting any new crash artifact.
fn fuzz_logged(t: &FuzzTarget, seconds: u64, log: &Path) -> Result<()> {
    let before = artifacts(t);
    let mut cmd = cargo_fuzz("run", &t.fuzz_dir());
    cmd.arg(&t.name)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    let result = run_logged(&mut cmd, log);
    report_crashes(t, &before, result)
}

/// Every fuzz target in the workspace, sorted: the `[[bin]]` names of each `<crate>/fuzz/Cargo.toml`
/// (the cargo-fuzz manifest is the source of truth; `fuzz_targets/` may also hold shared modules).
pub(crate) fn discover() -> Result<Vec<FuzzTarget>> {
    let root = workspace_root();
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&root).context("reading workspace root")? {
        let entry = entry?;
        let manifest = entry.path().join("fuzz").join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let krate = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        for name in bin_names(&text) {
            targets.push(FuzzTarget {
                krate: krate.clone(),
                name,
            });
        }
    }
    targets.sort_by(|a, b| (&a.krate, &a.name).cmp(&(&b.krate, &b.name)));
    Ok(targets)
}

/// The `name` of every `[[bin]]` table in a Cargo manifest.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(value) = line.strip_prefix("name").map(str::trim_start)
            && let Some(value) = value.strip_prefix('=')
        {
            names.push(value.trim().trim_matches('"').to_owned());
        }
    }
    names
}

fn find(name: &str) -> Result<FuzzTarget> {
    discover()?
        .into_iter()
        .find(|t| t.name == name || format!("{}/{}", t.krate, t.name) == name)
        .with_context(|| format!("no fuzz target `{name}` (see `cargo xtask fuzz list`)"))
}

/// `cargo fuzz <subcommand>` for the fuzz crate in `fuzz_dir`: the stable-toolchain workaround
/// and the shared target dir, so every invocation builds the same artifacts.
fn cargo_fuzz(subcommand: &str, fuzz_dir: &Path) -> Command {
    let mut cmd = cargo();
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(workspace_root().join("target").join("fuzz"));
    cmd
}

fn fuzz_one(t: &FuzzTarget, seconds: u64) -> Result<()> {
    let before = artifacts(t);
    let mut cmd = cargo_fuzz("run", &t.fuzz_dir());
    cmd.arg(&t.name)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    println!("==> fuzz {}/{} for {seconds}s", t.krate, t.name);
    let result = run_cmd(&mut cmd);
    report_crashes(t, &before, result)
}

/// Fails when the run failed or left new artifacts, printing how to replay each.
fn report_crashes(t: &FuzzTarget, before: &BTreeSet<PathBuf>, result: Result<()>) -> Result<()> {
    let new: Vec<PathBuf> = artifacts(t).difference(before).cloned().collect();
    if result.is_err() || !new.is_empty() {
        for crash in &new {
            println!(
                "crash: {}\n  reproduce: cargo xtask fuzz run {} --input {}",
                crash.display(),
                t.name,
                crash.display()
            );
        }
        bail!(
            "fuzz target {}/{} failed ({} new artifacts)",
            t.krate,
            t.name,
            new.len()
        );
    }
    Ok(())
}

fn replay(t: &FuzzTarget, input: &Path) -> Result<()> {
    let input = std::fs::canonicalize(input)
        .with_context(|| format!("no such input {}", input.display()))?;
    let mut cmd = cargo_fuzz("run", &t.fuzz_dir());
    cmd.arg(&t.name).arg(&input);
    println!("replaying {} on {}", input.display(), describe(&cmd));
    run_cmd(&mut cmd)
}

fn artifacts(t: &FuzzTarget) -> BTreeSet<PathBuf> {
    std::fs::read_dir(t.artifacts_dir())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::bin_names;

    #[test]
    fn libfuzzer_runs_reads_done_line_then_progress() {
        let done = "#1024\tpulse  cov: 10\nDone 52133 runs in 11 second(s)\n";
        assert_eq!(super::libfuzzer_runs(done), Some(52133));
        let stopped = "INFO: seed\n#2\tINITED\n#4096\tpulse cov: 3\n==1== ERROR: crash\n";
        assert_eq!(super::libfuzzer_runs(stopped), Some(4096));
        assert_eq!(super::libfuzzer_runs("nothing"), None);
    }

    #[test]
    fn bin_names_reads_only_bin_tables() {
        let manifest = r#"
[package]
name = "x-fuzz"

[[bin]]
name = "fuzz_a"
path = "fuzz_targets/fuzz_a.rs"

[dependencies]
name = "not-a-bin"

[[bin]]
name="fuzz_b"
"#;
        assert_eq!(bin_names(manifest), ["fuzz_a", "fuzz_b"]);
    }
}
