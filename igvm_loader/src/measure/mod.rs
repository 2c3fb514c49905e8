//! Launch measurements of IGVM files, computed by this crate: SEV-SNP launch digest, TDX
//! MRTD and VBS boot digest.
//!
//! [`measure`] walks the file's directives once for one platform (one walk, shared by
//! every platform), maps the walk to that platform's records ([`snp::SnpPage`],
//! [`tdx::TdxPage`], [`vbs::VbsRecord`], which borrow the page data from the file and keep
//! data-less ranges as one record) and hashes them. [`measure_all`] measures every platform
//! of a file at once, overlapping TDX's single-stream hash with SNP's parallel page hashing.
//!
//! SNP digests depend on how the VMM launches the file, which the file does not say:
//! [`Vmm`] names the two conventions in use, [`MeasureOptions::for_vmm`] selects one.

pub mod snp;
pub mod tdx;
pub mod vbs;
mod walk;

use crate::error::Error;
use crate::error::Result;
use crate::importer::IsolationType;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;
use serde::Deserialize;
use serde::Serialize;
use std::str::FromStr;
use walk::Run;
use walk::Source;
use walk::Step;
use walk::Walk;

const PAGE: usize = 4096;
const PAGE_U64: u64 = 4096;
static PAGE_ZEROS: [u8; PAGE] = [0; PAGE];

/// Receives progress while a digest is chained (in pages or records).
pub trait Progress: Sync {
    /// `n` more pages were chained.
    fn advance(&self, n: u64);
}

impl Progress for () {
    fn advance(&self, _n: u64) {}
}

/// How SNP measures a measured page that carries no data in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroPages {
    /// As a NORMAL page full of zeros (CONTENTS = SHA-384 of the zero page). QEMU's IGVM
    /// loader does this (it fills the page with zeros and issues a NORMAL launch update),
    /// and so do Hyper-V and the `igvm` crate.
    Normal,
    /// As a PAGE_TYPE_ZERO page (the firmware zeroes it, CONTENTS = 0): what
    /// `sev-snp-measure` models for OVMF's zero sections, and COCONUT-SVSM's
    /// `igvmmeasure --native-zero`.
    Zero,
}

impl FromStr for ZeroPages {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "normal" => Ok(ZeroPages::Normal),
            "zero" => Ok(ZeroPages::Zero),
            other => Err(format!(
                "unknown zero-page convention {other:?} (normal|zero)"
            )),
        }
    }
}

/// Where and when SNP measures a VMSA page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmsaGpa {
    /// At the GPA in the file's VP context directive, in file order (Hyper-V, the `igvm`
    /// crate).
    File,
    /// At KVM's fixed VMSA GPA [`KVM_VMSA_GPA`], after every page: KVM measures VMSAs when
    /// the launch is finished, not when QEMU reads them from the file. The file's VMSAs are
    /// measured in VP-index order (KVM goes vCPU by vCPU, and QEMU gives VP n's VMSA to vCPU
    /// n); KVM measures one VMSA per vCPU, so a VM with more vCPUs than the file has VMSAs
    /// measures more than this digest covers.
    Kvm,
}

/// KVM measures every VMSA at this GPA.
pub const KVM_VMSA_GPA: u64 = 0xffff_ffff_f000;

/// The VMM that will launch the file: selects the SNP conventions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// QEMU with KVM: data-less pages as NORMAL zero pages, VMSAs at KVM's fixed GPA after
    /// every page.
    Qemu,
    /// Hyper-V (and OpenVMM): data-less pages as NORMAL zero pages, VMSAs at the file's GPA
    /// in file order.
    Hyperv,
}

impl Vmm {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Hyperv => "hyperv",
        }
    }
}

/// Default page limit: 2 GiB of guest memory per platform. Hashing that many pages takes
/// seconds (TDX, the slowest, hashes 6 KiB per measured page), not minutes.
pub const DEFAULT_MAX_PAGES: u64 = 1 << 19;

/// Measurement options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOptions {
    /// SNP data-less page convention.
    pub zero_pages: ZeroPages,
    /// SNP VMSA GPA convention.
    pub vmsa_gpa: VmsaGpa,
    /// Refuse files that would make a platform measure more pages than this (hostile files
    /// can declare huge parameter areas, error ranges or data-less 2 MiB pages). Checked
    /// before any page is hashed.
    pub max_pages: u64,
}

impl MeasureOptions {
    /// The conventions `vmm` launches with, and the default page limit.
    pub fn for_vmm(vmm: Vmm) -> Self {
        let (zero_pages, vmsa_gpa) = match vmm {
            Vmm::Qemu => (ZeroPages::Normal, VmsaGpa::Kvm),
            Vmm::Hyperv => (ZeroPages::Normal, VmsaGpa::File),
        };
        Self {
            zero_pages,
            vmsa_gpa,
            max_pages: DEFAULT_MAX_PAGES,
        }
    }

    /// The preset these conventions match, if any.
    pub fn vmm(&self) -> Option<Vmm> {
        [Vmm::Qemu, Vmm::Hyperv].into_iter().find(|v| {
            let preset = Self::for_vmm(*v);
            (preset.zero_pages, preset.vmsa_gpa) == (self.zero_pages, self.vmsa_gpa)
        })
    }
}

impl Default for MeasureOptions {
    /// QEMU/KVM's conventions ([`MeasureOptions::for_vmm`]`(`[`Vmm::Qemu`]`)`).
    fn default() -> Self {
        Self::for_vmm(Vmm::Qemu)
    }
}

/// One platform's launch measurement, as written to JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// Platform name: `snp`, `tdx` or `vbs`.
    pub platform: String,
    /// The platform's compatibility mask in the file.
    pub compatibility_mask: u32,
    /// Digest algorithm: `sha384` or `sha256`.
    pub algorithm: String,
    /// Hex digest.
    pub digest: String,
    /// Guest policy (SNP guest policy, VBS policy flags), hex, if the file carries one.
    pub policy: Option<String>,
    /// Guest SVN from the file's SNP ID block or VBS measurement header (0 if none).
    pub svn: u32,
    /// SNP: the VMM preset the conventions below match, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<Vmm>,
    /// SNP: zero-page convention used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_pages: Option<ZeroPages>,
    /// SNP: VMSA GPA convention used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmsa_gpa: Option<VmsaGpa>,
    /// Pages (or records) measured.
    pub pages: u64,
}

impl Measurement {
    /// The digest bytes.
    pub fn digest_bytes(&self) -> Vec<u8> {
        hex::decode(&self.digest).unwrap_or_default()
    }
}

/// The platforms of `file` this crate can measure, with their compatibility masks.
pub fn measurable_platforms(file: &IgvmFile) -> Vec<(IsolationType, u32)> {
    file.platforms()
        .iter()
        .filter_map(|p| match p {
            IgvmPlatformHeader::SupportedPlatform(info) => {
                let t = match info.platform_type {
                    IgvmPlatformType::SEV_SNP => IsolationType::Snp,
                    IgvmPlatformType::TDX => IsolationType::Tdx,
                    IgvmPlatformType::VSM_ISOLATION => IsolationType::Vbs,
                    _ => return None,
                };
                Some((t, info.compatibility_mask))
            }
        })
        .collect()
}

/// Measures `file` for `platform`.
pub fn measure(
    file: &IgvmFile,
    platform: IsolationType,
    options: &MeasureOptions,
) -> Result<Measurement> {
    measure_with_progress(file, platform, options, &())
}

/// [`measure`], reporting chained pages to `progress`.
pub fn measure_with_progress(
    file: &IgvmFile,
    platform: IsolationType,
    options: &MeasureOptions,
    progress: &dyn Progress,
) -> Result<Measurement> {
    let mask = measurable_platforms(file)
        .into_iter()
        .find(|(t, _)| *t == platform)
        .map(|(_, m)| m)
        .ok_or_else(|| Error::PlatformNotInFile(platform.name().into()))?;
    let steps = Walk::new(file.directives(), mask, options.max_pages)
        .collect_steps()
        .inspect_err(|e| {
            tracing::debug!(error = %e, platform = platform.name(), "measurement refused");
        })?;
    let (digest, algorithm) = match platform {
        IsolationType::Snp => {
            let records = snp_records(&steps, options);
            (
                hex::encode(snp::launch_digest_with_progress(&records, progress)),
                "sha384",
            )
        }
        IsolationType::Tdx => {
            let records = tdx_records(&steps);
            (
                hex::encode(tdx::mrtd_with_progress(&records, progress)),
                "sha384",
            )
        }
        IsolationType::Vbs => {
            let records = vbs_records(&steps)?;
            (
                hex::encode(vbs::boot_digest_with_progress(&records, progress)),
                "sha256",
            )
        }
        IsolationType::None => return Err(Error::PlatformNotInFile("native".into())),
    };
    let pages = steps
        .iter()
        .map(|s| match s {
            Step::Pages(run) => run.pages,
            Step::SnpVmsa { .. } => u64::from(platform == IsolationType::Snp),
            Step::VbsRegisters(_) => 0,
        })
        .sum();
    let (policy, svn) = policy_and_svn(file, platform, mask);
    Ok(Measurement {
        platform: platform.name().to_string(),
        compatibility_mask: mask,
        algorithm: algorithm.to_string(),
        digest,
        policy: policy.map(|p| format!("{p:#x}")),
        svn,
        vmm: options.vmm().filter(|_| platform == IsolationType::Snp),
        zero_pages: (platform == IsolationType::Snp).then_some(options.zero_pages),
        vmsa_gpa: (platform == IsolationType::Snp).then_some(options.vmsa_gpa),
        pages,
    })
}

/// Measures every measurable platform of `file`, platforms in parallel.
pub fn measure_all(file: &IgvmFile, options: &MeasureOptions) -> Result<Vec<Measurement>> {
    measure_all_with_progress(file, options, &())
}

/// [`measure_all`], reporting chained pages to `progress`.
pub fn measure_all_with_progress(
    file: &IgvmFile,
    options: &MeasureOptions,
    progress: &dyn Progress,
) -> Result<Vec<Measurement>> {
    let platforms: Vec<IsolationType> = measurable_platforms(file)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    measure_platforms_with_progress(file, &platforms, options, progress)
}

/// Measures `file` for each of `platforms` (results in the same order, a platform listed
/// twice measured once), platforms in parallel.
pub fn measure_platforms_with_progress(
    file: &IgvmFile,
    platforms: &[IsolationType],
    options: &MeasureOptions,
    progress: &dyn Progress,
) -> Result<Vec<Measurement>> {
    use rayon::prelude::*;
    // A platform asked for twice is measured once, at its first position.
    let mut unique: Vec<IsolationType> = Vec::with_capacity(platforms.len());
    for p in platforms {
        if !unique.contains(p) {
            unique.push(*p);
        }
    }
    let mut order: Vec<(usize, IsolationType)> = unique.into_iter().enumerate().collect();
    // Start the sequential chains first (TDX, VBS) so SNP's page hashing fills the other
    // cores meanwhile.
    order.sort_by_key(|(_, t)| match t {
        IsolationType::Tdx => 0,
        IsolationType::Vbs => 1,
        _ => 2,
    });
    let mut results: Vec<(usize, Measurement)> = order
        .par_iter()
        .with_max_len(1)
        .map(|(i, t)| measure_with_progress(file, *t, options, progress).map(|m| (*i, m)))
        .collect::<Result<_>>()?;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, m)| m).collect())
}

/// SNP's records: one per run, VMSAs where the convention puts them.
fn snp_records<'a>(steps: &[Step<'a>], options: &MeasureOptions) -> Vec<snp::SnpPage<'a>> {
    use snp::Contents;
    use snp::SnpPage;
    use snp::SnpPageType;
    let mut out = Vec::with_capacity(steps.len());
    let mut vmsas = Vec::new();
    for step in steps {
        match step {
            Step::Pages(run) => {
                let (page_type, contents) = match run.source {
                    Source::Page {
                        data_type: IgvmPageDataType::SECRETS,
                        ..
                    } => (SnpPageType::Secrets, Contents::Zero),
                    Source::Page {
                        data_type: IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF,
                        ..
                    } => (SnpPageType::Cpuid, Contents::Zero),
                    Source::Page {
                        unmeasured: true, ..
                    }
                    | Source::Parameter => (SnpPageType::Unmeasured, Contents::Zero),
                    // Error ranges are a VBS notion.
                    Source::ErrorRange => continue,
                    Source::Page { .. } if run.data.is_empty() => match options.zero_pages {
                        ZeroPages::Zero => (SnpPageType::Zero, Contents::Zero),
                        ZeroPages::Normal => (SnpPageType::Normal, Contents::ZeroPage),
                    },
                    Source::Page { .. } => (SnpPageType::Normal, Contents::Data(run.data)),
                };
                out.push(SnpPage {
                    gpa: run.gpa,
                    pages: run.pages,
                    page_type,
                    contents,
                });
            }
            Step::SnpVmsa {
                gpa,
                vp_index,
                vmsa,
            } => {
                let page = |gpa| SnpPage {
                    gpa,
                    pages: 1,
                    page_type: SnpPageType::Vmsa,
                    contents: Contents::Data(vmsa),
                };
                match options.vmsa_gpa {
                    VmsaGpa::File => out.push(page(*gpa)),
                    VmsaGpa::Kvm => vmsas.push((*vp_index, page(KVM_VMSA_GPA))),
                }
            }
            Step::VbsRegisters(_) => {}
        }
    }
    // KVM measures the VMSAs at launch finish, vCPU by vCPU, and QEMU hands the file's VMSA
    // for VP n to vCPU n: VP order, not file order (stable, so a repeated VP keeps file
    // order).
    vmsas.sort_by_key(|(vp, _)| *vp);
    out.extend(vmsas.into_iter().map(|(_, page)| page));
    out
}

/// TDX's records: every page is added; measured ones are extended, data-less ones as zeros.
fn tdx_records<'a>(steps: &[Step<'a>]) -> Vec<tdx::TdxPage<'a>> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Pages(Run {
                gpa,
                pages,
                source: Source::Page { unmeasured, .. },
                data,
            }) => Some(tdx::TdxPage {
                gpa: *gpa,
                pages: *pages,
                extend: (!unmeasured).then_some(*data),
            }),
            Step::Pages(Run {
                gpa,
                pages,
                source: Source::Parameter,
                ..
            }) => Some(tdx::TdxPage {
                gpa: *gpa,
                pages: *pages,
                extend: None,
            }),
            _ => None,
        })
        .collect()
}

/// VBS's records: pages in file order, then the VP registers.
fn vbs_records<'a>(steps: &[Step<'a>]) -> Result<Vec<vbs::VbsRecord<'a>>> {
    use vbs::PageMetadata;
    use vbs::VbsRecord;
    let mut out = Vec::with_capacity(steps.len());
    let mut registers = Vec::new();
    for step in steps {
        match step {
            Step::Pages(run) => {
                let (metadata, data) = match run.source {
                    Source::Page {
                        data_type,
                        unmeasured,
                    } => {
                        if data_type != IgvmPageDataType::NORMAL {
                            return Err(Error::Malformed(format!(
                                "VBS page at {:#x} has SNP-only data type {data_type:?}",
                                run.gpa
                            )));
                        }
                        (
                            PageMetadata::new().with_data_unmeasured(unmeasured),
                            (!unmeasured).then_some(run.data),
                        )
                    }
                    Source::Parameter => (PageMetadata::new().with_data_unmeasured(true), None),
                    // Error pages are host readable and writable.
                    Source::ErrorRange => (
                        PageMetadata::new()
                            .with_acceptance(0b11)
                            .with_data_unmeasured(true),
                        None,
                    ),
                };
                out.push(VbsRecord::Pages {
                    page_number: run.gpa / PAGE_U64,
                    pages: run.pages,
                    metadata,
                    data,
                });
            }
            Step::VbsRegisters(r) => registers.extend(r.iter().map(|r| VbsRecord::Register {
                vtl: r.vtl,
                name: r.register_name.get(),
                value: r.register_value,
            })),
            Step::SnpVmsa { .. } => {}
        }
    }
    // VP state is measured after all memory.
    out.extend(registers);
    Ok(out)
}

fn policy_and_svn(file: &IgvmFile, platform: IsolationType, mask: u32) -> (Option<u64>, u32) {
    let policy = file.initializations().iter().find_map(|h| match h {
        IgvmInitializationHeader::GuestPolicy {
            policy,
            compatibility_mask,
        } if platform == IsolationType::Snp && compatibility_mask & mask == mask => Some(*policy),
        _ => None,
    });
    let mut vbs_policy = None;
    let mut svn = 0;
    for d in file.directives() {
        match d {
            IgvmDirectiveHeader::SnpIdBlock {
                compatibility_mask,
                guest_svn,
                ..
            } if compatibility_mask & mask == mask => svn = *guest_svn,
            IgvmDirectiveHeader::VbsMeasurement {
                compatibility_mask,
                security_version,
                policy_flags,
                ..
            } if compatibility_mask & mask == mask => {
                svn = *security_version;
                vbs_policy = Some(u64::from(*policy_flags));
            }
            _ => {}
        }
    }
    (policy.or(vbs_policy), svn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::IgvmBuilder;
    use crate::builder::PlatformConfig;
    use crate::importer::BootPageAcceptance;
    use crate::importer::ImageLoad;
    use crate::importer::IsolationConfig;

    fn snp_file(large_pages: bool, data: &[u8]) -> IgvmFile {
        let mut b = IgvmBuilder::<X86Register>::new();
        let mut config = PlatformConfig::new(IsolationConfig::new(IsolationType::Snp));
        config.large_pages = large_pages;
        let image = b.add_platform(config).unwrap();
        image
            .import_pages(512, 512, "ram", BootPageAcceptance::Exclusive, data)
            .unwrap();
        b.build().unwrap()
    }

    #[test]
    fn measurements_round_trip_through_json() {
        let m = measure(
            &snp_file(false, b"x"),
            IsolationType::Snp,
            &MeasureOptions::default(),
        )
        .unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"platform\":\"snp\""), "{json}");
        assert!(json.contains("\"policy\":\"0x30000\""), "{json}");
        let back: Measurement = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest_bytes().len(), 48);
    }

    #[test]
    fn a_2mib_page_measures_like_512_small_pages() {
        for zero_pages in [ZeroPages::Zero, ZeroPages::Normal] {
            let options = MeasureOptions {
                zero_pages,
                ..MeasureOptions::default()
            };
            let large = measure(&snp_file(true, &[]), IsolationType::Snp, &options).unwrap();
            let small = measure(&snp_file(false, &[]), IsolationType::Snp, &options).unwrap();
            assert_eq!(large.pages, 512);
            assert_eq!(large.digest, small.digest);
        }
    }

    #[test]
    fn the_page_limit_stops_hostile_sizes() {
        let options = MeasureOptions {
            max_pages: 100,
            ..MeasureOptions::default()
        };
        let err = measure(&snp_file(true, &[]), IsolationType::Snp, &options).unwrap_err();
        assert!(matches!(err, Error::TooManyPages { limit: 100 }));
    }

    #[test]
    fn kvm_measures_vmsas_at_its_gpa_after_every_page_hyperv_in_file_order() {
        use igvm_defs::IgvmPageDataFlags;
        let mut vmsa = <igvm::snp_defs::SevVmsa as zerocopy::FromZeros>::new_box_zeroed().unwrap();
        vmsa.rip = 0xfff0;
        let vmsa_bytes = zerocopy::IntoBytes::as_bytes(vmsa.as_ref()).to_vec();
        let data = vec![0x42u8; 4096];
        let file = IgvmFile::new(
            igvm::IgvmRevision::V1,
            vec![IgvmPlatformHeader::SupportedPlatform(
                igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM {
                    compatibility_mask: 1,
                    highest_vtl: 0,
                    platform_type: IgvmPlatformType::SEV_SNP,
                    platform_version: 1,
                    shared_gpa_boundary: 0,
                },
            )],
            vec![],
            vec![
                IgvmDirectiveHeader::SnpVpContext {
                    gpa: 0x5000,
                    compatibility_mask: 1,
                    vp_index: 0,
                    vmsa,
                },
                IgvmDirectiveHeader::PageData {
                    gpa: 0x1000,
                    compatibility_mask: 1,
                    flags: IgvmPageDataFlags::new(),
                    data_type: IgvmPageDataType::NORMAL,
                    data: data.clone(),
                },
            ],
        )
        .unwrap();
        let page = snp::SnpPage {
            gpa: 0x1000,
            pages: 1,
            page_type: snp::SnpPageType::Normal,
            contents: snp::Contents::Data(&data),
        };
        let vmsa_at = |gpa| snp::SnpPage {
            gpa,
            pages: 1,
            page_type: snp::SnpPageType::Vmsa,
            contents: snp::Contents::Data(&vmsa_bytes),
        };
        let digest = |vmm| {
            measure(&file, IsolationType::Snp, &MeasureOptions::for_vmm(vmm))
                .unwrap()
                .digest
        };
        assert_eq!(
            digest(Vmm::Qemu),
            hex::encode(snp::launch_digest(&[page, vmsa_at(KVM_VMSA_GPA)]))
        );
        assert_eq!(
            digest(Vmm::Hyperv),
            hex::encode(snp::launch_digest(&[vmsa_at(0x5000), page]))
        );
    }

    #[test]
    fn presets_are_recognised_and_overrides_are_not_a_preset() {
        assert_eq!(MeasureOptions::default().vmm(), Some(Vmm::Qemu));
        assert_eq!(
            MeasureOptions::for_vmm(Vmm::Hyperv).vmm(),
            Some(Vmm::Hyperv)
        );
        let mixed = MeasureOptions {
            zero_pages: ZeroPages::Zero,
            ..MeasureOptions::default()
        };
        assert_eq!(mixed.vmm(), None);
    }

    #[test]
    fn a_missing_platform_is_an_error() {
        let err = measure(
            &snp_file(false, &[]),
            IsolationType::Tdx,
            &MeasureOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::PlatformNotInFile(_)));
    }

    #[test]
    fn zero_page_conventions_parse_from_their_cli_names() {
        assert_eq!("zero".parse::<ZeroPages>(), Ok(ZeroPages::Zero));
        assert_eq!("normal".parse::<ZeroPages>(), Ok(ZeroPages::Normal));
        assert!("other".parse::<ZeroPages>().is_err());
    }
}
