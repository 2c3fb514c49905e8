//! Step 1: a measured IGVM image.

use super::DemoOptions;
use super::LaunchDigest;
use super::Platform;
use super::Timeline;
use anyhow::Context;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::loaders::Payload;
use igvm_loader::loaders::linux::LinuxConfig;
use igvm_loader::loaders::linux::load_linux;
use igvm_loader::loaders::x86::X86Layout;
use igvm_loader::measure::MeasureOptions;
use sha2::Digest as _;
use sha2::Sha384;

/// The built image and its digests.
pub(crate) struct Image {
    /// The IGVM file.
    #[expect(dead_code, reason = "kept for the quote step's event log")]
    pub(crate) bytes: Vec<u8>,
}

fn isolation(platform: Platform) -> IsolationType {
    match platform {
        Platform::Snp => IsolationType::Snp,
        Platform::Tdx => IsolationType::Tdx,
        Platform::Native => IsolationType::None,
    }
}

/// A payload made on the fly: a few pages of code, a heap and a parameter area.
fn generated_payload(image: &mut dyn ImageLoad<X86Register>) -> igvm_loader::Result<()> {
    image.import_pages(
        0x100,
        4,
        "demo-kernel",
        BootPageAcceptance::Exclusive,
        &[0xf4; 12_000],
    )?;
    image.import_pages(0x200, 16, "demo-heap", BootPageAcceptance::Exclusive, &[])?;
    Ok(())
}

/// Guest memory the image is laid out for.
const GUEST_MEMORY: u64 = 256 << 20;
/// The command line the measured image carries.
const CMDLINE: &str = "console=ttyS0 panic=-1";

/// Debian's newest installed kernel, if any.
pub(crate) fn debian_kernel() -> Option<std::path::PathBuf> {
    let mut kernels: Vec<std::path::PathBuf> = std::fs::read_dir("/boot")
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

pub(crate) fn build(
    options: &DemoOptions,
    timeline: &mut Timeline,
) -> anyhow::Result<(Image, String)> {
    let kernel_path = options.kernel.clone().or_else(debian_kernel);
    let kernel = match &kernel_path {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let name = kernel_path
        .as_ref()
        .map_or_else(String::new, |p| p.display().to_string());
    let mut builder = IgvmBuilder::<X86Register>::new();
    for platform in &options.platforms {
        let image = builder
            .add_platform(PlatformConfig::new(IsolationConfig::new(isolation(
                *platform,
            ))))
            .with_context(|| format!("adding platform {platform:?}"))?;
        match &kernel {
            Some(kernel) => {
                let mut config = LinuxConfig::new(
                    Payload::new(&name, kernel),
                    X86Layout::with_memory(GUEST_MEMORY),
                );
                config.cmdline = CMDLINE;
                load_linux(image, &config)
                    .with_context(|| format!("loading {name} for {platform:?}"))?;
            }
            None => generated_payload(image)
                .with_context(|| format!("loading the payload for {platform:?}"))?,
        }
    }
    let (bytes, measurements) = builder
        .build_measured(&MeasureOptions::default())
        .context("building the IGVM file")?;
    timeline.image_source = kernel_path.map_or_else(
        || "generated payload (no Debian kernel installed)".into(),
        |p| format!("Linux {}", p.display()),
    );
    timeline.image_bytes = bytes.len();
    for platform in &options.platforms {
        let name = match platform {
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
            Platform::Native => "native",
        };
        let digest = match measurements.iter().find(|m| m.platform == name) {
            Some(m) => LaunchDigest {
                platform: *platform,
                algorithm: m.algorithm.clone(),
                digest: m.digest.clone(),
            },
            None if *platform == Platform::Native => LaunchDigest {
                platform: *platform,
                algorithm: "sha384-of-file".into(),
                digest: hex::encode(Sha384::digest(&bytes)),
            },
            None => anyhow::bail!("no launch digest for {name}"),
        };
        timeline.digests.push(digest);
    }
    let detail = format!(
        "{} bytes, {} platforms, from {}",
        bytes.len(),
        options.platforms.len(),
        timeline.image_source
    );
    Ok((Image { bytes }, detail))
}
