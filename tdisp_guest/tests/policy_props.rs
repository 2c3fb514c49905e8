//! Property tests of the guest's report verification: any report, however hostile, is judged
//! without panicking, and whatever the strict policy accepts really satisfies every check.

#![forbid(unsafe_code)]

use proptest::prelude::*;
use tdisp_guest::AssignedBar;
use tdisp_guest::InterfacePolicy;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::report::DeviceInterfaceReport;
use tdisp_proto::pcie::report::MmioRange;
use tdisp_proto::pcie::report::MmioRangeAttributes;

const PAGE: u64 = 4096;

fn bars() -> Vec<AssignedBar> {
    vec![
        AssignedBar {
            index: 0,
            address: 0x10_0000,
            size: 16 * PAGE,
            non_tee_expected: false,
        },
        AssignedBar {
            index: 2,
            address: 0x20_0000,
            size: 4 * PAGE,
            non_tee_expected: true,
        },
    ]
}

/// A range inside one of the BARs, usually plausible: a page run at a page offset, with few
/// attribute bits.
fn plausible_range() -> impl Strategy<Value = MmioRange> {
    (
        0usize..2,
        0u64..16,
        1u32..4,
        prop_oneof![4 => Just(0u16), 1 => 0u16..16],
    )
        .prop_map(|(which, page, pages, attributes)| {
            let bar = bars()[which];
            MmioRange {
                first_page: bar.address + page * PAGE,
                number_of_pages: pages,
                attributes: MmioRangeAttributes::from_bits(attributes),
                range_id: bar.index,
            }
        })
}

fn hostile_range() -> impl Strategy<Value = MmioRange> {
    (any::<u64>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
        |(first_page, number_of_pages, attributes, range_id)| MmioRange {
            first_page,
            number_of_pages,
            attributes: MmioRangeAttributes::from_bits(attributes),
            range_id,
        },
    )
}

fn range() -> impl Strategy<Value = MmioRange> {
    prop_oneof![8 => plausible_range(), 1 => hostile_range()]
}

fn report() -> impl Strategy<Value = DeviceInterfaceReport> {
    (
        proptest::collection::vec(range(), 0..4),
        prop_oneof![Just(0u16), any::<u16>()],
        any::<bool>(),
    )
        .prop_map(|(mmio_ranges, control, no_fw)| {
            let mut report = DeviceInterfaceReport {
                mmio_ranges,
                msi_x_message_control: control,
                ..Default::default()
            };
            report.interface_info.set_no_fw_update(no_fw);
            report
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn accepted_reports_satisfy_every_check(report in report(), lock_msix in any::<bool>()) {
        let policy = InterfacePolicy {
            assigned_bars: Some(bars()),
            lock_flags: Some(LockInterfaceFlags::new().with_lock_msix(lock_msix)),
            ..Default::default()
        };
        let verdict = policy.check(&report);
        // The permissive default never panics either.
        let _ = InterfacePolicy::default().check(&report);
        if verdict.is_err() {
            return Ok(());
        }
        let mut spans = Vec::new();
        for r in &report.mmio_ranges {
            prop_assert_eq!(r.first_page % PAGE, 0);
            let bar = bars().into_iter().find(|b| b.index == r.range_id);
            prop_assert!(bar.is_some());
            let bar = bar.unwrap_or(bars()[0]);
            let end = r.first_page + u64::from(r.number_of_pages) * PAGE;
            prop_assert!(r.number_of_pages > 0);
            prop_assert!(r.first_page >= bar.address && end <= bar.address + bar.size);
            let msix = r.attributes.msix_table() || r.attributes.msix_pba();
            prop_assert!(!msix || lock_msix);
            prop_assert!(!r.attributes.non_tee_memory() || bar.non_tee_expected);
            spans.push((r.first_page, end));
        }
        prop_assert!(lock_msix || report.msi_x_message_control == 0);
        for (i, a) in spans.iter().enumerate() {
            for b in spans.iter().skip(i + 1) {
                prop_assert!(a.1 <= b.0 || b.1 <= a.0, "overlap accepted");
            }
        }
    }
}
