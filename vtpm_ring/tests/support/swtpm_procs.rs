//! Shared by the test binaries that check which swtpm processes run on a state directory.

use std::path::Path;
use std::time::Duration;
use std::time::Instant;

/// Pids of the swtpm processes whose `--tpmstate dir=` lies under `root` (a zombie has no
/// command line, so it does not count as running).
pub fn swtpm_under(root: &Path) -> Vec<u32> {
    let needle = format!("dir={}", root.display());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_swtpm = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "swtpm"));
        if is_swtpm && args.iter().any(|a| a.starts_with(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every swtpm on `root` (the clean-up after a test that found some left).
pub fn kill_all_under(root: &Path) {
    for pid in swtpm_under(root) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Waits up to `secs` for no swtpm to run on `root`; returns those still running then.
pub async fn swtpm_left_after(root: &Path, secs: u64) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = swtpm_under(root);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
