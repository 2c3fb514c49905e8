//! An AArch64 Linux `Image`: the 64-byte header (magic "ARM\x64", text offset, image size),
//! the kernel at RAM base + text offset, and a parameter area for the device tree, which
//! the IGVM loader fills at launch. Boot registers per the arm64 boot protocol: X0 = the
//! device tree, PC = the image, EL1h with DAIF masked.

use super::LoadError;
use super::Payload;
use super::Problem;
use super::Result;
use super::align_up;
use super::pages;
use crate::arch::AArch64Register;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImageLoad;
use crate::importer::PAGE_SIZE;
use crate::importer::StartupMemoryType;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// The `Image` header magic, "ARM\x64".
pub const ARM64_MAGIC: u32 = 0x644d_5241;
/// The text offset of images older than 3.17, whose header has no image size.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// The kernel must be placed at a 2 MiB-aligned base plus its text offset.
const BASE_ALIGN: u64 = 2 << 20;
/// The device tree may be at most 2 MiB.
pub const MAX_DEVICE_TREE: u64 = 2 << 20;
/// PSTATE at entry: EL1h, D, A, I and F masked.
pub const ENTRY_CPSR: u64 = 0x3c5;

/// The arm64 `Image` header (Documentation/arch/arm64/booting.rst).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, Immutable, KnownLayout)]
pub struct Arm64ImageHeader {
    /// Executable code.
    pub code0: U32,
    /// Executable code.
    pub code1: U32,
    /// Image load offset from a 2 MiB-aligned base.
    pub text_offset: U64,
    /// Effective image size (memory the kernel needs from its load address).
    pub image_size: U64,
    /// Kernel flags.
    pub flags: U64,
    /// Reserved.
    pub res2: U64,
    /// Reserved.
    pub res3: U64,
    /// Reserved.
    pub res4: U64,
    /// [`ARM64_MAGIC`].
    pub magic: U32,
    /// Reserved (PE header offset on EFI-stub kernels).
    pub res5: U32,
}
const _: () = assert!(size_of::<Arm64ImageHeader>() == 64);

/// Where to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Config {
    /// First byte of RAM (2 MiB aligned).
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// Pages reserved for the device tree (at most 2 MiB).
    pub device_tree_pages: u32,
}

/// Where the pieces ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aarch64Info {
    /// Kernel load address (= entry point).
    pub kernel_gpa: u64,
    /// Bytes the kernel needs.
    pub kernel_size: u64,
    /// GPA of the device-tree parameter area.
    pub device_tree_gpa: u64,
}

/// Loads `image` through `importer`.
pub fn load_aarch64_image(
    importer: &mut dyn ImageLoad<AArch64Register>,
    image: &Payload<'_>,
    config: &Aarch64Config,
) -> Result<Aarch64Info> {
    let file = image.name;
    let bad = |p: Problem| LoadError::new(file, p);
    let (header, _) = Arm64ImageHeader::read_from_prefix(image.data).map_err(|_| {
        bad(Problem::Truncated(format!(
            "{} bytes hold no 64-byte Image header",
            image.data.len()
        )))
    })?;
    if header.magic.get() != ARM64_MAGIC {
        return Err(bad(Problem::BadMagic(format!(
            "{:#010x} is not the arm64 Image magic \"ARM\\x64\"",
            header.magic.get()
        ))));
    }
    let (text_offset, image_size) = match header.image_size.get() {
        0 => (LEGACY_TEXT_OFFSET, image.data.len() as u64),
        n => (header.text_offset.get(), n),
    };
    if image_size < image.data.len() as u64 {
        return Err(bad(Problem::Invalid(format!(
            "header image size {image_size:#x} is smaller than the {}-byte file",
            image.data.len()
        ))));
    }
    if !config.ram_base.is_multiple_of(BASE_ALIGN) || !text_offset.is_multiple_of(PAGE_SIZE) {
        return Err(bad(Problem::Invalid(format!(
            "RAM base {:#x} is not 2 MiB aligned or text offset {text_offset:#x} is not page \
             aligned",
            config.ram_base
        ))));
    }
    let dt_bytes = u64::from(config.device_tree_pages) * PAGE_SIZE;
    if config.device_tree_pages == 0 || dt_bytes > MAX_DEVICE_TREE {
        return Err(bad(Problem::Invalid(format!(
            "a device tree area of {} pages (1..=512 allowed)",
            config.device_tree_pages
        ))));
    }
    let ram_end = config.ram_base.saturating_add(config.ram_size);
    let kernel_gpa = config.ram_base.saturating_add(text_offset);
    let kernel_end = kernel_gpa.saturating_add(image_size);
    let dt_gpa = align_up(kernel_end, BASE_ALIGN).unwrap_or(u64::MAX);
    let dt_end = dt_gpa.saturating_add(dt_bytes);
    if dt_end > ram_end || dt_gpa == u64::MAX {
        return Err(bad(Problem::MemoryTooSmall {
            what: "the kernel and its device tree".into(),
            start: kernel_gpa,
            end: dt_end,
        }));
    }
    let fail = |e: crate::Error| LoadError::new(file, e.into());
    let mut at = config.ram_base;
    while at < ram_end {
        let len = (ram_end - at).min(2 << 30);
        importer
            .verify_startup_memory_available(at / PAGE_SIZE, pages(len), StartupMemoryType::Ram)
            .map_err(fail)?;
        at += len;
    }
    importer
        .import_pages(
            kernel_gpa / PAGE_SIZE,
            pages(image.data.len() as u64),
            "kernel",
            BootPageAcceptance::Exclusive,
            image.data,
        )
        .map_err(fail)?;
    let area = importer
        .create_parameter_area(dt_gpa / PAGE_SIZE, config.device_tree_pages, "device-tree")
        .map_err(fail)?;
    importer
        .import_parameter(area, 0, IgvmParameterType::DeviceTree)
        .map_err(fail)?;
    for reg in [
        AArch64Register::X0(dt_gpa),
        AArch64Register::Pc(kernel_gpa),
        AArch64Register::Cpsr(ENTRY_CPSR),
    ] {
        importer.import_vp_register(reg).map_err(fail)?;
    }
    Ok(Aarch64Info {
        kernel_gpa,
        kernel_size: image_size,
        device_tree_gpa: dt_gpa,
    })
}
