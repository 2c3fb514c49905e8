//! x86-64: VBS register lists, SNP VMSAs, native VP contexts and the TDX reset page.

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
/// Reset values of the registers an SNP VMSA must hold even when the loader sets none of
/// them (AMD APM vol. 2, "Initial processor state"): a VMSA of zeros has an unusable
/// segment state and an invalid PAT.
const RFLAGS_RESET: u64 = 0x2;
const DR6_RESET: u64 = 0xffff_0ff0;
const DR7_RESET: u64 = 0x400;
const CR0_RESET: u64 = 0x6000_0010;
const RIP_RESET: u64 = 0xfff0;
const MXCSR_RESET: u32 = 0x1f80;
const FCW_RESET: u16 = 0x37f;
/// Segment attributes in the VMSA's 12-bit form.
const ATTR_CODE_RESET: u16 = 0x9b;
const ATTR_DATA_RESET: u16 = 0x93;
const ATTR_LDT: u16 = 0x82;
const ATTR_TSS16_BUSY: u16 = 0x83;
const ATTR_TSS64_BUSY: u16 = 0x8b;

/// A VMSA in the architectural reset state, with the SNP feature set.
fn reset_vmsa() -> Result<Box<SevVmsa>> {
    let mut vmsa = SevVmsa::new_box_zeroed().map_err(|_| crate::error::Error::OutOfMemory)?;
    let data = SevSelector {
        selector: 0,
        attrib: ATTR_DATA_RESET,
        limit: 0xffff,
        base: 0,
    };
    vmsa.es = data;
    vmsa.ss = data;
    vmsa.ds = data;
    vmsa.fs = data;
    vmsa.gs = data;
    vmsa.cs = SevSelector {
        selector: 0xf000,
        attrib: ATTR_CODE_RESET,
        limit: 0xffff,
        base: 0xffff_0000,
    };
    let table = SevSelector {
        selector: 0,
        attrib: 0,
        limit: 0xffff,
        base: 0,
    };
    vmsa.gdtr = table;
    vmsa.idtr = table;
    vmsa.ldtr = SevSelector {
        attrib: ATTR_LDT,
        ..table
    };
    vmsa.tr = SevSelector {
        attrib: ATTR_TSS16_BUSY,
        ..table
    };
    vmsa.cr0 = CR0_RESET;
    vmsa.rip = RIP_RESET;
    vmsa.rflags = RFLAGS_RESET;
    vmsa.dr6 = DR6_RESET;
    vmsa.dr7 = DR7_RESET;
    vmsa.pat = crate::vp_context::PAT_DEFAULT;
    vmsa.xcr0 = XCR0_RESET;
    vmsa.mxcsr = MXCSR_RESET;
    vmsa.x87_fcw = FCW_RESET;
    vmsa.sev_features.set_snp(true);
    Ok(vmsa)
}

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
        let mut vmsa = reset_vmsa()?;
        let mut tr_set = false;
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
                X86Register::Tr(s) => {
                    vmsa.tr = sev_selector(s);
                    tr_set = true;
                }
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
        // VMRUN refuses a guest without EFER.SVME, whatever EFER the loader asked for.
        vmsa.efer |= crate::vp_context::EFER_SVME;
        if !tr_set && vmsa.efer & crate::vp_context::EFER_LME != 0 {
            // Long mode wants a 64-bit TSS type in TR.
            vmsa.tr.attrib = ATTR_TSS64_BUSY;
        }
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

    fn tdx_reset_page(registers: &[Self]) -> Result<Vec<u8>> {
        crate::vp_context::tdx::reset_page(registers)
            .map_err(|e| crate::error::Error::VpContext(e.to_string()))
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
