//! Flat firmware: a blob placed so that it ends at 4 GiB, its last 16 bytes covering the
//! reset vector (0xFFFFFFF0), as a PC's BIOS flash is mapped.
//!
//! The firmware starts in the platform's reset state, so no registers are imported; on SNP
//! the VMSA page is named so that the file carries a VMSA in the architectural reset state.

use super::LoadError;
use super::Payload;
use super::Problem;
use super::Result;
use super::x86::X86Layout;
use crate::arch::X86Register;
use crate::importer::BootPageAcceptance;
use crate::importer::ImageLoad;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;

/// The end of the firmware: 4 GiB.
pub const FIRMWARE_END: u64 = 1 << 32;
/// Largest firmware accepted (the flash window below 4 GiB on common chipsets).
pub const MAX_FIRMWARE_SIZE: u64 = 16 << 20;
/// Offset of the reset vector from the end of the firmware.
const RESET_VECTOR_FROM_END: usize = 16;

/// Where the firmware was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// GPA of the first byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads `firmware` so that it ends at 4 GiB; `layout` gives the RAM the firmware may
/// assume and the SNP VMSA page.
pub fn load_firmware(
    importer: &mut dyn ImageLoad<X86Register>,
    firmware: &Payload<'_>,
    layout: &X86Layout,
) -> Result<FirmwareInfo> {
    let file = firmware.name;
    let size = firmware.data.len() as u64;
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
        return Err(LoadError::new(
            file,
            Problem::Invalid(format!(
                "{size} bytes is not a whole, non-zero number of pages"
            )),
        ));
    }
    if size > MAX_FIRMWARE_SIZE {
        return Err(LoadError::new(
            file,
            Problem::Unsupported(format!(
                "{size} bytes is more than the {MAX_FIRMWARE_SIZE}-byte flash window"
            )),
        ));
    }
    let reset = &firmware.data[firmware.data.len() - RESET_VECTOR_FROM_END..];
    if reset.iter().all(|&b| b == 0) || reset.iter().all(|&b| b == 0xff) {
        return Err(LoadError::new(
            file,
            Problem::Invalid("no code at the reset vector (the last 16 bytes are blank)".into()),
        ));
    }
    let gpa = FIRMWARE_END - size;
    if layout
        .ram
        .iter()
        .any(|r| r.base < FIRMWARE_END && r.end() > gpa)
    {
        return Err(LoadError::new(
            file,
            Problem::Overlap(format!("firmware at {gpa:#x}..4 GiB overlaps guest RAM")),
        ));
    }
    let fail = |e: crate::Error| LoadError::new(file, e.into());
    layout.declare_ram(importer, file)?;
    importer
        .import_pages(
            gpa / PAGE_SIZE,
            size / PAGE_SIZE,
            "firmware",
            BootPageAcceptance::Exclusive,
            firmware.data,
        )
        .map_err(fail)?;
    if importer.isolation_config().isolation_type == IsolationType::Snp {
        importer
            .set_vp_context_page(layout.vmsa_gpa / PAGE_SIZE)
            .map_err(fail)?;
    }
    Ok(FirmwareInfo { gpa, size })
}
