//! Hostile inputs the review tried again: payload and IGVM paths that are not regular files,
//! and an ELF kernel whose program headers declare far more memory than its bytes. Each gets a
//! clear error naming the file, quickly, within a bounded address space, never an abort.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::time::Duration;
use std::time::Instant;

fn dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("attack-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs igvmgen with its address space capped at 1 GiB (a huge allocation fails instead of
/// taking the machine), killing it if it has not finished within 20 s.
fn igvmgen_bounded(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_igvmgen"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            break;
        }
        // Polling a child process for its exit: not synchronisation between threads.
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

fn assert_refused(out: &Output, took: Duration, code: i32, names: &str, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(code), "{:?}: {stderr}", out.status);
    assert!(stderr.contains(names), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

#[test]
fn measuring_a_device_or_a_directory_is_a_quick_read_error_naming_it() {
    for path in ["/dev/zero", "/tmp"] {
        let (out, took) = igvmgen_bounded(&["measure", path]);
        // Refused for what it is, not read until memory runs out.
        assert_refused(&out, took, 3, path, "not a regular file");
    }
}

#[test]
fn a_manifest_or_payload_that_is_not_a_regular_file_is_refused_naming_it() {
    let d = dir("non-files");
    let (out, took) = igvmgen_bounded(&[
        "build",
        "--manifest",
        "/dev/zero",
        "-o",
        d.join("x.igvm").to_str().unwrap(),
    ]);
    assert_refused(&out, took, 1, "/dev/zero", "not a regular file");
    for kernel in ["/dev/zero", "/tmp"] {
        let manifest = d.join("m.toml");
        std::fs::write(
            &manifest,
            format!(
                "[payload]\nkind = \"elf\"\nkernel = \"{kernel}\"\n[memory]\nsize = \"256M\"\n\
                 [[platform]]\ntype = \"native\"\n"
            ),
        )
        .unwrap();
        let (out, took) = igvmgen_bounded(&[
            "build",
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            d.join("x.igvm").to_str().unwrap(),
        ]);
        assert_refused(&out, took, 1, kernel, "not a regular file");
    }
}

#[test]
fn an_elf_declaring_gigabytes_of_memory_is_refused_without_allocating_them() {
    let d = dir("elf-huge-memsz");
    // A 200-byte ELF: a 64 GiB segment (not page aligned at its end) followed in its last
    // page by a segment with file bytes, inside 128 GiB of declared RAM.
    let big = (64u64 << 30) - 8;
    let elf = common::make_elf(
        2,
        0x100_0000,
        &[
            (0x100_0000, 0x100_0000, vec![0xc3; 16], big, 5),
            (0x100_0000 + big, 0x100_0000 + big, vec![1; 16], 16, 6),
        ],
    );
    std::fs::write(d.join("huge.elf"), elf).unwrap();
    let manifest = d.join("m.toml");
    std::fs::write(
        &manifest,
        "[payload]\nkind = \"elf\"\nkernel = \"huge.elf\"\n[memory]\nsize = \"128G\"\n\
         [[platform]]\ntype = \"native\"\n",
    )
    .unwrap();
    let (out, took) = igvmgen_bounded(&[
        "build",
        "--manifest",
        manifest.to_str().unwrap(),
        "-o",
        d.join("x.igvm").to_str().unwrap(),
    ]);
    assert_refused(&out, took, 1, "huge.elf", "span");
}

#[test]
fn hostile_manifest_values_are_refused_quickly_naming_the_manifest() {
    let d = dir("hostile-manifest");
    let elf = common::make_elf(
        2,
        0x100_0000,
        &[(0x100_0000, 0x100_0000, vec![0xf4; 0x100], 0x1000, 5)],
    );
    std::fs::write(d.join("k.elf"), elf).unwrap();
    let head = "[payload]\nkind = \"elf\"\nkernel = \"k.elf\"\n";
    for (i, body) in [
        // 16 TiB of parameter area from a one-line manifest.
        "[memory]\nsize = \"256M\"\n[[platform]]\ntype = \"native\"\n[[platform]]\ntype = \"snp\"\n\
         [[parameter_area]]\npage = 0x300\npages = 4294967295\ntag = \"huge\"\nparameters = []\n",
        // A parameter area on top of the kernel.
        "[memory]\nsize = \"256M\"\n[[platform]]\ntype = \"native\"\n\
         [[parameter_area]]\npage = 0x1000\npages = 1\ntag = \"on-kernel\"\nparameters = []\n",
        // More memory than the map allows.
        "[memory]\nsize = \"100000G\"\n[[platform]]\ntype = \"native\"\n",
        // 16 TiB of parameter area clear of everything else, for a measured platform.
        "[memory]\nsize = \"256M\"\n[[platform]]\ntype = \"snp\"\n\
         [[parameter_area]]\npage = 0x1000000\npages = 4294967295\ntag = \"huge\"\n\
         parameters = []\n",
        // A size that overflows.
        "[memory]\nsize = \"99999999999999999999G\"\n[[platform]]\ntype = \"native\"\n",
    ]
    .into_iter()
    .enumerate()
    {
        let manifest = d.join(format!("m{i}.toml"));
        std::fs::write(&manifest, format!("{head}{body}")).unwrap();
        let (out, took) = igvmgen_bounded(&[
            "build",
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            d.join("x.igvm").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(took < Duration::from_secs(10), "m{i}: {took:?}");
        assert_eq!(out.status.code(), Some(1), "m{i}: {stderr}");
        assert!(
            stderr.contains(&format!("m{i}.toml")) || stderr.contains("k.elf"),
            "m{i}: {stderr}"
        );
    }
}

/// SEV-SNP launch digests of GCTX call sequences, from the `sev-snp-measure` package.
fn gctx(sequences: &[serde_json::Value]) -> Vec<String> {
    use std::io::Write;
    const ORACLE: &str = r#"
import json, sys
from sevsnpmeasure.gctx import GCTX
from hashlib import sha384
for line in sys.stdin:
    g = GCTX()
    for op in json.loads(line):
        k = op[0]
        if k == "normal": g.update_normal_pages(op[1], bytes.fromhex(op[2]))
        elif k == "unmeasured": g.update_unmeasured_pages(op[1], 4096)
        elif k == "secrets": g.update_secrets_page(op[1])
        elif k == "cpuid": g.update_cpuid_page(op[1])
        elif k == "vmsa": g.update_vmsa_page(bytes.fromhex(op[1]))
        elif k == "vmsa_at": g._update(0x02, op[1], sha384(bytes.fromhex(op[2])).digest())
        else: raise ValueError(k)
    print(g.hex_ld())
"#;
    let mut child = Command::new("python3")
        .args(["-c", ORACLE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with sev-snp-measure (cargo xtask deps)");
    let mut input = String::new();
    for s in sequences {
        input.push_str(&s.to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sev-snp-measure oracle failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A file written with the `igvm` crate alone, in an order and with page kinds our builder
/// never emits (SNP and TDX sharing pages, secrets and CPUID pages, a short page, a shared
/// page, two VMSAs before and between the pages, a three-page parameter area inserted
/// between pages), measured by `igvmgen measure` with each preset and by sev-snp-measure.
#[test]
fn a_foreign_snp_file_measures_like_sev_snp_measure_under_both_presets() {
    use igvm::IgvmDirectiveHeader as D;
    use igvm_defs::IgvmPageDataFlags as F;
    use igvm_defs::IgvmPageDataType as T;
    use serde_json::json;
    let platform = |mask, platform_type| {
        igvm::IgvmPlatformHeader::SupportedPlatform(igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: 0,
            platform_type,
            platform_version: 1,
            shared_gpa_boundary: 0,
        })
    };
    let page = |gpa, mask, flags: F, data_type, data: Vec<u8>| D::PageData {
        gpa,
        compatibility_mask: mask,
        flags,
        data_type,
        data,
    };
    let vmsa = |rip| {
        let mut v = <igvm::snp_defs::SevVmsa as zerocopy::FromZeros>::new_box_zeroed().unwrap();
        v.rip = rip;
        v.efer = 0x1000;
        v
    };
    let (v0, v1) = (vmsa(0xfff0), vmsa(0x1234));
    let hex_of = |v: &igvm::snp_defs::SevVmsa| hex::encode(zerocopy::IntoBytes::as_bytes(v));
    let (h0, h1) = (hex_of(&v0), hex_of(&v1));
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let file = igvm::IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![
            platform(1, igvm_defs::IgvmPlatformType::SEV_SNP),
            platform(2, igvm_defs::IgvmPlatformType::TDX),
        ],
        vec![igvm::IgvmInitializationHeader::GuestPolicy {
            policy: 0x30000,
            compatibility_mask: 1,
        }],
        vec![
            D::SnpVpContext {
                gpa: 0x7000,
                compatibility_mask: 1,
                vp_index: 0,
                vmsa: v0,
            },
            page(0x9000, 3, F::new(), T::NORMAL, pattern.clone()),
            page(0x2000, 1, F::new(), T::NORMAL, vec![0xab; 100]),
            page(0x3000, 1, F::new(), T::SECRETS, vec![]),
            page(0x4000, 1, F::new(), T::CPUID_DATA, vec![]),
            page(0x5000, 1, F::new().with_shared(true), T::NORMAL, vec![]),
            page(0x6000, 2, F::new(), T::NORMAL, vec![9; 4096]),
            D::ParameterArea {
                number_of_bytes: 0x3000,
                parameter_area_index: 0,
                initial_data: vec![],
            },
            D::ParameterInsert(igvm_defs::IGVM_VHS_PARAMETER_INSERT {
                gpa: 0x20000,
                compatibility_mask: 3,
                parameter_area_index: 0,
            }),
            D::SnpVpContext {
                gpa: 0x8000,
                compatibility_mask: 1,
                vp_index: 1,
                vmsa: v1,
            },
            page(0x1000, 1, F::new(), T::NORMAL, vec![]),
            page(0xa000, 1, F::new().with_unmeasured(true), T::NORMAL, vec![]),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    let d = dir("foreign-snp");
    let path = d.join("foreign.igvm");
    std::fs::write(&path, &bytes).unwrap();

    let mut short = vec![0xab; 100];
    short.resize(4096, 0);
    let pages = [
        json!(["normal", 0x9000, hex::encode(&pattern)]),
        json!(["normal", 0x2000, hex::encode(&short)]),
        json!(["secrets", 0x3000]),
        json!(["cpuid", 0x4000]),
        json!(["unmeasured", 0x20000]),
        json!(["unmeasured", 0x21000]),
        json!(["unmeasured", 0x22000]),
    ];
    let tail = [
        json!(["normal", 0x1000, hex::encode([0u8; 4096])]),
        json!(["unmeasured", 0xa000]),
    ];
    // QEMU/KVM: every VMSA at KVM's GPA after the pages.
    let mut qemu: Vec<serde_json::Value> = pages.iter().chain(&tail).cloned().collect();
    qemu.push(json!(["vmsa", h0]));
    qemu.push(json!(["vmsa", h1]));
    // Hyper-V: VMSAs at the file's GPAs, in file order.
    let mut hyperv = vec![json!(["vmsa_at", 0x7000, h0])];
    hyperv.extend(pages.iter().cloned());
    hyperv.push(json!(["vmsa_at", 0x8000, h1]));
    hyperv.extend(tail);
    let want = gctx(&[json!(qemu), json!(hyperv)]);

    for (vmm, want) in [("qemu", &want[0]), ("hyperv", &want[1])] {
        let out = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
            .args(["measure", path.to_str().unwrap(), "--platform", "snp"])
            .args(["--vmm", vmm])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json[0]["digest"], want.as_str(), "{vmm}");
        assert_eq!(json[0]["vmm"], vmm);
    }
}

fn x86_recorder(
    t: igvm_loader::importer::IsolationType,
) -> igvm_loader::recording::RecordingImporter<igvm_loader::arch::X86Register> {
    igvm_loader::recording::RecordingImporter::new(igvm_loader::importer::IsolationConfig::new(t))
}

/// Every field of the setup header set to each extreme, one at a time (and the ones a hostile
/// file would pick together): the Linux loader refuses naming the file, or loads; never a
/// panic, never an allocation the memory map does not bound.
#[test]
fn hostile_bzimage_setup_headers_are_refused_naming_the_file_or_loaded() {
    use igvm_loader::importer::IsolationType;
    use igvm_loader::loaders::Payload;
    use igvm_loader::loaders::linux::LinuxConfig;
    use igvm_loader::loaders::linux::load_linux;
    use igvm_loader::loaders::x86::X86Layout;
    let base = common::fake_bzimage(0x3000, 0x40_0000);
    let initrd = vec![7u8; 0x1000];
    let mut refused = 0;
    for at in 0x1f1..0x270usize {
        for value in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
            for t in [IsolationType::None, IsolationType::Tdx] {
                let mut bz = base.clone();
                bz[at] = value;
                // Neighbouring bytes too, so 16-, 32- and 64-bit fields reach their extremes.
                if value == 0xff || value == 0x00 {
                    for b in bz.iter_mut().skip(at).take(8) {
                        *b = value;
                    }
                }
                let mut config = LinuxConfig::new(
                    Payload::new("hostile.bzImage", &bz),
                    X86Layout::with_memory(64 << 20),
                );
                config.initrd = Some(Payload::new("i.cpio", &initrd));
                config.cmdline = "console=ttyS0";
                if let Err(e) = load_linux(&mut x86_recorder(t), &config) {
                    assert!(
                        e.file == "hostile.bzImage" || e.file == "i.cpio",
                        "byte {at:#x}={value:#x}: {e}"
                    );
                    assert!(e.to_string().starts_with(&format!("{}: ", e.file)), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0);
}

/// Program headers with the extreme values a hostile ELF would pick (huge p_memsz, p_offset
/// or p_filesz, addresses that wrap, the entry outside): refused naming the file, fast.
#[test]
fn hostile_elf_program_headers_are_refused_naming_the_file() {
    use igvm_loader::importer::IsolationType;
    use igvm_loader::loaders::Payload;
    use igvm_loader::loaders::elf::ElfConfig;
    use igvm_loader::loaders::elf::load_elf;
    use igvm_loader::loaders::x86::X86Layout;
    let good = (
        0x100_0000u64,
        0x100_0000u64,
        vec![0xc3u8; 0x100],
        0x1000u64,
        5u32,
    );
    let start = Instant::now();
    for (name, segments, entry) in [
        (
            "memsz",
            vec![(0x100_0000, 0x100_0000, vec![0xc3; 16], u64::MAX, 5)],
            0x100_0000,
        ),
        (
            "memsz-wraps",
            vec![(
                0x100_0000,
                0x100_0000,
                vec![0xc3; 16],
                u64::MAX - 0xff_ffff,
                5,
            )],
            0x100_0000,
        ),
        (
            "vaddr-wraps",
            vec![(
                u64::MAX - 0xfff,
                u64::MAX - 0xfff,
                vec![0xc3; 16],
                0x2000,
                5,
            )],
            u64::MAX - 0xfff,
        ),
        ("entry-outside", vec![good.clone()], 0x200_0000),
        (
            "not-in-ram",
            vec![(0x8000_0000, 0x8000_0000, vec![0xc3; 16], 0x1000, 5)],
            0x8000_0000,
        ),
        (
            "two-huge",
            vec![
                good.clone(),
                (0x200_0000, 0x200_0000, vec![], 0x3fff_ffff_f000, 6),
            ],
            0x100_0000,
        ),
    ] {
        let elf = common::make_elf(2, entry, &segments);
        for t in [IsolationType::None, IsolationType::Snp] {
            let err = load_elf(
                &mut x86_recorder(t),
                &ElfConfig::new(
                    Payload::new("hostile.elf", &elf),
                    X86Layout::with_memory(64 << 20),
                ),
            )
            .unwrap_err();
            assert_eq!(err.file, "hostile.elf", "{name}");
            assert!(
                err.to_string().starts_with("hostile.elf: "),
                "{name}: {err}"
            );
        }
    }
    // Offsets and file sizes past the file: patch the first program header in place.
    let base = common::make_elf(2, 0x100_0000, &[good]);
    for (field, value) in [
        (8usize, u64::MAX),
        (8, 0x7fff_ffff_ffff),
        (32, u64::MAX),
        (32, 0x1_0000_0000),
    ] {
        let mut elf = base.clone();
        elf[64 + field..64 + field + 8].copy_from_slice(&value.to_le_bytes());
        let err = load_elf(
            &mut x86_recorder(IsolationType::None),
            &ElfConfig::new(
                Payload::new("hostile.elf", &elf),
                X86Layout::with_memory(64 << 20),
            ),
        )
        .unwrap_err();
        assert_eq!(err.file, "hostile.elf", "field {field} = {value:#x}: {err}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// Boot structures a manifest places on top of the payload or of each other: refused, naming
/// the manifest or the payload, never a file where one import silently replaces another.
#[test]
fn overlapping_placements_in_a_manifest_are_refused() {
    let d = dir("overlap-manifest");
    let elf = common::make_elf(
        2,
        0x100_0000,
        &[(0x100_0000, 0x100_0000, vec![0xf4; 0x100], 0x1000, 5)],
    );
    std::fs::write(d.join("k.elf"), elf).unwrap();
    let head = "[payload]\nkind = \"elf\"\nkernel = \"k.elf\"\n";
    for (i, memory) in [
        "page_tables = 0x1000000",
        "gdt = 0x1000000",
        "vmsa = 0x1000000",
        "gdt = 0x10000",
        "vmsa = 0x10000",
        "gdt = 0xe000\nvmsa = 0xe000",
    ]
    .into_iter()
    .enumerate()
    {
        let manifest = d.join(format!("o{i}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "{head}[memory]\nsize = \"256M\"\n{memory}\n[[platform]]\ntype = \"native\"\n\
                 [[platform]]\ntype = \"snp\"\n"
            ),
        )
        .unwrap();
        let err = igvm_loader::build::build_file(&manifest)
            .err()
            .unwrap_or_else(|| panic!("o{i} ({memory}) built"));
        let text = err.to_string();
        assert!(
            text.contains(&format!("o{i}.toml")) || text.contains("k.elf"),
            "o{i}: {text}"
        );
    }
}

/// A position-independent kernel sent to a load base at the top of the address space, or
/// one whose linked addresses are there: refused naming the file, never a wrapped address.
#[test]
fn a_load_base_that_wraps_is_refused_naming_the_file() {
    use igvm_loader::importer::IsolationType;
    use igvm_loader::loaders::Payload;
    use igvm_loader::loaders::elf::ElfConfig;
    use igvm_loader::loaders::elf::load_elf;
    use igvm_loader::loaders::x86::X86Layout;
    let elf = common::make_elf(
        3,
        0x100_0000,
        &[(0x100_0000, 0x100_0000, vec![0xc3; 0x100], 0x3000, 5)],
    );
    for base in [!0xfffu64, 1 << 63, 0x3fff_f000, 0] {
        let mut config = ElfConfig::new(
            Payload::new("pie.elf", &elf),
            X86Layout::with_memory(64 << 20),
        );
        config.load_base = Some(base);
        for t in [IsolationType::None, IsolationType::Vbs] {
            match load_elf(&mut x86_recorder(t), &config) {
                Ok(k) => {
                    assert!(
                        k.segments.iter().all(|s| s.gpa + s.mem_size <= 64 << 20),
                        "{base:#x}"
                    );
                    assert!(k.entry < 64 << 20, "{base:#x}");
                }
                Err(e) => assert_eq!(e.file, "pie.elf", "{base:#x}: {e}"),
            }
        }
    }
}

/// KVM measures the VMSAs when the launch finishes, one per vCPU in vCPU order, and QEMU
/// gives the file's VMSA for VP n to vCPU n: a file listing VP 1's VMSA before VP 0's is
/// measured by the QEMU preset in VP order, as sev-snp-measure chains them.
#[test]
fn the_qemu_preset_measures_vmsas_in_vp_order_not_file_order() {
    use igvm::IgvmDirectiveHeader as D;
    use serde_json::json;
    let vmsa = |rip| {
        let mut v = <igvm::snp_defs::SevVmsa as zerocopy::FromZeros>::new_box_zeroed().unwrap();
        v.rip = rip;
        v.efer = 0x1000;
        v
    };
    let (v0, v1) = (vmsa(0xfff0), vmsa(0x1234));
    let hex_of = |v: &igvm::snp_defs::SevVmsa| hex::encode(zerocopy::IntoBytes::as_bytes(v));
    let (h0, h1) = (hex_of(&v0), hex_of(&v1));
    let file = igvm::IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![igvm::IgvmPlatformHeader::SupportedPlatform(
            igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM {
                compatibility_mask: 1,
                highest_vtl: 0,
                platform_type: igvm_defs::IgvmPlatformType::SEV_SNP,
                platform_version: 1,
                shared_gpa_boundary: 0,
            },
        )],
        vec![],
        vec![
            D::SnpVpContext {
                gpa: 0x8000,
                compatibility_mask: 1,
                vp_index: 1,
                vmsa: v1,
            },
            D::PageData {
                gpa: 0x1000,
                compatibility_mask: 1,
                flags: igvm_defs::IgvmPageDataFlags::new(),
                data_type: igvm_defs::IgvmPageDataType::NORMAL,
                data: vec![5; 4096],
            },
            D::SnpVpContext {
                gpa: 0x7000,
                compatibility_mask: 1,
                vp_index: 0,
                vmsa: v0,
            },
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    let path = dir("vmsa-order").join("order.igvm");
    std::fs::write(&path, &bytes).unwrap();
    let want = gctx(&[json!([
        ["normal", 0x1000, hex::encode([5u8; 4096])],
        ["vmsa", h0],
        ["vmsa", h1],
    ])]);
    let out = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .args(["measure", path.to_str().unwrap(), "--vmm", "qemu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["digest"], want[0].as_str());
}
