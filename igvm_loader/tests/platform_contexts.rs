//! Every platform can start: the same loader output becomes a TDX reset page, an SNP VMSA
//! with EFER.SVME and architectural defaults, and a native VP context that allows
//! relocations.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

mod common;

use igvm::IgvmDirectiveHeader;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::loaders::Payload;
use igvm_loader::loaders::linux::LinuxConfig;
use igvm_loader::loaders::linux::load_linux;
use igvm_loader::loaders::x86::BOOT_EFER;
use igvm_loader::loaders::x86::X86Layout;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::vp_context::EFER_SVME;
use igvm_loader::vp_context::tdx::RESET_PAGE_GPA;

fn build(platforms: &[IsolationType]) -> igvm::IgvmFile {
    let kernel = common::fake_bzimage(8192, 0x20_0000);
    let mut builder = IgvmBuilder::<X86Register>::new();
    for &t in platforms {
        let image = builder
            .add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap();
        let config = LinuxConfig::new(
            Payload::new("bzImage", &kernel),
            X86Layout::with_memory(64 << 20),
        );
        load_linux(image, &config).unwrap();
    }
    igvm_loader::parse(&builder.build_bytes().unwrap()).unwrap()
}

#[test]
fn tdx_registers_become_a_measured_reset_page_with_the_trampoline() {
    let file = build(&[IsolationType::Tdx]);
    let page = file
        .directives()
        .iter()
        .find_map(|d| match d {
            IgvmDirectiveHeader::PageData {
                gpa, data, flags, ..
            } if *gpa == RESET_PAGE_GPA => {
                assert!(!flags.unmeasured());
                Some(data.clone())
            }
            _ => None,
        })
        .expect("reset page");
    assert_eq!(page.len(), 4096);
    // The reset vector jumps back into the page (E9 rel32).
    assert_eq!(page[0xff0], 0xe9);
    // And it is part of MRTD: measuring succeeds and changes with the entry point.
    let m = igvm_loader::measure::measure_all(&file, &MeasureOptions::default()).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].platform, "tdx");
}

#[test]
fn snp_vmsa_always_has_svme_and_reset_defaults() {
    let file = build(&[IsolationType::Snp]);
    let vmsa = file
        .directives()
        .iter()
        .find_map(|d| match d {
            IgvmDirectiveHeader::SnpVpContext { vmsa, gpa, .. } => {
                assert_eq!(*gpa, 0xe000);
                Some(vmsa.clone())
            }
            _ => None,
        })
        .expect("VMSA");
    assert_eq!(vmsa.efer, BOOT_EFER | EFER_SVME);
    assert_eq!(vmsa.cs.selector, 0x10);
    assert_eq!(vmsa.rflags, 2);
    assert_eq!(vmsa.dr6, 0xffff_0ff0);
    assert_eq!(vmsa.dr7, 0x400);
    assert_eq!(vmsa.pat, 0x0007_0406_0007_0406);
    assert_eq!(vmsa.xcr0, 1);
    assert_eq!(
        vmsa.tr.attrib, 0x8b,
        "a long-mode start needs a 64-bit TSS type"
    );
    assert_eq!(vmsa.ldtr.attrib, 0x82);

    // A loader that sets no EFER still gets SVME; one that sets it without SVME too.
    for efer in [None, Some(0x500u64)] {
        let mut builder = IgvmBuilder::<X86Register>::new();
        let image = builder
            .add_platform(PlatformConfig::new(IsolationConfig::new(
                IsolationType::Snp,
            )))
            .unwrap();
        image.set_vp_context_page(0x20).unwrap();
        image.import_vp_register(X86Register::Rip(0x1000)).unwrap();
        if let Some(e) = efer {
            image.import_vp_register(X86Register::Efer(e)).unwrap();
        }
        let file = builder.build().unwrap();
        let got = file.directives().iter().find_map(|d| match d {
            IgvmDirectiveHeader::SnpVpContext { vmsa, .. } => Some(vmsa.efer),
            _ => None,
        });
        assert_eq!(got, Some(efer.unwrap_or(0) | EFER_SVME));
    }
}

#[test]
fn snp_page_tables_carry_the_c_bit_when_asked_and_other_platforms_never() {
    let kernel = common::fake_bzimage(8192, 0x20_0000);
    let tables = |t: IsolationType, c_bit: Option<u8>| {
        let mut rec =
            igvm_loader::recording::RecordingImporter::<X86Register>::new(IsolationConfig::new(t));
        let mut layout = X86Layout::with_memory(64 << 20);
        layout.snp_c_bit = c_bit;
        load_linux(
            &mut rec,
            &LinuxConfig::new(Payload::new("k", &kernel), layout),
        )
        .unwrap();
        rec.calls()
            .iter()
            .find_map(|c| match c {
                igvm_loader::recording::ImportCall::ImportPages {
                    debug_tag, data, ..
                } if debug_tag == "page-tables" => Some(data.clone()),
                _ => None,
            })
            .unwrap()
    };
    let pml4e = |d: &[u8]| u64::from_le_bytes(d[..8].try_into().unwrap());
    let pde0 = |d: &[u8]| u64::from_le_bytes(d[0x2000..0x2008].try_into().unwrap());
    let snp = tables(IsolationType::Snp, Some(51));
    assert_eq!(pml4e(&snp), 0x11000 | 0x23 | 1 << 51);
    assert_eq!(pde0(&snp), 0xe3 | 1 << 51);
    for t in [IsolationType::None, IsolationType::Tdx, IsolationType::Vbs] {
        assert_eq!(pde0(&tables(t, Some(51))), 0xe3, "{t:?}");
    }
    assert_eq!(pde0(&tables(IsolationType::Snp, None)), 0xe3);
}

#[test]
fn native_platform_accepts_relocations_tdx_and_snp_refuse_them() {
    for (t, ok) in [
        (IsolationType::None, true),
        (IsolationType::Vbs, true),
        (IsolationType::Snp, false),
        (IsolationType::Tdx, false),
    ] {
        let mut builder = IgvmBuilder::<X86Register>::new();
        let image = builder
            .add_platform(PlatformConfig::new(IsolationConfig::new(t)))
            .unwrap();
        image
            .import_pages(
                0x200,
                1,
                "k",
                igvm_loader::importer::BootPageAcceptance::Exclusive,
                &[1],
            )
            .unwrap();
        let r =
            image.relocation_region(0x20_0000, 0x1000, 0x20_0000, 0, 0x4000_0000, true, false, 0);
        assert_eq!(r.is_ok(), ok, "{t:?}: {r:?}");
    }
}

#[test]
fn one_file_for_every_x86_platform_builds_and_measures() {
    let file = build(&[
        IsolationType::None,
        IsolationType::Vbs,
        IsolationType::Snp,
        IsolationType::Tdx,
    ]);
    let m = igvm_loader::measure::measure_all(&file, &MeasureOptions::default()).unwrap();
    let names: Vec<&str> = m.iter().map(|m| m.platform.as_str()).collect();
    assert_eq!(names, ["vbs", "snp", "tdx"]);
    // The native context is there for `igvmgen qemu`.
    assert!(igvm_loader::qemu::QemuPlan::from_file(&file).is_ok());
}
