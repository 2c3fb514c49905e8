//! The `igvmgen` binary: `dump` lists what we imported, `measure` agrees with the `igvm`
//! crate on files we built and on files we did not build.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm::IgvmRevision;
use igvm::IgvmSerializer;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::IgvmParameterType;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use std::path::PathBuf;
use std::process::Command;

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("igvmgen-{}-{name}.igvm", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn igvmgen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "igvmgen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn digests(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn crate_digest(bytes: &[u8], platform: IgvmPlatformType) -> String {
    let file = IgvmFile::new_from_binary(bytes, None).unwrap();
    let s = IgvmSerializer::new(&file).unwrap();
    hex::encode(&s.measurement_for(platform).unwrap().digest)
}

#[test]
fn dump_and_measure_a_file_we_built() {
    let mut b = IgvmBuilder::<X86Register>::new();
    for t in [IsolationType::Snp, IsolationType::Tdx] {
        let image = b
            .add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap();
        image
            .import_pages(
                0x10,
                2,
                "kernel",
                BootPageAcceptance::Exclusive,
                b"\x90\x90",
            )
            .unwrap();
        let area = image.create_parameter_area(0x20, 1, "cmdline").unwrap();
        image
            .import_parameter(area, 0, IgvmParameterType::CommandLine)
            .unwrap();
    }
    let bytes = b.build_bytes().unwrap();
    let path = write_temp("built", &bytes);
    let path = path.to_str().unwrap();

    let listing = igvmgen(&["dump", path]);
    assert!(
        listing.contains("page_data gpa=0x10000 mask=0x3"),
        "{listing}"
    );
    assert!(
        listing.contains("page_data gpa=0x11000 mask=0x3"),
        "{listing}"
    );
    assert!(listing.contains("command_line index=0"), "{listing}");
    assert!(listing.contains("command_line index=1"), "{listing}");
    assert!(
        listing.contains("parameter_insert gpa=0x20000 mask=0x1"),
        "{listing}"
    );

    let measured = digests(&igvmgen(&["measure", path, "--zero-pages", "normal"]));
    assert_eq!(
        measured,
        vec![
            (
                "snp".into(),
                crate_digest(&bytes, IgvmPlatformType::SEV_SNP)
            ),
            ("tdx".into(), crate_digest(&bytes, IgvmPlatformType::TDX)),
        ]
    );
    let only_tdx = digests(&igvmgen(&[
        "measure",
        path,
        "--platform",
        "tdx",
        "--progress",
    ]));
    assert_eq!(only_tdx.len(), 1);
    assert_eq!(only_tdx[0].1, measured[1].1);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn measure_agrees_with_the_igvm_crate_on_a_file_we_did_not_build() {
    let platform = |mask, platform_type| {
        IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: 0,
            platform_type,
            platform_version: 1,
            shared_gpa_boundary: 0,
        })
    };
    let directives = (0..40u64)
        .map(|i| IgvmDirectiveHeader::PageData {
            gpa: 0x8000_0000 - i * 0x1000,
            compatibility_mask: if i % 3 == 0 { 1 } else { 3 },
            flags: IgvmPageDataFlags::new().with_unmeasured(i % 7 == 0),
            data_type: IgvmPageDataType::NORMAL,
            data: if i % 2 == 0 {
                vec![i as u8; 4096]
            } else {
                vec![]
            },
        })
        .collect();
    let file = IgvmFile::new(
        IgvmRevision::V1,
        vec![
            platform(1, IgvmPlatformType::SEV_SNP),
            platform(2, IgvmPlatformType::TDX),
        ],
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: 0x1_0000_3000,
            compatibility_mask: 1,
        }],
        directives,
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    let path = write_temp("foreign", &bytes);
    let path = path.to_str().unwrap();
    let json = igvmgen(&["measure", path, "--zero-pages", "normal"]);
    assert!(json.contains("\"policy\": \"0x100003000\""), "{json}");
    assert_eq!(
        digests(&json),
        vec![
            (
                "snp".into(),
                crate_digest(&bytes, IgvmPlatformType::SEV_SNP)
            ),
            ("tdx".into(), crate_digest(&bytes, IgvmPlatformType::TDX)),
        ]
    );
    // Both VMM presets measure data-less pages as NORMAL zero pages, like the igvm crate;
    // PAGE_TYPE_ZERO differs exactly where the file has data-less measured pages.
    for vmm in ["qemu", "hyperv"] {
        let snp = digests(&igvmgen(&[
            "measure",
            path,
            "--platform",
            "snp",
            "--vmm",
            vmm,
        ]));
        assert_eq!(snp[0].1, crate_digest(&bytes, IgvmPlatformType::SEV_SNP));
    }
    let zero = digests(&igvmgen(&[
        "measure",
        path,
        "--platform",
        "snp",
        "--zero-pages",
        "zero",
    ]));
    assert_ne!(zero[0].1, crate_digest(&bytes, IgvmPlatformType::SEV_SNP));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn garbage_files_are_rejected_with_an_error_not_a_panic() {
    let path = write_temp("garbage", b"definitely not an IGVM file");
    let out = Command::new(env!("CARGO_BIN_EXE_igvmgen"))
        .args(["measure", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IGVM file"));
    std::fs::remove_file(path).unwrap();
}
