//! The proof that images boot: payloads built into IGVM files by `igvmgen build` from the
//! example manifests, run by `igvmgen qemu` on a stock QEMU, print a marker on the serial
//! console.
//!
//! - Debian's kernel and a busybox initramfs (the linux-direct example) reach the
//!   initramfs's `/init`, from the native VP context and from the TDX reset page.
//! - A small ELF kernel assembled here (the elf-kernel example) checks the registers, the
//!   segments and the page tables it was started with, using the stack it was given, from
//!   each platform's start state (native, VBS, SNP VMSA, TDX reset page).
//!
//! - A flat firmware assembled here (the firmware example) runs from the reset vector as the
//!   BIOS and reports on COM1.
//!
//! Platforms other than native run without their isolation (`igvmgen qemu --platform`):
//! this proves their start states, not that the hardware accepts the file.
//!
//! Skipped with a message when the kernel, busybox or QEMU is missing, unless `CI=true`,
//! where a missing tool fails the test.

#![forbid(unsafe_code)]
#![expect(clippy::panic, reason = "test code")]
#![expect(clippy::unwrap_used, reason = "test code")]

mod common;

use common::CpioEntry;
use iced_x86::code_asm::*;
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

/// A folder holding `example` and `files`, and the IGVM file `igvmgen build` made of them.
fn build_example(test: &str, example: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(example);
    std::fs::copy(&source, dir.join(example)).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let out = dir.join("image.igvm");
    let build = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .arg("build")
        .arg("--manifest")
        .arg(dir.join(example))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "igvmgen build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    out
}

/// Runs `igvmgen qemu file` until the console shows `marker` (true), or `failure`, or
/// `timeout` passes, or QEMU ends (false); QEMU is killed either way. Returns the console
/// too.
fn run_until(
    qemu: &Path,
    file: &Path,
    platform: &str,
    marker: &str,
    failure: &str,
    timeout: Duration,
) -> (bool, String) {
    let kvm = igvm_loader::qemu::kvm_usable();
    let mut child = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .arg("qemu")
        .arg(file)
        .arg("--platform")
        .arg(platform)
        .arg("--workdir")
        .arg(file.with_extension(platform))
        .arg("--qemu")
        .arg(qemu)
        .arg("--accel")
        .arg(if kvm { "kvm" } else { "tcg" })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
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
    let deadline = Instant::now() + timeout;
    let mut console = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                console.extend(chunk);
                let text = String::from_utf8_lossy(&console);
                if text.contains(marker) {
                    break true;
                }
                if text.contains(failure) {
                    break false;
                }
            }
            // Timed out, or QEMU closed the console (it exited).
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = reader.join();
    let text = String::from_utf8_lossy(&console);
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(3000)..].iter().collect()
    };
    (
        found,
        format!("kvm: {kvm}, qemu {status}; stderr:\n{stderr}\nconsole tail:\n{tail}"),
    )
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
    let file = build_example(
        "debian",
        "linux-direct.toml",
        &[("bzImage", &kernel), ("initrd.cpio", &initrd)],
    );
    let timeout = Duration::from_secs(if igvm_loader::qemu::kvm_usable() {
        60
    } else {
        300
    });
    // Native, and TDX's reset-page trampoline (started as a TD would start it).
    for platform in ["native", "tdx"] {
        let (found, log) = run_until(&qemu, &file, platform, MARKER, "Kernel panic", timeout);
        assert!(found, "{platform}: no marker within {timeout:?} ({log})");
    }
}

/// A 64-bit kernel at 1 MiB that checks its start state and reports on COM1.
fn checking_kernel() -> Vec<u8> {
    const BASE: u64 = 0x10_0000;
    let mut a = CodeAssembler::new(64).unwrap();
    let mut bad = a.create_label();
    let mut print = a.create_label();
    let mut ok_msg = a.create_label();
    let mut bad_msg = a.create_label();
    let mut halt = a.create_label();
    // RSI and RSP as the manifest asked, the boot GDT's selectors, the generated tables.
    a.mov(rax, 0x30_0000u64).unwrap();
    a.cmp(rsi, rax).unwrap();
    a.jne(bad).unwrap();
    a.mov(rax, 0x80_0000u64).unwrap();
    a.cmp(rsp, rax).unwrap();
    a.jne(bad).unwrap();
    a.mov(ax, cs).unwrap();
    a.cmp(ax, 0x10).unwrap();
    a.jne(bad).unwrap();
    a.mov(ax, ss).unwrap();
    a.cmp(ax, 0x18).unwrap();
    a.jne(bad).unwrap();
    a.mov(rax, cr3).unwrap();
    a.cmp(rax, 0x1_0000).unwrap();
    a.jne(bad).unwrap();
    // Memory near the top of RAM is mapped and writable (256 MiB - 8).
    a.mov(rax, 0x0fff_fff8u64).unwrap();
    a.mov(qword_ptr(rax), rax).unwrap();
    a.cmp(qword_ptr(rax), rax).unwrap();
    a.jne(bad).unwrap();
    a.lea(rsi, ptr(ok_msg)).unwrap();
    a.call(print).unwrap();
    a.jmp(halt).unwrap();
    a.set_label(&mut bad).unwrap();
    a.lea(rsi, ptr(bad_msg)).unwrap();
    a.call(print).unwrap();
    a.set_label(&mut halt).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.jmp(halt).unwrap();
    a.set_label(&mut print).unwrap();
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.mov(dx, 0x3f8u32).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut done).unwrap();
    a.ret().unwrap();
    a.set_label(&mut ok_msg).unwrap();
    a.db(format!("{MARKER}-ELF-OK\n\0").as_bytes()).unwrap();
    a.set_label(&mut bad_msg).unwrap();
    a.db(b"ELF-START-STATE-WRONG\n\0").unwrap();
    let code = a.assemble(BASE).unwrap();
    let len = code.len() as u64;
    common::make_elf(2, BASE, &[(BASE, BASE, code, len, 5)])
}

#[test]
fn elf_kernel_starts_with_the_registers_stack_and_page_tables_it_was_given() {
    let Some(qemu) = find_qemu() else {
        return missing("no qemu-system-x86_64 on PATH (install qemu-system-x86)");
    };
    let kernel = checking_kernel();
    let file = build_example("elf", "elf-kernel.toml", &[("kernel.elf", &kernel)]);
    let marker = format!("{MARKER}-ELF-OK");
    // Every platform's start state: native VP context, VBS registers, SNP VMSA, TDX reset
    // page.
    for platform in ["native", "vbs", "snp", "tdx"] {
        let (found, log) = run_until(
            &qemu,
            &file,
            platform,
            &marker,
            "WRONG",
            Duration::from_secs(60),
        );
        assert!(found, "{platform}: no {marker} within 60 s ({log})");
    }
}

/// A 64 KiB real-mode firmware: the reset vector jumps to code in the window's last page,
/// which writes the marker to COM1 and halts.
fn marker_firmware(marker: &str) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut halt = a.create_label();
    a.cli().unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    for b in marker.bytes().chain(*b"\n") {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.set_label(&mut halt).unwrap();
    a.hlt().unwrap();
    a.jmp(halt).unwrap();
    let code = a.assemble(0xf000).unwrap();
    let mut fw = vec![0xf4u8; 64 * 1024];
    fw[0xf000..0xf000 + code.len()].copy_from_slice(&code);
    let mut reset = CodeAssembler::new(16).unwrap();
    reset
        .add_instruction(
            iced_x86::Instruction::with_branch(iced_x86::Code::Jmp_rel16, 0xf000).unwrap(),
        )
        .unwrap();
    let jmp = reset.assemble(0xfff0).unwrap();
    fw[0xfff0..0xfff0 + jmp.len()].copy_from_slice(&jmp);
    fw
}

#[test]
fn flat_firmware_runs_from_the_reset_vector_as_the_bios() {
    let Some(qemu) = find_qemu() else {
        return missing("no qemu-system-x86_64 on PATH (install qemu-system-x86)");
    };
    let marker = format!("{MARKER}-FIRMWARE-OK");
    let file = build_example(
        "firmware",
        "firmware.toml",
        &[("firmware.fd", &marker_firmware(&marker))],
    );
    let (found, log) = run_until(
        &qemu,
        &file,
        "native",
        &marker,
        "WRONG",
        Duration::from_secs(60),
    );
    assert!(found, "no {marker} within 60 s ({log})");
}
