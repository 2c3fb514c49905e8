//! AMD SEV-SNP launch digest: a SHA-384 chain over PAGE_INFO records (SNP firmware ABI,
//! SNP_LAUNCH_UPDATE).
//!
//! Each record holds the current digest, a 48-byte CONTENTS field (the SHA-384 of the page
//! for NORMAL and VMSA pages, zero otherwise), the page type and the GPA; the new digest is
//! the SHA-384 of the record. Page contents are hashed in parallel; the chain is sequential.

use super::Progress;
use rayon::prelude::*;
use sha2::Digest;
use sha2::Sha384;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U64;

/// A SHA-384 digest.
pub type Sha384Digest = [u8; 48];

/// PAGE_TYPE of a PAGE_INFO record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SnpPageType {
    /// Data page, CONTENTS = SHA-384 of the page.
    Normal = 1,
    /// VMSA page, CONTENTS = SHA-384 of the VMSA.
    Vmsa = 2,
    /// Zero page (the firmware zeroes it), CONTENTS = 0.
    Zero = 3,
    /// Unmeasured page, CONTENTS = 0.
    Unmeasured = 4,
    /// Secrets page, CONTENTS = 0.
    Secrets = 5,
    /// CPUID page, CONTENTS = 0.
    Cpuid = 6,
}

/// The PAGE_INFO record hashed for every page (112 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PageInfo {
    /// Launch digest before this page.
    pub digest_cur: [u8; 48],
    /// SHA-384 of the page (NORMAL, VMSA) or zero.
    pub contents: [u8; 48],
    /// Length of this structure, 0x70.
    pub length: U16,
    /// [`SnpPageType`].
    pub page_type: u8,
    /// Bit 0: the page was imported by the migration agent (IMI).
    pub imi_page: u8,
    /// VMPL3 permissions.
    pub vmpl3_perms: u8,
    /// VMPL2 permissions.
    pub vmpl2_perms: u8,
    /// VMPL1 permissions.
    pub vmpl1_perms: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// Guest physical address of the page.
    pub gpa: U64,
}
const _: () = assert!(size_of::<PageInfo>() == 0x70);

/// What goes into CONTENTS for each page of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents<'a> {
    /// SHA-384 of each page's slice of this data, zero-padded to 4 KiB (page `i` holds bytes
    /// `i * 4096..`; pages past the data are zero pages).
    Data(&'a [u8]),
    /// SHA-384 of an all-zero 4 KiB page (a data-less NORMAL page).
    ZeroPage,
    /// 48 zero bytes (ZERO, UNMEASURED, SECRETS, CPUID pages).
    Zero,
}

/// Consecutive pages of the launch sequence with one page type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpPage<'a> {
    /// GPA recorded in PAGE_INFO for the first page; each next page is 4 KiB higher.
    pub gpa: u64,
    /// Number of pages (a data-less range stays one record however long).
    pub pages: u64,
    /// PAGE_TYPE.
    pub page_type: SnpPageType,
    /// CONTENTS source.
    pub contents: Contents<'a>,
}

fn sha384_page(data: &[u8]) -> Sha384Digest {
    let mut h = Sha384::new();
    h.update(data);
    if let Some(pad) = super::PAGE_ZEROS.get(data.len()..) {
        h.update(pad);
    }
    h.finalize().into()
}

/// SHA-384 of a 4 KiB zero page.
fn zero_page_digest() -> Sha384Digest {
    sha384_page(&[])
}

/// Pages per parallel work item: big enough to amortise scheduling, small enough to balance.
const PAR_CHUNK: usize = 64;

/// The launch digest of `pages`, starting from an all-zero digest.
pub fn launch_digest(pages: &[SnpPage<'_>]) -> Sha384Digest {
    launch_digest_with_progress(pages, &())
}

/// Page `i` of a data run.
fn page_slice(data: &[u8], i: u64) -> &[u8] {
    let start = usize::try_from(i.saturating_mul(4096)).unwrap_or(usize::MAX);
    let rest = data.get(start..).unwrap_or_default();
    rest.get(..super::PAGE).unwrap_or(rest)
}

/// [`launch_digest`], reporting chained pages to `progress`.
pub fn launch_digest_with_progress(pages: &[SnpPage<'_>], progress: &dyn Progress) -> Sha384Digest {
    let zero_page = zero_page_digest();
    // Only pages that carry data need hashing, and those are bounded by the file's size:
    // data-less ranges are never expanded into memory.
    let data_pages: Vec<&[u8]> = pages
        .iter()
        .filter_map(|p| match p.contents {
            Contents::Data(d) => Some(
                (0..p.pages.min(d.len().div_ceil(super::PAGE) as u64))
                    .map(move |i| page_slice(d, i)),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    let hashed: Vec<Sha384Digest> = data_pages
        .par_iter()
        .with_min_len(PAR_CHUNK)
        .map(|d| {
            // Zero-filled data pages are common in real images; comparing is far cheaper
            // than hashing.
            if d.iter().all(|&b| b == 0) {
                zero_page
            } else {
                sha384_page(d)
            }
        })
        .collect();
    let mut hashed = hashed.iter();
    let mut info = PageInfo {
        digest_cur: [0; 48],
        contents: [0; 48],
        length: U16::new(0x70),
        page_type: 0,
        imi_page: 0,
        vmpl3_perms: 0,
        vmpl2_perms: 0,
        vmpl1_perms: 0,
        reserved: 0,
        gpa: U64::new(0),
    };
    let mut chained = 0u64;
    for run in pages {
        info.page_type = run.page_type as u8;
        let data_pages = match run.contents {
            Contents::Data(d) => d.len().div_ceil(super::PAGE) as u64,
            _ => 0,
        };
        for i in 0..run.pages {
            info.contents = match run.contents {
                Contents::Data(_) if i < data_pages => hashed.next().copied().unwrap_or(zero_page),
                Contents::Data(_) | Contents::ZeroPage => zero_page,
                Contents::Zero => [0; 48],
            };
            info.gpa = U64::new(run.gpa.wrapping_add(i.wrapping_mul(4096)));
            info.digest_cur = Sha384::digest(info.as_bytes()).into();
            chained += 1;
            if chained.is_multiple_of(4096) {
                progress.advance(4096);
            }
        }
    }
    progress.advance(chained % 4096);
    info.digest_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_one(digest: Sha384Digest, page: &SnpPage<'_>) -> Sha384Digest {
        // Independent formulation: concatenate the fields by hand.
        let mut digest = digest;
        for i in 0..page.pages {
            let contents: Sha384Digest = match page.contents {
                Contents::Data(d) => {
                    let mut v = d.get(i as usize * 4096..).unwrap_or_default().to_vec();
                    v.resize(4096, 0);
                    Sha384::digest(&v).into()
                }
                Contents::ZeroPage => Sha384::digest([0u8; 4096]).into(),
                Contents::Zero => [0; 48],
            };
            let mut rec = Vec::new();
            rec.extend_from_slice(&digest);
            rec.extend_from_slice(&contents);
            rec.extend_from_slice(&0x70u16.to_le_bytes());
            rec.push(page.page_type as u8);
            rec.extend_from_slice(&[0; 5]);
            rec.extend_from_slice(&(page.gpa + i * 4096).to_le_bytes());
            assert_eq!(rec.len(), 112);
            digest = Sha384::digest(&rec).into();
        }
        digest
    }

    #[test]
    fn parallel_chain_equals_sequential_concatenation() {
        // Byte value 0 every 251 pages exercises the zero-page shortcut.
        let data: Vec<Vec<u8>> = (0..300u32)
            .map(|i| vec![(i % 251) as u8; (i as usize * 37) % 12289])
            .collect();
        let pages: Vec<SnpPage<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| SnpPage {
                gpa: i as u64 * 0x10_0000,
                // Runs of 1..=3 pages; data runs spread their data over them.
                pages: 1 + (i as u64 % 3),
                page_type: match i % 4 {
                    0 => SnpPageType::Normal,
                    1 => SnpPageType::Zero,
                    2 => SnpPageType::Unmeasured,
                    _ => SnpPageType::Normal,
                },
                contents: match i % 4 {
                    0 => Contents::Data(d),
                    3 => Contents::ZeroPage,
                    _ => Contents::Zero,
                },
            })
            .collect();
        let expected = pages.iter().fold([0u8; 48], chain_one);
        assert_eq!(launch_digest(&pages), expected);
    }

    #[test]
    fn empty_sequence_is_the_zero_digest() {
        assert_eq!(launch_digest(&[]), [0u8; 48]);
    }
}
