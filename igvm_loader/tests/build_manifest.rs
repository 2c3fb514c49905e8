//! `igvmgen build`: the example manifests in docs/examples build from payloads the tests
//! make, reproducibly, and `igvmgen measure` agrees with the JSON the build wrote.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

mod common;

use igvm_loader::build::BuildError;
use igvm_loader::build::build_file;
use igvm_loader::measure::Measurement;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

/// A fresh folder holding `example` and the payloads it names.
fn workspace(example: &str, test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("build-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(examples().join(example), dir.join(example)).unwrap();
    let files: [(&str, Vec<u8>); 5] = [
        ("bzImage", common::fake_bzimage(20_000, 0x40_0000)),
        (
            "initrd.cpio",
            common::cpio_newc(&[common::CpioEntry::File("init", 0o755, b"#!/bin/sh\n")]),
        ),
        (
            "kernel.elf",
            common::make_elf(
                2,
                0x100_0000,
                &[(0x100_0000, 0x100_0000, vec![0xf4; 0x3000], 0x5000, 5)],
            ),
        ),
        ("firmware.fd", common::fake_firmware()),
        ("Image", common::fake_arm64_image(0x5000, 0x20_0000)),
    ];
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    dir
}

fn igvmgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_example_builds_twice_to_identical_bytes_and_digests() {
    for (example, platforms) in [
        ("linux-direct.toml", &["vbs", "snp", "tdx"][..]),
        ("elf-kernel.toml", &["vbs", "snp", "tdx"][..]),
        ("firmware.toml", &["snp", "tdx"][..]),
        ("aarch64.toml", &["vbs"][..]),
    ] {
        let dir = workspace(example, example);
        let first = build_file(&dir.join(example)).unwrap();
        let second = build_file(&dir.join(example)).unwrap();
        assert_eq!(first.igvm, second.igvm, "{example}");
        assert_eq!(first.measurements, second.measurements, "{example}");
        assert_eq!(first.map, second.map, "{example}");
        let names: Vec<&str> = first
            .measurements
            .iter()
            .map(|m| m.platform.as_str())
            .collect();
        assert_eq!(names, platforms, "{example}");
        igvm_loader::parse(&first.igvm).unwrap();
    }
}

#[test]
fn igvmgen_build_writes_file_map_and_json_that_measure_agrees_with() {
    let dir = workspace("linux-direct.toml", "cli");
    let out = dir.join("out.igvm");
    let run = igvmgen(&[
        "build",
        "--manifest",
        dir.join("linux-direct.toml").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let map = std::fs::read_to_string(dir.join("out.map")).unwrap();
    for section in ["[native]", "[vbs]", "[snp]", "[tdx]"] {
        assert!(map.contains(section), "{section} missing:\n{map}");
    }
    for tag in [
        "kernel",
        "initrd",
        "cmdline",
        "boot-params",
        "gdt",
        "page-tables",
        "vmsa",
        "tdx-reset-page",
    ] {
        assert!(
            map.lines().any(|l| l.ends_with(&format!(" {tag}"))),
            "{tag} missing:\n{map}"
        );
    }
    assert!(
        map.contains("0x0000000001000000-0x0000000001005000 Exclusive"),
        "{map}"
    );

    // The digests `igvmgen measure` computes with the same conventions (the manifest asks
    // for QEMU's) are the ones the build wrote.
    let measured = igvmgen(&["measure", out.to_str().unwrap(), "--vmm", "qemu"]);
    assert!(
        measured.status.success(),
        "{}",
        String::from_utf8_lossy(&measured.stderr)
    );
    let measured: Vec<Measurement> = serde_json::from_slice(&measured.stdout).unwrap();
    assert_eq!(measured.len(), 3);
    for m in measured {
        let written: Measurement = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("out.{}.json", m.platform))).unwrap(),
        )
        .unwrap();
        assert_eq!(written.digest, m.digest, "{}", m.platform);
        assert_eq!(written, m);
    }
}

#[test]
fn build_errors_name_the_file_at_fault() {
    let dir = workspace("linux-direct.toml", "errors");
    let manifest = dir.join("linux-direct.toml");
    // A missing payload.
    std::fs::remove_file(dir.join("initrd.cpio")).unwrap();
    let err = build_file(&manifest).unwrap_err();
    assert!(
        matches!(err, BuildError::Read { ref file, .. } if file == "initrd.cpio"),
        "{err}"
    );
    // A payload with a bad magic.
    std::fs::write(dir.join("initrd.cpio"), b"x").unwrap();
    std::fs::write(dir.join("bzImage"), vec![0u8; 4096]).unwrap();
    let err = build_file(&manifest).unwrap_err();
    assert!(err.to_string().contains("bzImage: bad magic"), "{err}");
    // A manifest naming too little memory for the kernel.
    std::fs::write(dir.join("bzImage"), common::fake_bzimage(4096, 64 << 20)).unwrap();
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("512M", "32M");
    std::fs::write(&manifest, text).unwrap();
    let err = build_file(&manifest).unwrap_err();
    assert!(
        err.to_string().contains("bzImage: memory too small"),
        "{err}"
    );
    // A broken manifest names the manifest.
    std::fs::write(&manifest, "[payload]\nkind = 1\n").unwrap();
    let err = build_file(&manifest).unwrap_err();
    assert!(
        err.to_string().starts_with(&manifest.display().to_string()),
        "{err}"
    );
    // The CLI reports it and fails.
    let out = dir.join("x.igvm");
    let run = igvmgen(&[
        "build",
        "--manifest",
        manifest.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("linux-direct.toml"));
    assert!(!out.exists(), "nothing is written for a failed build");
}

#[test]
fn igvmgen_qemu_refuses_what_it_cannot_start_naming_the_file() {
    let dir = workspace("firmware.toml", "qemu-refusals");
    let out = dir.join("fw.igvm");
    let run = igvmgen(&[
        "build",
        "--manifest",
        dir.join("firmware.toml").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = out.to_str().unwrap();
    for (platform, needle) in [
        ("vbs", "has no vbs platform"),
        // A VMSA in the reset state is not a long-mode start the trampoline can reach.
        ("snp", "not 64-bit long mode"),
        // The TDX reset page is the firmware's, not a trampoline this crate can start.
        ("tdx", "not made by this crate's trampoline"),
    ] {
        let run = igvmgen(&["qemu", file, "--platform", platform, "--dry-run"]);
        assert!(!run.status.success(), "{platform}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains(file) && err.contains(needle),
            "{platform}: {err}"
        );
    }
    // A file that is not IGVM at all.
    let bogus = dir.join("firmware.fd");
    let run = igvmgen(&["qemu", bogus.to_str().unwrap(), "--dry-run"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("firmware.fd"));

    // A native file gives a command with the BIOS and one loader device per range.
    let dir = workspace("elf-kernel.toml", "qemu-dry-run");
    let out = dir.join("elf.igvm");
    let run = igvmgen(&[
        "build",
        "--manifest",
        dir.join("elf-kernel.toml").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    let run = igvmgen(&["qemu", out.to_str().unwrap(), "--dry-run", "--accel", "tcg"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cmd = String::from_utf8_lossy(&run.stdout);
    assert!(cmd.contains("\"-bios\""), "{cmd}");
    assert!(cmd.contains("addr=0x1000000,force-raw=on"), "{cmd}");
    assert!(cmd.contains("\"tcg\""), "{cmd}");
    // The parameter area stays zero on QEMU, and igvmgen says so.
    assert!(String::from_utf8_lossy(&run.stderr).contains("parameter area"));
}

/// Every manifest in docs/examples (found by listing the folder, so a new one is covered):
/// `igvmgen build` twice gives identical files, maps and JSON, and `igvmgen measure` of the
/// built file, with the preset the JSON records (or none when it records none), prints
/// exactly the JSON the build wrote.
#[test]
fn every_example_built_by_the_cli_is_reproducible_and_measure_agrees_with_its_json() {
    let mut examples: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    for example in &examples {
        let dir = workspace(example, &format!("cli-all-{example}"));
        let mut outputs = Vec::new();
        for run in ["a", "b"] {
            let out = dir.join(format!("{run}.igvm"));
            let built = igvmgen(&[
                "build",
                "--manifest",
                dir.join(example).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ]);
            assert!(
                built.status.success(),
                "{example}: {}",
                String::from_utf8_lossy(&built.stderr)
            );
            outputs.push(out);
        }
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        assert_eq!(
            read(dir.join("a.igvm")),
            read(dir.join("b.igvm")),
            "{example}"
        );
        assert_eq!(
            read(dir.join("a.map")),
            read(dir.join("b.map")),
            "{example}"
        );
        let mut jsons = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(platform) = name
                .strip_prefix("a.")
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            jsons += 1;
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert_eq!(
                text,
                std::fs::read_to_string(dir.join(format!("b.{platform}.json"))).unwrap(),
                "{example} {platform}"
            );
            let written: Measurement = serde_json::from_str(&text).unwrap();
            let file = outputs[0].to_str().unwrap();
            let mut args = vec!["measure", file, "--platform", platform];
            let vmm = written.vmm.map(igvm_loader::measure::Vmm::name);
            if let Some(vmm) = vmm {
                args.extend(["--vmm", vmm]);
            }
            let measured = igvmgen(&args);
            assert!(
                measured.status.success(),
                "{example}: {}",
                String::from_utf8_lossy(&measured.stderr)
            );
            let measured: Vec<Measurement> = serde_json::from_slice(&measured.stdout).unwrap();
            assert_eq!(measured, vec![written], "{example} {platform}");
        }
        let expected = build_file(&dir.join(example)).unwrap().measurements.len();
        assert_eq!(jsons, expected, "{example}");
    }
}
