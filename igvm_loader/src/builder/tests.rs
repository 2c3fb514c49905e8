//! Builder tests: round trips, multi-platform merging and the builder's own contract. The
//! contract of each image call is tested beside its code, in `image`'s modules.

use super::*;
use crate::arch::SegmentRegister;
use crate::arch::TableRegister;
use crate::arch::X86Register;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImportedRegionDescriptor;
use crate::importer::IsolationConfig;
use crate::measure::MeasureOptions;
use crate::measure::measure;
use igvm::IgvmDirectiveHeader;
use zerocopy::FromBytes;

/// One platform's settings, defaults otherwise (shared with the per-call tests in `image`).
pub(super) fn config(t: IsolationType) -> PlatformConfig {
    PlatformConfig::new(IsolationConfig::new(t))
}

/// An empty SEV-SNP image.
pub(super) fn snp() -> PlatformImage<X86Register> {
    PlatformImage::new(config(IsolationType::Snp))
}

fn cs() -> X86Register {
    X86Register::Cs(SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: 8,
        attributes: 0xa09b,
    })
}

/// A small image a loader might produce, for any platform.
fn load_common(image: &mut PlatformImage<X86Register>) {
    let isolation = image.isolation_config().isolation_type;
    image
        .import_pages(
            0x100,
            3,
            "kernel",
            BootPageAcceptance::Exclusive,
            &[0xab; 9000],
        )
        .unwrap();
    image
        .import_pages(0x200, 2, "bss", BootPageAcceptance::Exclusive, &[])
        .unwrap();
    image
        .import_pages(
            0x300,
            1,
            "scratch",
            BootPageAcceptance::ExclusiveUnmeasured,
            &[],
        )
        .unwrap();
    image
        .import_pages(0x400, 1, "shared", BootPageAcceptance::Shared, &[])
        .unwrap();
    let area = image.create_parameter_area(0x500, 2, "params").unwrap();
    image
        .import_parameter(area, 0, IgvmParameterType::VpCount)
        .unwrap();
    image
        .import_parameter(area, 0x100, IgvmParameterType::CommandLine)
        .unwrap();
    image
        .import_parameter(area, 0x1000, IgvmParameterType::MemoryMap)
        .unwrap();
    match isolation {
        IsolationType::Snp => {
            image
                .import_pages(0x600, 1, "secrets", BootPageAcceptance::SecretsPage, &[])
                .unwrap();
            image
                .import_pages(0x601, 1, "cpuid", BootPageAcceptance::CpuidPage, &[1; 64])
                .unwrap();
            image.set_vp_context_page(0x700).unwrap();
            image.import_vp_register(cs()).unwrap();
            image.import_vp_register(X86Register::Rip(0xfff0)).unwrap();
        }
        IsolationType::Vbs => {
            image.import_vp_register(cs()).unwrap();
            image
                .import_vp_register(X86Register::Gdtr(TableRegister {
                    base: 0x1000,
                    limit: 0x27,
                }))
                .unwrap();
            image
                .import_vp_register(X86Register::Rip(0x100_000))
                .unwrap();
        }
        _ => {}
    }
}

fn three_platform_builder() -> IgvmBuilder<X86Register> {
    let mut b = IgvmBuilder::new();
    for t in [IsolationType::Snp, IsolationType::Tdx, IsolationType::Vbs] {
        load_common(b.add_platform(config(t)).unwrap());
    }
    b
}

mod round_trip {
    use super::*;

    #[test]
    fn built_file_parses_back_with_every_directive() {
        let b = three_platform_builder();
        let built = b.build().unwrap();
        let bytes = b.build_bytes().unwrap();
        let parsed = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert_eq!(parsed.platforms().len(), 3);
        assert_eq!(parsed.directives().len(), built.directives().len());
        let listing = crate::dump::dump(&parsed);
        for gpa in [
            0x100000, 0x101000, 0x102000, 0x200000, 0x201000, 0x300000, 0x400000,
        ] {
            assert!(
                listing.contains(&format!("page_data gpa={gpa:#x}")),
                "{gpa:#x} missing from\n{listing}"
            );
        }
        for needle in [
            "vp_count index=",
            "command_line index=",
            "memory_map index=",
            "parameter_insert gpa=0x500000",
            "type=SECRETS",
            "type=CPUID_DATA",
            "snp_vp_context gpa=0x700000",
            "x64_vbs_vp_context",
            "init guest_policy mask=0x1",
            "type=SEV_SNP",
            "type=TDX",
            "type=VSM_ISOLATION",
        ] {
            assert!(listing.contains(needle), "{needle} missing from\n{listing}");
        }
    }

    #[test]
    fn build_measured_measures_the_shipped_bytes() {
        let b = three_platform_builder();
        let opts = MeasureOptions::default();
        let (bytes, measured) = b.build_measured(&opts).unwrap();
        let names: Vec<&str> = measured.iter().map(|m| m.platform.as_str()).collect();
        assert_eq!(names, ["snp", "tdx", "vbs"]);
        let parsed = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert_eq!(
            measured,
            crate::measure::measure_all(&parsed, &opts).unwrap()
        );
    }

    #[test]
    fn files_without_page_data_still_parse_back() {
        let mut b = IgvmBuilder::<X86Register>::new();
        b.add_platform(config(IsolationType::Tdx))
            .unwrap()
            .import_pages(0, 4, "zeros", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        let bytes = b.build_bytes().unwrap();
        let parsed = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert_eq!(parsed.directives().len(), 4);
    }

    #[test]
    fn aarch64_vbs_images_round_trip() {
        use crate::arch::AArch64Register;
        let mut b = IgvmBuilder::<AArch64Register>::new();
        let image = b.add_platform(config(IsolationType::Vbs)).unwrap();
        image
            .import_pages(
                0x80,
                1,
                "el1",
                BootPageAcceptance::Exclusive,
                b"\x1f\x20\x03\xd5",
            )
            .unwrap();
        image
            .import_vp_register(AArch64Register::Pc(0x80_000))
            .unwrap();
        image
            .import_vp_register(AArch64Register::X0(0x1000))
            .unwrap();
        let bytes = b.build_bytes().unwrap();
        let parsed = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert!(crate::dump::dump(&parsed).contains("aarch64_vbs_vp_context"));
        let mut snp = PlatformImage::<AArch64Register>::new(config(IsolationType::Snp));
        assert!(matches!(
            snp.import_vp_register(AArch64Register::Pc(0)),
            Err(Error::RegistersUnsupported { .. })
        ));
    }

    #[test]
    fn identical_pages_are_stored_once_with_the_union_mask() {
        let b = three_platform_builder();
        let file = b.build().unwrap();
        let kernel: Vec<u32> = file
            .directives()
            .iter()
            .filter_map(|d| match d {
                IgvmDirectiveHeader::PageData {
                    gpa: 0x100000,
                    compatibility_mask,
                    ..
                } => Some(*compatibility_mask),
                _ => None,
            })
            .collect();
        assert_eq!(kernel, vec![0b111]);
    }

    #[test]
    fn platform_specific_pages_keep_their_own_mask() {
        let mut b = IgvmBuilder::<X86Register>::new();
        b.add_platform(config(IsolationType::Snp))
            .unwrap()
            .import_pages(1, 1, "a", BootPageAcceptance::Exclusive, b"snp")
            .unwrap();
        b.add_platform(config(IsolationType::Tdx))
            .unwrap()
            .import_pages(1, 1, "a", BootPageAcceptance::Exclusive, b"tdx")
            .unwrap();
        let file = b.build().unwrap();
        let masks: Vec<u32> = file
            .directives()
            .iter()
            .filter_map(IgvmDirectiveHeader::compatibility_mask)
            .collect();
        assert_eq!(masks, vec![1, 2]);
    }

    #[test]
    fn merging_platforms_does_not_change_a_platforms_measurement() {
        let merged = three_platform_builder().build().unwrap();
        for t in [IsolationType::Snp, IsolationType::Tdx, IsolationType::Vbs] {
            let mut alone = IgvmBuilder::new();
            load_common(alone.add_platform(config(t)).unwrap());
            let alone = alone.build().unwrap();
            let opts = MeasureOptions::default();
            assert_eq!(
                measure(&merged, t, &opts).unwrap().digest,
                measure(&alone, t, &opts).unwrap().digest,
                "{t:?}"
            );
        }
    }

    #[test]
    fn large_pages_cover_aligned_data_less_runs() {
        let mut b = IgvmBuilder::<X86Register>::new();
        let mut c = config(IsolationType::Snp);
        c.large_pages = true;
        b.add_platform(c)
            .unwrap()
            .import_pages(511, 1025, "ram", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        let file = b.build().unwrap();
        let large = file
            .directives()
            .iter()
            .filter(
                |d| matches!(d, IgvmDirectiveHeader::PageData { flags, .. } if flags.is_2mb_page()),
            )
            .count();
        // Pages 512..1024 and 1024..1536 are whole 2 MiB pages; 511 is not.
        assert_eq!(large, 2);
        assert_eq!(file.directives().len(), 3);
    }

    #[test]
    fn imported_regions_page_lists_sorted_merged_ranges() {
        let mut b = IgvmBuilder::<X86Register>::new();
        let image = b.add_platform(config(IsolationType::Snp)).unwrap();
        image
            .import_pages(0x20, 4, "b", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        image
            .import_pages(0x10, 2, "a", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        image
            .import_pages(0x12, 1, "a2", BootPageAcceptance::ExclusiveUnmeasured, &[])
            .unwrap();
        image
            .import_pages(0x30, 1, "host", BootPageAcceptance::Shared, &[])
            .unwrap();
        image.set_imported_regions_config_page(0x40);
        let file = b.build().unwrap();
        let page = file
            .directives()
            .iter()
            .find_map(|d| match d {
                IgvmDirectiveHeader::PageData {
                    gpa: 0x40000, data, ..
                } => Some(data.clone()),
                _ => None,
            })
            .unwrap();
        let (descs, _) =
            <[ImportedRegionDescriptor]>::ref_from_prefix_with_elems(&page, 4).unwrap();
        let got: Vec<(u64, u64)> = descs
            .iter()
            .map(|d| (d.base_page_number.get(), d.page_count.get()))
            .collect();
        assert_eq!(got, vec![(0x10, 3), (0x20, 4), (0x40, 1), (0, 0)]);
    }
}

mod contract {
    use super::*;

    #[test]
    fn the_same_platform_cannot_be_added_twice() {
        let mut b = IgvmBuilder::<X86Register>::new();
        b.add_platform(config(IsolationType::Snp)).unwrap();
        assert!(matches!(
            b.add_platform(config(IsolationType::Snp)),
            Err(Error::DuplicatePlatform(IsolationType::Snp))
        ));
    }
}
