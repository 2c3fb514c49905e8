//! Property tests of the builder: random call sequences are accepted exactly when a simple
//! model says so, never panic, and always produce files that parse back and measure the same
//! as the `igvm` crate.

#![forbid(unsafe_code)]

use igvm::IgvmFile;
use igvm::IgvmSerializer;
use igvm_defs::IgvmPlatformType;
use igvm_loader::Error;
use igvm_loader::arch::X86Register;
use igvm_loader::builder::IgvmBuilder;
use igvm_loader::builder::PlatformConfig;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::IgvmParameterType;
use igvm_loader::importer::ImageLoad;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::importer::ParameterAreaIndex;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::Vmm;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Op {
    Import {
        base: u64,
        count: u64,
        acceptance: u8,
        data_len: usize,
    },
    Area {
        base: u64,
        count: u32,
    },
    Parameter {
        area: u32,
        offset: u32,
    },
    VpContextPage(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..64, 1u64..6, 0u8..5, 0usize..9000).prop_map(|(base, count, acceptance, data_len)| {
            Op::Import { base, count, acceptance, data_len }
        }),
        1 => (0u64..64, 1u32..3).prop_map(|(base, count)| Op::Area { base, count }),
        1 => (0u32..4, 0u32..10000).prop_map(|(area, offset)| Op::Parameter { area, offset }),
        1 => (0u64..64).prop_map(Op::VpContextPage),
    ]
}

fn acceptance(code: u8, isolation: IsolationType) -> BootPageAcceptance {
    match (code, isolation) {
        (0, _) => BootPageAcceptance::Exclusive,
        (1, _) => BootPageAcceptance::ExclusiveUnmeasured,
        (2, _) => BootPageAcceptance::Shared,
        (3, IsolationType::Snp) => BootPageAcceptance::CpuidPage,
        _ => BootPageAcceptance::Exclusive,
    }
}

/// Runs `ops` on a fresh image and on a model; checks every verdict against the model.
fn run(isolation: IsolationType, ops: &[Op], image: &mut dyn ImageLoad<X86Register>) {
    let mut used = BTreeSet::new();
    let mut areas: Vec<u64> = Vec::new();
    let mut vp_page = false;
    let free = |used: &mut BTreeSet<u64>, base: u64, count: u64| {
        let ok = (base..base + count).all(|p| !used.contains(&p));
        if ok {
            used.extend(base..base + count);
        }
        ok
    };
    for op in ops {
        match op {
            Op::Import {
                base,
                count,
                acceptance: a,
                data_len,
            } => {
                let data = vec![0x5a; (*data_len).min(*count as usize * 4096 + 1)];
                let fits = data.len() as u64 <= count * 4096;
                let result =
                    image.import_pages(*base, *count, "p", acceptance(*a, isolation), &data);
                if !fits {
                    assert!(
                        matches!(result, Err(Error::DataTooLarge { .. })),
                        "{result:?}"
                    );
                    continue;
                }
                assert_eq!(result.is_ok(), free(&mut used, *base, *count), "{op:?}");
            }
            Op::Area { base, count } => {
                let result = image.create_parameter_area(*base, *count, "a");
                let ok = free(&mut used, *base, u64::from(*count));
                assert_eq!(result.is_ok(), ok, "{op:?}");
                if let Ok(index) = result {
                    assert_eq!(index, ParameterAreaIndex(areas.len() as u32));
                    areas.push(u64::from(*count) * 4096);
                }
            }
            Op::Parameter { area, offset } => {
                let result = image.import_parameter(
                    ParameterAreaIndex(*area),
                    *offset,
                    IgvmParameterType::Madt,
                );
                let ok = areas
                    .get(*area as usize)
                    .is_some_and(|size| u64::from(*offset) < *size);
                assert_eq!(result.is_ok(), ok, "{op:?}: {result:?}");
            }
            Op::VpContextPage(page) => {
                let result = image.set_vp_context_page(*page);
                let ok = isolation == IsolationType::Snp && !vp_page && free(&mut used, *page, 1);
                assert_eq!(result.is_ok(), ok, "{op:?}: {result:?}");
                vp_page |= ok;
            }
        }
    }
}

fn isolation() -> impl Strategy<Value = IsolationType> {
    prop_oneof![
        Just(IsolationType::Snp),
        Just(IsolationType::Tdx),
        Just(IsolationType::Vbs)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn builder_verdicts_follow_the_model_and_files_measure_like_the_igvm_crate(
        isolation in isolation(),
        ops in proptest::collection::vec(op(), 0..24),
    ) {
        let mut b = IgvmBuilder::<X86Register>::new();
        run(isolation, &ops, b.add_platform(PlatformConfig::new(IsolationConfig::new(isolation))).unwrap());
        let bytes = b.build_bytes().unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
        let ours = igvm_loader::measure::measure(
            &file,
            isolation,
            // The igvm crate measures as Hyper-V launches.
            &MeasureOptions::for_vmm(Vmm::Hyperv),
        )
        .unwrap();
        let platform = match isolation {
            IsolationType::Snp => IgvmPlatformType::SEV_SNP,
            IsolationType::Tdx => IgvmPlatformType::TDX,
            _ => IgvmPlatformType::VSM_ISOLATION,
        };
        let theirs = IgvmSerializer::new(&file).unwrap();
        prop_assert_eq!(ours.digest_bytes(), theirs.measurement_for(platform).unwrap().digest.clone());
    }

    #[test]
    fn merged_files_measure_each_platform_as_if_alone(
        ops_a in proptest::collection::vec(op(), 0..12),
        ops_b in proptest::collection::vec(op(), 0..12),
    ) {
        let opts = MeasureOptions::default();
        let mut merged = IgvmBuilder::<X86Register>::new();
        let mut alone = Vec::new();
        for (t, ops) in [(IsolationType::Snp, &ops_a), (IsolationType::Tdx, &ops_b)] {
            let config = PlatformConfig::new(IsolationConfig::new(t));
            run(t, ops, merged.add_platform(config).unwrap());
            let mut single = IgvmBuilder::<X86Register>::new();
            run(t, ops, single.add_platform(config).unwrap());
            alone.push((t, single.build().unwrap()));
        }
        let merged = merged.build().unwrap();
        for (t, file) in alone {
            prop_assert_eq!(
                igvm_loader::measure::measure(&merged, t, &opts).unwrap().digest,
                igvm_loader::measure::measure(&file, t, &opts).unwrap().digest
            );
        }
    }
}
