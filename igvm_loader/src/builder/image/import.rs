//! The [`ImageLoad`] implementation: each call checked against the contract before it is
//! recorded, so that a rejected call changes nothing.

use super::Area;
use super::Item;
use super::PlatformImage;
use super::Regions;
use super::relocation::Relocation;
use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImageLoad;
use crate::importer::IsolationConfig;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::importer::ParameterAreaIndex;
use crate::importer::StartupMemoryType;

impl<R: GuestArch> PlatformImage<R> {
    fn unsupported(&self, tag: &str, acceptance: BootPageAcceptance) -> Error {
        Error::AcceptanceUnsupported {
            tag: tag.to_string(),
            acceptance: acceptance.name(),
            isolation: self.isolation(),
        }
    }

    fn new_area(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
        initial_data: &[u8],
    ) -> Result<ParameterAreaIndex> {
        let end = Regions::end_of(debug_tag, page_base, page_count.into())?;
        let capacity = u64::from(page_count) * PAGE_SIZE;
        if initial_data.len() as u64 > capacity {
            return Err(Error::DataTooLarge {
                tag: debug_tag.to_string(),
                len: initial_data.len(),
                page_count: page_count.into(),
            });
        }
        let index = u32::try_from(self.areas.len()).map_err(|_| Error::TooManyParameterAreas)?;
        self.regions.claim(debug_tag, page_base, end, true)?;
        self.areas.push(Area {
            page_base,
            page_count,
        });
        self.items.push(Item::Area {
            index,
            page_count,
            initial_data: initial_data.to_vec(),
        });
        tracing::debug!(debug_tag, page_base, page_count, index, "parameter area");
        Ok(ParameterAreaIndex(index))
    }
}

impl<R: GuestArch> ImageLoad<R> for PlatformImage<R> {
    fn isolation_config(&self) -> IsolationConfig {
        self.config.isolation
    }

    fn create_parameter_area(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
    ) -> Result<ParameterAreaIndex> {
        self.new_area(page_base, page_count, debug_tag, &[])
    }

    fn create_parameter_area_with_data(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
        initial_data: &[u8],
    ) -> Result<ParameterAreaIndex> {
        self.new_area(page_base, page_count, debug_tag, initial_data)
    }

    fn import_parameter(
        &mut self,
        parameter_area: ParameterAreaIndex,
        byte_offset: u32,
        parameter_type: IgvmParameterType,
    ) -> Result<()> {
        let area = usize::try_from(parameter_area.0)
            .ok()
            .and_then(|i| self.areas.get(i))
            .ok_or(Error::UnknownParameterArea(parameter_area))?;
        let size = u64::from(area.page_count) * PAGE_SIZE;
        if u64::from(byte_offset) >= size {
            return Err(Error::ParameterOutOfArea {
                area: parameter_area,
                offset: byte_offset,
                size,
            });
        }
        self.items.push(Item::Parameter {
            index: parameter_area.0,
            byte_offset,
            kind: parameter_type,
        });
        Ok(())
    }

    fn import_pages(
        &mut self,
        page_base: u64,
        page_count: u64,
        debug_tag: &str,
        acceptance: BootPageAcceptance,
        data: &[u8],
    ) -> Result<()> {
        let end = Regions::end_of(debug_tag, page_base, page_count)?;
        if data.len() as u64 > page_count * PAGE_SIZE {
            return Err(Error::DataTooLarge {
                tag: debug_tag.to_string(),
                len: data.len(),
                page_count,
            });
        }
        let snp = self.isolation() == IsolationType::Snp;
        match acceptance {
            BootPageAcceptance::Exclusive
            | BootPageAcceptance::ExclusiveUnmeasured
            | BootPageAcceptance::Shared => {}
            BootPageAcceptance::SecretsPage
            | BootPageAcceptance::CpuidPage
            | BootPageAcceptance::CpuidExtendedStatePage
                if snp => {}
            BootPageAcceptance::ErrorPage => {
                if !data.is_empty() {
                    return Err(Error::DataTooLarge {
                        tag: debug_tag.to_string(),
                        len: data.len(),
                        page_count: 0,
                    });
                }
                if page_count * PAGE_SIZE > u64::from(u32::MAX) {
                    return Err(Error::RangeOverflow {
                        what: debug_tag.to_string(),
                        page_base,
                        page_count,
                    });
                }
            }
            BootPageAcceptance::VpContext if snp => {
                if page_count != 1 {
                    return Err(Error::VpContextSize(debug_tag.to_string()));
                }
                self.claim_vp_context(page_base, debug_tag)?;
                self.items.push(Item::Pages {
                    page_base,
                    page_count,
                    acceptance,
                    data: data.to_vec(),
                });
                return Ok(());
            }
            _ => return Err(self.unsupported(debug_tag, acceptance)),
        }
        let accepted = acceptance != BootPageAcceptance::Shared;
        self.regions.claim(debug_tag, page_base, end, accepted)?;
        tracing::debug!(
            debug_tag,
            page_base,
            page_count,
            ?acceptance,
            "import pages"
        );
        self.items.push(Item::Pages {
            page_base,
            page_count,
            acceptance,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn import_vp_register(&mut self, register: R) -> Result<()> {
        self.add_register(register)
    }

    fn verify_startup_memory_available(
        &mut self,
        page_base: u64,
        page_count: u64,
        memory_type: StartupMemoryType,
    ) -> Result<()> {
        Regions::end_of("startup memory", page_base, page_count)?;
        let bytes = u32::try_from(page_count * PAGE_SIZE).map_err(|_| Error::StartupMemory {
            page_base,
            page_count,
            reason: "more than 4 GiB in one requirement",
        })?;
        let vtl2_protectable = memory_type == StartupMemoryType::Vtl2ProtectableRam;
        if vtl2_protectable && !self.config.isolation.paravisor_present {
            return Err(Error::StartupMemory {
                page_base,
                page_count,
                reason: "VTL2-protectable memory needs a paravisor",
            });
        }
        self.items.push(Item::RequiredMemory {
            page_base,
            bytes,
            vtl2_protectable,
        });
        Ok(())
    }

    fn set_vp_context_page(&mut self, page_base: u64) -> Result<()> {
        if self.isolation() != IsolationType::Snp {
            return Err(Error::VpContextPageUnsupported(self.isolation()));
        }
        self.claim_vp_context(page_base, "vp-context")
    }

    fn relocation_region(
        &mut self,
        gpa: u64,
        size_bytes: u64,
        relocation_alignment: u64,
        minimum_relocation_gpa: u64,
        maximum_relocation_gpa: u64,
        apply_rip_offset: bool,
        apply_gdtr_offset: bool,
        vp_index: u16,
    ) -> Result<()> {
        self.add_relocation(
            Relocation {
                gpa,
                size: size_bytes,
                alignment: relocation_alignment,
                min: minimum_relocation_gpa,
                max: maximum_relocation_gpa,
                apply_rip_offset,
                apply_gdtr_offset,
            },
            vp_index,
        )
    }

    fn page_table_relocation(
        &mut self,
        page_table_gpa: u64,
        size_pages: u64,
        used_pages: u64,
        vp_index: u16,
    ) -> Result<()> {
        self.set_page_table_relocation(page_table_gpa, size_pages, used_pages, vp_index)
    }

    fn set_imported_regions_config_page(&mut self, page_base: u64) {
        // The contract gives this call no way to fail: problems surface at build time.
        self.imported_regions_page = Some(page_base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::tests::config;
    use crate::builder::tests::snp;

    #[test]
    fn overlapping_import_is_rejected_and_changes_nothing() {
        let mut image = snp();
        image
            .import_pages(10, 10, "a", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        let err = image
            .import_pages(19, 2, "b", BootPageAcceptance::Exclusive, &[])
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Overlap {
                    start: 19,
                    other_start: 10,
                    ..
                }
            ),
            "{err}"
        );
        let area = image.create_parameter_area(5, 6, "p");
        assert!(matches!(area, Err(Error::Overlap { .. })));
        // The rejected calls left no trace: the neighbours are still free.
        image
            .import_pages(20, 1, "c", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        image.create_parameter_area(0, 10, "p").unwrap();
    }

    #[test]
    fn unknown_parameter_area_and_out_of_area_offsets_are_rejected() {
        let mut image = snp();
        let err = image
            .import_parameter(ParameterAreaIndex(0), 0, IgvmParameterType::VpCount)
            .unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownParameterArea(ParameterAreaIndex(0))
        ));
        let area = image.create_parameter_area(1, 1, "p").unwrap();
        let err = image
            .import_parameter(area, 4096, IgvmParameterType::Srat)
            .unwrap_err();
        assert!(matches!(err, Error::ParameterOutOfArea { .. }));
        let err = image
            .import_parameter(ParameterAreaIndex(u32::MAX), 0, IgvmParameterType::Madt)
            .unwrap_err();
        assert!(matches!(err, Error::UnknownParameterArea(_)));
    }

    #[test]
    fn platform_specific_acceptance_and_registers_are_checked() {
        let mut tdx = PlatformImage::<X86Register>::new(config(IsolationType::Tdx));
        assert!(matches!(
            tdx.import_pages(1, 1, "s", BootPageAcceptance::SecretsPage, &[]),
            Err(Error::AcceptanceUnsupported { .. })
        ));
        // TDX registers ride the reset page, which then cannot be imported over.
        tdx.import_vp_register(X86Register::Rip(0)).unwrap();
        assert!(matches!(
            tdx.import_pages(0xfffff, 1, "over", BootPageAcceptance::Exclusive, &[]),
            Err(Error::Overlap { .. })
        ));
        let mut image = snp();
        image.import_vp_register(X86Register::Rip(0)).unwrap();
        assert!(matches!(
            image.import_vp_register(X86Register::Rip(1)),
            Err(Error::DuplicateRegister(_))
        ));
        assert!(matches!(
            image.import_pages(1, 1, "big", BootPageAcceptance::Exclusive, &[0; 4097]),
            Err(Error::DataTooLarge { .. })
        ));
        assert!(matches!(
            image.import_pages(u64::MAX, 2, "wrap", BootPageAcceptance::Exclusive, &[]),
            Err(Error::RangeOverflow { .. })
        ));
        assert!(matches!(
            image.import_pages(1, 0, "none", BootPageAcceptance::Exclusive, &[]),
            Err(Error::Empty(_))
        ));
    }
}
