//! Boot-processor start states that the hardware cannot load from a VP context structure,
//! reached through generated trampoline code instead.
//!
//! A TD starts at the reset vector in 32-bit protected mode with paging off, and a stock QEMU
//! starts in real mode: neither takes a register list. [`LongModeContext`] is the 64-bit state
//! a loader asked for (from its imported registers or a file's native VP context), and
//! [`trampoline`] assembles the code that goes from the reset state to it:
//! [`tdx::reset_page`] for the measured TDX reset page at 0xFFFFF000 (in the manner of
//! OpenVMM's TDX VP context builder) and [`trampoline::qemu_bios`] for the unmeasured BIOS
//! `igvmgen qemu` hands to QEMU.

pub mod tdx;
pub mod trampoline;

use crate::arch::X86Register;
use igvm_defs::IgvmNativeVpContextX64;
use thiserror::Error;

/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (set by the processor).
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.SVME: SVM enable, required in every SEV-SNP VMSA.
pub const EFER_SVME: u64 = 1 << 12;
/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (required by long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.MCE: machine-check enable, which TDX fixes to one.
pub const CR4_MCE: u64 = 1 << 6;
/// The architectural reset value of IA32_PAT, the only one TDX allows.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// Why registers cannot be reached through a trampoline.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextError {
    /// The trampoline only enters 64-bit long mode.
    #[error("the start state is not 64-bit long mode: {0}")]
    NotLongMode(&'static str),
    /// The transition page tables must be reachable with a 32-bit CR3.
    #[error("CR3 {0:#x} is above 4 GiB; the 32-bit trampoline cannot load it")]
    Cr3Above4G(u64),
    /// Data segment registers with different selectors.
    #[error("data segments use different selectors ({0:#x} and {1:#x})")]
    DataSelectorMismatch(u16, u16),
    /// A register the trampoline cannot set on this platform.
    #[error("register {0} cannot be set through the trampoline")]
    Unsupported(String),
    /// A TDX reset page of another layout than this crate's trampoline.
    #[error("the TDX reset page was not made by this crate's trampoline")]
    ForeignResetPage,
    /// The generated code does not fit its slot in the page.
    #[error("trampoline code part {part} is {len} bytes, more than its {slot}-byte slot")]
    TooLarge {
        /// Which part.
        part: &'static str,
        /// Its length.
        len: usize,
        /// Its slot.
        slot: usize,
    },
    /// The assembler refused an instruction (a bug in the generator).
    #[error("assembler: {0}")]
    Assembler(String),
}

impl From<iced_x86::IcedError> for ContextError {
    fn from(e: iced_x86::IcedError) -> Self {
        ContextError::Assembler(e.to_string())
    }
}

/// A 64-bit boot-processor start state, as the trampoline loads it.
///
/// Selectors of zero mean "not set": the trampoline then keeps its own flat segments (and
/// skips LTR for the task register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongModeContext {
    /// CR0 (must have PE and PG).
    pub cr0: u64,
    /// CR3, the PML4 address (must be below 4 GiB).
    pub cr3: u64,
    /// CR4 (must have PAE).
    pub cr4: u64,
    /// EFER (must have LME).
    pub efer: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// GDTR limit (0: keep the trampoline's GDT).
    pub gdtr_limit: u16,
    /// IDTR base.
    pub idtr_base: u64,
    /// IDTR limit (0: no IDT is loaded).
    pub idtr_limit: u16,
    /// CS selector in the caller's GDT.
    pub code_selector: u16,
    /// DS/ES/FS/GS/SS selector in the caller's GDT.
    pub data_selector: u16,
    /// TR selector (0: not loaded).
    pub task_selector: u16,
    /// Entry point.
    pub rip: u64,
    /// General-purpose registers in encoding order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
    /// R8..R15.
    pub gprs: [u64; 16],
}

/// Index of RSP in [`LongModeContext::gprs`].
pub const GPR_RSP: usize = 4;
/// Index of RBP in [`LongModeContext::gprs`].
pub const GPR_RBP: usize = 5;
/// Index of RSI in [`LongModeContext::gprs`].
pub const GPR_RSI: usize = 6;

impl LongModeContext {
    /// The start state from registers a loader imported, as a TD can reach it: EFER must
    /// have LME (the TDX module sets it and refuses other values), PAT must be the default,
    /// and RFLAGS, MTRRs and FS/GS bases cannot be set.
    pub fn from_tdx_registers(registers: &[X86Register]) -> Result<Self, ContextError> {
        Self::from_registers(registers, true)
    }

    /// The start state of a VBS register list, as far as a trampoline can load it: like
    /// [`Self::from_tdx_registers`], but registers a trampoline cannot set (RFLAGS, PAT,
    /// MTRRs) are left at their reset values instead of refused.
    pub fn from_vbs_registers(registers: &[X86Register]) -> Result<Self, ContextError> {
        Self::from_registers(registers, false)
    }

    /// The start state of an SNP VMSA, without EFER.SVME (meaningful to SEV hardware only).
    pub fn from_vmsa(vmsa: &igvm::snp_defs::SevVmsa) -> Result<Self, ContextError> {
        let ctx = Self {
            cr0: vmsa.cr0,
            cr3: vmsa.cr3,
            cr4: vmsa.cr4,
            efer: vmsa.efer & !EFER_SVME,
            gdtr_base: vmsa.gdtr.base,
            gdtr_limit: vmsa.gdtr.limit as u16,
            idtr_base: vmsa.idtr.base,
            idtr_limit: vmsa.idtr.limit as u16,
            code_selector: vmsa.cs.selector,
            data_selector: vmsa.ds.selector,
            task_selector: 0,
            rip: vmsa.rip,
            gprs: [
                vmsa.rax, vmsa.rcx, vmsa.rdx, vmsa.rbx, vmsa.rsp, vmsa.rbp, vmsa.rsi, vmsa.rdi,
                vmsa.r8, vmsa.r9, vmsa.r10, vmsa.r11, vmsa.r12, vmsa.r13, vmsa.r14, vmsa.r15,
            ],
        };
        ctx.check()?;
        Ok(ctx)
    }

    fn from_registers(registers: &[X86Register], tdx: bool) -> Result<Self, ContextError> {
        let mut ctx = Self::default();
        let mut data: Option<u16> = None;
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
                X86Register::Ds(s)
                | X86Register::Es(s)
                | X86Register::Fs(s)
                | X86Register::Gs(s)
                | X86Register::Ss(s) => match data {
                    Some(d) if d != s.selector => {
                        return Err(ContextError::DataSelectorMismatch(d, s.selector));
                    }
                    _ => data = Some(s.selector),
                },
                X86Register::Cs(s) => ctx.code_selector = s.selector,
                X86Register::Tr(s) => ctx.task_selector = s.selector,
                X86Register::Cr0(v) => ctx.cr0 = v,
                X86Register::Cr3(v) => ctx.cr3 = v,
                X86Register::Cr4(v) => ctx.cr4 = v,
                X86Register::Efer(v) => {
                    if v & EFER_LME == 0 {
                        return Err(ContextError::NotLongMode("EFER.LME is clear"));
                    }
                    ctx.efer = v;
                }
                X86Register::Pat(v) if v == PAT_DEFAULT => {}
                X86Register::Rip(v) => ctx.rip = v,
                X86Register::Rsp(v) => ctx.gprs[GPR_RSP] = v,
                X86Register::Rbp(v) => ctx.gprs[GPR_RBP] = v,
                X86Register::Rsi(v) => ctx.gprs[GPR_RSI] = v,
                X86Register::R8(v) => ctx.gprs[8] = v,
                X86Register::R9(v) => ctx.gprs[9] = v,
                X86Register::R10(v) => ctx.gprs[10] = v,
                X86Register::R11(v) => ctx.gprs[11] = v,
                X86Register::R12(v) => ctx.gprs[12] = v,
                other if tdx => return Err(ContextError::Unsupported(format!("{other:?}"))),
                other => tracing::debug!(register = ?other, "left at its reset value"),
            }
        }
        ctx.data_selector = data.unwrap_or(0);
        if ctx.efer == 0 {
            ctx.efer = EFER_LME | EFER_LMA;
        }
        ctx.check()?;
        Ok(ctx)
    }

    /// The start state of a native VP context (IGVM `X64NativeVpContext`).
    pub fn from_native(native: &IgvmNativeVpContextX64) -> Result<Self, ContextError> {
        let ctx = Self {
            cr0: native.cr0,
            cr3: native.cr3,
            cr4: native.cr4,
            efer: native.efer,
            gdtr_base: native.gdtr_base,
            gdtr_limit: native.gdtr_limit,
            idtr_base: native.idtr_base,
            idtr_limit: native.idtr_limit,
            code_selector: native.code_selector,
            data_selector: native.data_selector,
            task_selector: 0,
            rip: native.rip,
            gprs: [
                native.rax, native.rcx, native.rdx, native.rbx, native.rsp, native.rbp, native.rsi,
                native.rdi, native.r8, native.r9, native.r10, native.r11, native.r12, native.r13,
                native.r14, native.r15,
            ],
        };
        ctx.check()?;
        Ok(ctx)
    }

    fn check(&self) -> Result<(), ContextError> {
        if self.cr0 & (CR0_PE | CR0_PG) != (CR0_PE | CR0_PG) {
            return Err(ContextError::NotLongMode("CR0.PE and CR0.PG must be set"));
        }
        if self.cr4 & CR4_PAE == 0 {
            return Err(ContextError::NotLongMode("CR4.PAE is clear"));
        }
        if self.efer & EFER_LME == 0 {
            return Err(ContextError::NotLongMode("EFER.LME is clear"));
        }
        if self.cr3 > u64::from(u32::MAX) {
            return Err(ContextError::Cr3Above4G(self.cr3));
        }
        Ok(())
    }
}
