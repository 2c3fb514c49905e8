//! One isolation platform's in-memory image: the [`ImageLoad`] implementation and its
//! contract checks.

use super::regions::Regions;
use crate::arch::Arch;
use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImageLoad;
use crate::importer::IsolationConfig;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::importer::PAGE_SIZE_USIZE;
use crate::importer::ParameterAreaIndex;
use crate::importer::StartupMemoryType;
use crate::vp_context::tdx::RESET_PAGE_GPA;
use crate::vp_context::tdx::RESET_PAGE_TAG;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm::hv_defs::Vtl;
use igvm_defs::IGVM_VHS_PARAMETER;
use igvm_defs::IGVM_VHS_PARAMETER_INSERT;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;

/// Pages in a 2 MiB page.
const PAGES_PER_2M: u64 = 512;

/// SNP guest policy used unless the caller sets one: ABI 0.0, SMT allowed, and bit 17, which
/// the firmware requires to be set.
pub const DEFAULT_SNP_POLICY: u64 = 0x3_0000;

/// How one platform's image is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformConfig {
    /// The isolation configuration loaders see.
    pub isolation: IsolationConfig,
    /// SNP guest policy written to the file (ignored by other platforms).
    pub guest_policy: u64,
    /// Emit runs of 512 data-less, 2 MiB-aligned pages as one 2 MiB page directive.
    pub large_pages: bool,
}

impl PlatformConfig {
    /// Defaults for `isolation`: [`DEFAULT_SNP_POLICY`], 4 KiB pages only.
    pub fn new(isolation: IsolationConfig) -> Self {
        Self {
            isolation,
            guest_policy: DEFAULT_SNP_POLICY,
            large_pages: false,
        }
    }
}

/// What a loader asked for, in call order.
#[derive(Debug, Clone)]
enum Item {
    Pages {
        page_base: u64,
        page_count: u64,
        acceptance: BootPageAcceptance,
        data: Vec<u8>,
    },
    Area {
        index: u32,
        page_count: u32,
        initial_data: Vec<u8>,
    },
    Parameter {
        index: u32,
        byte_offset: u32,
        kind: IgvmParameterType,
    },
    RequiredMemory {
        page_base: u64,
        bytes: u32,
        vtl2_protectable: bool,
    },
}

#[derive(Debug, Clone)]
struct Area {
    page_base: u64,
    page_count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Relocation {
    gpa: u64,
    size: u64,
    alignment: u64,
    min: u64,
    max: u64,
    apply_rip_offset: bool,
    apply_gdtr_offset: bool,
}

#[derive(Debug, Clone, Copy)]
struct PageTableRelocation {
    gpa: u64,
    size: u64,
    used: u64,
}

/// One isolation platform's image, built through [`ImageLoad`].
///
/// Every call is checked against the contract (no overlaps, alignment, parameter areas known,
/// one VP context page, valid relocations); a rejected call changes nothing. Images become
/// IGVM files through [`crate::builder::IgvmBuilder`].
///
/// Directive order, which is what the launch measurement follows: page imports, parameter
/// areas and parameter usages in call order; then the imported-regions config page; then one
/// parameter insert per area (in creation order); then the VP context (SNP VMSA, VBS or
/// native registers, or the TDX reset page), so that it is measured last as KVM requires.
#[derive(Debug, Clone)]
pub struct PlatformImage<R> {
    config: PlatformConfig,
    items: Vec<Item>,
    regions: Regions,
    areas: Vec<Area>,
    registers: Vec<R>,
    vp_context_page: Option<u64>,
    relocations: Vec<Relocation>,
    page_table_relocation: Option<PageTableRelocation>,
    imported_regions_page: Option<u64>,
}

/// The directives and headers of one image, before merging with other platforms.
pub(crate) struct ImageParts {
    pub(crate) platform: IgvmPlatformHeader,
    pub(crate) initializations: Vec<IgvmInitializationHeader>,
    pub(crate) directives: Vec<IgvmDirectiveHeader>,
}

impl<R: GuestArch> PlatformImage<R> {
    /// An empty image for `config`.
    pub fn new(config: PlatformConfig) -> Self {
        Self {
            config,
            items: Vec::new(),
            regions: Regions::default(),
            areas: Vec::new(),
            registers: Vec::new(),
            vp_context_page: None,
            relocations: Vec::new(),
            page_table_relocation: None,
            imported_regions_page: None,
        }
    }

    /// The configuration this image is built with.
    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// The registers imported so far, in import order.
    pub fn registers(&self) -> &[R] {
        &self.registers
    }

    fn isolation(&self) -> IsolationType {
        self.config.isolation.isolation_type
    }

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

    fn vtl(&self) -> Vtl {
        if self.config.isolation.paravisor_present {
            Vtl::Vtl2
        } else {
            Vtl::Vtl0
        }
    }

    fn unsupported(&self, tag: &str, acceptance: BootPageAcceptance) -> Error {
        Error::AcceptanceUnsupported {
            tag: tag.to_string(),
            acceptance: acceptance.name(),
            isolation: self.isolation(),
        }
    }

    fn claim_vp_context(&mut self, page_base: u64, tag: &str) -> Result<()> {
        if let Some(existing) = self.vp_context_page {
            return Err(Error::DuplicateVpContextPage { existing });
        }
        let end = Regions::end_of(tag, page_base, 1)?;
        self.regions.claim(tag, page_base, end, true)?;
        self.vp_context_page = Some(page_base);
        Ok(())
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

        match self.isolation() {
            IsolationType::None if !self.registers.is_empty() => {
                directives.push(R::native_context(&self.registers, mask)?);
            }
            IsolationType::Vbs if !self.registers.is_empty() => {
                directives.push(R::vbs_context(&self.registers, vtl, mask));
            }
            IsolationType::Tdx if !self.registers.is_empty() => {
                directives.push(IgvmDirectiveHeader::PageData {
                    gpa: RESET_PAGE_GPA,
                    compatibility_mask: mask,
                    flags: IgvmPageDataFlags::new(),
                    data_type: IgvmPageDataType::NORMAL,
                    data: R::tdx_reset_page(&self.registers)?,
                });
            }
            IsolationType::Snp => match self.vp_context_page {
                // A raw VMSA import and registers would be two VP contexts for the BSP.
                Some(existing) if self.vp_context_imported() && !self.registers.is_empty() => {
                    return Err(Error::DuplicateVpContextPage { existing });
                }
                Some(page) if !self.vp_context_imported() => directives.push(R::snp_context(
                    &self.registers,
                    &self.config.isolation,
                    page * PAGE_SIZE,
                    mask,
                )?),
                None if !self.registers.is_empty() => return Err(Error::MissingVpContextPage),
                _ => {}
            },
            _ => {}
        }
        if (!self.relocations.is_empty() || self.page_table_relocation.is_some())
            && self.registers.is_empty()
        {
            return Err(Error::InvalidRelocation(
                "relocations need the BSP's VP context: import its registers".into(),
            ));
        }

        let mut initializations = Vec::new();
        if self.isolation() == IsolationType::Snp {
            initializations.push(IgvmInitializationHeader::GuestPolicy {
                policy: self.config.guest_policy,
                compatibility_mask: mask,
            });
        }
        for r in &self.relocations {
            initializations.push(IgvmInitializationHeader::RelocatableRegion {
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
        }
        if let Some(pt) = self.page_table_relocation {
            initializations.push(IgvmInitializationHeader::PageTableRelocationRegion {
                compatibility_mask: mask,
                gpa: pt.gpa,
                size: pt.size,
                used_size: pt.used,
                vp_index: 0,
                vtl,
            });
        }

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
        self.check_relocation_vp("a relocation", vp_index)?;
        check_aligned("relocation alignment", relocation_alignment, PAGE_SIZE)?;
        if relocation_alignment == 0 {
            return Err(Error::InvalidRelocation("zero alignment".into()));
        }
        check_aligned("relocation region size", size_bytes, PAGE_SIZE)?;
        check_aligned("relocation region", gpa, relocation_alignment)?;
        check_aligned(
            "minimum relocation GPA",
            minimum_relocation_gpa,
            relocation_alignment,
        )?;
        check_aligned(
            "maximum relocation GPA",
            maximum_relocation_gpa,
            relocation_alignment,
        )?;
        if size_bytes == 0 {
            return Err(Error::InvalidRelocation("empty region".into()));
        }
        let end = gpa
            .checked_add(size_bytes)
            .ok_or_else(|| Error::InvalidRelocation("region wraps".into()))?;
        if minimum_relocation_gpa > maximum_relocation_gpa {
            return Err(Error::InvalidRelocation(format!(
                "minimum {minimum_relocation_gpa:#x} above maximum {maximum_relocation_gpa:#x}"
            )));
        }
        if !self.regions.covered(gpa / PAGE_SIZE, end / PAGE_SIZE) {
            return Err(Error::InvalidRelocation(format!(
                "region {gpa:#x}..{end:#x} is not one imported range"
            )));
        }
        if self.overlaps_relocation(gpa, end) {
            return Err(Error::RelocationOverlap {
                gpa,
                size: size_bytes,
            });
        }
        self.relocations.push(Relocation {
            gpa,
            size: size_bytes,
            alignment: relocation_alignment,
            min: minimum_relocation_gpa,
            max: maximum_relocation_gpa,
            apply_rip_offset,
            apply_gdtr_offset,
        });
        Ok(())
    }

    fn page_table_relocation(
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

    fn set_imported_regions_config_page(&mut self, page_base: u64) {
        // The contract gives this call no way to fail: problems surface at build time.
        self.imported_regions_page = Some(page_base);
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
