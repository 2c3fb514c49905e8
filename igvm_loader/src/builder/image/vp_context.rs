//! The BSP's VP context: which platforms take registers, the one VP context page, and the
//! directive that carries the context (SNP VMSA, VBS or native registers, TDX reset page).

use super::Item;
use super::PlatformImage;
use super::Regions;
use crate::arch::Arch;
use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::BootPageAcceptance;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::vp_context::tdx::RESET_PAGE_GPA;
use crate::vp_context::tdx::RESET_PAGE_TAG;
use igvm::IgvmDirectiveHeader;
use igvm::hv_defs::Vtl;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;

impl<R: GuestArch> PlatformImage<R> {
    /// Claims `page_base` as the one VP context page.
    pub(super) fn claim_vp_context(&mut self, page_base: u64, tag: &str) -> Result<()> {
        if let Some(existing) = self.vp_context_page {
            return Err(Error::DuplicateVpContextPage { existing });
        }
        let end = Regions::end_of(tag, page_base, 1)?;
        self.regions.claim(tag, page_base, end, true)?;
        self.vp_context_page = Some(page_base);
        Ok(())
    }

    /// [`crate::importer::ImageLoad::import_vp_register`]: one register of each kind, on a
    /// platform whose VP context can carry it.
    pub(super) fn add_register(&mut self, register: R) -> Result<()> {
        let supported = match self.isolation() {
            IsolationType::Vbs => true,
            // A TD starts at the reset vector: its registers reach it through the
            // trampoline of the reset page.
            IsolationType::Snp | IsolationType::None | IsolationType::Tdx => {
                R::igvm_arch() == Arch::X64
            }
        };
        if !supported {
            return Err(Error::RegistersUnsupported {
                arch: R::NAME,
                isolation: self.isolation(),
            });
        }
        let kind = std::mem::discriminant(&register);
        if self
            .registers
            .iter()
            .any(|r| std::mem::discriminant(r) == kind)
        {
            return Err(Error::DuplicateRegister(format!("{register:?}")));
        }
        if self.isolation() == IsolationType::Tdx && self.registers.is_empty() {
            // The first register claims the reset page, so that an import over it fails
            // now rather than at build time.
            let page = RESET_PAGE_GPA / PAGE_SIZE;
            self.regions.claim(RESET_PAGE_TAG, page, page + 1, true)?;
        }
        self.registers.push(register);
        Ok(())
    }

    /// The directive carrying the BSP's VP context for compatibility mask `mask`, if the
    /// image has one built from registers (a raw VMSA import is emitted with the pages).
    pub(super) fn vp_context_directive(
        &self,
        mask: u32,
        vtl: Vtl,
    ) -> Result<Option<IgvmDirectiveHeader>> {
        let directive = match self.isolation() {
            IsolationType::None if !self.registers.is_empty() => {
                R::native_context(&self.registers, mask)?
            }
            IsolationType::Vbs if !self.registers.is_empty() => {
                R::vbs_context(&self.registers, vtl, mask)
            }
            IsolationType::Tdx if !self.registers.is_empty() => IgvmDirectiveHeader::PageData {
                gpa: RESET_PAGE_GPA,
                compatibility_mask: mask,
                flags: IgvmPageDataFlags::new(),
                data_type: IgvmPageDataType::NORMAL,
                data: R::tdx_reset_page(&self.registers)?,
            },
            IsolationType::Snp => match self.vp_context_page {
                // A raw VMSA import and registers would be two VP contexts for the BSP.
                Some(existing) if self.vp_context_imported() && !self.registers.is_empty() => {
                    return Err(Error::DuplicateVpContextPage { existing });
                }
                Some(page) if !self.vp_context_imported() => R::snp_context(
                    &self.registers,
                    &self.config.isolation,
                    page * PAGE_SIZE,
                    mask,
                )?,
                None if !self.registers.is_empty() => return Err(Error::MissingVpContextPage),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(directive))
    }

    fn vp_context_imported(&self) -> bool {
        self.items.iter().any(|i| {
            matches!(
                i,
                Item::Pages {
                    acceptance: BootPageAcceptance::VpContext,
                    ..
                }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::IgvmBuilder;
    use crate::builder::tests::config;
    use crate::builder::tests::snp;
    use crate::importer::ImageLoad;

    #[test]
    fn a_second_vp_context_page_is_rejected() {
        let mut image = snp();
        image.set_vp_context_page(0x10).unwrap();
        assert!(matches!(
            image.set_vp_context_page(0x20),
            Err(Error::DuplicateVpContextPage { existing: 0x10 })
        ));
        assert!(matches!(
            image.import_pages(0x30, 1, "vmsa", BootPageAcceptance::VpContext, &[]),
            Err(Error::DuplicateVpContextPage { existing: 0x10 })
        ));
        let mut image = snp();
        assert!(matches!(
            image.import_pages(0x30, 2, "vmsa", BootPageAcceptance::VpContext, &[]),
            Err(Error::VpContextSize(_))
        ));
        let mut tdx = PlatformImage::<X86Register>::new(config(IsolationType::Tdx));
        assert!(matches!(
            tdx.set_vp_context_page(1),
            Err(Error::VpContextPageUnsupported(IsolationType::Tdx))
        ));
    }

    #[test]
    fn snp_registers_without_vp_context_page_fail_at_build() {
        let mut b = IgvmBuilder::<X86Register>::new();
        b.add_platform(config(IsolationType::Snp))
            .unwrap()
            .import_vp_register(X86Register::Rip(0))
            .unwrap();
        assert!(matches!(b.build(), Err(Error::MissingVpContextPage)));
    }

    #[test]
    fn a_raw_vmsa_import_and_registers_do_not_mix() {
        let mut b = IgvmBuilder::<X86Register>::new();
        let image = b.add_platform(config(IsolationType::Snp)).unwrap();
        image
            .import_pages(0x30, 1, "vmsa", BootPageAcceptance::VpContext, &[0x31; 64])
            .unwrap();
        let file = b.build().unwrap();
        assert!(file.directives().iter().any(|d| matches!(
            d,
            IgvmDirectiveHeader::SnpVpContext { gpa: 0x30000, vmsa, .. } if vmsa.cs.selector == 0x3131
        )));
        b.platform_mut(IsolationType::Snp)
            .unwrap()
            .import_vp_register(X86Register::Rip(0))
            .unwrap();
        assert!(matches!(
            b.build(),
            Err(Error::DuplicateVpContextPage { existing: 0x30 })
        ));
    }
}
