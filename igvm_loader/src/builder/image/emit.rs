//! The translation of a recorded image into IGVM headers: its platform header, its
//! initialization headers and its directives, in measurement order.

use super::Item;
use super::PlatformImage;
use super::Regions;
use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::importer::PAGE_SIZE_USIZE;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm_defs::IGVM_VHS_PARAMETER;
use igvm_defs::IGVM_VHS_PARAMETER_INSERT;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;

/// Pages in a 2 MiB page.
const PAGES_PER_2M: u64 = 512;

/// The directives and headers of one image, before merging with other platforms.
pub(crate) struct ImageParts {
    pub(crate) platform: IgvmPlatformHeader,
    pub(crate) initializations: Vec<IgvmInitializationHeader>,
    pub(crate) directives: Vec<IgvmDirectiveHeader>,
}

impl<R: GuestArch> PlatformImage<R> {
    /// Turns the recorded calls into IGVM headers for compatibility mask `mask`, numbering
    /// parameter areas from `area_base`.
    pub(crate) fn to_parts(&self, mask: u32, area_base: u32) -> Result<ImageParts> {
        let vtl = self.vtl();
        let mut directives = Vec::new();
        let area_index = |index: u32| {
            area_base
                .checked_add(index)
                .ok_or(Error::TooManyParameterAreas)
        };
        for item in &self.items {
            match item {
                Item::Pages {
                    page_base,
                    page_count,
                    acceptance,
                    data,
                } => self.expand_pages(
                    &mut directives,
                    mask,
                    *page_base,
                    *page_count,
                    *acceptance,
                    data,
                )?,
                Item::Area {
                    index,
                    page_count,
                    initial_data,
                    ..
                } => directives.push(IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes: u64::from(*page_count) * PAGE_SIZE,
                    parameter_area_index: area_index(*index)?,
                    initial_data: initial_data.clone(),
                }),
                Item::Parameter {
                    index,
                    byte_offset,
                    kind,
                } => {
                    let p = IGVM_VHS_PARAMETER {
                        parameter_area_index: area_index(*index)?,
                        byte_offset: *byte_offset,
                    };
                    directives.push(match kind {
                        IgvmParameterType::VpCount => IgvmDirectiveHeader::VpCount(p),
                        IgvmParameterType::Srat => IgvmDirectiveHeader::Srat(p),
                        IgvmParameterType::Madt => IgvmDirectiveHeader::Madt(p),
                        IgvmParameterType::MmioRanges => IgvmDirectiveHeader::MmioRanges(p),
                        IgvmParameterType::MemoryMap => IgvmDirectiveHeader::MemoryMap(p),
                        IgvmParameterType::CommandLine => IgvmDirectiveHeader::CommandLine(p),
                        IgvmParameterType::DeviceTree => IgvmDirectiveHeader::DeviceTree(p),
                        IgvmParameterType::EnvironmentInfo => {
                            IgvmDirectiveHeader::EnvironmentInfo(p)
                        }
                        IgvmParameterType::Slit => IgvmDirectiveHeader::Slit(p),
                        IgvmParameterType::Pptt => IgvmDirectiveHeader::Pptt(p),
                    });
                }
                Item::RequiredMemory {
                    page_base,
                    bytes,
                    vtl2_protectable,
                } => directives.push(IgvmDirectiveHeader::RequiredMemory {
                    gpa: page_base * PAGE_SIZE,
                    compatibility_mask: mask,
                    number_of_bytes: *bytes,
                    vtl2_protectable: *vtl2_protectable,
                }),
            }
        }

        if let Some(page) = self.imported_regions_page {
            // The config page lists itself too: the loader accepts it like any import.
            let mut regions = self.regions.clone();
            let end = Regions::end_of("imported-regions", page, 1)?;
            regions.claim("imported-regions", page, end, true)?;
            let data = regions.imported_regions_page()?;
            directives.push(IgvmDirectiveHeader::PageData {
                gpa: page * PAGE_SIZE,
                compatibility_mask: mask,
                flags: IgvmPageDataFlags::new(),
                data_type: IgvmPageDataType::NORMAL,
                data,
            });
        }

        for (index, area) in (0u32..).zip(&self.areas) {
            directives.push(IgvmDirectiveHeader::ParameterInsert(
                IGVM_VHS_PARAMETER_INSERT {
                    gpa: area.page_base * PAGE_SIZE,
                    compatibility_mask: mask,
                    parameter_area_index: area_index(index)?,
                },
            ));
            tracing::trace!(index, pages = area.page_count, "parameter insert");
        }

        directives.extend(self.vp_context_directive(mask, vtl)?);
        self.check_relocations_have_vp_context()?;

        let mut initializations = Vec::new();
        if self.isolation() == IsolationType::Snp {
            initializations.push(IgvmInitializationHeader::GuestPolicy {
                policy: self.config.guest_policy,
                compatibility_mask: mask,
            });
        }
        initializations.extend(self.relocation_headers(mask, vtl));

        let (platform_type, boundary) = match self.isolation() {
            IsolationType::None => (IgvmPlatformType::NATIVE, 0),
            IsolationType::Vbs => (IgvmPlatformType::VSM_ISOLATION, 0),
            IsolationType::Snp => (
                IgvmPlatformType::SEV_SNP,
                self.config.isolation.shared_gpa_boundary(),
            ),
            IsolationType::Tdx => (
                IgvmPlatformType::TDX,
                self.config.isolation.shared_gpa_boundary(),
            ),
        };
        let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: vtl as u8,
            platform_type,
            // Every platform is at version 1 of its IGVM definition.
            platform_version: 1,
            shared_gpa_boundary: boundary,
        });
        Ok(ImageParts {
            platform,
            initializations,
            directives,
        })
    }

    fn expand_pages(
        &self,
        out: &mut Vec<IgvmDirectiveHeader>,
        mask: u32,
        page_base: u64,
        page_count: u64,
        acceptance: BootPageAcceptance,
        data: &[u8],
    ) -> Result<()> {
        let (flags, data_type) = match acceptance {
            BootPageAcceptance::Exclusive => (IgvmPageDataFlags::new(), IgvmPageDataType::NORMAL),
            BootPageAcceptance::ExclusiveUnmeasured => (
                IgvmPageDataFlags::new().with_unmeasured(true),
                IgvmPageDataType::NORMAL,
            ),
            BootPageAcceptance::Shared => (
                IgvmPageDataFlags::new().with_shared(true),
                IgvmPageDataType::NORMAL,
            ),
            BootPageAcceptance::SecretsPage => {
                (IgvmPageDataFlags::new(), IgvmPageDataType::SECRETS)
            }
            BootPageAcceptance::CpuidPage => {
                (IgvmPageDataFlags::new(), IgvmPageDataType::CPUID_DATA)
            }
            BootPageAcceptance::CpuidExtendedStatePage => {
                (IgvmPageDataFlags::new(), IgvmPageDataType::CPUID_XF)
            }
            BootPageAcceptance::ErrorPage => {
                out.push(IgvmDirectiveHeader::ErrorRange {
                    gpa: page_base * PAGE_SIZE,
                    compatibility_mask: mask,
                    size_bytes: u32::try_from(page_count * PAGE_SIZE).map_err(|_| {
                        Error::RangeOverflow {
                            what: "error range".into(),
                            page_base,
                            page_count,
                        }
                    })?,
                });
                return Ok(());
            }
            BootPageAcceptance::VpContext => {
                let mut vmsa = <igvm::snp_defs::SevVmsa as zerocopy::FromZeros>::new_box_zeroed()
                    .map_err(|_| Error::OutOfMemory)?;
                let bytes = zerocopy::IntoBytes::as_mut_bytes(vmsa.as_mut());
                if let Some(dst) = bytes.get_mut(..data.len()) {
                    dst.copy_from_slice(data);
                }
                out.push(IgvmDirectiveHeader::SnpVpContext {
                    gpa: page_base * PAGE_SIZE,
                    compatibility_mask: mask,
                    vp_index: 0,
                    vmsa,
                });
                return Ok(());
            }
        };
        let large = self.config.large_pages && acceptance != BootPageAcceptance::SecretsPage;
        let mut i = 0u64;
        while i < page_count {
            let page = page_base + i;
            let offset = i * PAGE_SIZE;
            let data_less = offset >= data.len() as u64;
            if large
                && data_less
                && page.is_multiple_of(PAGES_PER_2M)
                && page_count - i >= PAGES_PER_2M
            {
                out.push(IgvmDirectiveHeader::PageData {
                    gpa: page * PAGE_SIZE,
                    compatibility_mask: mask,
                    flags: flags.with_is_2mb_page(true),
                    data_type,
                    data: Vec::new(),
                });
                i += PAGES_PER_2M;
                continue;
            }
            let chunk = if data_less {
                &[][..]
            } else {
                let start = offset as usize;
                let end = (start + PAGE_SIZE_USIZE).min(data.len());
                data.get(start..end).unwrap_or_default()
            };
            out.push(IgvmDirectiveHeader::PageData {
                gpa: page * PAGE_SIZE,
                compatibility_mask: mask,
                flags,
                data_type,
                data: chunk.to_vec(),
            });
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::IgvmBuilder;
    use crate::builder::PlatformConfig;
    use crate::importer::ImageLoad;
    use crate::importer::IsolationConfig;
    fn config(t: IsolationType) -> PlatformConfig {
        PlatformConfig::new(IsolationConfig::new(t))
    }

    #[test]
    fn imported_regions_page_on_an_import_fails_at_build() {
        let mut b = IgvmBuilder::<X86Register>::new();
        let image = b.add_platform(config(IsolationType::Snp)).unwrap();
        image
            .import_pages(1, 4, "a", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        image.set_imported_regions_config_page(2);
        assert!(matches!(b.build(), Err(Error::Overlap { .. })));
    }
}
