//! What the guest expects of a device interface before it lets the device run.
//!
//! [`InterfacePolicy::check`] is the one place that decides. It runs every check in a fixed
//! order and answers with the first [`PolicyViolation`], whose [`PolicyViolation::check`]
//! names the [`PolicyCheck`] that failed:
//!
//! 1. the firmware lock: if the guest locked with NO_FW_UPDATE (or requires it), the report
//!    says so;
//! 2. the shape of each MMIO range: page aligned, not empty, not wrapping the address space;
//! 3. no two ranges overlap;
//! 4. each range's range_id names a BAR the guest was given and the range lies inside it;
//! 5. MSI-X: table/PBA attributes and the message control word appear only when the guest
//!    locked with LOCK_MSIX, and a range is never both table and PBA;
//! 6. non-TEE ranges appear only where the guest expects them;
//! 7. the ranges and device-specific information equal what the guest expects, when it says.
//!
//! Whether the report bytes are the device's own is a separate decision, the binding's
//! ([`crate::binding`]), made by the acceptance flow after these checks.

use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::report::DeviceInterfaceReport;
use tdisp_proto::pcie::report::MmioRange;
use thiserror::Error;

/// Size of the pages TDISP MMIO ranges count in.
pub const PAGE_SIZE: u64 = 4096;

/// One memory BAR the guest was given, with the address the device reports it at (the
/// MMIO reporting offset of the lock already added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedBar {
    /// BAR number; the report's range_id for ranges inside it.
    pub index: u16,
    /// Base address as reported.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// The guest expects (some of) this BAR to be non-TEE memory, shared with the host.
    pub non_tee_expected: bool,
}

/// The guest's expectations of a locked interface, checked against its interface report.
///
/// The default checks only what needs no knowledge of the assignment (range shape, overlap,
/// no non-TEE memory); a guest that knows its BARs and lock flags sets them and gets every
/// check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfacePolicy {
    /// Require the device to refuse firmware updates while locked.
    pub require_no_fw_update: bool,
    /// The BARs the guest was given. When set, every range must name one of them and lie
    /// inside it, and non-TEE ranges may appear only in BARs that expect them.
    pub assigned_bars: Option<Vec<AssignedBar>>,
    /// The LOCK_INTERFACE flags the guest asked for. When set, MSI-X attributes and the
    /// message control word must agree with LOCK_MSIX, and NO_FW_UPDATE must be reported.
    pub lock_flags: Option<LockInterfaceFlags>,
    /// The MMIO ranges the guest assigned, in the order the device reports them (by BAR). An
    /// empty list accepts any set of ranges that passes the other checks.
    pub expected_ranges: Vec<MmioRange>,
    /// Accept non-TEE ranges anywhere; only consulted when `assigned_bars` is not set.
    pub allow_non_tee_ranges: bool,
    /// If set, the device-specific information must equal these bytes.
    pub expected_device_specific_info: Option<Vec<u8>>,
    /// Whether the report must be bound to the SPDM session by device-signed evidence, and
    /// the roots the device's chain may lead to (checked by [`crate::verify_binding`] in the
    /// acceptance flow, after the checks here). By default the binding is required when the
    /// host advertises session evidence, and no root is trusted, so such a host's devices are
    /// refused until the guest configures its roots.
    pub binding: crate::binding::BindingPolicy,
}

/// The checks of [`InterfacePolicy::check`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyCheck {
    /// Firmware updates are locked out when the guest asked for it.
    FirmwareLock,
    /// Each range is page aligned, non-empty and inside the address space.
    RangeShape,
    /// No two ranges overlap.
    Overlap,
    /// Each range names an assigned BAR and lies inside it.
    BarMembership,
    /// MSI-X attributes and control agree with the lock flags.
    Msix,
    /// Non-TEE ranges only where expected.
    NonTee,
    /// The ranges equal the expected ones.
    ExpectedRanges,
    /// The device-specific information equals the expected bytes.
    DeviceSpecificInfo,
}

/// Why a report does not satisfy the policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyViolation {
    /// Firmware updates stay possible while locked.
    #[error("device does not lock out firmware updates")]
    FirmwareUpdatesAllowed,
    /// A range does not start on a page boundary.
    #[error("MMIO range {index} starts at {first_page:#x}, not page aligned")]
    Unaligned {
        /// Position in the report.
        index: usize,
        /// The reported start.
        first_page: u64,
    },
    /// A range is empty or runs past the end of the address space.
    #[error("MMIO range {index} is empty or wraps the address space")]
    BadRange {
        /// Position in the report.
        index: usize,
    },
    /// Two ranges overlap.
    #[error("MMIO ranges {first} and {second} overlap")]
    Overlap {
        /// Position of one range.
        first: usize,
        /// Position of the other.
        second: usize,
    },
    /// A range names a BAR the guest was not given.
    #[error("MMIO range {index} names BAR {range_id}, which the guest was not given")]
    UnknownBar {
        /// Position in the report.
        index: usize,
        /// The range id reported.
        range_id: u16,
    },
    /// A range reaches outside the BAR it names.
    #[error("MMIO range {index} lies outside BAR {range_id}")]
    OutsideBar {
        /// Position in the report.
        index: usize,
        /// The BAR it names.
        range_id: u16,
    },
    /// A range carries an MSI-X attribute the lock flags do not allow.
    #[error("MMIO range {index} has MSI-X attributes the lock flags do not allow")]
    MsixAttributes {
        /// Position in the report.
        index: usize,
    },
    /// The MSI-X message control word is reported without LOCK_MSIX.
    #[error("MSI-X message control {0:#06x} reported without LOCK_MSIX")]
    MsixControlWithoutLock(u16),
    /// A range is non-TEE memory where the guest does not expect any.
    #[error("MMIO range {index} is non-TEE memory where none is expected")]
    NonTeeRange {
        /// Position in the report.
        index: usize,
    },
    /// The report lists a different number of ranges.
    #[error("report has {got} MMIO ranges, expected {expected}")]
    RangeCount {
        /// Ranges the guest assigned.
        expected: usize,
        /// Ranges reported.
        got: usize,
    },
    /// A range differs from the one the guest assigned.
    #[error("MMIO range {index} is {got:?}, expected {expected:?}")]
    RangeMismatch {
        /// Position in the report.
        index: usize,
        /// The guest's range.
        expected: MmioRange,
        /// The reported range.
        got: MmioRange,
    },
    /// The device-specific information differs.
    #[error("device-specific information differs from the expected bytes")]
    DeviceSpecificInfo,
}

impl PolicyViolation {
    /// The check that failed.
    pub fn check(&self) -> PolicyCheck {
        match self {
            Self::FirmwareUpdatesAllowed => PolicyCheck::FirmwareLock,
            Self::Unaligned { .. } | Self::BadRange { .. } => PolicyCheck::RangeShape,
            Self::Overlap { .. } => PolicyCheck::Overlap,
            Self::UnknownBar { .. } | Self::OutsideBar { .. } => PolicyCheck::BarMembership,
            Self::MsixAttributes { .. } | Self::MsixControlWithoutLock(_) => PolicyCheck::Msix,
            Self::NonTeeRange { .. } => PolicyCheck::NonTee,
            Self::RangeCount { .. } | Self::RangeMismatch { .. } => PolicyCheck::ExpectedRanges,
            Self::DeviceSpecificInfo => PolicyCheck::DeviceSpecificInfo,
        }
    }
}

impl InterfacePolicy {
    /// Checks `report` against the policy; the first violation found is returned.
    pub fn check(&self, report: &DeviceInterfaceReport) -> Result<(), PolicyViolation> {
        let fw_lock_asked =
            self.require_no_fw_update || self.lock_flags.is_some_and(|f| f.no_fw_update());
        if fw_lock_asked && !report.interface_info.no_fw_update() {
            return Err(PolicyViolation::FirmwareUpdatesAllowed);
        }
        let spans = report
            .mmio_ranges
            .iter()
            .enumerate()
            .map(|(index, range)| span(index, range))
            .collect::<Result<Vec<_>, _>>()?;
        check_overlap(&spans)?;
        if let Some(bars) = &self.assigned_bars {
            check_bars(bars, &report.mmio_ranges, &spans)?;
        }
        if let Some(flags) = self.lock_flags {
            check_msix(flags, report)?;
        }
        self.check_non_tee(report)?;
        self.check_expected(report)
    }

    fn check_non_tee(&self, report: &DeviceInterfaceReport) -> Result<(), PolicyViolation> {
        for (index, range) in report.mmio_ranges.iter().enumerate() {
            if !range.attributes.non_tee_memory() {
                continue;
            }
            let expected = match &self.assigned_bars {
                Some(bars) => bars
                    .iter()
                    .any(|b| b.index == range.range_id && b.non_tee_expected),
                None => self.allow_non_tee_ranges,
            };
            if !expected {
                return Err(PolicyViolation::NonTeeRange { index });
            }
        }
        Ok(())
    }

    fn check_expected(&self, report: &DeviceInterfaceReport) -> Result<(), PolicyViolation> {
        if !self.expected_ranges.is_empty() {
            if self.expected_ranges.len() != report.mmio_ranges.len() {
                return Err(PolicyViolation::RangeCount {
                    expected: self.expected_ranges.len(),
                    got: report.mmio_ranges.len(),
                });
            }
            for (index, (expected, got)) in self
                .expected_ranges
                .iter()
                .zip(&report.mmio_ranges)
                .enumerate()
            {
                if expected != got {
                    return Err(PolicyViolation::RangeMismatch {
                        index,
                        expected: *expected,
                        got: *got,
                    });
                }
            }
        }
        if let Some(info) = &self.expected_device_specific_info
            && *info != report.device_specific_info
        {
            return Err(PolicyViolation::DeviceSpecificInfo);
        }
        Ok(())
    }
}

/// The byte span `[start, end)` of a page-aligned, non-empty range inside the address space.
fn span(index: usize, range: &MmioRange) -> Result<(u64, u64), PolicyViolation> {
    if !range.first_page.is_multiple_of(PAGE_SIZE) {
        return Err(PolicyViolation::Unaligned {
            index,
            first_page: range.first_page,
        });
    }
    let len = u64::from(range.number_of_pages) * PAGE_SIZE;
    match range.first_page.checked_add(len) {
        Some(end) if len != 0 => Ok((range.first_page, end)),
        _ => Err(PolicyViolation::BadRange { index }),
    }
}

fn check_overlap(spans: &[(u64, u64)]) -> Result<(), PolicyViolation> {
    // Sorted by start, only neighbours can overlap: n log n for a report of any size.
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_unstable_by_key(|&i| spans.get(i).map(|s| s.0));
    for pair in order.windows(2) {
        if let [a, b] = *pair
            && let (Some(sa), Some(sb)) = (spans.get(a), spans.get(b))
            && sb.0 < sa.1
        {
            return Err(PolicyViolation::Overlap {
                first: a.min(b),
                second: a.max(b),
            });
        }
    }
    Ok(())
}

fn check_bars(
    bars: &[AssignedBar],
    ranges: &[MmioRange],
    spans: &[(u64, u64)],
) -> Result<(), PolicyViolation> {
    for (index, (range, &(start, end))) in ranges.iter().zip(spans).enumerate() {
        let range_id = range.range_id;
        let bar = bars
            .iter()
            .find(|b| b.index == range_id)
            .ok_or(PolicyViolation::UnknownBar { index, range_id })?;
        let inside = bar
            .address
            .checked_add(bar.size)
            .is_some_and(|bar_end| start >= bar.address && end <= bar_end);
        if !inside {
            return Err(PolicyViolation::OutsideBar { index, range_id });
        }
    }
    Ok(())
}

fn check_msix(
    flags: LockInterfaceFlags,
    report: &DeviceInterfaceReport,
) -> Result<(), PolicyViolation> {
    for (index, range) in report.mmio_ranges.iter().enumerate() {
        let table = range.attributes.msix_table();
        let pba = range.attributes.msix_pba();
        if ((table || pba) && !flags.lock_msix()) || (table && pba) {
            return Err(PolicyViolation::MsixAttributes { index });
        }
    }
    if !flags.lock_msix() && report.msi_x_message_control != 0 {
        return Err(PolicyViolation::MsixControlWithoutLock(
            report.msi_x_message_control,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdisp_proto::pcie::report::MmioRangeAttributes;

    fn range(first_page: u64, pages: u32) -> MmioRange {
        MmioRange {
            first_page,
            number_of_pages: pages,
            attributes: MmioRangeAttributes::new(),
            range_id: 0,
        }
    }

    fn report_with(ranges: Vec<MmioRange>) -> DeviceInterfaceReport {
        DeviceInterfaceReport {
            mmio_ranges: ranges,
            ..Default::default()
        }
    }

    fn bar0() -> AssignedBar {
        AssignedBar {
            index: 0,
            address: 0x1000,
            size: 0x4000,
            non_tee_expected: false,
        }
    }

    #[test]
    fn permissive_policy_accepts_disjoint_ranges() {
        let report = report_with(vec![range(0x1000, 1), range(0x2000, 2)]);
        assert_eq!(InterfacePolicy::default().check(&report), Ok(()));
    }

    #[test]
    fn overlapping_ranges_are_refused_even_without_expectations() {
        let report = report_with(vec![range(0x3000, 1), range(0x8000, 1), range(0x2000, 2)]);
        let err = InterfacePolicy::default().check(&report).unwrap_err();
        assert_eq!(
            err,
            PolicyViolation::Overlap {
                first: 0,
                second: 2
            }
        );
        assert_eq!(err.check(), PolicyCheck::Overlap);
    }

    #[test]
    fn unaligned_empty_or_wrapping_ranges_are_refused() {
        let unaligned = report_with(vec![range(0x1010, 1)]);
        assert_eq!(
            InterfacePolicy::default().check(&unaligned),
            Err(PolicyViolation::Unaligned {
                index: 0,
                first_page: 0x1010
            })
        );
        let empty = report_with(vec![range(0x1000, 0)]);
        assert_eq!(
            InterfacePolicy::default().check(&empty),
            Err(PolicyViolation::BadRange { index: 0 })
        );
        let wrapping = report_with(vec![range(0x1000, 1), range(u64::MAX - 0xfff, 2)]);
        assert_eq!(
            InterfacePolicy::default().check(&wrapping),
            Err(PolicyViolation::BadRange { index: 1 })
        );
    }

    #[test]
    fn ranges_must_name_an_assigned_bar_and_stay_inside_it() {
        let policy = InterfacePolicy {
            assigned_bars: Some(vec![bar0()]),
            ..Default::default()
        };
        assert_eq!(policy.check(&report_with(vec![range(0x1000, 4)])), Ok(()));
        let mut other_bar = range(0x1000, 1);
        other_bar.range_id = 2;
        assert_eq!(
            policy.check(&report_with(vec![other_bar])),
            Err(PolicyViolation::UnknownBar {
                index: 0,
                range_id: 2
            })
        );
        for outside in [range(0x0000, 1), range(0x4000, 2), range(0x5000, 1)] {
            let err = policy.check(&report_with(vec![outside])).unwrap_err();
            assert_eq!(err.check(), PolicyCheck::BarMembership, "{outside:?}");
        }
    }

    #[test]
    fn msix_must_agree_with_the_lock_flags() {
        let mut table = range(0x1000, 1);
        table.attributes = MmioRangeAttributes::new().with_msix_table(true);
        let report = report_with(vec![table]);
        let unlocked = InterfacePolicy {
            lock_flags: Some(LockInterfaceFlags::new()),
            ..Default::default()
        };
        assert_eq!(
            unlocked.check(&report),
            Err(PolicyViolation::MsixAttributes { index: 0 })
        );
        let locked = InterfacePolicy {
            lock_flags: Some(LockInterfaceFlags::new().with_lock_msix(true)),
            ..Default::default()
        };
        assert_eq!(locked.check(&report), Ok(()));
        let mut both = table;
        both.attributes = both.attributes.with_msix_pba(true);
        assert_eq!(
            locked.check(&report_with(vec![both])),
            Err(PolicyViolation::MsixAttributes { index: 0 })
        );
        let control = DeviceInterfaceReport {
            msi_x_message_control: 0x8001,
            ..report_with(vec![range(0x1000, 1)])
        };
        assert_eq!(
            unlocked.check(&control),
            Err(PolicyViolation::MsixControlWithoutLock(0x8001))
        );
    }

    #[test]
    fn no_fw_update_in_the_lock_flags_must_be_reported() {
        let policy = InterfacePolicy {
            lock_flags: Some(LockInterfaceFlags::new().with_no_fw_update(true)),
            ..Default::default()
        };
        assert_eq!(
            policy.check(&report_with(vec![])),
            Err(PolicyViolation::FirmwareUpdatesAllowed)
        );
    }

    #[test]
    fn non_tee_ranges_only_where_expected() {
        let mut shared = range(0x1000, 1);
        shared.attributes = MmioRangeAttributes::new().with_non_tee_memory(true);
        let report = report_with(vec![shared]);
        assert_eq!(
            InterfacePolicy::default().check(&report),
            Err(PolicyViolation::NonTeeRange { index: 0 })
        );
        let permissive = InterfacePolicy {
            allow_non_tee_ranges: true,
            ..Default::default()
        };
        assert_eq!(permissive.check(&report), Ok(()));
        // With the BARs known, the BAR decides, not the blanket flag.
        let bars = InterfacePolicy {
            assigned_bars: Some(vec![bar0()]),
            allow_non_tee_ranges: true,
            ..Default::default()
        };
        assert_eq!(
            bars.check(&report),
            Err(PolicyViolation::NonTeeRange { index: 0 })
        );
        let expecting = InterfacePolicy {
            assigned_bars: Some(vec![AssignedBar {
                non_tee_expected: true,
                ..bar0()
            }]),
            ..Default::default()
        };
        assert_eq!(expecting.check(&report), Ok(()));
    }

    #[test]
    fn range_count_must_match_expectations() {
        let policy = InterfacePolicy {
            expected_ranges: vec![range(0x1000, 1)],
            ..Default::default()
        };
        assert_eq!(
            policy.check(&report_with(vec![])),
            Err(PolicyViolation::RangeCount {
                expected: 1,
                got: 0
            })
        );
    }
}
