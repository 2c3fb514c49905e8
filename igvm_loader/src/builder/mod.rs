//! The IGVM builder: one [`PlatformImage`] per isolation platform, merged into one IGVM file
//! whose directives carry compatibility masks.
//!
//! A page imported identically (same GPA, flags, type and data) by several platforms is
//! stored once with the union of their masks. The merge is stable: every platform sees its
//! directives in the order its loader issued them, so per-platform measurements do not
//! depend on which other platforms share the file.

mod image;
mod regions;

pub use image::DEFAULT_SNP_POLICY;
pub use image::PlatformConfig;
pub use image::PlatformImage;

use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::ImageLoad;
use crate::importer::IsolationType;
use crate::measure::MeasureOptions;
use crate::measure::Measurement;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmRevision;
use std::collections::HashMap;

/// Builds one IGVM file covering several isolation platforms.
#[derive(Debug, Clone)]
pub struct IgvmBuilder<R> {
    images: Vec<PlatformImage<R>>,
}

impl<R: GuestArch> Default for IgvmBuilder<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: GuestArch> IgvmBuilder<R> {
    /// An empty builder.
    pub fn new() -> Self {
        Self { images: Vec::new() }
    }

    /// Adds a platform and returns its image for a loader to fill. The platform's
    /// compatibility mask is `1 << n` for the n-th platform added.
    pub fn add_platform(&mut self, config: PlatformConfig) -> Result<&mut PlatformImage<R>> {
        let isolation = config.isolation.isolation_type;
        if self
            .images
            .iter()
            .any(|i| i.isolation_config().isolation_type == isolation)
        {
            return Err(Error::DuplicatePlatform(isolation));
        }
        if self.images.len() >= 32 {
            return Err(Error::TooManyPlatforms);
        }
        self.images.push(PlatformImage::new(config));
        let last = self.images.len() - 1;
        self.images.get_mut(last).ok_or(Error::TooManyPlatforms)
    }

    /// The image of an already added platform.
    pub fn platform_mut(&mut self, isolation: IsolationType) -> Option<&mut PlatformImage<R>> {
        self.images
            .iter_mut()
            .find(|i| i.isolation_config().isolation_type == isolation)
    }

    /// The images added so far, in mask order.
    pub fn images(&self) -> &[PlatformImage<R>] {
        &self.images
    }

    /// Merges every platform into one IGVM file (validated by the `igvm` crate).
    pub fn build(&self) -> Result<IgvmFile> {
        let mut platforms = Vec::new();
        let mut initializations = Vec::new();
        let mut directives: Vec<IgvmDirectiveHeader> = Vec::new();
        let mut area_base = 0u32;
        for (bit, image) in (0u32..).zip(&self.images) {
            let parts = image.to_parts(1 << bit, area_base)?;
            let areas = parts
                .directives
                .iter()
                .filter(|d| matches!(d, IgvmDirectiveHeader::ParameterArea { .. }))
                .count();
            area_base = u32::try_from(areas)
                .ok()
                .and_then(|a| area_base.checked_add(a))
                .ok_or(Error::TooManyParameterAreas)?;
            platforms.push(parts.platform);
            initializations.extend(parts.initializations);
            directives = merge_stable(directives, parts.directives);
        }
        let revision = match R::igvm_arch() {
            igvm::Arch::X64 => IgvmRevision::V1,
            arch => IgvmRevision::V2 {
                arch,
                page_size: 4096,
            },
        };
        Ok(IgvmFile::new(
            revision,
            platforms,
            initializations,
            directives,
        )?)
    }

    /// [`Self::build`], serialized to the IGVM binary format.
    pub fn build_bytes(&self) -> Result<Vec<u8>> {
        let file = self.build()?;
        let mut out = Vec::new();
        file.serialize(&mut out)?;
        ensure_file_data(&mut out)?;
        Ok(out)
    }

    /// [`Self::build_bytes`] plus the launch measurement of every measurable platform,
    /// computed from the bytes as a loader will read them back (what is measured is what
    /// ships).
    pub fn build_measured(&self, options: &MeasureOptions) -> Result<(Vec<u8>, Vec<Measurement>)> {
        let bytes = self.build_bytes()?;
        let file = crate::parse(&bytes)?;
        let measurements = crate::measure::measure_all(&file, options)?;
        Ok((bytes, measurements))
    }
}

/// Appends a few zero bytes of file data to a file that has none.
///
/// The `igvm` crate (0.5) rejects files whose file data section is empty, which happens when
/// every page is data-less (zero or unmeasured pages, 2 MiB pages). Unreferenced file data is
/// harmless, so the file gets 8 bytes of it; the fixed header's size and checksum are updated.
fn ensure_file_data(bytes: &mut Vec<u8>) -> Result<()> {
    use igvm_defs::IGVM_FIXED_HEADER;
    use zerocopy::FromBytes;
    use zerocopy::IntoBytes;
    let malformed = || Error::Malformed("serialized file has no valid fixed header".into());
    let (mut header, _) = IGVM_FIXED_HEADER::read_from_prefix(bytes).map_err(|_| malformed())?;
    let headers_end = usize::try_from(header.variable_header_offset)
        .ok()
        .zip(usize::try_from(header.variable_header_size).ok())
        .and_then(|(o, s)| o.checked_add(s))
        .ok_or_else(malformed)?;
    if bytes.len() > headers_end {
        return Ok(());
    }
    bytes.resize(headers_end + 8, 0);
    header.total_file_size = u32::try_from(bytes.len()).map_err(|_| malformed())?;
    header.checksum = 0;
    // The checksum covers the fixed header (V2 fields included, checksum zero) and the
    // variable headers, which follow it directly.
    let (fixed, _) = bytes.split_at_mut(size_of::<IGVM_FIXED_HEADER>());
    fixed.copy_from_slice(header.as_bytes());
    header.checksum = crc32(bytes.get(..headers_end).ok_or_else(malformed)?);
    let (fixed, _) = bytes.split_at_mut(size_of::<IGVM_FIXED_HEADER>());
    fixed.copy_from_slice(header.as_bytes());
    Ok(())
}

/// CRC-32 (IEEE, reflected), the IGVM header checksum.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Identity of a page directive apart from its data and mask.
type PageKey = (u64, u32, u16);

fn page_key(d: &IgvmDirectiveHeader) -> Option<PageKey> {
    match d {
        IgvmDirectiveHeader::PageData {
            gpa,
            flags,
            data_type,
            ..
        } => Some((*gpa, u32::from(*flags), data_type.0)),
        _ => None,
    }
}

fn page_data(d: &IgvmDirectiveHeader) -> Option<&[u8]> {
    match d {
        IgvmDirectiveHeader::PageData { data, .. } => Some(data.as_slice()),
        _ => None,
    }
}

/// Merges `other` into `base`, sharing equal page directives, keeping both sequences' order.
///
/// The rule, tested as a property in `merge_props`: every platform's view of the result (the
/// directives carrying its mask bit) is exactly its own sequence, in order. Sharing is an
/// optimisation on top: a page of `other` may take over a page of `base` only if it is equal
/// (GPA, flags, type and data) and comes after the previous match, so both orders survive.
/// Greedy: each directive of `other` is matched with the first equal page of `base` after the
/// previous match; unmatched ones go just before the next match (or at the end). Hash lookup
/// keeps this linear in practice (the `igvm` crate's merge is quadratic).
fn merge_stable(
    mut base: Vec<IgvmDirectiveHeader>,
    other: Vec<IgvmDirectiveHeader>,
) -> Vec<IgvmDirectiveHeader> {
    if base.is_empty() {
        return other;
    }
    let mut index: HashMap<PageKey, Vec<usize>> = HashMap::new();
    for (pos, d) in base.iter().enumerate() {
        if let Some(key) = page_key(d) {
            index.entry(key).or_default().push(pos);
        }
    }
    let mut cursor = 0usize;
    // (position in base before which to insert, directive)
    let mut inserts: Vec<(usize, IgvmDirectiveHeader)> = Vec::new();
    let mut pending: Vec<IgvmDirectiveHeader> = Vec::new();
    for d in other {
        let matched = page_key(&d).and_then(|key| {
            let positions = index.get(&key)?;
            let first = positions.partition_point(|&p| p < cursor);
            positions.get(first..)?.iter().copied().find(|&p| {
                base.get(p)
                    .and_then(page_data)
                    .zip(page_data(&d))
                    .is_some_and(|(a, b)| a == b)
            })
        });
        match matched {
            Some(pos) => {
                if let (
                    Some(IgvmDirectiveHeader::PageData {
                        compatibility_mask: into,
                        ..
                    }),
                    Some(from),
                ) = (base.get_mut(pos), d.compatibility_mask())
                {
                    *into |= from;
                }
                inserts.extend(pending.drain(..).map(|p| (pos, p)));
                cursor = pos + 1;
            }
            None => pending.push(d),
        }
    }
    let end = base.len();
    inserts.extend(pending.into_iter().map(|p| (end, p)));
    if inserts.is_empty() {
        return base;
    }
    let mut out = Vec::with_capacity(base.len() + inserts.len());
    let mut inserts = inserts.into_iter().peekable();
    for (pos, d) in base.into_iter().enumerate() {
        while let Some((_, ins)) = inserts.next_if(|(at, _)| *at <= pos) {
            out.push(ins);
        }
        out.push(d);
    }
    out.extend(inserts.map(|(_, d)| d));
    out
}

#[cfg(test)]
mod merge_props;
#[cfg(test)]
mod tests;
