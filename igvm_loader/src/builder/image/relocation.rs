//! Relocation support: the regions a loader may move at launch and the page tables it then
//! patches, their checks, and the initialization headers that describe them.

use super::PlatformImage;
use super::Regions;
use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use igvm::IgvmInitializationHeader;
use igvm::hv_defs::Vtl;

/// One relocatable region, as [`crate::importer::ImageLoad::relocation_region`] gave it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Relocation {
    pub(super) gpa: u64,
    pub(super) size: u64,
    pub(super) alignment: u64,
    pub(super) min: u64,
    pub(super) max: u64,
    pub(super) apply_rip_offset: bool,
    pub(super) apply_gdtr_offset: bool,
}

/// The page-table region patched after relocation (sizes in bytes).
#[derive(Debug, Clone, Copy)]
pub(super) struct PageTableRelocation {
    gpa: u64,
    size: u64,
    used: u64,
}

impl<R: GuestArch> PlatformImage<R> {
    /// A relocation patches a VP context at launch: only VBS and unisolated images have one
    /// the loader can patch, and only the BSP's.
    fn check_relocation_vp(&self, what: &str, vp_index: u16) -> Result<()> {
        if !matches!(self.isolation(), IsolationType::Vbs | IsolationType::None) {
            return Err(Error::InvalidRelocation(format!(
                "{:?} has no VP context {what} could refer to",
                self.isolation()
            )));
        }
        if vp_index != 0 {
            return Err(Error::InvalidRelocation(format!(
                "only the BSP has a VP context, not VP {vp_index}"
            )));
        }
        Ok(())
    }

    /// [`crate::importer::ImageLoad::relocation_region`]: an aligned, non-empty region that
    /// is one imported range and overlaps no other relocation.
    pub(super) fn add_relocation(&mut self, r: Relocation, vp_index: u16) -> Result<()> {
        self.check_relocation_vp("a relocation", vp_index)?;
        check_aligned("relocation alignment", r.alignment, PAGE_SIZE)?;
        if r.alignment == 0 {
            return Err(Error::InvalidRelocation("zero alignment".into()));
        }
        check_aligned("relocation region size", r.size, PAGE_SIZE)?;
        check_aligned("relocation region", r.gpa, r.alignment)?;
        check_aligned("minimum relocation GPA", r.min, r.alignment)?;
        check_aligned("maximum relocation GPA", r.max, r.alignment)?;
        if r.size == 0 {
            return Err(Error::InvalidRelocation("empty region".into()));
        }
        let end = r
            .gpa
            .checked_add(r.size)
            .ok_or_else(|| Error::InvalidRelocation("region wraps".into()))?;
        if r.min > r.max {
            return Err(Error::InvalidRelocation(format!(
                "minimum {:#x} above maximum {:#x}",
                r.min, r.max
            )));
        }
        if !self.regions.covered(r.gpa / PAGE_SIZE, end / PAGE_SIZE) {
            return Err(Error::InvalidRelocation(format!(
                "region {:#x}..{end:#x} is not one imported range",
                r.gpa
            )));
        }
        if self.overlaps_relocation(r.gpa, end) {
            return Err(Error::RelocationOverlap {
                gpa: r.gpa,
                size: r.size,
            });
        }
        self.relocations.push(r);
        Ok(())
    }

    /// [`crate::importer::ImageLoad::page_table_relocation`]: one page-aligned region per
    /// image, overlapping no relocation.
    pub(super) fn set_page_table_relocation(
        &mut self,
        page_table_gpa: u64,
        size_pages: u64,
        used_pages: u64,
        vp_index: u16,
    ) -> Result<()> {
        self.check_relocation_vp("a page table relocation", vp_index)?;
        if self.page_table_relocation.is_some() {
            return Err(Error::DuplicatePageTableRelocation);
        }
        check_aligned("page table GPA", page_table_gpa, PAGE_SIZE)?;
        let end_page = Regions::end_of("page tables", page_table_gpa / PAGE_SIZE, size_pages)?;
        if used_pages > size_pages {
            return Err(Error::InvalidRelocation(format!(
                "{used_pages} used pages exceed the {size_pages} page region"
            )));
        }
        let end = end_page * PAGE_SIZE;
        if self.overlaps_relocation(page_table_gpa, end) {
            return Err(Error::RelocationOverlap {
                gpa: page_table_gpa,
                size: size_pages * PAGE_SIZE,
            });
        }
        self.page_table_relocation = Some(PageTableRelocation {
            gpa: page_table_gpa,
            size: size_pages * PAGE_SIZE,
            used: used_pages * PAGE_SIZE,
        });
        Ok(())
    }

    /// Relocations patch the BSP's VP context, so an image with any needs its registers.
    pub(super) fn check_relocations_have_vp_context(&self) -> Result<()> {
        if (!self.relocations.is_empty() || self.page_table_relocation.is_some())
            && self.registers.is_empty()
        {
            return Err(Error::InvalidRelocation(
                "relocations need the BSP's VP context: import its registers".into(),
            ));
        }
        Ok(())
    }

    /// The initialization headers describing every relocation for compatibility mask `mask`:
    /// the regions in call order, then the page tables.
    pub(super) fn relocation_headers(
        &self,
        mask: u32,
        vtl: Vtl,
    ) -> impl Iterator<Item = IgvmInitializationHeader> + '_ {
        let regions =
            self.relocations
                .iter()
                .map(move |r| IgvmInitializationHeader::RelocatableRegion {
                    compatibility_mask: mask,
                    relocation_alignment: r.alignment,
                    relocation_region_gpa: r.gpa,
                    relocation_region_size: r.size,
                    minimum_relocation_gpa: r.min,
                    maximum_relocation_gpa: r.max,
                    is_vtl2: vtl == Vtl::Vtl2,
                    apply_rip_offset: r.apply_rip_offset,
                    apply_gdtr_offset: r.apply_gdtr_offset,
                    vp_index: 0,
                    vtl,
                });
        let page_tables = self.page_table_relocation.map(|pt| {
            IgvmInitializationHeader::PageTableRelocationRegion {
                compatibility_mask: mask,
                gpa: pt.gpa,
                size: pt.size,
                used_size: pt.used,
                vp_index: 0,
                vtl,
            }
        });
        regions.chain(page_tables)
    }
}

impl<R> PlatformImage<R> {
    fn overlaps_relocation(&self, start: u64, end: u64) -> bool {
        let pt = self
            .page_table_relocation
            .map(|p| (p.gpa, p.gpa.saturating_add(p.size)));
        self.relocations
            .iter()
            .map(|r| (r.gpa, r.gpa.saturating_add(r.size)))
            .chain(pt)
            .any(|(s, e)| s < end && start < e)
    }
}

fn check_aligned(what: &'static str, value: u64, alignment: u64) -> Result<()> {
    if alignment != 0 && !value.is_multiple_of(alignment) {
        return Err(Error::Misaligned {
            what,
            value,
            alignment,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::IgvmBuilder;
    use crate::builder::tests::config;
    use crate::builder::tests::snp;
    use crate::importer::BootPageAcceptance;
    use crate::importer::ImageLoad;
    use igvm::IgvmFile;

    #[test]
    fn misaligned_relocations_are_rejected() {
        let mut image = PlatformImage::<X86Register>::new(config(IsolationType::Vbs));
        image
            .import_pages(0x200, 0x200, "k", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        let err = image
            .relocation_region(0x200_800, 0x1000, 0x1000, 0, 0x1000_0000, true, true, 0)
            .unwrap_err();
        assert!(matches!(err, Error::Misaligned { .. }), "{err}");
        let err = image
            .relocation_region(
                0x200_000,
                0x1000,
                0x20_0000,
                0x1000,
                0x4000_0000,
                true,
                true,
                0,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::Misaligned { value: 0x1000, .. }),
            "{err}"
        );
        let err = image.page_table_relocation(0x1234, 4, 1, 0).unwrap_err();
        assert!(matches!(err, Error::Misaligned { .. }), "{err}");
        let err = image.page_table_relocation(0x10_000, 4, 5, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidRelocation(_)), "{err}");
        image
            .relocation_region(
                0x200_000,
                0x20_0000,
                0x20_0000,
                0,
                0x4000_0000,
                true,
                true,
                0,
            )
            .unwrap();
        let err = image
            .relocation_region(0x200_000, 0x1000, 0x1000, 0, 0x4000_0000, true, true, 0)
            .unwrap_err();
        assert!(matches!(err, Error::RelocationOverlap { .. }), "{err}");
    }

    #[test]
    fn relocations_need_a_vbs_or_native_vp_context() {
        let mut image = snp();
        let err = image
            .relocation_region(0, 0x1000, 0x1000, 0, 0x1000, false, false, 0)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRelocation(_)));
        let mut b = IgvmBuilder::<X86Register>::new();
        let vbs = b.add_platform(config(IsolationType::Vbs)).unwrap();
        vbs.import_pages(0, 1, "k", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        vbs.relocation_region(0, 0x1000, 0x1000, 0, 0x10_0000, true, false, 0)
            .unwrap();
        assert!(matches!(b.build(), Err(Error::InvalidRelocation(_))));
        b.platform_mut(IsolationType::Vbs)
            .unwrap()
            .import_vp_register(X86Register::Rip(0))
            .unwrap();
        let bytes = b.build_bytes().unwrap();
        let parsed = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert!(crate::dump::dump(&parsed).contains("init relocatable_region"));
    }
}
