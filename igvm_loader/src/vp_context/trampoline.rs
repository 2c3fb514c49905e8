//! Generated trampoline code: from the x86 reset state to a [`LongModeContext`].
//!
//! One 4 KiB page holds everything, at fixed offsets so that no part needs another part's
//! length:
//!
//! | offset | content |
//! |---|---|
//! | 0x000 | real-mode entry (QEMU only): load the temporary GDT, set CR0.PE, far jump to 0x100 |
//! | 0x100 | 32-bit protected mode: park APs, temporary GDT, CR4, CR3, EFER (QEMU only), CR0 with PG, far jump to 0x300 |
//! | 0x300 | 64-bit: the caller's GDT and IDT, far jump through a pointer to reload CS |
//! | 0x400 | 64-bit: data selectors, TR, the general-purpose registers, jump to RIP |
//! | 0xF00 | data: temporary GDT, the descriptor-table pointers, the CS far pointer |
//! | 0xFF0 | reset vector: a jump to 0x000 (real mode) or 0x100 (TDX) |
//!
//! The page always sits at [`RESET_PAGE_GPA`], the last page below 4 GiB, which the
//! identity-mapped page tables of the loaders cover, so the code keeps running when paging
//! turns on. The temporary GDT has a 64-bit code segment at 0x08, a flat 32-bit code segment
//! at 0x10 and a flat data segment at 0x18.

use super::CR4_MCE;
use super::CR4_PAE;
use super::ContextError;
use super::EFER_LMA;
use super::LongModeContext;
use iced_x86::Code;
use iced_x86::Instruction;
use iced_x86::MemoryOperand;
use iced_x86::Register;
use iced_x86::code_asm::CodeAssembler;
use iced_x86::code_asm::ax;
use iced_x86::code_asm::cr0;
use iced_x86::code_asm::cr3;
use iced_x86::code_asm::cr4;
use iced_x86::code_asm::ds;
use iced_x86::code_asm::eax;
use iced_x86::code_asm::ecx;
use iced_x86::code_asm::edx;
use iced_x86::code_asm::es;
use iced_x86::code_asm::esi;
use iced_x86::code_asm::fs;
use iced_x86::code_asm::gs;
use iced_x86::code_asm::ptr;
use iced_x86::code_asm::qword_ptr;
use iced_x86::code_asm::rax;
use iced_x86::code_asm::ss;

/// Where the trampoline page lives: the page holding the reset vector.
pub const RESET_PAGE_GPA: u64 = 0xffff_f000;
/// Size of the BIOS image QEMU is given (QEMU wants a multiple of 64 KiB).
pub const QEMU_BIOS_SIZE: usize = 64 * 1024;

const PAGE: usize = 4096;
const BASE: u32 = 0xffff_f000;
const OFF_REAL: usize = 0x000;
const OFF_PROT: usize = 0x100;
const OFF_LONG: usize = 0x300;
const OFF_FINAL: usize = 0x400;
const OFF_DATA: usize = 0xf00;
const OFF_TEMP_GDT: usize = OFF_DATA;
const OFF_TEMP_GDTR: usize = OFF_DATA + 0x20;
const OFF_GDTR: usize = OFF_DATA + 0x28;
const OFF_IDTR: usize = OFF_DATA + 0x38;
const OFF_FAR_CS: usize = OFF_DATA + 0x48;
const OFF_RESET: usize = 0xff0;

/// Selector of the temporary 64-bit code segment.
pub const TEMP_CODE64: u16 = 0x08;
/// Selector of the temporary flat 32-bit code segment.
pub const TEMP_CODE32: u16 = 0x10;
/// Selector of the temporary flat data segment.
pub const TEMP_DATA: u16 = 0x18;
const TEMP_GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
];
const MSR_EFER: u32 = 0xc000_0080;

/// The processor state the page is entered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A TD's reset state: 32-bit protected mode, flat segments, EFER.LME already set by the
    /// TDX module (which refuses EFER writes), the VP index in ESI.
    Tdx,
    /// A PC's reset state (QEMU without firmware): real mode, CS base 0xFFFF0000.
    RealMode,
}

fn addr(offset: usize) -> u32 {
    // Offsets are page offsets (< 4096): no overflow.
    BASE.wrapping_add(offset as u32)
}

fn place(
    page: &mut [u8],
    offset: usize,
    slot: usize,
    part: &'static str,
    code: &[u8],
) -> Result<(), ContextError> {
    if code.len() > slot {
        return Err(ContextError::TooLarge {
            part,
            len: code.len(),
            slot,
        });
    }
    page.get_mut(offset..offset + code.len())
        .ok_or(ContextError::TooLarge {
            part,
            len: code.len(),
            slot,
        })?
        .copy_from_slice(code);
    Ok(())
}

fn put(page: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = page.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Real mode: CS base is 0xFFFF0000, so page offsets are 0xF000 + offset in CS. With
/// `set_lme`, EFER.LME is set on the way, as a TD starts with it.
fn real_mode_part(set_lme: bool) -> Result<Vec<u8>, ContextError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.cld()?;
    if set_lme {
        a.mov(ecx, MSR_EFER)?;
        a.rdmsr()?;
        a.or(eax, super::EFER_LME as u32)?;
        a.wrmsr()?;
    }
    let gdtr = MemoryOperand::with_base_displ_size_bcst_seg(
        Register::None,
        i64::from(0xf000u32 + OFF_TEMP_GDTR as u32),
        2,
        false,
        Register::CS,
    );
    // o32 LGDT loads all 32 bits of the base (plain LGDT in 16-bit code drops the top byte).
    a.add_instruction(Instruction::with1(Code::Lgdt_m1632, gdtr)?)?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        TEMP_CODE32,
        addr(OFF_PROT),
    )?)?;
    Ok(a.assemble(0xf000)?)
}

fn protected_part(ctx: &LongModeContext, entry: Entry) -> Result<Vec<u8>, ContextError> {
    let mut a = CodeAssembler::new(32)?;
    let mut park = a.create_label();
    // Only the BSP (VP index 0 in ESI on TDX; ESI is 0 after a PC reset) goes on.
    a.test(esi, esi)?;
    a.jnz(park)?;
    a.mov(eax, addr(OFF_TEMP_GDTR))?;
    a.lgdt(ptr(eax))?;
    a.mov(ax, u32::from(TEMP_DATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    let mut cr4_value = ctx.cr4 | CR4_PAE;
    if entry == Entry::Tdx {
        cr4_value |= CR4_MCE;
    }
    a.mov(eax, cr4_value as u32)?;
    a.mov(cr4, eax)?;
    a.mov(eax, ctx.cr3 as u32)?;
    a.mov(cr3, eax)?;
    if entry == Entry::RealMode {
        // LMA is the processor's to set when paging turns on.
        let efer = ctx.efer & !EFER_LMA;
        a.mov(ecx, MSR_EFER)?;
        a.mov(eax, efer as u32)?;
        a.mov(edx, (efer >> 32) as u32)?;
        a.wrmsr()?;
    }
    a.mov(eax, ctx.cr0 as u32)?;
    a.mov(cr0, eax)?;
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        TEMP_CODE64,
        addr(OFF_LONG),
    )?)?;
    a.set_label(&mut park)?;
    a.hlt()?;
    a.jmp(park)?;
    Ok(a.assemble(u64::from(addr(OFF_PROT)))?)
}

fn long_part(ctx: &LongModeContext) -> Result<Vec<u8>, ContextError> {
    let mut a = CodeAssembler::new(64)?;
    let own_gdt = ctx.gdtr_limit != 0;
    if own_gdt {
        a.mov(eax, addr(OFF_GDTR))?;
        a.lgdt(ptr(rax))?;
    }
    if ctx.idtr_limit != 0 {
        a.mov(eax, addr(OFF_IDTR))?;
        a.lidt(ptr(rax))?;
    }
    if own_gdt && ctx.code_selector != 0 {
        // JMP m16:32 reloads CS on every x86-64 vendor (m16:64 is Intel-only); the target
        // is in this page, below 4 GiB.
        a.mov(eax, addr(OFF_FAR_CS))?;
        a.add_instruction(Instruction::with1(
            Code::Jmp_m1632,
            MemoryOperand::with_base(Register::RAX),
        )?)?;
    } else {
        a.add_instruction(Instruction::with_branch(
            Code::Jmp_rel32_64,
            u64::from(addr(OFF_FINAL)),
        )?)?;
    }
    Ok(a.assemble(u64::from(addr(OFF_LONG)))?)
}

fn final_part(ctx: &LongModeContext) -> Result<Vec<u8>, ContextError> {
    use iced_x86::code_asm::registers::gpr64;
    let mut a = CodeAssembler::new(64)?;
    if ctx.gdtr_limit != 0 && ctx.data_selector != 0 {
        a.mov(ax, u32::from(ctx.data_selector))?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(fs, ax)?;
        a.mov(gs, ax)?;
    }
    if ctx.gdtr_limit != 0 && ctx.task_selector != 0 {
        a.mov(ax, u32::from(ctx.task_selector))?;
        a.ltr(ax)?;
    }
    let regs = [
        gpr64::rcx,
        gpr64::rdx,
        gpr64::rbx,
        gpr64::rsp,
        gpr64::rbp,
        gpr64::rsi,
        gpr64::rdi,
        gpr64::r8,
        gpr64::r9,
        gpr64::r10,
        gpr64::r11,
        gpr64::r12,
        gpr64::r13,
        gpr64::r14,
        gpr64::r15,
    ];
    for (reg, value) in regs.into_iter().zip(ctx.gprs.iter().skip(1)) {
        a.mov(reg, *value)?;
    }
    a.mov(rax, ctx.gprs[0])?;
    let mut target = a.create_label();
    a.jmp(qword_ptr(target))?;
    a.set_label(&mut target)?;
    a.dq(&[ctx.rip])?;
    Ok(a.assemble(u64::from(addr(OFF_FINAL)))?)
}

/// The trampoline page for `entry`, to be placed at [`RESET_PAGE_GPA`].
pub fn page(ctx: &LongModeContext, entry: Entry) -> Result<Vec<u8>, ContextError> {
    // INT3 everywhere else: a stray jump traps instead of sliding.
    let mut page = vec![0xccu8; PAGE];
    if entry == Entry::RealMode {
        place(
            &mut page,
            OFF_REAL,
            OFF_PROT - OFF_REAL,
            "real mode",
            &real_mode_part(false)?,
        )?;
    }
    place(
        &mut page,
        OFF_PROT,
        OFF_LONG - OFF_PROT,
        "protected mode",
        &protected_part(ctx, entry)?,
    )?;
    place(
        &mut page,
        OFF_LONG,
        OFF_FINAL - OFF_LONG,
        "long mode",
        &long_part(ctx)?,
    )?;
    place(
        &mut page,
        OFF_FINAL,
        OFF_DATA - OFF_FINAL,
        "final",
        &final_part(ctx)?,
    )?;

    for (i, d) in TEMP_GDT.iter().enumerate() {
        put(&mut page, OFF_TEMP_GDT + i * 8, &d.to_le_bytes());
    }
    let temp_limit = (TEMP_GDT.len() * 8 - 1) as u16;
    put(&mut page, OFF_TEMP_GDTR, &temp_limit.to_le_bytes());
    put(
        &mut page,
        OFF_TEMP_GDTR + 2,
        &addr(OFF_TEMP_GDT).to_le_bytes(),
    );
    put(&mut page, OFF_GDTR, &ctx.gdtr_limit.to_le_bytes());
    put(&mut page, OFF_GDTR + 2, &ctx.gdtr_base.to_le_bytes());
    put(&mut page, OFF_IDTR, &ctx.idtr_limit.to_le_bytes());
    put(&mut page, OFF_IDTR + 2, &ctx.idtr_base.to_le_bytes());
    put(&mut page, OFF_FAR_CS, &addr(OFF_FINAL).to_le_bytes());
    put(&mut page, OFF_FAR_CS + 4, &ctx.code_selector.to_le_bytes());

    let reset = match entry {
        Entry::Tdx => {
            let mut a = CodeAssembler::new(32)?;
            a.add_instruction(Instruction::with_branch(
                Code::Jmp_rel32_32,
                u64::from(addr(OFF_PROT)),
            )?)?;
            a.assemble(u64::from(addr(OFF_RESET)))?
        }
        Entry::RealMode => real_mode_reset_jump()?,
    };
    place(
        &mut page,
        OFF_RESET,
        PAGE - OFF_RESET,
        "reset vector",
        &reset,
    )?;
    Ok(page)
}

/// A 64 KiB BIOS image for a stock PC (QEMU `-bios`) that starts the CPU in `ctx`: the
/// trampoline page is its last 4 KiB, which the machine maps at 0xFFFFF000.
pub fn qemu_bios(ctx: &LongModeContext) -> Result<Vec<u8>, ContextError> {
    Ok(bios_ending_in(page(ctx, Entry::RealMode)?))
}

/// A 64 KiB BIOS that lets a stock PC run a TDX reset page made by [`page`] with
/// [`Entry::Tdx`]: a real-mode prologue in the page's unused first slot brings the CPU to
/// the state a TD starts in (32-bit flat protected mode, EFER.LME set, ESI = 0) and enters
/// the page's own 32-bit code. Isolation is not emulated, only the start.
pub fn td_start_emulation_bios(tdx_page: &[u8]) -> Result<Vec<u8>, ContextError> {
    let foreign = || ContextError::ForeignResetPage;
    if tdx_page.len() != PAGE
        || tdx_page[OFF_REAL..OFF_PROT].iter().any(|&b| b != 0xcc)
        || tdx_page.get(OFF_RESET) != Some(&0xe9)
    {
        return Err(foreign());
    }
    let mut page = tdx_page.to_vec();
    place(
        &mut page,
        OFF_REAL,
        OFF_PROT - OFF_REAL,
        "real mode",
        &real_mode_part(true)?,
    )?;
    let reset = real_mode_reset_jump()?;
    page.get_mut(OFF_RESET..).ok_or_else(foreign)?.fill(0xcc);
    place(
        &mut page,
        OFF_RESET,
        PAGE - OFF_RESET,
        "reset vector",
        &reset,
    )?;
    Ok(bios_ending_in(page))
}

/// The reset vector of a page run as a BIOS: the CPU starts at IP 0xFFF0 of the reset code
/// segment, and jumps to the real-mode code at IP 0xF000.
fn real_mode_reset_jump() -> Result<Vec<u8>, ContextError> {
    let mut a = CodeAssembler::new(16)?;
    a.add_instruction(Instruction::with_branch(Code::Jmp_rel16, 0xf000)?)?;
    Ok(a.assemble(0xfff0)?)
}

/// A 64 KiB BIOS image whose last 4 KiB, which a PC maps at 0xFFFFF000, are `page`.
fn bios_ending_in(page: Vec<u8>) -> Vec<u8> {
    let mut bios = vec![0u8; QEMU_BIOS_SIZE - PAGE];
    bios.extend(page);
    bios
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp_context::CR0_PE;
    use crate::vp_context::CR0_PG;
    use crate::vp_context::EFER_LME;
    use iced_x86::Decoder;
    use iced_x86::DecoderOptions;
    use iced_x86::Mnemonic;

    fn ctx() -> LongModeContext {
        let mut gprs = [0; 16];
        gprs[6] = 0x7000;
        LongModeContext {
            cr0: CR0_PE | CR0_PG | 0x30,
            cr3: 0x10000,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            gdtr_base: 0x1000,
            gdtr_limit: 0x1f,
            idtr_base: 0,
            idtr_limit: 0,
            code_selector: 0x10,
            data_selector: 0x18,
            task_selector: 0,
            rip: 0x123_4567_89ab,
            gprs,
        }
    }

    fn decode(page: &[u8], offset: usize, bitness: u32, ip: u64) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(bitness, &page[offset..], ip, DecoderOptions::NONE);
        let mut out = Vec::new();
        for i in d.iter() {
            if i.mnemonic() == Mnemonic::Int3 || i.is_invalid() {
                break;
            }
            out.push(i);
        }
        out
    }

    #[test]
    fn reset_vector_jumps_to_the_entry_of_its_mode() {
        let tdx = page(&ctx(), Entry::Tdx).unwrap();
        let j = decode(&tdx, OFF_RESET, 32, u64::from(addr(OFF_RESET)));
        assert_eq!(j[0].code(), Code::Jmp_rel32_32);
        assert_eq!(j[0].near_branch_target(), u64::from(addr(OFF_PROT)));
        let qemu = page(&ctx(), Entry::RealMode).unwrap();
        let j = decode(&qemu, OFF_RESET, 16, 0xfff0);
        assert_eq!(j[0].near_branch_target(), 0xf000);
        // TDX never runs the real-mode part: its slot is filler.
        assert!(tdx[..OFF_PROT].iter().all(|&b| b == 0xcc));
    }

    #[test]
    fn real_mode_part_loads_a_32_bit_gdt_base_and_enters_protected_mode() {
        let p = page(&ctx(), Entry::RealMode).unwrap();
        let code = decode(&p, OFF_REAL, 16, 0xf000);
        let lgdt = code
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Lgdt)
            .unwrap();
        assert_eq!(lgdt.code(), Code::Lgdt_m1632);
        assert_eq!(lgdt.memory_segment(), Register::CS);
        assert_eq!(lgdt.memory_displacement64(), 0xf000 + OFF_TEMP_GDTR as u64);
        let jmp = code.last().unwrap();
        assert_eq!(jmp.code(), Code::Jmp_ptr1632);
        assert_eq!(jmp.far_branch_selector(), TEMP_CODE32);
        assert_eq!(jmp.far_branch32(), addr(OFF_PROT));
        // The temporary GDTR points at the temporary GDT, in the page.
        let limit = u16::from_le_bytes([p[OFF_TEMP_GDTR], p[OFF_TEMP_GDTR + 1]]);
        let base = u32::from_le_bytes(p[OFF_TEMP_GDTR + 2..OFF_TEMP_GDTR + 6].try_into().unwrap());
        assert_eq!((limit, base), (31, addr(OFF_TEMP_GDT)));
    }

    #[test]
    fn only_the_real_mode_entry_writes_efer() {
        let has_wrmsr = |entry| {
            let p = page(&ctx(), entry).unwrap();
            decode(&p, OFF_PROT, 32, u64::from(addr(OFF_PROT)))
                .iter()
                .any(|i| i.mnemonic() == Mnemonic::Wrmsr)
        };
        assert!(has_wrmsr(Entry::RealMode));
        assert!(!has_wrmsr(Entry::Tdx));
    }

    #[test]
    fn final_part_loads_every_register_and_jumps_to_rip() {
        let c = ctx();
        let p = page(&c, Entry::Tdx).unwrap();
        let code = decode(&p, OFF_FINAL, 64, u64::from(addr(OFF_FINAL)));
        let rsi = code
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Mov && i.op0_register() == Register::RSI)
            .unwrap();
        assert_eq!(rsi.immediate64(), 0x7000);
        let jmp = code.iter().find(|i| i.mnemonic() == Mnemonic::Jmp).unwrap();
        assert!(jmp.is_ip_rel_memory_operand());
        let at = (jmp.ip_rel_memory_address() - u64::from(BASE)) as usize;
        assert_eq!(u64::from_le_bytes(p[at..at + 8].try_into().unwrap()), c.rip);
        // CS is reloaded through the far pointer with the caller's selector.
        assert_eq!(
            u16::from_le_bytes([p[OFF_FAR_CS + 4], p[OFF_FAR_CS + 5]]),
            c.code_selector
        );
    }

    #[test]
    fn td_start_emulation_keeps_the_td_code_and_refuses_foreign_pages() {
        let tdx = page(&ctx(), Entry::Tdx).unwrap();
        let bios = td_start_emulation_bios(&tdx).unwrap();
        let emulated = &bios[QEMU_BIOS_SIZE - PAGE..];
        // The TD's own code and data are untouched; only the unused real-mode slot and the
        // reset vector differ.
        assert_eq!(&emulated[OFF_PROT..OFF_RESET], &tdx[OFF_PROT..OFF_RESET]);
        let code = decode(emulated, OFF_REAL, 16, 0xf000);
        assert!(
            code.iter().any(|i| i.mnemonic() == Mnemonic::Wrmsr),
            "sets EFER.LME"
        );
        let jmp = code.last().unwrap();
        assert_eq!(jmp.far_branch32(), addr(OFF_PROT));
        let mut foreign = tdx.clone();
        foreign[0] = 0x90;
        assert!(td_start_emulation_bios(&foreign).is_err());
        assert!(td_start_emulation_bios(&tdx[..100]).is_err());
    }

    #[test]
    fn the_bios_is_64k_and_ends_with_the_page() {
        let bios = qemu_bios(&ctx()).unwrap();
        assert_eq!(bios.len(), QEMU_BIOS_SIZE);
        assert_eq!(
            &bios[QEMU_BIOS_SIZE - PAGE..],
            &page(&ctx(), Entry::RealMode).unwrap()[..]
        );
    }
}
