//! Oracle agreement: our launch digests against the `igvm` crate's (`corim` feature) and
//! against the PyPI `sev-snp-measure` package's GCTX chain, on generated page sequences.
//!
//! The Python oracle is required: if `python3` or the `sevsnpmeasure` module is missing the
//! tests fail (install with `cargo xtask deps`).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]
#![expect(clippy::panic, reason = "test code")]

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
use igvm_loader::arch::SegmentRegister;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::IgvmParameterType;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::VmsaGpa;
use igvm_loader::measure::ZeroPages;
use igvm_loader::measure::measure;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;

const SEQUENCES: u64 = 50;

/// SplitMix64: deterministic, seedable, good enough to vary page sequences.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Fills `image` with a random sequence of imports for its platform.
fn random_image(rng: &mut Rng, image: &mut dyn ImageLoad<X86Register>, with_vp: bool) {
    let isolation = image.isolation_config().isolation_type;
    let mut page = 0x10 + rng.below(0x100);
    let steps = 3 + rng.below(7);
    for _ in 0..steps {
        let count = 1 + rng.below(3);
        let acceptance = match (isolation, rng.below(9)) {
            (_, 0..=2) => BootPageAcceptance::Exclusive,
            (_, 3) => BootPageAcceptance::ExclusiveUnmeasured,
            (_, 4) => BootPageAcceptance::Shared,
            (IsolationType::Snp, 5) => BootPageAcceptance::SecretsPage,
            (IsolationType::Snp, 6) => BootPageAcceptance::CpuidPage,
            (IsolationType::Vbs, 5) => BootPageAcceptance::ErrorPage,
            (_, 7) => {
                let area = image
                    .create_parameter_area(page, count as u32, "params")
                    .unwrap();
                image
                    .import_parameter(area, 0, IgvmParameterType::VpCount)
                    .unwrap();
                page += count + rng.below(3);
                continue;
            }
            _ => BootPageAcceptance::Exclusive,
        };
        let data = match (acceptance, rng.below(3)) {
            (BootPageAcceptance::ErrorPage | BootPageAcceptance::SecretsPage, _) | (_, 0) => {
                Vec::new()
            }
            (_, 1) => {
                let len = 1 + rng.below(4096 * count) as usize;
                rng.bytes(len)
            }
            _ => rng.bytes(4096 * count as usize),
        };
        image
            .import_pages(page, count, "pages", acceptance, &data)
            .unwrap();
        page += count + rng.below(3);
    }
    if with_vp {
        if isolation == IsolationType::Snp {
            image.set_vp_context_page(page).unwrap();
        }
        image
            .import_vp_register(X86Register::Cs(SegmentRegister {
                base: 0,
                limit: 0xffff,
                selector: 0xf000,
                attributes: 0x9b,
            }))
            .unwrap();
        image
            .import_vp_register(X86Register::Rip(rng.below(0x10000)))
            .unwrap();
        image
            .import_vp_register(X86Register::Cr0(0x10 | rng.below(2)))
            .unwrap();
    }
}

/// A file with one platform, built through our builder and round-tripped through bytes.
fn random_file(seed: u64, isolation: IsolationType, with_vp: bool) -> IgvmFile {
    let mut rng = Rng(seed.wrapping_mul(7919).wrapping_add(isolation as u64));
    let mut b = IgvmBuilder::<X86Register>::new();
    random_image(
        &mut rng,
        b.add_platform(PlatformConfig::new(IsolationConfig::new(isolation)))
            .unwrap(),
        with_vp,
    );
    let bytes = b.build_bytes().unwrap();
    IgvmFile::new_from_binary(&bytes, None).unwrap()
}

fn igvm_crate_digest(file: &IgvmFile, platform: IgvmPlatformType) -> String {
    let s = IgvmSerializer::new(file).unwrap();
    hex::encode(&s.measurement_for(platform).unwrap().digest)
}

fn ours(file: &IgvmFile, t: IsolationType, zero_pages: ZeroPages, vmsa_gpa: VmsaGpa) -> String {
    let opts = MeasureOptions {
        zero_pages,
        vmsa_gpa,
        ..MeasureOptions::default()
    };
    measure(file, t, &opts).unwrap().digest
}

mod igvm_crate {
    use super::*;

    #[test]
    fn snp_normal_convention_matches_the_igvm_crate_on_50_sequences() {
        for seed in 0..SEQUENCES {
            let file = random_file(seed, IsolationType::Snp, seed % 2 == 0);
            assert_eq!(
                ours(&file, IsolationType::Snp, ZeroPages::Normal, VmsaGpa::File),
                igvm_crate_digest(&file, IgvmPlatformType::SEV_SNP),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn tdx_matches_the_igvm_crate_on_50_sequences() {
        for seed in 0..SEQUENCES {
            let file = random_file(seed, IsolationType::Tdx, false);
            assert_eq!(
                ours(&file, IsolationType::Tdx, ZeroPages::Zero, VmsaGpa::File),
                igvm_crate_digest(&file, IgvmPlatformType::TDX),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn vbs_matches_the_igvm_crate_on_50_sequences() {
        for seed in 0..SEQUENCES {
            let file = random_file(seed, IsolationType::Vbs, seed % 3 != 0);
            assert_eq!(
                ours(&file, IsolationType::Vbs, ZeroPages::Zero, VmsaGpa::File),
                igvm_crate_digest(&file, IgvmPlatformType::VSM_ISOLATION),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn every_platform_of_a_merged_file_matches_the_igvm_crate() {
        for seed in 0..10 {
            let mut rng = Rng(seed);
            let mut b = IgvmBuilder::<X86Register>::new();
            for t in [IsolationType::Snp, IsolationType::Tdx, IsolationType::Vbs] {
                let image = b
                    .add_platform(PlatformConfig::new(IsolationConfig::new(t)))
                    .unwrap();
                // The same first imports everywhere, so pages are shared across masks.
                image
                    .import_pages(1, 2, "shared-kernel", BootPageAcceptance::Exclusive, b"k")
                    .unwrap();
                random_image(&mut rng, image, t != IsolationType::Tdx);
            }
            let file = IgvmFile::new_from_binary(&b.build_bytes().unwrap(), None).unwrap();
            // The igvm crate measures as Hyper-V launches.
            let opts = MeasureOptions::for_vmm(igvm_loader::measure::Vmm::Hyperv);
            let all = igvm_loader::measure::measure_all(&file, &opts).unwrap();
            assert_eq!(all.len(), 3);
            for m in all {
                let platform = match m.platform.as_str() {
                    "snp" => IgvmPlatformType::SEV_SNP,
                    "tdx" => IgvmPlatformType::TDX,
                    _ => IgvmPlatformType::VSM_ISOLATION,
                };
                assert_eq!(
                    m.digest,
                    igvm_crate_digest(&file, platform),
                    "{}",
                    m.platform
                );
            }
        }
    }

    /// A file assembled by hand with the `igvm` crate, in an order our builder never emits
    /// (parameter insert between pages, masks shared by two platforms).
    #[test]
    fn files_we_did_not_build_match_the_igvm_crate() {
        let platform = |mask, platform_type| {
            IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
                compatibility_mask: mask,
                highest_vtl: 0,
                platform_type,
                platform_version: 1,
                shared_gpa_boundary: 0,
            })
        };
        let page = |gpa, mask, unmeasured, data: Vec<u8>| IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: mask,
            flags: IgvmPageDataFlags::new().with_unmeasured(unmeasured),
            data_type: IgvmPageDataType::NORMAL,
            data,
        };
        let file = IgvmFile::new(
            IgvmRevision::V1,
            vec![
                platform(1, IgvmPlatformType::SEV_SNP),
                platform(2, IgvmPlatformType::TDX),
            ],
            vec![IgvmInitializationHeader::GuestPolicy {
                policy: 0x30000,
                compatibility_mask: 1,
            }],
            vec![
                page(0x1000, 3, false, vec![7; 4096]),
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes: 0x3000,
                    parameter_area_index: 0,
                    initial_data: vec![],
                },
                IgvmDirectiveHeader::CommandLine(igvm_defs::IGVM_VHS_PARAMETER {
                    parameter_area_index: 0,
                    byte_offset: 0,
                }),
                page(0x2000, 1, true, vec![]),
                IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                    gpa: 0x10000,
                    compatibility_mask: 3,
                    parameter_area_index: 0,
                }),
                page(0x3000, 2, false, vec![]),
                page(0x4000, 3, false, vec![]),
            ],
        )
        .unwrap();
        let mut bytes = Vec::new();
        file.serialize(&mut bytes).unwrap();
        let file = igvm_loader::parse(&bytes).unwrap();
        assert_eq!(
            ours(&file, IsolationType::Snp, ZeroPages::Normal, VmsaGpa::File),
            igvm_crate_digest(&file, IgvmPlatformType::SEV_SNP)
        );
        assert_eq!(
            ours(&file, IsolationType::Tdx, ZeroPages::Zero, VmsaGpa::File),
            igvm_crate_digest(&file, IgvmPlatformType::TDX)
        );
    }
}

mod sev_snp_measure {
    use super::*;

    const ORACLE: &str = r#"
import json, sys
try:
    from sevsnpmeasure.gctx import GCTX
except ImportError as e:
    sys.stderr.write("sevsnpmeasure missing: %s\n" % e)
    sys.exit(3)
for line in sys.stdin:
    seq = json.loads(line)
    g = GCTX()
    for op in seq:
        kind = op[0]
        if kind == "normal":
            g.update_normal_pages(op[1], bytes.fromhex(op[2]))
        elif kind == "zero":
            g.update_zero_pages(op[1], 4096)
        elif kind == "unmeasured":
            g.update_unmeasured_pages(op[1], 4096)
        elif kind == "secrets":
            g.update_secrets_page(op[1])
        elif kind == "cpuid":
            g.update_cpuid_page(op[1])
        elif kind == "vmsa":
            g.update_vmsa_page(bytes.fromhex(op[1]))
        else:
            raise ValueError(kind)
    print(g.hex_ld())
"#;

    /// Runs every sequence through GCTX in one python3 process.
    fn gctx_digests(sequences: &[Vec<serde_json::Value>]) -> Vec<String> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(ORACLE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("python3 is required for the SNP oracle ({e}); run `cargo xtask deps`")
            });
        let mut input = String::new();
        for seq in sequences {
            input.push_str(&serde_json::to_string(seq).unwrap());
            input.push('\n');
        }
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "the sev-snp-measure oracle failed ({}); install it with `cargo xtask deps`: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let digests: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(digests.len(), sequences.len());
        digests
    }

    /// GCTX calls for the file's SNP directives, as an SNP VMM would issue them.
    fn gctx_ops(file: &IgvmFile, zero_pages: ZeroPages) -> Vec<serde_json::Value> {
        use serde_json::json;
        let mut ops = Vec::new();
        let mut areas = std::collections::HashMap::new();
        for d in file.directives() {
            match d {
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes,
                    parameter_area_index,
                    ..
                } => {
                    areas.insert(*parameter_area_index, *number_of_bytes);
                }
                IgvmDirectiveHeader::PageData {
                    gpa,
                    flags,
                    data_type,
                    data,
                    ..
                } => {
                    assert!(!flags.is_2mb_page());
                    if flags.shared() {
                        continue;
                    }
                    let op = match *data_type {
                        IgvmPageDataType::SECRETS => json!(["secrets", gpa]),
                        IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => {
                            json!(["cpuid", gpa])
                        }
                        _ if flags.unmeasured() => json!(["unmeasured", gpa]),
                        _ if data.is_empty() => match zero_pages {
                            ZeroPages::Zero => json!(["zero", gpa]),
                            ZeroPages::Normal => json!(["normal", gpa, hex::encode([0u8; 4096])]),
                        },
                        _ => {
                            let mut page = data.clone();
                            page.resize(4096, 0);
                            json!(["normal", gpa, hex::encode(page)])
                        }
                    };
                    ops.push(op);
                }
                IgvmDirectiveHeader::ParameterInsert(insert) => {
                    let bytes = areas[&insert.parameter_area_index];
                    for off in (0..bytes).step_by(4096) {
                        ops.push(json!(["unmeasured", insert.gpa + off]));
                    }
                }
                IgvmDirectiveHeader::SnpVpContext { vmsa, .. } => {
                    ops.push(json!([
                        "vmsa",
                        hex::encode(zerocopy::IntoBytes::as_bytes(vmsa.as_ref()))
                    ]));
                }
                _ => {}
            }
        }
        ops
    }

    fn agree(zero_pages: ZeroPages) {
        let files: Vec<IgvmFile> = (0..SEQUENCES)
            .map(|seed| random_file(seed + 1000, IsolationType::Snp, seed % 2 == 1))
            .collect();
        let sequences: Vec<_> = files.iter().map(|f| gctx_ops(f, zero_pages)).collect();
        let expected = gctx_digests(&sequences);
        for (seed, (file, want)) in files.iter().zip(expected).enumerate() {
            assert_eq!(
                ours(file, IsolationType::Snp, zero_pages, VmsaGpa::Kvm),
                want,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn qemu_zero_page_convention_matches_gctx_on_50_sequences() {
        agree(ZeroPages::Zero);
    }

    #[test]
    fn normal_zero_page_convention_matches_gctx_on_50_sequences() {
        agree(ZeroPages::Normal);
    }

    /// A file we did not build, with the VMSA directive before the pages: the QEMU preset
    /// measures it where KVM does (its fixed GPA, after every page), the Hyper-V preset where
    /// the file puts it.
    #[test]
    fn presets_place_the_vmsa_as_their_vmm_does() {
        use serde_json::json;
        let mut vmsa = <igvm::snp_defs::SevVmsa as zerocopy::FromZeros>::new_box_zeroed().unwrap();
        vmsa.rip = 0xfff0;
        vmsa.cr0 = 0x31;
        let vmsa_hex = hex::encode(zerocopy::IntoBytes::as_bytes(vmsa.as_ref()));
        let page = |gpa, unmeasured, data: Vec<u8>| IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: 1,
            flags: IgvmPageDataFlags::new().with_unmeasured(unmeasured),
            data_type: IgvmPageDataType::NORMAL,
            data,
        };
        let file = IgvmFile::new(
            IgvmRevision::V1,
            vec![IgvmPlatformHeader::SupportedPlatform(
                IGVM_VHS_SUPPORTED_PLATFORM {
                    compatibility_mask: 1,
                    highest_vtl: 0,
                    platform_type: IgvmPlatformType::SEV_SNP,
                    platform_version: 1,
                    shared_gpa_boundary: 0,
                },
            )],
            vec![IgvmInitializationHeader::GuestPolicy {
                policy: 0x30000,
                compatibility_mask: 1,
            }],
            vec![
                IgvmDirectiveHeader::SnpVpContext {
                    gpa: 0x8000,
                    compatibility_mask: 1,
                    vp_index: 0,
                    vmsa,
                },
                page(0x1000, false, vec![0x33; 4096]),
                page(0x2000, false, vec![]),
                page(0x3000, true, vec![]),
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes: 0x2000,
                    parameter_area_index: 0,
                    initial_data: vec![],
                },
                IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                    gpa: 0x10000,
                    compatibility_mask: 1,
                    parameter_area_index: 0,
                }),
            ],
        )
        .unwrap();
        let mut bytes = Vec::new();
        file.serialize(&mut bytes).unwrap();
        let file = igvm_loader::parse(&bytes).unwrap();
        let pages = vec![
            json!(["normal", 0x1000, hex::encode([0x33u8; 4096])]),
            json!(["normal", 0x2000, hex::encode([0u8; 4096])]),
            json!(["unmeasured", 0x3000]),
            json!(["unmeasured", 0x10000]),
            json!(["unmeasured", 0x11000]),
        ];
        let mut qemu = pages;
        qemu.push(json!(["vmsa", vmsa_hex]));
        let want = gctx_digests(&[qemu]);
        let digest = |vmm| {
            measure(&file, IsolationType::Snp, &MeasureOptions::for_vmm(vmm))
                .unwrap()
                .digest
        };
        assert_eq!(digest(igvm_loader::measure::Vmm::Qemu), want[0]);
        // GCTX always uses KVM's GPA, so the Hyper-V placement is held against the igvm crate.
        assert_eq!(
            digest(igvm_loader::measure::Vmm::Hyperv),
            igvm_crate_digest(&file, IgvmPlatformType::SEV_SNP)
        );
    }

    #[test]
    fn two_mib_pages_match_gctx_as_512_small_pages() {
        let mut b = IgvmBuilder::<X86Register>::new();
        let mut config = PlatformConfig::new(IsolationConfig::new(IsolationType::Snp));
        config.large_pages = true;
        let image = b.add_platform(config).unwrap();
        image
            .import_pages(0x1ff, 1 + 1024, "ram", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        image
            .import_pages(
                0x600,
                1024,
                "scratch",
                BootPageAcceptance::ExclusiveUnmeasured,
                &[],
            )
            .unwrap();
        let file = IgvmFile::new_from_binary(&b.build_bytes().unwrap(), None).unwrap();
        let large = file
            .directives()
            .iter()
            .filter(
                |d| matches!(d, IgvmDirectiveHeader::PageData { flags, .. } if flags.is_2mb_page()),
            )
            .count();
        assert_eq!(large, 4);
        let mut seqs = Vec::new();
        for zero_pages in [ZeroPages::Zero, ZeroPages::Normal] {
            let mut ops = Vec::new();
            for page in 0x1ff..0x1ff + 1025u64 {
                ops.push(match zero_pages {
                    ZeroPages::Zero => serde_json::json!(["zero", page * 4096]),
                    ZeroPages::Normal => {
                        serde_json::json!(["normal", page * 4096, hex::encode([0u8; 4096])])
                    }
                });
            }
            for page in 0x600..0x600 + 1024u64 {
                ops.push(serde_json::json!(["unmeasured", page * 4096]));
            }
            seqs.push(ops);
        }
        let want = gctx_digests(&seqs);
        assert_eq!(
            ours(&file, IsolationType::Snp, ZeroPages::Zero, VmsaGpa::Kvm),
            want[0]
        );
        assert_eq!(
            ours(&file, IsolationType::Snp, ZeroPages::Normal, VmsaGpa::Kvm),
            want[1]
        );
    }
}
