//! The TDX reset page: registers a loader imported for a TD, delivered by trampoline code at
//! the reset vector (a TD has no VP context structure the host could fill).
//!
//! The page is ordinary measured memory at [`RESET_PAGE_GPA`], so the start state is part of
//! MRTD like any other page.

use super::ContextError;
use super::LongModeContext;
use super::trampoline;
pub use super::trampoline::RESET_PAGE_GPA;
use crate::arch::X86Register;

/// Debug tag of the reset page in maps and errors.
pub const RESET_PAGE_TAG: &str = "tdx-reset-page";

/// The 4 KiB reset page that takes a TD's boot processor from its reset state to
/// `registers`.
pub fn reset_page(registers: &[X86Register]) -> Result<Vec<u8>, ContextError> {
    let ctx = LongModeContext::from_tdx_registers(registers)?;
    trampoline::page(&ctx, trampoline::Entry::Tdx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::SegmentRegister;
    use crate::vp_context::CR0_PE;
    use crate::vp_context::CR0_PG;
    use crate::vp_context::CR4_PAE;
    use crate::vp_context::EFER_LME;

    fn seg(selector: u16) -> SegmentRegister {
        SegmentRegister {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            attributes: 0xc093,
        }
    }

    fn long_mode() -> Vec<X86Register> {
        vec![
            X86Register::Cr0(CR0_PE | CR0_PG),
            X86Register::Cr3(0x10000),
            X86Register::Cr4(CR4_PAE),
            X86Register::Efer(EFER_LME),
            X86Register::Rip(0x100_0000),
        ]
    }

    #[test]
    fn refuses_what_a_td_cannot_start_with() {
        let mut regs = long_mode();
        regs.push(X86Register::Efer(0));
        regs.remove(3);
        assert!(matches!(
            reset_page(&regs),
            Err(ContextError::NotLongMode(_))
        ));
        let mut regs = long_mode();
        regs.push(X86Register::Rflags(0x202));
        assert!(matches!(
            reset_page(&regs),
            Err(ContextError::Unsupported(_))
        ));
        let mut regs = long_mode();
        regs.push(X86Register::Ds(seg(0x18)));
        regs.push(X86Register::Ss(seg(0x20)));
        assert_eq!(
            reset_page(&regs),
            Err(ContextError::DataSelectorMismatch(0x18, 0x20))
        );
        let mut regs = long_mode();
        regs[1] = X86Register::Cr3(0x1_0000_0000);
        assert_eq!(
            reset_page(&regs),
            Err(ContextError::Cr3Above4G(0x1_0000_0000))
        );
    }

    #[test]
    fn the_same_registers_give_the_same_page() {
        let a = reset_page(&long_mode()).unwrap();
        assert_eq!(a.len(), 4096);
        assert_eq!(a, reset_page(&long_mode()).unwrap());
        let mut other = long_mode();
        other[4] = X86Register::Rip(0x200_0000);
        assert_ne!(a, reset_page(&other).unwrap());
    }
}
