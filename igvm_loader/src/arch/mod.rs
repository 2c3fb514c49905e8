//! Guest architectures: the register sets a loader can set on the boot processor.
//!
//! The register enums are the `igvm` crate's (they are what IGVM files store); this module
//! adds [`GuestArch`], which says how a register set becomes each platform's VP context.

mod aarch64;
mod x86_64;

use crate::error::Result;
use crate::importer::IsolationConfig;
use igvm::IgvmDirectiveHeader;
use igvm::hv_defs::Vtl;
use std::fmt::Debug;

pub use igvm::registers::AArch64Register;
pub use igvm::registers::SegmentRegister;
pub use igvm::registers::TableRegister;
pub use igvm::registers::X86Register;

/// The IGVM architecture of a file.
pub use igvm::Arch;

/// A guest architecture's boot-processor register type.
pub trait GuestArch: Copy + Debug + PartialEq + Send + Sync + 'static {
    /// Short architecture name ("x86_64", "aarch64").
    const NAME: &'static str;

    /// The IGVM file architecture.
    fn igvm_arch() -> Arch;

    /// The VBS VP context directive holding `registers` for `vtl`.
    fn vbs_context(registers: &[Self], vtl: Vtl, compatibility_mask: u32) -> IgvmDirectiveHeader;

    /// The SNP VP context (VMSA) directive at `gpa` built from `registers`.
    fn snp_context(
        registers: &[Self],
        config: &IsolationConfig,
        gpa: u64,
        compatibility_mask: u32,
    ) -> Result<IgvmDirectiveHeader>;

    /// The TDX reset page (placed at
    /// [`crate::vp_context::tdx::RESET_PAGE_GPA`]) whose trampoline starts the boot processor
    /// in the state `registers` describe.
    fn tdx_reset_page(registers: &[Self]) -> Result<Vec<u8>>;

    /// The native (non-isolated) VP context directive built from `registers`.
    fn native_context(registers: &[Self], compatibility_mask: u32) -> Result<IgvmDirectiveHeader>;
}
