//! Intel TDX MRTD: one running SHA-384 over the TDX module's MEM.PAGE.ADD and MR.EXTEND
//! records (TDH.MEM.PAGE.ADD, TDH.MR.EXTEND).
//!
//! Every added page contributes a 128-byte MEM.PAGE.ADD record; a measured page then adds 16
//! MR.EXTEND records of 384 bytes, one per 256-byte chunk (128-byte header + the chunk). The
//! hash is one stream, so this runs on one core; [`super::measure_all`] overlaps it with
//! the other platforms' parallel work.

use super::Progress;
use sha2::Digest;
use sha2::Sha384;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U64;

/// Bytes of page data per MR.EXTEND record.
pub const EXTEND_CHUNK: usize = 256;

/// The 128-byte record header shared by both operations.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdxRecordHeader {
    /// Operation name, NUL padded: `MEM.PAGE.ADD` or `MR.EXTEND`.
    pub operation: [u8; 16],
    /// GPA of the page (PAGE.ADD) or of the 256-byte chunk (MR.EXTEND).
    pub gpa: U64,
    /// Zero.
    pub reserved: [u8; 104],
}
const _: () = assert!(size_of::<TdxRecordHeader>() == 128);

/// An MR.EXTEND record: header and 256 data bytes (384 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdxExtendRecord {
    /// Operation `MR.EXTEND`, GPA of the chunk.
    pub header: TdxRecordHeader,
    /// The chunk.
    pub data: [u8; EXTEND_CHUNK],
}
const _: () = assert!(size_of::<TdxExtendRecord>() == 384);

const PAGE_ADD: [u8; 16] = *b"MEM.PAGE.ADD\0\0\0\0";
const MR_EXTEND: [u8; 16] = *b"MR.EXTEND\0\0\0\0\0\0\0";

/// Consecutive pages added to the TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxPage<'a> {
    /// GPA of the first page; each next page is 4 KiB higher.
    pub gpa: u64,
    /// Number of pages (a data-less range stays one record however long).
    pub pages: u64,
    /// `Some(data)` to extend the pages' contents into MRTD (page `i` holds bytes
    /// `i * 4096..` of `data`, zero-padded), `None` for added but unmeasured pages.
    pub extend: Option<&'a [u8]>,
}

/// MRTD of `pages`.
pub fn mrtd(pages: &[TdxPage<'_>]) -> [u8; 48] {
    mrtd_with_progress(pages, &())
}

/// [`mrtd`], reporting pages to `progress`.
pub fn mrtd_with_progress(pages: &[TdxPage<'_>], progress: &dyn Progress) -> [u8; 48] {
    let mut hasher = Sha384::new();
    let mut add = TdxRecordHeader {
        operation: PAGE_ADD,
        gpa: U64::new(0),
        reserved: [0; 104],
    };
    // One page's 16 MR.EXTEND records, rewritten in place: one large update per page.
    let mut extends = [TdxExtendRecord {
        header: TdxRecordHeader {
            operation: MR_EXTEND,
            gpa: U64::new(0),
            reserved: [0; 104],
        },
        data: [0; EXTEND_CHUNK],
    }; super::PAGE / EXTEND_CHUNK];
    let mut added = 0u64;
    for run in pages {
        for i in 0..run.pages {
            let gpa = run.gpa.wrapping_add(i.wrapping_mul(4096));
            add.gpa = U64::new(gpa);
            hasher.update(add.as_bytes());
            if let Some(data) = run.extend {
                let start = usize::try_from(i.saturating_mul(4096)).unwrap_or(usize::MAX);
                let page = data.get(start..).unwrap_or_default();
                for (n, rec) in (0u64..).zip(extends.iter_mut()) {
                    rec.header.gpa = U64::new(gpa.wrapping_add(n * EXTEND_CHUNK as u64));
                    let chunk_start = n as usize * EXTEND_CHUNK;
                    let src = page.get(chunk_start..).unwrap_or_default();
                    let len = src.len().min(EXTEND_CHUNK);
                    let (head, tail) = rec.data.split_at_mut(len);
                    head.copy_from_slice(src.get(..len).unwrap_or_default());
                    tail.fill(0);
                }
                hasher.update(extends.as_bytes());
            }
            added += 1;
            if added.is_multiple_of(4096) {
                progress.advance(4096);
            }
        }
    }
    progress.advance(added % 4096);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_a_hand_built_stream() {
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let pages = [
            TdxPage {
                gpa: 0x1000,
                pages: 2,
                extend: Some(&data),
            },
            TdxPage {
                gpa: 0x5000,
                pages: 1,
                extend: None,
            },
        ];
        let mut stream = Vec::new();
        let op = |name: &[u8], gpa: u64| {
            let mut r = name.to_vec();
            r.resize(16, 0);
            r.extend_from_slice(&gpa.to_le_bytes());
            r.resize(128, 0);
            r
        };
        stream.extend(op(b"MEM.PAGE.ADD", 0x1000));
        let mut padded = data.clone();
        padded.resize(4096, 0);
        for (n, chunk) in padded.chunks(256).enumerate() {
            stream.extend(op(b"MR.EXTEND", 0x1000 + n as u64 * 256));
            stream.extend_from_slice(chunk);
        }
        stream.extend(op(b"MEM.PAGE.ADD", 0x2000));
        for n in 0..16u64 {
            stream.extend(op(b"MR.EXTEND", 0x2000 + n * 256));
            stream.extend_from_slice(&[0; 256]);
        }
        stream.extend(op(b"MEM.PAGE.ADD", 0x5000));
        let expected: [u8; 48] = Sha384::digest(&stream).into();
        assert_eq!(mrtd(&pages), expected);
    }
}
