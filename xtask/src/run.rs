//! Running commands and timing steps.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// One finished step: its name, seconds taken and whether it passed.
#[derive(Clone, Debug)]
pub(crate) struct StepRecord {
    pub(crate) name: String,
    pub(crate) secs: f64,
    pub(crate) ok: bool,
}

/// Every step this process has finished, in order, for the closing summary.
static STEPS: Mutex<Vec<StepRecord>> = Mutex::new(Vec::new());

/// The steps finished so far.
pub(crate) fn finished_steps() -> Vec<StepRecord> {
    STEPS.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Prints the closing table of step times (also after a failure, so a slow or failed step is
/// visible without scrolling back).
pub(crate) fn print_step_summary(total_secs: f64) {
    println!("\nsummary:");
    for s in finished_steps() {
        let result = if s.ok { "ok" } else { "FAILED" };
        println!("  {:<12} {:<7} {:>7.1}s", s.name, result, s.secs);
    }
    println!("  {:<12} {:<7} {:>7.1}s", "total", "", total_secs);
}

/// The package directories directly under `root` (those that hold a `Cargo.toml`), sorted.
pub(crate) fn packages(root: &Path) -> Result<Vec<PathBuf>> {
    entries(root, |p| p.join("Cargo.toml").is_file())
}

/// The `.rs` files directly in `dir` (none if it does not exist), sorted.
pub(crate) fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, |p| {
        p.is_file() && p.extension().is_some_and(|e| e == "rs")
    })
}

/// The entries directly in `dir` that `keep` accepts (none if `dir` does not exist), sorted.
pub(crate) fn entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if keep(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The workspace root (the parent of the xtask crate).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A `cargo` command rooted at the workspace, using the cargo that runs xtask.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Describes a command the way a user would type it, for logs and error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and fails if it does not exit successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` exited with {status}");
    }
    Ok(())
}

/// Whether `program` can be found on `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Runs one named step: prints a header, the step's time, and names the step on failure.
pub(crate) fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f();
    let secs = start.elapsed().as_secs_f64();
    if let Ok(mut steps) = STEPS.lock() {
        steps.push(StepRecord {
            name: name.to_owned(),
            secs,
            ok: result.is_ok(),
        });
    }
    match result {
        Ok(()) => {
            println!("<== {name}: ok ({secs:.1}s)");
            Ok(())
        }
        Err(err) => {
            println!("<== {name}: FAILED ({secs:.1}s)");
            Err(err.context(format!("step `{name}` failed")))
        }
    }
}
