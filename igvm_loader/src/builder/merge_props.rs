//! The rule [`super::merge_stable`] must keep, as a property: after merging any platforms'
//! directive sequences, each platform's view of the file (the directives whose mask has its
//! bit) is exactly the sequence its loader issued, in order. Per-platform measurements rest on
//! this and on nothing else about the merge.

use super::merge_stable;
use igvm::IgvmDirectiveHeader;
use igvm_defs::IGVM_VHS_PARAMETER_INSERT;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use proptest::prelude::*;

/// A directive for one platform: few GPAs and data values, so equal pages (the ones the merge
/// shares) are common.
fn directive(mask: u32) -> impl Strategy<Value = IgvmDirectiveHeader> {
    prop_oneof![
        4 => (0u64..6, any::<bool>(), 0u8..3, 0u8..3).prop_map(
            move |(page, unmeasured, data_type, data)| IgvmDirectiveHeader::PageData {
                gpa: page * 0x1000,
                compatibility_mask: mask,
                flags: IgvmPageDataFlags::new().with_unmeasured(unmeasured),
                data_type: match data_type {
                    0 => IgvmPageDataType::NORMAL,
                    1 => IgvmPageDataType::SECRETS,
                    _ => IgvmPageDataType::CPUID_DATA,
                },
                data: match data {
                    0 => vec![],
                    n => vec![n; 16],
                },
            }
        ),
        1 => (0u64..6, 0u32..3).prop_map(move |(page, index)| {
            IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa: page * 0x1000,
                compatibility_mask: mask,
                parameter_area_index: index,
            })
        }),
    ]
}

fn platforms() -> impl Strategy<Value = Vec<Vec<IgvmDirectiveHeader>>> {
    (1usize..5).prop_flat_map(|n| {
        (0..n)
            .map(|bit| proptest::collection::vec(directive(1 << bit), 0..16))
            .collect::<Vec<_>>()
    })
}

/// The directives platform `bit` sees, with its own mask only.
fn view(file: &[IgvmDirectiveHeader], bit: u32) -> Vec<IgvmDirectiveHeader> {
    file.iter()
        .filter(|d| d.compatibility_mask().is_some_and(|m| m & (1 << bit) != 0))
        .cloned()
        .map(|mut d| {
            match &mut d {
                IgvmDirectiveHeader::PageData {
                    compatibility_mask, ..
                } => *compatibility_mask = 1 << bit,
                IgvmDirectiveHeader::ParameterInsert(p) => p.compatibility_mask = 1 << bit,
                _ => {}
            }
            d
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_platform_sees_exactly_its_own_sequence(platforms in platforms()) {
        let merged = platforms
            .iter()
            .fold(Vec::new(), |file, own| merge_stable(file, own.clone()));
        for (bit, own) in (0u32..).zip(&platforms) {
            prop_assert_eq!(&view(&merged, bit), own, "platform {}", bit);
        }
        // Only pages are shared, and the file never holds more than all inputs together.
        let total: usize = platforms.iter().map(Vec::len).sum();
        prop_assert!(merged.len() <= total);
        for d in &merged {
            if let IgvmDirectiveHeader::ParameterInsert(p) = d {
                prop_assert!(p.compatibility_mask.is_power_of_two());
            }
        }
    }

    #[test]
    fn identical_platforms_share_every_page(own in proptest::collection::vec(directive(1), 0..16)) {
        let twin: Vec<_> = own
            .iter()
            .cloned()
            .map(|mut d| {
                if let IgvmDirectiveHeader::PageData { compatibility_mask, .. }
                | IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                    compatibility_mask,
                    ..
                }) = &mut d
                {
                    *compatibility_mask = 2;
                }
                d
            })
            .collect();
        let merged = merge_stable(merge_stable(Vec::new(), own.clone()), twin);
        let pages = own
            .iter()
            .filter(|d| matches!(d, IgvmDirectiveHeader::PageData { .. }))
            .count();
        prop_assert_eq!(merged.len(), own.len() * 2 - pages);
    }
}
