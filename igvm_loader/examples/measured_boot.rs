//! Build a small two-platform (SNP + TDX) image through the `ImageLoad` contract, write it
//! as IGVM bytes, read it back and measure it: the core of a "measured IGVM boot".

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "example code")]

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

/// A toy loader: what a Linux or UEFI loader does, in miniature, against any `ImageLoad`.
fn load(image: &mut dyn ImageLoad<X86Register>) -> igvm_loader::Result<()> {
    let isolation = image.isolation_config().isolation_type;
    image.import_pages(
        0x100,
        4,
        "kernel",
        BootPageAcceptance::Exclusive,
        &[0xf4; 10_000],
    )?;
    image.import_pages(0x200, 16, "heap", BootPageAcceptance::Exclusive, &[])?;
    let params = image.create_parameter_area(0x300, 1, "boot-params")?;
    image.import_parameter(params, 0, IgvmParameterType::VpCount)?;
    image.import_parameter(params, 0x100, IgvmParameterType::CommandLine)?;
    if isolation == IsolationType::Snp {
        image.import_pages(0x400, 1, "secrets", BootPageAcceptance::SecretsPage, &[])?;
        image.import_pages(0x401, 1, "cpuid", BootPageAcceptance::CpuidPage, &[])?;
        image.set_vp_context_page(0x500)?;
        image.import_vp_register(X86Register::Cs(SegmentRegister {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            attributes: 0xa09b,
        }))?;
        image.import_vp_register(X86Register::Rip(0x10_0000))?;
    }
    image.set_imported_regions_config_page(0x600);
    Ok(())
}

fn main() {
    let mut builder = IgvmBuilder::<X86Register>::new();
    for isolation in [IsolationType::Snp, IsolationType::Tdx] {
        load(
            builder
                .add_platform(PlatformConfig::new(IsolationConfig::new(isolation)))
                .unwrap(),
        )
        .unwrap();
    }
    let bytes = builder.build_bytes().unwrap();
    // Optionally keep the file (for example as a fuzzing seed).
    if let Some(path) = std::env::var_os("IGVM_EXAMPLE_OUT") {
        std::fs::write(path, &bytes).unwrap();
    }
    let file = igvm_loader::parse(&bytes).unwrap();
    let measurements =
        igvm_loader::measure::measure_all(&file, &MeasureOptions::default()).unwrap();
    assert_eq!(measurements.len(), 2);
    // Measuring again gives the same digests: launch measurements are a function of the file.
    let again = igvm_loader::measure::measure_all(&file, &MeasureOptions::default()).unwrap();
    assert_eq!(measurements, again);
    println!("{} bytes of IGVM", bytes.len());
    println!("{}", serde_json::to_string_pretty(&measurements).unwrap());
}
