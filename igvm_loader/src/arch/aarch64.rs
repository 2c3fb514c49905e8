//! AArch64: VBS contexts only; SNP and TDX have no AArch64 form, and native AArch64 IGVM VP contexts
//! are not defined by the format.

use super::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::IsolationConfig;
use crate::importer::IsolationType;
use igvm::Arch;
use igvm::IgvmDirectiveHeader;
use igvm::hv_defs::Vtl;
use igvm::registers::AArch64Register;

impl GuestArch for AArch64Register {
    const NAME: &'static str = "aarch64";

    fn igvm_arch() -> Arch {
        Arch::AArch64
    }

    fn vbs_context(registers: &[Self], vtl: Vtl, compatibility_mask: u32) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::AArch64VbsVpContext {
            vtl,
            registers: registers.to_vec(),
            compatibility_mask,
        }
    }

    fn snp_context(
        _registers: &[Self],
        _config: &IsolationConfig,
        _gpa: u64,
        _compatibility_mask: u32,
    ) -> Result<IgvmDirectiveHeader> {
        Err(Error::RegistersUnsupported {
            arch: Self::NAME,
            isolation: IsolationType::Snp,
        })
    }

    fn tdx_reset_page(_registers: &[Self]) -> Result<Vec<u8>> {
        Err(Error::RegistersUnsupported {
            arch: Self::NAME,
            isolation: IsolationType::Tdx,
        })
    }

    fn native_context(
        _registers: &[Self],
        _compatibility_mask: u32,
    ) -> Result<IgvmDirectiveHeader> {
        Err(Error::RegistersUnsupported {
            arch: Self::NAME,
            isolation: IsolationType::None,
        })
    }
}
