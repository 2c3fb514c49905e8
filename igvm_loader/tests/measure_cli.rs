//! `igvmgen measure` as users run it: VMM presets recorded in the JSON, hostile files refused
//! fast with an error naming the file, documented exit codes, repeated platforms measured once.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm::IgvmRevision;
use igvm::IgvmSerializer;
use igvm_defs::IGVM_VHS_PARAMETER_INSERT;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::Vmm;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

/// Hostile files must be refused well within this, even in a debug build.
const FAST: Duration = Duration::from_secs(5);

struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "igvmgen-measure-{}-{name}.igvm",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn igvmgen(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        took: start.elapsed(),
    }
}

fn json(run: &Run) -> Vec<serde_json::Value> {
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn platform(mask: u32, platform_type: IgvmPlatformType) -> IgvmPlatformHeader {
    IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary: 0,
    })
}

/// Serializes a file; one page of data is appended (the `igvm` crate refuses files whose file
/// data section is empty).
fn serialize(
    platforms: Vec<IgvmPlatformHeader>,
    mut directives: Vec<IgvmDirectiveHeader>,
) -> Vec<u8> {
    directives.push(IgvmDirectiveHeader::PageData {
        gpa: 0x4000_0000,
        compatibility_mask: 1,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data: vec![7; 64],
    });
    let file = IgvmFile::new(
        IgvmRevision::V1,
        platforms,
        Vec::<IgvmInitializationHeader>::new(),
        directives,
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    bytes
}

/// An SNP + TDX file with data, a data-less page and (SNP) a VMSA at a GPA of the file's
/// choosing, not KVM's.
fn snp_tdx_file() -> Vec<u8> {
    let mut b = IgvmBuilder::<X86Register>::new();
    for t in [IsolationType::Snp, IsolationType::Tdx] {
        let image = b
            .add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap();
        image
            .import_pages(0x10, 2, "kernel", BootPageAcceptance::Exclusive, b"\x90")
            .unwrap();
        if t == IsolationType::Snp {
            image.set_vp_context_page(0x40).unwrap();
            image.import_vp_register(X86Register::Rip(0x10000)).unwrap();
        }
    }
    b.build_bytes().unwrap()
}

#[test]
fn presets_select_both_snp_conventions_and_the_json_records_them() {
    let bytes = snp_tdx_file();
    let f = Temp::new("presets", &bytes);
    let default = json(&igvmgen(&["measure", f.path(), "--platform", "snp"]));
    let qemu = json(&igvmgen(&[
        "measure",
        f.path(),
        "--platform",
        "snp",
        "--vmm",
        "qemu",
    ]));
    let hyperv = json(&igvmgen(&[
        "measure",
        f.path(),
        "--platform",
        "snp",
        "--vmm",
        "hyperv",
    ]));
    // The default is one whole preset, not a mix.
    assert_eq!(default, qemu);
    assert_eq!(qemu[0]["vmm"], "qemu");
    assert_eq!(qemu[0]["zero_pages"], "normal");
    assert_eq!(qemu[0]["vmsa_gpa"], "kvm");
    assert_eq!(hyperv[0]["vmm"], "hyperv");
    assert_eq!(hyperv[0]["zero_pages"], "normal");
    assert_eq!(hyperv[0]["vmsa_gpa"], "file");
    // Hyper-V's convention is the igvm crate's; QEMU's differs by the VMSA's GPA.
    let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
    let theirs = hex::encode(
        &IgvmSerializer::new(&file)
            .unwrap()
            .measurement_for(IgvmPlatformType::SEV_SNP)
            .unwrap()
            .digest,
    );
    assert_eq!(hyperv[0]["digest"], theirs.as_str());
    assert_ne!(qemu[0]["digest"], theirs.as_str());
    let lib = igvm_loader::measure::measure(
        &file,
        IsolationType::Snp,
        &MeasureOptions::for_vmm(Vmm::Qemu),
    )
    .unwrap();
    assert_eq!(qemu[0]["digest"], lib.digest.as_str());

    // An override leaves the presets: the JSON says which conventions were used and names
    // no preset.
    let mixed = json(&igvmgen(&[
        "measure",
        f.path(),
        "--platform",
        "snp",
        "--vmm",
        "hyperv",
        "--zero-pages",
        "zero",
    ]));
    assert!(mixed[0].get("vmm").is_none(), "{}", mixed[0]);
    assert_eq!(mixed[0]["zero_pages"], "zero");
    assert_eq!(mixed[0]["vmsa_gpa"], "file");
    // TDX has no such conventions.
    let tdx = json(&igvmgen(&["measure", f.path(), "--platform", "tdx"]));
    assert!(tdx[0].get("vmsa_gpa").is_none(), "{}", tdx[0]);
}

#[test]
fn a_repeated_platform_is_measured_once() {
    let f = Temp::new("repeat", &snp_tdx_file());
    let out = json(&igvmgen(&[
        "measure",
        f.path(),
        "--platform",
        "snp",
        "--platform",
        "tdx",
        "--platform",
        "snp",
        "--platform",
        "tdx",
    ]));
    let names: Vec<&str> = out
        .iter()
        .map(|m| m["platform"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["snp", "tdx"]);
}

#[test]
fn a_tiny_file_declaring_a_huge_parameter_area_is_refused_fast() {
    let bytes = serialize(
        vec![platform(1, IgvmPlatformType::SEV_SNP)],
        vec![
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes: 1 << 50,
                parameter_area_index: 0,
                initial_data: vec![],
            },
            IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa: 0,
                compatibility_mask: 1,
                parameter_area_index: 0,
            }),
        ],
    );
    assert!(bytes.len() < 8192, "{}", bytes.len());
    let f = Temp::new("huge-area", &bytes);
    let run = igvmgen(&["measure", f.path()]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.took < FAST, "{:?}", run.took);
    assert!(run.stderr.contains(f.path()), "{}", run.stderr);
    assert!(run.stderr.contains("--max-pages"), "{}", run.stderr);
}

#[test]
fn a_huge_vbs_error_range_is_refused_fast_and_the_limit_is_adjustable() {
    let bytes = serialize(
        vec![platform(1, IgvmPlatformType::VSM_ISOLATION)],
        vec![IgvmDirectiveHeader::ErrorRange {
            gpa: 0,
            compatibility_mask: 1,
            size_bytes: u32::MAX,
        }],
    );
    assert!(bytes.len() < 8192, "{}", bytes.len());
    let f = Temp::new("huge-vbs", &bytes);
    let run = igvmgen(&["measure", f.path()]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.took < FAST, "{:?}", run.took);
    assert!(run.stderr.contains(f.path()), "{}", run.stderr);

    // A small limit refuses a small file too; the limit is per platform, in pages.
    let small = Temp::new("small", &snp_tdx_file());
    let run = igvmgen(&["measure", small.path(), "--max-pages", "2"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("more than 2 pages"), "{}", run.stderr);
    json(&igvmgen(&["measure", small.path(), "--max-pages", "3"]));
}

#[test]
fn a_parameter_insert_wrapping_past_2_pow_64_is_an_error() {
    let bytes = serialize(
        vec![platform(1, IgvmPlatformType::SEV_SNP)],
        vec![
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes: 0x2000,
                parameter_area_index: 0,
                initial_data: vec![],
            },
            IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa: 0xffff_ffff_ffff_f000,
                compatibility_mask: 1,
                parameter_area_index: 0,
            }),
        ],
    );
    let f = Temp::new("wrap", &bytes);
    let run = igvmgen(&["measure", f.path()]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains(f.path()), "{}", run.stderr);
    assert!(run.stderr.contains("wraps past 2^64"), "{}", run.stderr);
}

#[test]
fn a_2mib_page_carrying_file_data_is_refused_not_mismeasured() {
    let bytes = serialize(
        vec![platform(1, IgvmPlatformType::SEV_SNP)],
        vec![IgvmDirectiveHeader::PageData {
            gpa: 0x20_0000,
            compatibility_mask: 1,
            flags: IgvmPageDataFlags::new().with_is_2mb_page(true),
            data_type: IgvmPageDataType::NORMAL,
            data: vec![0x5a; 4096],
        }],
    );
    let f = Temp::new("large-data", &bytes);
    let run = igvmgen(&["measure", f.path()]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains(f.path()), "{}", run.stderr);
    assert!(
        run.stderr.contains("2 MiB page at 0x200000"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_magic_truncation_and_missing_files_name_the_file_with_their_exit_code() {
    let good = snp_tdx_file();
    let mut elf = good.clone();
    elf[..4].copy_from_slice(b"\x7fELF");
    let cases = [
        ("elf", elf, "not an IGVM file: magic 0x464c457f"),
        ("empty", Vec::new(), "truncated IGVM file: the IGVM magic"),
        (
            "short",
            good[..good.len() - 1].to_vec(),
            "truncated IGVM file: the file size in the header",
        ),
    ];
    for (name, bytes, message) in cases {
        let f = Temp::new(name, &bytes);
        for command in ["measure", "dump"] {
            let run = igvmgen(&[command, f.path()]);
            assert_eq!(run.code, 4, "{name} {command}: {}", run.stderr);
            assert!(
                run.stderr.contains(&format!("{}: {message}", f.path())),
                "{name} {command}: {}",
                run.stderr
            );
            assert!(run.took < FAST);
        }
    }
    let run = igvmgen(&["measure", "/nonexistent/file.igvm"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/file.igvm"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_platform_not_in_the_file_and_bad_usage_have_their_exit_codes() {
    let f = Temp::new("no-vbs", &snp_tdx_file());
    let run = igvmgen(&["measure", f.path(), "--platform", "vbs"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains(f.path()), "{}", run.stderr);
    assert_eq!(igvmgen(&["measure", f.path(), "--vmm", "xen"]).code, 2);
}

#[test]
fn the_help_documents_presets_and_exit_codes() {
    let run = igvmgen(&["measure", "--help"]);
    assert_eq!(run.code, 0);
    for needle in ["--vmm", "--max-pages", "Exit codes:", "  4  ", "  5  "] {
        assert!(run.stdout.contains(needle), "{needle}: {}", run.stdout);
    }
}
