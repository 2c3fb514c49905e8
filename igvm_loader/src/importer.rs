//! The loader contract: [`ImageLoad`] and the types its methods take.
//!
//! Loaders (Linux, UEFI, ELF, paravisor) program against this trait only; the IGVM builder
//! ([`crate::builder::PlatformImage`]) and the test recorder
//! ([`crate::recording::RecordingImporter`]) implement it.

use crate::arch::GuestArch;
use crate::error::Result;
use serde::Deserialize;
use serde::Serialize;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U64;

/// Size of a guest page in bytes: `page_base` arguments are page numbers of this size.
pub const PAGE_SIZE: u64 = 4096;

/// Size of a guest page in bytes, as `usize`.
pub const PAGE_SIZE_USIZE: usize = 4096;

/// The isolation architecture an image is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IsolationType {
    /// No isolation (a native VM).
    None,
    /// Hyper-V virtualization-based security (VSM isolation).
    Vbs,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl IsolationType {
    /// The short lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            IsolationType::None => "native",
            IsolationType::Vbs => "vbs",
            IsolationType::Snp => "snp",
            IsolationType::Tdx => "tdx",
        }
    }
}

/// The isolation configuration a loader sees through [`ImageLoad::isolation_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationConfig {
    /// The isolation architecture.
    pub isolation_type: IsolationType,
    /// The shared GPA boundary as a bit number (boundary = `1 << bits`), if the platform has
    /// one (SNP vTOM, TDX shared bit).
    pub shared_gpa_boundary_bits: Option<u8>,
    /// Whether a paravisor runs in VTL2 below the guest.
    pub paravisor_present: bool,
}

impl IsolationConfig {
    /// A configuration without shared GPA boundary or paravisor.
    pub fn new(isolation_type: IsolationType) -> Self {
        Self {
            isolation_type,
            shared_gpa_boundary_bits: None,
            paravisor_present: false,
        }
    }

    /// The shared GPA boundary in bytes (0 if none).
    pub fn shared_gpa_boundary(&self) -> u64 {
        self.shared_gpa_boundary_bits
            .and_then(|bits| 1u64.checked_shl(bits.into()))
            .unwrap_or(0)
    }
}

/// Handle of a parameter area created by [`ImageLoad::create_parameter_area`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParameterAreaIndex(pub u32);

/// What the IGVM loader deposits at a parameter offset at launch time (unmeasured). A build
/// manifest names it in snake case (`vp_count`, `memory_map`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgvmParameterType {
    /// Number of VPs (u32).
    VpCount,
    /// ACPI SRAT table.
    Srat,
    /// ACPI MADT table.
    Madt,
    /// MMIO ranges.
    MmioRanges,
    /// Memory map.
    MemoryMap,
    /// Command line (string).
    CommandLine,
    /// Flattened device tree.
    DeviceTree,
    /// Environment information.
    EnvironmentInfo,
    /// ACPI SLIT table.
    Slit,
    /// ACPI PPTT table.
    Pptt,
}

/// How imported pages are accepted (and measured) by the isolation platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootPageAcceptance {
    /// Private to the guest and measured.
    Exclusive,
    /// Private to the guest, not measured.
    ExclusiveUnmeasured,
    /// The page holds a VP context (SNP VMSA).
    VpContext,
    /// The page reports loader errors (IGVM error range).
    ErrorPage,
    /// SNP secrets page, filled by the firmware.
    SecretsPage,
    /// SNP CPUID page, validated by the firmware.
    CpuidPage,
    /// SNP CPUID page with extended state (XF) leaves.
    CpuidExtendedStatePage,
    /// Shared with the host: neither private nor measured.
    Shared,
}

impl BootPageAcceptance {
    /// The variant name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            BootPageAcceptance::Exclusive => "Exclusive",
            BootPageAcceptance::ExclusiveUnmeasured => "ExclusiveUnmeasured",
            BootPageAcceptance::VpContext => "VpContext",
            BootPageAcceptance::ErrorPage => "ErrorPage",
            BootPageAcceptance::SecretsPage => "SecretsPage",
            BootPageAcceptance::CpuidPage => "CpuidPage",
            BootPageAcceptance::CpuidExtendedStatePage => "CpuidExtendedStatePage",
            BootPageAcceptance::Shared => "Shared",
        }
    }
}

/// The kind of memory a loader needs to exist at launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartupMemoryType {
    /// Ordinary RAM.
    Ram,
    /// RAM that VTL2 can protect (VBS paravisor).
    Vtl2ProtectableRam,
}

/// One entry of the imported-regions config page: pages the loader already accepted (the
/// paravisor's 24-byte descriptor layout).
///
/// The list is sorted by `base_page_number`, non-overlapping, and ends with an entry whose
/// `page_count` is zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ImportedRegionDescriptor {
    /// First page number.
    pub base_page_number: U64,
    /// Number of pages; zero ends the list.
    pub page_count: U64,
    /// 1 if the loader accepted the pages (always, for entries the builder writes).
    pub accepted: u8,
    /// Zero.
    pub padding: [u8; 7],
}
const _: () = assert!(size_of::<ImportedRegionDescriptor>() == 24);

/// The contract between loaders and image builders (method for method as OpenVMM's).
///
/// `page_base` arguments are page numbers (GPA / [`PAGE_SIZE`]).
pub trait ImageLoad<R>
where
    R: GuestArch,
{
    /// Get the isolation configuration for this loader. This can be used by loaders to load
    /// different state depending on the platform.
    fn isolation_config(&self) -> IsolationConfig;

    /// Create a parameter area for the given `page_base` and `page_count`, which can be used
    /// to import parameters. `debug_tag` names the region in reports.
    fn create_parameter_area(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
    ) -> Result<ParameterAreaIndex>;

    /// Create a parameter area for the given `page_base`, `page_count` and `initial_data`,
    /// which can be used to import parameters.
    fn create_parameter_area_with_data(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
        initial_data: &[u8],
    ) -> Result<ParameterAreaIndex>;

    /// Import an IGVM parameter into the given parameter area at the given offset: runtime,
    /// unmeasured information the IGVM loader deposits at launch.
    fn import_parameter(
        &mut self,
        parameter_area: ParameterAreaIndex,
        byte_offset: u32,
        parameter_type: IgvmParameterType,
    ) -> Result<()>;

    /// Import data into the guest address space with the given acceptance type. `data.len()`
    /// must be smaller than or equal to the number of pages being imported; the rest is zero.
    fn import_pages(
        &mut self,
        page_base: u64,
        page_count: u64,
        debug_tag: &str,
        acceptance: BootPageAcceptance,
        data: &[u8],
    ) -> Result<()>;

    /// Import a register into the BSP.
    fn import_vp_register(&mut self, register: R) -> Result<()>;

    /// Verify with the loader that memory is available in guest address space with the given
    /// type.
    fn verify_startup_memory_available(
        &mut self,
        page_base: u64,
        page_count: u64,
        memory_type: StartupMemoryType,
    ) -> Result<()>;

    /// Notify the loader to deposit architecture specific VP context information at the given
    /// page.
    fn set_vp_context_page(&mut self, page_base: u64) -> Result<()>;

    /// Specify this region as relocatable.
    #[expect(
        clippy::too_many_arguments,
        reason = "the seed contract fixes the signature"
    )]
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
    ) -> Result<()>;

    /// Specify a region as relocatable page table memory.
    fn page_table_relocation(
        &mut self,
        page_table_gpa: u64,
        size_pages: u64,
        used_pages: u64,
        vp_index: u16,
    ) -> Result<()>;

    /// Let the loader know on which page to write the imported-regions config page: the
    /// sorted, non-overlapping [`ImportedRegionDescriptor`] list (ending with a zero-count
    /// entry) of pages the loader accepts, which the boot shim must not accept again.
    fn set_imported_regions_config_page(&mut self, page_base: u64);
}
