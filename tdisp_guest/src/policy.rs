//! What the guest expects of a device interface before it lets the device run.

use tdisp_proto::pcie::report::DeviceInterfaceReport;
use tdisp_proto::pcie::report::MmioRange;
use thiserror::Error;

/// Size of the pages TDISP MMIO ranges count in.
const PAGE_SIZE: u64 = 4096;

/// The guest's expectations of a locked interface, checked against its interface report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfacePolicy {
    /// Require the device to refuse firmware updates while locked.
    pub require_no_fw_update: bool,
    /// The MMIO ranges the guest assigned, in the order the device reports them (by BAR). An
    /// empty list accepts any well-formed set of ranges.
    pub expected_ranges: Vec<MmioRange>,
    /// Accept ranges marked as non-TEE memory (shared with the host).
    pub allow_non_tee_ranges: bool,
    /// If set, the device-specific information must equal these bytes.
    pub expected_device_specific_info: Option<Vec<u8>>,
}

/// Why a report does not satisfy the policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyViolation {
    /// Firmware updates stay possible while locked.
    #[error("device does not lock out firmware updates")]
    FirmwareUpdatesAllowed,
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
    /// A range is non-TEE memory and the policy does not allow that.
    #[error("MMIO range {index} is non-TEE memory")]
    NonTeeRange {
        /// Position in the report.
        index: usize,
    },
    /// The device-specific information differs.
    #[error("device-specific information differs from the expected bytes")]
    DeviceSpecificInfo,
}

impl InterfacePolicy {
    /// Checks `report` against the policy; the first violation found is returned.
    pub fn check(&self, report: &DeviceInterfaceReport) -> Result<(), PolicyViolation> {
        if self.require_no_fw_update && !report.interface_info.no_fw_update() {
            return Err(PolicyViolation::FirmwareUpdatesAllowed);
        }
        let spans = report
            .mmio_ranges
            .iter()
            .enumerate()
            .map(|(index, range)| span(range).ok_or(PolicyViolation::BadRange { index }))
            .collect::<Result<Vec<_>, _>>()?;
        for (first, a) in spans.iter().enumerate() {
            for (offset, b) in spans.iter().skip(first + 1).enumerate() {
                if a.0 < b.1 && b.0 < a.1 {
                    return Err(PolicyViolation::Overlap {
                        first,
                        second: first + 1 + offset,
                    });
                }
            }
        }
        if !self.allow_non_tee_ranges
            && let Some(index) = report
                .mmio_ranges
                .iter()
                .position(|r| r.attributes.non_tee_memory())
        {
            return Err(PolicyViolation::NonTeeRange { index });
        }
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

/// The byte span `[start, end)` of a range, if it is non-empty and fits the address space.
fn span(range: &MmioRange) -> Option<(u64, u64)> {
    let len = u64::from(range.number_of_pages).checked_mul(PAGE_SIZE)?;
    let end = range.first_page.checked_add(len)?;
    (len != 0).then_some((range.first_page, end))
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

    #[test]
    fn permissive_policy_accepts_disjoint_ranges() {
        let report = report_with(vec![range(0x1000, 1), range(0x2000, 2)]);
        assert_eq!(InterfacePolicy::default().check(&report), Ok(()));
    }

    #[test]
    fn overlapping_ranges_are_refused_even_without_expectations() {
        let report = report_with(vec![range(0x1000, 2), range(0x2000, 1)]);
        assert_eq!(
            InterfacePolicy::default().check(&report),
            Err(PolicyViolation::Overlap {
                first: 0,
                second: 1
            })
        );
    }

    #[test]
    fn empty_or_wrapping_ranges_are_refused() {
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
    fn non_tee_range_needs_explicit_permission() {
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
