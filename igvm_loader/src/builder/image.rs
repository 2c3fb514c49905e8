//! One isolation platform's in-memory image: what a loader asked for, recorded in call order.
//!
//! The [`ImageLoad`](crate::importer::ImageLoad) implementation and its per-call contract
//! checks live in `import`, the relocation requests in `relocation`, the BSP's VP context in
//! `vp_context`, and the translation into IGVM headers in `emit`.

mod emit;
mod import;
mod relocation;
mod vp_context;

use super::regions::Regions;
use crate::arch::GuestArch;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::IsolationConfig;
use crate::importer::IsolationType;
use igvm::hv_defs::Vtl;
use relocation::PageTableRelocation;
use relocation::Relocation;

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

/// One isolation platform's image, built through [`ImageLoad`](crate::importer::ImageLoad).
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

    fn vtl(&self) -> Vtl {
        if self.config.isolation.paravisor_present {
            Vtl::Vtl2
        } else {
            Vtl::Vtl0
        }
    }
}
