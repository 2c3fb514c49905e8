//! Launch measurements of IGVM files, computed by this crate: SEV-SNP launch digest, TDX
//! MRTD and VBS boot digest.
//!
//! [`measure`] walks the file's directives for one platform, turns them into that platform's
//! record sequence ([`snp::SnpPage`], [`tdx::TdxPage`], [`vbs::VbsRecord`], which borrow the
//! page data from the file) and hashes it. [`measure_all`] measures every platform of a file
//! at once, overlapping TDX's single-stream hash with SNP's parallel page hashing.

pub mod snp;
pub mod tdx;
pub mod vbs;

use crate::error::Error;
use crate::error::Result;
use crate::importer::IsolationType;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use igvm_defs::IgvmPageDataFlags;
use igvm_defs::IgvmPageDataType;
use igvm_defs::IgvmPlatformType;
use serde::Deserialize;
use serde::Serialize;
use std::collections::HashMap;
use std::str::FromStr;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroPages {
    /// As a PAGE_TYPE_ZERO page (QEMU/KVM: the firmware zeroes it, CONTENTS = 0).
    #[default]
    Qemu,
    /// As a NORMAL page full of zeros (CONTENTS = SHA-384 of the zero page), as Hyper-V and
    /// the `igvm` crate do.
    Normal,
}

impl FromStr for ZeroPages {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "qemu" => Ok(ZeroPages::Qemu),
            "normal" => Ok(ZeroPages::Normal),
            other => Err(format!(
                "unknown zero-page convention {other:?} (qemu|normal)"
            )),
        }
    }
}

/// Which GPA SNP records for a VMSA page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmsaGpa {
    /// The GPA in the file's VP context directive (Hyper-V, the `igvm` crate).
    #[default]
    File,
    /// KVM's fixed VMSA GPA 0xFFFF_FFFF_F000.
    Kvm,
}

/// KVM measures every VMSA at this GPA.
pub const KVM_VMSA_GPA: u64 = 0xffff_ffff_f000;

/// Measurement options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOptions {
    /// SNP data-less page convention.
    pub zero_pages: ZeroPages,
    /// SNP VMSA GPA convention.
    pub vmsa_gpa: VmsaGpa,
    /// Refuse files that would make a platform measure more pages than this (hostile files
    /// can declare huge parameter areas or 2 MiB pages without data).
    pub max_pages: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        Self {
            zero_pages: ZeroPages::Qemu,
            vmsa_gpa: VmsaGpa::File,
            max_pages: 1 << 24,
        }
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
    /// SNP zero-page convention used (SNP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_pages: Option<ZeroPages>,
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
    let directives = file.directives();
    let (digest, pages, algorithm) = match platform {
        IsolationType::Snp => {
            let pages = snp_pages(directives, mask, options)?;
            let d = snp::launch_digest_with_progress(&pages, progress);
            (hex::encode(d), pages.len(), "sha384")
        }
        IsolationType::Tdx => {
            let pages = tdx_pages(directives, mask, options)?;
            let d = tdx::mrtd_with_progress(&pages, progress);
            (hex::encode(d), pages.len(), "sha384")
        }
        IsolationType::Vbs => {
            let records = vbs_records(directives, mask, options)?;
            let d = vbs::boot_digest_with_progress(&records, progress);
            (hex::encode(d), records.len(), "sha256")
        }
        IsolationType::None => return Err(Error::PlatformNotInFile("native".into())),
    };
    let (policy, svn) = policy_and_svn(file, platform, mask);
    Ok(Measurement {
        platform: platform.name().to_string(),
        compatibility_mask: mask,
        algorithm: algorithm.to_string(),
        digest,
        policy: policy.map(|p| format!("{p:#x}")),
        svn,
        zero_pages: (platform == IsolationType::Snp).then_some(options.zero_pages),
        pages: pages as u64,
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

/// Measures `file` for each of `platforms` (results in the same order), platforms in
/// parallel.
pub fn measure_platforms_with_progress(
    file: &IgvmFile,
    platforms: &[IsolationType],
    options: &MeasureOptions,
    progress: &dyn Progress,
) -> Result<Vec<Measurement>> {
    use rayon::prelude::*;
    let mut order: Vec<(usize, IsolationType)> = platforms.iter().copied().enumerate().collect();
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

fn applies(mask: Option<u32>, platform_mask: u32) -> bool {
    mask.is_none_or(|m| m & platform_mask == platform_mask)
}

/// Parameter area sizes in bytes, checked to be whole pages and not absurd.
#[derive(Default)]
struct Areas(HashMap<u32, u64>);

impl Areas {
    fn declare(&mut self, index: u32, bytes: u64, options: &MeasureOptions) -> Result<()> {
        if !bytes.is_multiple_of(PAGE_U64) || bytes / PAGE_U64 > options.max_pages {
            return Err(Error::Malformed(format!(
                "parameter area {index} has {bytes:#x} bytes"
            )));
        }
        self.0.insert(index, bytes);
        Ok(())
    }

    fn pages(&self, index: u32) -> Result<u64> {
        self.0
            .get(&index)
            .map(|b| b / PAGE_U64)
            .ok_or_else(|| Error::Malformed(format!("parameter insert of unknown area {index}")))
    }
}

/// Counts pages against the limit.
struct Budget {
    left: u64,
}

impl Budget {
    fn new(options: &MeasureOptions) -> Self {
        Self {
            left: options.max_pages,
        }
    }

    fn take(&mut self, n: u64) -> Result<()> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or_else(|| Error::Malformed("more measured pages than allowed".into()))?;
        Ok(())
    }
}

/// The 4 KiB pages a page directive stands for: `(gpa, data of that page)`.
fn split_pages<'a>(
    gpa: u64,
    flags: IgvmPageDataFlags,
    data: &'a [u8],
    budget: &mut Budget,
) -> Result<impl Iterator<Item = (u64, &'a [u8])> + 'a> {
    let count: u64 = if flags.is_2mb_page() { 512 } else { 1 };
    budget.take(count)?;
    if gpa.checked_add(count * PAGE_U64).is_none() {
        return Err(Error::Malformed(format!("page at {gpa:#x} wraps")));
    }
    Ok((0..count).map(move |i| {
        let start = (i as usize) * PAGE;
        let chunk = data
            .get(start..)
            .map(|d| d.get(..PAGE).unwrap_or(d))
            .unwrap_or_default();
        (gpa + i * PAGE_U64, chunk)
    }))
}

fn snp_pages<'a>(
    directives: &'a [IgvmDirectiveHeader],
    mask: u32,
    options: &MeasureOptions,
) -> Result<Vec<snp::SnpPage<'a>>> {
    use snp::Contents;
    use snp::SnpPage;
    use snp::SnpPageType;
    let mut out = Vec::new();
    let mut areas = Areas::default();
    let mut budget = Budget::new(options);
    for d in directives {
        if !applies(d.compatibility_mask(), mask) {
            continue;
        }
        match d {
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => areas.declare(*parameter_area_index, *number_of_bytes, options)?,
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                if flags.shared() {
                    continue;
                }
                // A 2 MiB page with data carries data for its whole range, zero-padded.
                let data_less = data.is_empty();
                for (page_gpa, chunk) in split_pages(*gpa, *flags, data, &mut budget)? {
                    let (page_type, contents) = match *data_type {
                        IgvmPageDataType::SECRETS => (SnpPageType::Secrets, Contents::Zero),
                        IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => {
                            (SnpPageType::Cpuid, Contents::Zero)
                        }
                        _ if flags.unmeasured() => (SnpPageType::Unmeasured, Contents::Zero),
                        _ if data_less => match options.zero_pages {
                            ZeroPages::Qemu => (SnpPageType::Zero, Contents::Zero),
                            ZeroPages::Normal => (SnpPageType::Normal, Contents::ZeroPage),
                        },
                        _ => (SnpPageType::Normal, Contents::Data(chunk)),
                    };
                    out.push(SnpPage {
                        gpa: page_gpa,
                        page_type,
                        contents,
                    });
                }
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                // The whole area is unmeasured, not just its first page.
                let pages = areas.pages(insert.parameter_area_index)?;
                budget.take(pages)?;
                for i in 0..pages {
                    out.push(SnpPage {
                        gpa: insert.gpa.wrapping_add(i * PAGE_U64),
                        page_type: SnpPageType::Unmeasured,
                        contents: Contents::Zero,
                    });
                }
            }
            IgvmDirectiveHeader::SnpVpContext { gpa, vmsa, .. } => {
                budget.take(1)?;
                out.push(SnpPage {
                    gpa: match options.vmsa_gpa {
                        VmsaGpa::File => *gpa,
                        VmsaGpa::Kvm => KVM_VMSA_GPA,
                    },
                    page_type: SnpPageType::Vmsa,
                    contents: Contents::Data(zerocopy::IntoBytes::as_bytes(vmsa.as_ref())),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn tdx_pages<'a>(
    directives: &'a [IgvmDirectiveHeader],
    mask: u32,
    options: &MeasureOptions,
) -> Result<Vec<tdx::TdxPage<'a>>> {
    let mut out = Vec::new();
    let mut areas = Areas::default();
    let mut budget = Budget::new(options);
    for d in directives {
        if !applies(d.compatibility_mask(), mask) {
            continue;
        }
        match d {
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => areas.declare(*parameter_area_index, *number_of_bytes, options)?,
            IgvmDirectiveHeader::PageData {
                gpa, flags, data, ..
            } => {
                if flags.shared() {
                    continue;
                }
                for (page_gpa, chunk) in split_pages(*gpa, *flags, data, &mut budget)? {
                    out.push(tdx::TdxPage {
                        gpa: page_gpa,
                        extend: (!flags.unmeasured()).then_some(chunk),
                    });
                }
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                let pages = areas.pages(insert.parameter_area_index)?;
                budget.take(pages)?;
                for i in 0..pages {
                    out.push(tdx::TdxPage {
                        gpa: insert.gpa.wrapping_add(i * PAGE_U64),
                        extend: None,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn vbs_records<'a>(
    directives: &'a [IgvmDirectiveHeader],
    mask: u32,
    options: &MeasureOptions,
) -> Result<Vec<vbs::VbsRecord<'a>>> {
    use vbs::PageMetadata;
    use vbs::VbsRecord;
    let mut out = Vec::new();
    let mut registers = Vec::new();
    let mut areas = Areas::default();
    let mut budget = Budget::new(options);
    let unmeasured_range = |out: &mut Vec<VbsRecord<'a>>,
                            gpa: u64,
                            pages: u64,
                            acceptance: u8,
                            budget: &mut Budget|
     -> Result<()> {
        budget.take(pages)?;
        let metadata = PageMetadata::new()
            .with_acceptance(acceptance)
            .with_data_unmeasured(true);
        for i in 0..pages {
            out.push(VbsRecord::Page {
                page_number: (gpa / PAGE_U64).wrapping_add(i),
                metadata,
                data: None,
            });
        }
        Ok(())
    };
    for d in directives {
        if !applies(d.compatibility_mask(), mask) {
            continue;
        }
        match d {
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                if areas.0.contains_key(parameter_area_index) {
                    return Err(Error::Malformed(format!(
                        "parameter area {parameter_area_index} declared twice"
                    )));
                }
                areas.declare(*parameter_area_index, *number_of_bytes, options)?;
            }
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                if *data_type != IgvmPageDataType::NORMAL {
                    return Err(Error::Malformed(format!(
                        "VBS page at {gpa:#x} has SNP-only data type {data_type:?}"
                    )));
                }
                if flags.shared() {
                    continue;
                }
                let metadata = PageMetadata::new().with_data_unmeasured(flags.unmeasured());
                for (page_gpa, chunk) in split_pages(*gpa, *flags, data, &mut budget)? {
                    out.push(VbsRecord::Page {
                        page_number: page_gpa / PAGE_U64,
                        metadata,
                        data: (!flags.unmeasured()).then_some(chunk),
                    });
                }
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                let pages = areas.pages(insert.parameter_area_index)?;
                unmeasured_range(&mut out, insert.gpa, pages, 0, &mut budget)?;
            }
            IgvmDirectiveHeader::ErrorRange {
                gpa, size_bytes, ..
            } => {
                let pages = u64::from(*size_bytes).div_ceil(PAGE_U64);
                // Error pages are host readable and writable.
                unmeasured_range(&mut out, *gpa, pages, 0b11, &mut budget)?;
            }
            IgvmDirectiveHeader::X64VbsVpContext {
                vtl, registers: r, ..
            } => {
                registers.extend(r.iter().map(|reg| reg.into_vbs_vp_context_reg(*vtl)));
            }
            IgvmDirectiveHeader::AArch64VbsVpContext {
                vtl, registers: r, ..
            } => {
                registers.extend(r.iter().map(|reg| reg.into_vbs_vp_context_reg(*vtl)));
            }
            _ => {}
        }
    }
    // VP state is measured after all memory.
    out.extend(registers.into_iter().map(|r| VbsRecord::Register {
        vtl: r.vtl,
        name: r.register_name.get(),
        value: r.register_value,
    }));
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
        for zero_pages in [ZeroPages::Qemu, ZeroPages::Normal] {
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
        assert!(matches!(err, Error::Malformed(_)));
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
        assert_eq!("qemu".parse::<ZeroPages>(), Ok(ZeroPages::Qemu));
        assert_eq!("normal".parse::<ZeroPages>(), Ok(ZeroPages::Normal));
        assert!("other".parse::<ZeroPages>().is_err());
    }
}
