//! Hyper-V VBS boot measurement digest: a SHA-256 chain over boot-measurement chunks.
//!
//! Each record is `digest = SHA-256(digest || chunk)`. GPA page chunks are a 32-byte header
//! (byte count, type, acceptance metadata, page number) followed by the 4 KiB page (data
//! zero-padded, or all zero when unmeasured); VP register chunks are 48 bytes and come after
//! every page. The page data sits inside the chained hash, so VBS cannot hash pages ahead of
//! the chain: it is sequential.

use super::Progress;
use bitfield_struct::bitfield;
use open_enum::open_enum;
use sha2::Digest;
use sha2::Sha256;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Chunk type codes.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum ChunkType {
    /// A VP register value.
    VP_REGISTER = 0,
    /// A VTL was enabled on a VP.
    VP_VTL_ENABLED = 1,
    /// A GPA page.
    VP_GPA_PAGE = 2,
}

/// Common chunk header (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChunkHeader {
    /// Bytes this chunk describes (header included).
    pub byte_count: U32,
    /// [`ChunkType`] code.
    pub chunk_type: U32,
    /// Zero.
    pub reserved: U64,
}
const _: () = assert!(size_of::<ChunkHeader>() == 16);

/// Acceptance metadata of a GPA page.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PageMetadata {
    /// Host acceptance bits (1 readable, 2 writable); 0 for ordinary imports.
    #[bits(2)]
    pub acceptance: u8,
    /// The page's data is not measured (hashed as zeros).
    pub data_unmeasured: bool,
    #[bits(61)]
    _reserved: u64,
}

/// A GPA page chunk header (32 bytes; 4 KiB of page follow).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PageChunk {
    /// Header, byte count 32 + 4096.
    pub header: ChunkHeader,
    /// [`PageMetadata`] bits.
    pub metadata: U64,
    /// GPA page number.
    pub page_number: U64,
}
const _: () = assert!(size_of::<PageChunk>() == 32);

/// A VP register chunk (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterChunk {
    /// Header, byte count 48.
    pub header: ChunkHeader,
    /// Zero.
    pub reserved: U32,
    /// VTL of the register.
    pub vtl: u8,
    /// Zero.
    pub reserved2: [u8; 3],
    /// Zero.
    pub reserved3: U32,
    /// Hyper-V register name.
    pub name: U32,
    /// Hyper-V register value.
    pub value: [u8; 16],
}
const _: () = assert!(size_of::<RegisterChunk>() == 48);

/// One VBS measurement record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VbsRecord<'a> {
    /// Consecutive GPA pages; `data` is `None` for unmeasured pages.
    Pages {
        /// Page number (GPA / 4096) of the first page.
        page_number: u64,
        /// Number of pages (a data-less range stays one record however long).
        pages: u64,
        /// Acceptance metadata.
        metadata: PageMetadata,
        /// Page data: page `i` holds bytes `i * 4096..`, zero-padded to 4 KiB.
        data: Option<&'a [u8]>,
    },
    /// A BSP register.
    Register {
        /// VTL.
        vtl: u8,
        /// Hyper-V register name.
        name: u32,
        /// Value bytes.
        value: [u8; 16],
    },
}

/// The boot digest of `records`.
pub fn boot_digest(records: &[VbsRecord<'_>]) -> [u8; 32] {
    boot_digest_with_progress(records, &())
}

/// [`boot_digest`], reporting records to `progress`.
pub fn boot_digest_with_progress(records: &[VbsRecord<'_>], progress: &dyn Progress) -> [u8; 32] {
    let mut digest = [0u8; 32];
    let mut chained = 0u64;
    let tick = |n: &mut u64| {
        *n += 1;
        if n.is_multiple_of(4096) {
            progress.advance(4096);
        }
    };
    for rec in records {
        match rec {
            VbsRecord::Pages {
                page_number,
                pages,
                metadata,
                data,
            } => {
                let mut chunk = PageChunk {
                    header: ChunkHeader {
                        byte_count: U32::new((size_of::<PageChunk>() + super::PAGE) as u32),
                        chunk_type: U32::new(ChunkType::VP_GPA_PAGE.0),
                        reserved: U64::new(0),
                    },
                    metadata: U64::new(metadata.into_bits()),
                    page_number: U64::new(0),
                };
                for i in 0..*pages {
                    chunk.page_number = U64::new(page_number.wrapping_add(i));
                    let start = usize::try_from(i.saturating_mul(4096)).unwrap_or(usize::MAX);
                    let rest = data.unwrap_or_default().get(start..).unwrap_or_default();
                    let page = rest.get(..super::PAGE).unwrap_or(rest);
                    let mut h = Sha256::new();
                    h.update(digest);
                    h.update(chunk.as_bytes());
                    h.update(page);
                    h.update(super::PAGE_ZEROS.get(page.len()..).unwrap_or_default());
                    digest = h.finalize().into();
                    tick(&mut chained);
                }
            }
            VbsRecord::Register { vtl, name, value } => {
                let chunk = RegisterChunk {
                    header: ChunkHeader {
                        byte_count: U32::new(size_of::<RegisterChunk>() as u32),
                        chunk_type: U32::new(ChunkType::VP_REGISTER.0),
                        reserved: U64::new(0),
                    },
                    reserved: U32::new(0),
                    vtl: *vtl,
                    reserved2: [0; 3],
                    reserved3: U32::new(0),
                    name: U32::new(*name),
                    value: *value,
                };
                let mut h = Sha256::new();
                h.update(digest);
                h.update(chunk.as_bytes());
                digest = h.finalize().into();
                tick(&mut chained);
            }
        }
    }
    progress.advance(chained % 4096);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_matches_a_hand_built_sequence() {
        let data = vec![0x77u8; 100];
        let records = [
            VbsRecord::Pages {
                page_number: 5,
                pages: 1,
                metadata: PageMetadata::new(),
                data: Some(&data),
            },
            VbsRecord::Pages {
                page_number: 6,
                pages: 2,
                metadata: PageMetadata::new()
                    .with_acceptance(3)
                    .with_data_unmeasured(true),
                data: None,
            },
            VbsRecord::Register {
                vtl: 2,
                name: 0x0002_0017,
                value: [9; 16],
            },
        ];
        let mut digest = [0u8; 32];
        let mut step = |record: Vec<u8>| {
            let mut h = Sha256::new();
            h.update(digest);
            h.update(&record);
            digest = h.finalize().into();
        };
        let page = |number: u64, meta: u64, content: &[u8]| {
            let mut r = Vec::new();
            r.extend_from_slice(&(32u32 + 4096).to_le_bytes());
            r.extend_from_slice(&2u32.to_le_bytes());
            r.extend_from_slice(&[0; 8]);
            r.extend_from_slice(&meta.to_le_bytes());
            r.extend_from_slice(&number.to_le_bytes());
            let mut c = content.to_vec();
            c.resize(4096, 0);
            r.extend_from_slice(&c);
            r
        };
        step(page(5, 0, &data));
        step(page(6, 0b111, &[]));
        step(page(7, 0b111, &[]));
        let mut reg = Vec::new();
        reg.extend_from_slice(&48u32.to_le_bytes());
        reg.extend_from_slice(&0u32.to_le_bytes());
        reg.extend_from_slice(&[0; 8]);
        reg.extend_from_slice(&[0; 4]);
        reg.push(2);
        reg.extend_from_slice(&[0; 7]);
        reg.extend_from_slice(&0x0002_0017u32.to_le_bytes());
        reg.extend_from_slice(&[9; 16]);
        step(reg);
        assert_eq!(boot_digest(&records), digest);
    }
}
