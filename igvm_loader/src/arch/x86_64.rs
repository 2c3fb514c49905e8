//! x86-64: VBS register lists, SNP VMSAs and native VP contexts.

use super::GuestArch;
use crate::error::Result;
use crate::importer::IsolationConfig;
use igvm::Arch;
use igvm::IgvmDirectiveHeader;
use igvm::hv_defs::Vtl;
use igvm::registers::SegmentRegister;
use igvm::registers::TableRegister;
use igvm::registers::X86Register;
use igvm::snp_defs::SevSelector;
use igvm::snp_defs::SevVmsa;
use igvm_defs::IgvmNativeVpContextX64;
use zerocopy::FromZeros;

/// The VMSA keeps segment attributes in the VMCB's 12-bit form: the hypervisor's bits 12..16
/// move down to 8..12.
fn sev_selector(seg: SegmentRegister) -> SevSelector {
    SevSelector {
        selector: seg.selector,
        attrib: (seg.attributes & 0xff) | ((seg.attributes >> 4) & 0xf00),
        limit: seg.limit,
        base: seg.base,
    }
}

fn sev_table(table: TableRegister) -> SevSelector {
    SevSelector {
        selector: 0,
        attrib: 0,
        limit: table.limit.into(),
        base: table.base,
    }
}

/// XCR0 with only x87 state enabled, the architectural reset value.
const XCR0_RESET: u64 = 1;

impl GuestArch for X86Register {
    const NAME: &'static str = "x86_64";

    fn igvm_arch() -> Arch {
        Arch::X64
    }

    fn vbs_context(registers: &[Self], vtl: Vtl, compatibility_mask: u32) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::X64VbsVpContext {
            vtl,
            registers: registers.to_vec(),
            compatibility_mask,
        }
    }

    fn snp_context(
        registers: &[Self],
        config: &IsolationConfig,
        gpa: u64,
        compatibility_mask: u32,
    ) -> Result<IgvmDirectiveHeader> {
        let mut vmsa = SevVmsa::new_box_zeroed().map_err(|_| crate::error::Error::OutOfMemory)?;
        for reg in registers {
            match *reg {
                X86Register::Gdtr(t) => vmsa.gdtr = sev_table(t),
                X86Register::Idtr(t) => vmsa.idtr = sev_table(t),
                X86Register::Ds(s) => vmsa.ds = sev_selector(s),
                X86Register::Es(s) => vmsa.es = sev_selector(s),
                X86Register::Fs(s) => vmsa.fs = sev_selector(s),
                X86Register::Gs(s) => vmsa.gs = sev_selector(s),
                X86Register::Ss(s) => vmsa.ss = sev_selector(s),
                X86Register::Cs(s) => vmsa.cs = sev_selector(s),
                X86Register::Tr(s) => vmsa.tr = sev_selector(s),
                X86Register::Cr0(v) => vmsa.cr0 = v,
                X86Register::Cr3(v) => vmsa.cr3 = v,
                X86Register::Cr4(v) => vmsa.cr4 = v,
                X86Register::Efer(v) => vmsa.efer = v,
                X86Register::Pat(v) => vmsa.pat = v,
                X86Register::Rbp(v) => vmsa.rbp = v,
                X86Register::Rip(v) => vmsa.rip = v,
                X86Register::Rsi(v) => vmsa.rsi = v,
                X86Register::Rsp(v) => vmsa.rsp = v,
                X86Register::R8(v) => vmsa.r8 = v,
                X86Register::R9(v) => vmsa.r9 = v,
                X86Register::R10(v) => vmsa.r10 = v,
                X86Register::R11(v) => vmsa.r11 = v,
                X86Register::R12(v) => vmsa.r12 = v,
                X86Register::Rflags(v) => vmsa.rflags = v,
                // SNP guests own their MTRRs; the VMSA has no place for them.
                other => tracing::debug!(register = ?other, "not part of the SNP VMSA"),
            }
        }
        vmsa.xcr0 = XCR0_RESET;
        vmsa.sev_features.set_snp(true);
        let boundary = config.shared_gpa_boundary();
        if boundary != 0 {
            vmsa.sev_features.set_vtom(true);
            vmsa.virtual_tom = boundary;
        }
        Ok(IgvmDirectiveHeader::SnpVpContext {
            gpa,
            compatibility_mask,
            vp_index: 0,
            vmsa,
        })
    }

    fn native_context(registers: &[Self], compatibility_mask: u32) -> Result<IgvmDirectiveHeader> {
        let mut ctx = IgvmNativeVpContextX64::new_box_zeroed()
            .map_err(|_| crate::error::Error::OutOfMemory)?;
        for reg in registers {
            match *reg {
                X86Register::Gdtr(t) => {
                    ctx.gdtr_base = t.base;
                    ctx.gdtr_limit = t.limit;
                }
                X86Register::Idtr(t) => {
                    ctx.idtr_base = t.base;
                    ctx.idtr_limit = t.limit;
                }
                X86Register::Cs(s) => {
                    ctx.code_selector = s.selector;
                    ctx.code_attributes = s.attributes;
                    // The native context keeps 32-bit bases: a 64-bit code segment ignores it.
                    ctx.code_base = s.base as u32;
                    ctx.code_limit = s.limit;
                }
                X86Register::Ds(s) | X86Register::Ss(s) | X86Register::Es(s) => {
                    ctx.data_selector = s.selector;
                    ctx.data_attributes = s.attributes;
                    ctx.data_base = s.base as u32;
                    ctx.data_limit = s.limit;
                }
                X86Register::Gs(s) => ctx.gs_base = s.base,
                X86Register::Cr0(v) => ctx.cr0 = v,
                X86Register::Cr3(v) => ctx.cr3 = v,
                X86Register::Cr4(v) => ctx.cr4 = v,
                X86Register::Efer(v) => ctx.efer = v,
                X86Register::Rbp(v) => ctx.rbp = v,
                X86Register::Rip(v) => ctx.rip = v,
                X86Register::Rsi(v) => ctx.rsi = v,
                X86Register::Rsp(v) => ctx.rsp = v,
                X86Register::R8(v) => ctx.r8 = v,
                X86Register::R9(v) => ctx.r9 = v,
                X86Register::R10(v) => ctx.r10 = v,
                X86Register::R11(v) => ctx.r11 = v,
                X86Register::R12(v) => ctx.r12 = v,
                X86Register::Rflags(v) => ctx.rflags = v,
                other => tracing::debug!(register = ?other, "not part of the native context"),
            }
        }
        Ok(IgvmDirectiveHeader::X64NativeVpContext {
            compatibility_mask,
            vp_index: 0,
            context: ctx,
        })
    }
}
