//! Configuration of the emulated device: its virtual functions (BARs, MSI-X, device-specific
//! information), its TDISP capabilities, and the configuration changes a host may make later.
//!
//! [`DsmConfig::validate`] is the one place that decides whether a configuration describes a
//! device that can exist; [`FunctionConfig::build_report`] turns a validated function into the
//! DEVICE_INTERFACE_REPORT frozen at LOCK_INTERFACE time.

use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MAX_REPORT_SIZE;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use thiserror::Error;

/// Size of an MMIO page as TDISP reports it.
pub const PAGE_SIZE: u64 = 4096;

/// The number of BARs of a PCIe function.
pub const BAR_COUNT: u8 = 6;

/// One memory BAR of a virtual function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarConfig {
    /// BAR number, 0..=5; reported as the range id.
    pub index: u8,
    /// Assigned base address (page aligned).
    pub address: u64,
    /// Size in bytes (a non-zero multiple of [`PAGE_SIZE`]).
    pub size: u64,
    /// The BAR is not TEE memory (it may be mapped shared with the host).
    pub non_tee: bool,
    /// SET_MMIO_ATTRIBUTE may change the attributes of this BAR's ranges.
    pub attributes_updatable: bool,
}

/// Where a structure (the MSI-X table or PBA) lives inside a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarLocation {
    /// BAR number holding the structure.
    pub bar: u8,
    /// Byte offset inside the BAR.
    pub offset: u64,
    /// Size in bytes (non-zero).
    pub size: u64,
}

/// The MSI-X capability of a virtual function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixConfig {
    /// The MSI-X table.
    pub table: BarLocation,
    /// The pending bit array.
    pub pba: BarLocation,
    /// The message control register (reported in the interface report).
    pub message_control: u16,
}

/// One virtual function: a TDI the device can lock and assign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// Requester id (bus/device/function) of the function: its TDISP interface id.
    pub requester_id: u16,
    /// Memory BARs; indexes must be distinct.
    pub bars: Vec<BarConfig>,
    /// MSI-X, if the function has it.
    pub msix: Option<MsixConfig>,
    /// Device-specific information appended to the interface report.
    pub device_specific_info: Vec<u8>,
    /// The function generates DMA without a PASID.
    pub dma_without_pasid: bool,
    /// The function generates DMA with a PASID.
    pub dma_with_pasid: bool,
    /// ATS is enabled.
    pub ats: bool,
    /// PRS is enabled.
    pub prs: bool,
    /// LN requester control register.
    pub lnr_control: u16,
    /// TPH control register.
    pub tph_control: u32,
    /// The PCI command register's memory space enable bit.
    pub memory_space_enabled: bool,
}

impl FunctionConfig {
    /// A function at `requester_id` with one 64 KiB BAR 0 holding its MSI-X table (page 0) and
    /// PBA (page 1), DMA without PASID, and a few bytes of device-specific information.
    pub fn simple(requester_id: u16, bar0_address: u64) -> Self {
        Self {
            requester_id,
            bars: vec![BarConfig {
                index: 0,
                address: bar0_address,
                size: 16 * PAGE_SIZE,
                non_tee: false,
                attributes_updatable: false,
            }],
            msix: Some(MsixConfig {
                table: BarLocation {
                    bar: 0,
                    offset: 0,
                    size: 16 * 16,
                },
                pba: BarLocation {
                    bar: 0,
                    offset: PAGE_SIZE,
                    size: 8,
                },
                message_control: 0x000f,
            }),
            device_specific_info: b"emulated-dsm".to_vec(),
            dma_without_pasid: true,
            dma_with_pasid: false,
            ats: false,
            prs: false,
            lnr_control: 0,
            tph_control: 0,
            memory_space_enabled: true,
        }
    }

    fn bar(&self, index: u8) -> Option<&BarConfig> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The device interface report of this function, as LOCK_INTERFACE freezes it.
    ///
    /// MMIO ranges are reported per BAR in page order. Only when the lock asks for LOCK_MSIX
    /// do the pages holding the MSI-X table and PBA become ranges of their own with the
    /// matching attribute, and only then is the MSI-X message control word reported (PCIe 6.1
    /// section 11.3.11: both are defined only for a TDI locked with MSI-X locked). Every
    /// address gets `mmio_reporting_offset` added.
    pub fn build_report(
        &self,
        flags: LockInterfaceFlags,
        mmio_reporting_offset: u64,
        xt_mode: bool,
    ) -> Result<DeviceInterfaceReport, ConfigError> {
        let mut mmio_ranges = Vec::new();
        for bar in &self.bars {
            for (first, pages, special) in self.bar_segments(bar, flags.lock_msix())? {
                let address = first
                    .checked_mul(PAGE_SIZE)
                    .and_then(|offset| bar.address.checked_add(offset))
                    .and_then(|a| a.checked_add(mmio_reporting_offset))
                    .ok_or(ConfigError::AddressOverflow)?;
                mmio_ranges.push(MmioRange {
                    first_page: address,
                    number_of_pages: u32::try_from(pages)
                        .map_err(|_| ConfigError::BarTooLarge(bar.index))?,
                    attributes: MmioRangeAttributes::new()
                        .with_msix_table(special == Special::Table)
                        .with_msix_pba(special == Special::Pba)
                        .with_non_tee_memory(bar.non_tee)
                        .with_attributes_updatable(bar.attributes_updatable),
                    range_id: bar.index.into(),
                });
            }
        }
        let report = DeviceInterfaceReport {
            interface_info: InterfaceInfo::new()
                .with_no_fw_update(flags.no_fw_update())
                .with_dma_without_pasid(self.dma_without_pasid)
                .with_dma_with_pasid(self.dma_with_pasid)
                .with_ats(self.ats)
                .with_prs(self.prs)
                .with_xt_mode(xt_mode),
            msi_x_message_control: match self.msix {
                Some(msix) if flags.lock_msix() => msix.message_control,
                _ => 0,
            },
            lnr_control: self.lnr_control,
            tph_control: self.tph_control,
            mmio_ranges,
            device_specific_info: self.device_specific_info.clone(),
        };
        if report.encoded_len() > MAX_REPORT_SIZE {
            return Err(ConfigError::ReportTooLarge(report.encoded_len()));
        }
        Ok(report)
    }

    /// Splits a BAR into page runs `(first page, page count, kind)`, giving the MSI-X table and
    /// PBA pages runs of their own when `lock_msix`.
    fn bar_segments(
        &self,
        bar: &BarConfig,
        lock_msix: bool,
    ) -> Result<Vec<(u64, u64, Special)>, ConfigError> {
        let total = bar.size / PAGE_SIZE;
        let mut specials: Vec<(u64, u64, Special)> = Vec::new();
        if let Some(msix) = self.msix.as_ref().filter(|_| lock_msix) {
            for (location, kind) in [(msix.table, Special::Table), (msix.pba, Special::Pba)] {
                if location.bar == bar.index {
                    let (first, count) = location.pages()?;
                    specials.push((first, count, kind));
                }
            }
        }
        specials.sort_unstable();
        let mut segments = Vec::new();
        let mut next = 0u64;
        for (first, count, kind) in specials {
            if first > next {
                segments.push((next, first - next, Special::None));
            }
            segments.push((first, count, kind));
            next = first + count;
        }
        if total > next {
            segments.push((next, total - next, Special::None));
        }
        Ok(segments)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Special {
    None,
    Table,
    Pba,
}

impl BarLocation {
    /// The first page and the page count the structure touches.
    fn pages(&self) -> Result<(u64, u64), ConfigError> {
        let end = self
            .offset
            .checked_add(self.size)
            .ok_or(ConfigError::AddressOverflow)?;
        let first = self.offset / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        Ok((first, last - first))
    }
}

/// The TDISP capabilities the device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityConfig {
    /// LOCK_INTERFACE flags the device honours; others are refused.
    pub lock_flags_supported: LockInterfaceFlags,
    /// The device supports XT mode (SET_TDISP_CONFIG may enable it).
    pub xt_mode_supported: bool,
    /// Address bits the device can generate.
    pub dev_addr_width: u8,
    /// Outstanding requests accepted per TDI.
    pub num_req_this: u8,
    /// Outstanding requests accepted across all TDIs.
    pub num_req_all: u8,
}

impl Default for CapabilityConfig {
    /// Every lock flag, no XT mode, 52 address bits, one outstanding request.
    fn default() -> Self {
        Self {
            lock_flags_supported: LockInterfaceFlags::from_bits(LockInterfaceFlags::DEFINED_BITS),
            xt_mode_supported: false,
            dev_addr_width: 52,
            num_req_this: 1,
            num_req_all: 1,
        }
    }
}

/// The whole emulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsmConfig {
    /// The device's TDIs.
    pub functions: Vec<FunctionConfig>,
    /// What the device reports in TDISP_CAPABILITIES.
    pub capabilities: CapabilityConfig,
    /// Largest report portion the device returns per response (its buffer size).
    pub max_report_portion: u16,
    /// Current firmware version (changes with [`ConfigChange::FirmwareUpdate`]).
    pub firmware_version: u32,
    /// Most peer-to-peer streams bound at once per TDI.
    pub max_p2p_streams: usize,
    /// Answer as DMTF spdm-emu does where it differs from this device's defaults:
    /// STOP_INTERFACE in CONFIG_UNLOCKED is refused with INVALID_INTERFACE_STATE, and
    /// TDISP_CAPABILITIES advertises the request bitmap 0x7F (which leaves STOP out). A TSM must
    /// converge against both behaviours.
    pub spdm_emu_quirks: bool,
}

impl DsmConfig {
    /// A device with one [`FunctionConfig::simple`] function and default capabilities.
    pub fn single_function(requester_id: u16) -> Self {
        Self {
            functions: vec![FunctionConfig::simple(requester_id, 0xf000_0000)],
            capabilities: CapabilityConfig::default(),
            max_report_portion: 1024,
            firmware_version: 1,
            max_p2p_streams: 4,
            spdm_emu_quirks: false,
        }
    }

    /// Checks that the configuration describes a device that can exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.functions.is_empty() {
            return Err(ConfigError::NoFunctions);
        }
        if self.max_report_portion == 0 {
            return Err(ConfigError::ZeroPortion);
        }
        for (i, function) in self.functions.iter().enumerate() {
            if self.functions[..i]
                .iter()
                .any(|f| f.requester_id == function.requester_id)
            {
                return Err(ConfigError::DuplicateFunction(function.requester_id));
            }
            validate_function(function)?;
            // The report must be representable whatever the lock parameters are.
            function.build_report(LockInterfaceFlags::new(), 0, false)?;
        }
        Ok(())
    }

    /// The function with `requester_id`.
    pub fn function(&self, requester_id: u16) -> Option<&FunctionConfig> {
        self.functions
            .iter()
            .find(|f| f.requester_id == requester_id)
    }

    pub(crate) fn function_mut(&mut self, requester_id: u16) -> Option<&mut FunctionConfig> {
        self.functions
            .iter_mut()
            .find(|f| f.requester_id == requester_id)
    }
}

fn validate_function(function: &FunctionConfig) -> Result<(), ConfigError> {
    for (i, bar) in function.bars.iter().enumerate() {
        validate_bar(bar)?;
        if function.bars[..i].iter().any(|b| b.index == bar.index) {
            return Err(ConfigError::DuplicateBar(bar.index));
        }
    }
    if let Some(msix) = &function.msix {
        let mut spans = Vec::new();
        for location in [msix.table, msix.pba] {
            let bar = function
                .bar(location.bar)
                .ok_or(ConfigError::MsixOutsideBar(location.bar))?;
            let (first, count) = location.pages()?;
            let end = (first + count).checked_mul(PAGE_SIZE);
            if location.size == 0 || end.is_none_or(|end| end > bar.size) {
                return Err(ConfigError::MsixOutsideBar(location.bar));
            }
            spans.push((location.bar, first, first + count));
        }
        if let [(bar_a, a0, a1), (bar_b, b0, b1)] = spans[..]
            && bar_a == bar_b
            && a0 < b1
            && b0 < a1
        {
            return Err(ConfigError::MsixTableAndPbaShareAPage);
        }
    }
    Ok(())
}

fn validate_bar(bar: &BarConfig) -> Result<(), ConfigError> {
    if bar.index >= BAR_COUNT {
        return Err(ConfigError::InvalidBarIndex(bar.index));
    }
    if bar.size == 0
        || !bar.size.is_multiple_of(PAGE_SIZE)
        || !bar.address.is_multiple_of(PAGE_SIZE)
    {
        return Err(ConfigError::UnalignedBar(bar.index));
    }
    if bar.address.checked_add(bar.size).is_none() {
        return Err(ConfigError::AddressOverflow);
    }
    if bar.size / PAGE_SIZE > u64::from(u32::MAX) {
        return Err(ConfigError::BarTooLarge(bar.index));
    }
    Ok(())
}

/// Why a configuration (or a configuration change) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The device has no functions.
    #[error("the device has no functions")]
    NoFunctions,
    /// Two functions share a requester id.
    #[error("requester id {0:#06x} used twice")]
    DuplicateFunction(u16),
    /// No function has this requester id.
    #[error("no function with requester id {0:#06x}")]
    UnknownFunction(u16),
    /// A BAR number is used twice.
    #[error("BAR {0} configured twice")]
    DuplicateBar(u8),
    /// A BAR number is not 0..=5.
    #[error("BAR index {0} is not 0..=5")]
    InvalidBarIndex(u8),
    /// No BAR with this number.
    #[error("no BAR {0}")]
    UnknownBar(u8),
    /// A BAR's address or size is not page aligned, or its size is zero.
    #[error("BAR {0} address or size not page aligned")]
    UnalignedBar(u8),
    /// A BAR has more pages than a report can count.
    #[error("BAR {0} is too large to report")]
    BarTooLarge(u8),
    /// Address arithmetic overflowed.
    #[error("MMIO address overflows 64 bits")]
    AddressOverflow,
    /// The MSI-X table or PBA is not inside the named BAR.
    #[error("MSI-X structure outside BAR {0}")]
    MsixOutsideBar(u8),
    /// The MSI-X table and PBA overlap in one page.
    #[error("MSI-X table and PBA share a page")]
    MsixTableAndPbaShareAPage,
    /// The function has no MSI-X capability.
    #[error("the function has no MSI-X")]
    NoMsix,
    /// The report would exceed the portioned-read limit.
    #[error("interface report of {0} bytes exceeds the maximum")]
    ReportTooLarge(usize),
    /// The maximum report portion is zero.
    #[error("max_report_portion is zero")]
    ZeroPortion,
}

/// A change the host makes to the device's configuration, outside TDISP.
///
/// The PCIe specification requires a TDI in CONFIG_LOCKED or RUN to move to ERROR when its
/// security-relevant configuration changes; [`ConfigChange::is_security_relevant`] decides
/// which changes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Move a BAR to another (page aligned) address.
    MoveBar {
        /// The function.
        requester_id: u16,
        /// The BAR number.
        bar: u8,
        /// The new base address.
        new_address: u64,
    },
    /// Write the MSI-X message control register.
    SetMsixControl {
        /// The function.
        requester_id: u16,
        /// The new register value.
        message_control: u16,
    },
    /// Set or clear the memory space enable bit.
    SetMemorySpaceEnable {
        /// The function.
        requester_id: u16,
        /// The new bit value.
        enabled: bool,
    },
    /// Update the device firmware (affects every function).
    FirmwareUpdate {
        /// The new firmware version.
        new_version: u32,
    },
}

impl ConfigChange {
    /// The function the change targets, or `None` for device-wide changes.
    pub fn requester_id(&self) -> Option<u16> {
        match *self {
            Self::MoveBar { requester_id, .. }
            | Self::SetMsixControl { requester_id, .. }
            | Self::SetMemorySpaceEnable { requester_id, .. } => Some(requester_id),
            Self::FirmwareUpdate { .. } => None,
        }
    }

    /// Whether this change breaks the configuration a TDI locked with `flags`: a BAR move or
    /// memory space disable always does; an MSI-X change does when the MSI-X was locked; a
    /// firmware update does when the lock forbade updates.
    pub fn is_security_relevant(&self, flags: LockInterfaceFlags) -> bool {
        match *self {
            Self::MoveBar { .. } => true,
            Self::SetMemorySpaceEnable { enabled, .. } => !enabled,
            Self::SetMsixControl { .. } => flags.lock_msix(),
            Self::FirmwareUpdate { .. } => flags.no_fw_update(),
        }
    }

    /// Applies the change to `config`, validating the result; on error nothing changed.
    pub(crate) fn apply(&self, config: &mut DsmConfig) -> Result<(), ConfigError> {
        let mut next = config.clone();
        match *self {
            Self::MoveBar {
                requester_id,
                bar,
                new_address,
            } => {
                let function = next
                    .function_mut(requester_id)
                    .ok_or(ConfigError::UnknownFunction(requester_id))?;
                let bar = function
                    .bars
                    .iter_mut()
                    .find(|b| b.index == bar)
                    .ok_or(ConfigError::UnknownBar(bar))?;
                bar.address = new_address;
            }
            Self::SetMsixControl {
                requester_id,
                message_control,
            } => {
                let function = next
                    .function_mut(requester_id)
                    .ok_or(ConfigError::UnknownFunction(requester_id))?;
                function
                    .msix
                    .as_mut()
                    .ok_or(ConfigError::NoMsix)?
                    .message_control = message_control;
            }
            Self::SetMemorySpaceEnable {
                requester_id,
                enabled,
            } => {
                next.function_mut(requester_id)
                    .ok_or(ConfigError::UnknownFunction(requester_id))?
                    .memory_space_enabled = enabled;
            }
            Self::FirmwareUpdate { new_version } => next.firmware_version = new_version,
        }
        next.validate()?;
        *config = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_function_reports_table_pba_and_rest_of_bar() {
        let function = FunctionConfig::simple(0x10, 0x1000_0000);
        let report = function
            .build_report(
                LockInterfaceFlags::new()
                    .with_no_fw_update(true)
                    .with_lock_msix(true),
                0x100,
                false,
            )
            .unwrap();
        let ranges: Vec<_> = report
            .mmio_ranges
            .iter()
            .map(|r| (r.first_page, r.number_of_pages, r.attributes.into_bits()))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0x1000_0100, 1, 0x1),
                (0x1000_1100, 1, 0x2),
                (0x1000_2100, 14, 0x0)
            ]
        );
        assert!(report.interface_info.no_fw_update());
        assert!(report.interface_info.dma_without_pasid());
        assert_eq!(report.msi_x_message_control, 0x000f);
    }

    #[test]
    fn msix_attributes_and_control_are_reported_only_when_msix_is_locked() {
        let function = FunctionConfig::simple(0x10, 0x1000_0000);
        let report = function
            .build_report(LockInterfaceFlags::new().with_no_fw_update(true), 0, false)
            .unwrap();
        let ranges: Vec<_> = report
            .mmio_ranges
            .iter()
            .map(|r| (r.first_page, r.number_of_pages, r.attributes.into_bits()))
            .collect();
        assert_eq!(ranges, vec![(0x1000_0000, 16, 0x0)]);
        assert_eq!(report.msi_x_message_control, 0);
    }

    #[test]
    fn msix_in_the_middle_of_a_bar_splits_it_in_three() {
        let mut function = FunctionConfig::simple(1, 0x2000_0000);
        let msix = function.msix.as_mut().unwrap();
        msix.table.offset = 4 * PAGE_SIZE + 8;
        msix.pba.offset = 10 * PAGE_SIZE;
        let report = function
            .build_report(LockInterfaceFlags::new().with_lock_msix(true), 0, false)
            .unwrap();
        let pages: Vec<_> = report
            .mmio_ranges
            .iter()
            .map(|r| r.number_of_pages)
            .collect();
        assert_eq!(pages, vec![4, 1, 5, 1, 5]);
        assert_eq!(pages.iter().sum::<u32>(), 16);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let mut config = DsmConfig::single_function(1);
        config.functions[0].bars[0].address = 0x1001;
        assert_eq!(config.validate(), Err(ConfigError::UnalignedBar(0)));

        let mut config = DsmConfig::single_function(1);
        config.functions.push(config.functions[0].clone());
        assert_eq!(config.validate(), Err(ConfigError::DuplicateFunction(1)));

        let mut config = DsmConfig::single_function(1);
        config.functions[0].msix.as_mut().unwrap().pba.offset = 8;
        assert_eq!(
            config.validate(),
            Err(ConfigError::MsixTableAndPbaShareAPage)
        );

        let mut config = DsmConfig::single_function(1);
        config.functions[0].msix.as_mut().unwrap().table.bar = 3;
        assert_eq!(config.validate(), Err(ConfigError::MsixOutsideBar(3)));

        let mut config = DsmConfig::single_function(1);
        config.functions[0].device_specific_info = vec![0; MAX_REPORT_SIZE];
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ReportTooLarge(_))
        ));
    }

    #[test]
    fn msix_structure_at_the_top_of_the_address_space_is_refused() {
        let mut config = DsmConfig::single_function(1);
        config.functions[0].msix.as_mut().unwrap().pba.offset = u64::MAX - 10;
        config.functions[0].msix.as_mut().unwrap().pba.size = 5;
        assert_eq!(config.validate(), Err(ConfigError::MsixOutsideBar(0)));
    }

    #[test]
    fn failed_change_leaves_the_configuration_alone() {
        let mut config = DsmConfig::single_function(1);
        let before = config.clone();
        let change = ConfigChange::MoveBar {
            requester_id: 1,
            bar: 0,
            new_address: 0x123,
        };
        assert_eq!(change.apply(&mut config), Err(ConfigError::UnalignedBar(0)));
        assert_eq!(config, before);
    }

    #[test]
    fn security_relevance_follows_the_lock_flags() {
        let none = LockInterfaceFlags::new();
        let all = LockInterfaceFlags::from_bits(LockInterfaceFlags::DEFINED_BITS);
        let fw = ConfigChange::FirmwareUpdate { new_version: 2 };
        let msix = ConfigChange::SetMsixControl {
            requester_id: 1,
            message_control: 0,
        };
        assert!(!fw.is_security_relevant(none));
        assert!(fw.is_security_relevant(all));
        assert!(!msix.is_security_relevant(none));
        assert!(msix.is_security_relevant(all));
    }
}
