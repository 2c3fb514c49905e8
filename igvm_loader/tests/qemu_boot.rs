//! The proof that images boot: Debian's kernel and a busybox initramfs, built into an IGVM
//! file by `igvmgen build` from the linux-direct example manifest, run by `igvmgen qemu` on a
//! stock QEMU, print a marker on the serial console.
//!
//! Skipped with a message when the kernel, busybox or QEMU is missing, unless `CI=true`,
//! where a missing tool fails the test.

#![expect(clippy::panic, reason = "test code")]

mod common;

use common::CpioEntry;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

const MARKER: &str = "IGVM-BOOT-MARKER-7d1f";

fn find_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

fn find_qemu() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// Skips (or, under CI, fails) for a missing prerequisite.
fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("QEMU boot test cannot run under CI: {what}");
    }
    eprintln!("skipping the QEMU boot test: {what}");
}

fn initramfs(busybox: &[u8]) -> Vec<u8> {
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n");
    common::cpio_newc(&[
        CpioEntry::Dir("bin"),
        CpioEntry::Dir("dev"),
        CpioEntry::Dir("proc"),
        CpioEntry::CharDev("dev/console", 5, 1),
        CpioEntry::File("bin/busybox", 0o755, busybox),
        CpioEntry::File("init", 0o755, init.as_bytes()),
    ])
}

#[test]
fn debian_kernel_boots_to_the_initramfs_marker_on_stock_qemu() {
    let Some(kernel_path) = find_kernel() else {
        return missing("no /boot/vmlinuz-* (install linux-image-amd64)");
    };
    let Some(qemu) = find_qemu() else {
        return missing("no qemu-system-x86_64 on PATH (install qemu-system-x86)");
    };
    let Ok(busybox) = std::fs::read("/bin/busybox") else {
        return missing("no /bin/busybox (install busybox-static)");
    };
    let kernel = match std::fs::read(&kernel_path) {
        Ok(k) => k,
        Err(e) => return missing(&format!("{}: {e}", kernel_path.display())),
    };
    let initrd = initramfs(&busybox);

    // The example manifest, with Debian's kernel as its bzImage, through the CLI.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-boot");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/linux-direct.toml");
    std::fs::copy(&example, dir.join("linux-direct.toml")).unwrap();
    std::fs::write(dir.join("bzImage"), &kernel).unwrap();
    std::fs::write(dir.join("initrd.cpio"), &initrd).unwrap();
    let out = dir.join("debian.igvm");
    let build = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .arg("build")
        .arg("--manifest")
        .arg(dir.join("linux-direct.toml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "igvmgen build: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let kvm = igvm_loader::qemu::kvm_usable();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_igvmgen"));
    cmd.arg("qemu")
        .arg(&out)
        .arg("--qemu")
        .arg(&qemu)
        .arg("--accel")
        .arg(if kvm { "kvm" } else { "tcg" });
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    eprintln!("running {cmd:?}");
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let timeout = Duration::from_secs(if kvm { 60 } else { 300 });
    let deadline = Instant::now() + timeout;
    let mut console = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                console.extend(chunk);
                if String::from_utf8_lossy(&console).contains(MARKER) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = reader.join();
    let text = String::from_utf8_lossy(&console);
    let tail: String = text
        .chars()
        .rev()
        .take(3000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        found,
        "no marker within {timeout:?} (kvm: {kvm}, qemu {status}); stderr:\n{stderr}\nconsole tail:\n{tail}"
    );
}
