//! Reading IGVM files we did not build.
//!
//! The `igvm` crate's parser (0.5) panics on some malformed inputs instead of returning an
//! error: file offsets below the file data section (an unchecked subtraction), VBS VP
//! contexts with several VTLs or a nonzero VP index (assertions), zero relocation alignment
//! (division by zero) and empty or wrapping relocation regions. [`parse`] walks the raw
//! headers first and rejects exactly those inputs with a typed error, then hands the bytes to
//! the `igvm` crate.
//!
//! Before anything else it checks the magic and the sizes the fixed header declares, so that
//! a file that is not IGVM, or was cut short, gets an error that says so
//! ([`Error::BadMagic`], [`Error::Truncated`]) rather than a parser's generic complaint.

use crate::error::Error;
use crate::error::Result;
use igvm::IgvmFile;
use igvm_defs::IGVM_FIXED_HEADER;
use igvm_defs::IGVM_MAGIC_VALUE;
use igvm_defs::IGVM_VHS_PAGE_DATA;
use igvm_defs::IGVM_VHS_PAGE_TABLE_RELOCATION;
use igvm_defs::IGVM_VHS_PARAMETER_AREA;
use igvm_defs::IGVM_VHS_RELOCATABLE_REGION;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use igvm_defs::IGVM_VHS_VARIABLE_HEADER;
use igvm_defs::IGVM_VHS_VP_CONTEXT;
use igvm_defs::IgvmPlatformType;
use igvm_defs::IgvmVariableHeaderType;
use std::collections::HashMap;
use zerocopy::FromBytes;
use zerocopy::little_endian::U32;

/// Parses an IGVM binary (every platform kept), rejecting inputs the `igvm` crate would
/// panic on.
pub fn parse(bytes: &[u8]) -> Result<IgvmFile> {
    check_magic_and_size(bytes)
        .and_then(|()| precheck(bytes))
        .inspect_err(|e| tracing::debug!(error = %e, "IGVM pre-check rejected"))?;
    IgvmFile::new_from_binary(bytes, None).map_err(|e| Error::Malformed(e.to_string()))
}

/// The magic first, then every size the fixed header declares against the input's length.
fn check_magic_and_size(bytes: &[u8]) -> Result<()> {
    let len = bytes.len() as u64;
    let truncated = |what, needed| Error::Truncated { what, needed, len };
    let magic = bytes
        .first_chunk::<4>()
        .ok_or(truncated("the IGVM magic", 4))?;
    let found = u32::from_le_bytes(*magic);
    if found != IGVM_MAGIC_VALUE {
        return Err(Error::BadMagic {
            found,
            expected: IGVM_MAGIC_VALUE,
        });
    }
    let (fixed, _) = IGVM_FIXED_HEADER::read_from_prefix(bytes)
        .map_err(|_| truncated("the fixed header", size_of::<IGVM_FIXED_HEADER>() as u64))?;
    let headers_end =
        u64::from(fixed.variable_header_offset) + u64::from(fixed.variable_header_size);
    if headers_end > len {
        return Err(truncated("the variable headers", headers_end));
    }
    if u64::from(fixed.total_file_size) > len {
        return Err(truncated(
            "the file size in the header",
            u64::from(fixed.total_file_size),
        ));
    }
    Ok(())
}

fn bad(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// Size of a header body as the `igvm` crate expects it (it requires exact lengths).
fn body<T: FromBytes>(data: &[u8], length: usize) -> Option<T> {
    if length != size_of::<T>() {
        return None;
    }
    T::read_from_prefix(data).ok().map(|(t, _)| t)
}

fn precheck(bytes: &[u8]) -> Result<()> {
    // Anything the fixed-header checks below do not cover, the igvm crate rejects cleanly.
    let Ok((fixed, _)) = IGVM_FIXED_HEADER::read_from_prefix(bytes) else {
        return Ok(());
    };
    let data_start = fixed
        .variable_header_offset
        .checked_add(fixed.variable_header_size)
        .ok_or_else(|| bad("variable header section wraps"))?;
    let (Ok(var_start), Ok(data_start_usize)) = (
        usize::try_from(fixed.variable_header_offset),
        usize::try_from(data_start),
    ) else {
        return Ok(());
    };
    let (Some(mut headers), Some(file_data)) = (
        bytes.get(var_start..data_start_usize),
        bytes.get(data_start_usize..),
    ) else {
        return Ok(());
    };
    let offset_ok = |file_offset: u32| file_offset == 0 || file_offset >= data_start;
    let mut platforms: HashMap<u32, IgvmPlatformType> = HashMap::new();

    while let Ok((IGVM_VHS_VARIABLE_HEADER { typ, length }, rest)) =
        IGVM_VHS_VARIABLE_HEADER::read_from_prefix(headers)
    {
        let Ok(length) = usize::try_from(length) else {
            return Ok(());
        };
        let Some(advance) = length.checked_next_multiple_of(8) else {
            return Ok(());
        };
        let Some(data) = rest.get(..length) else {
            return Ok(());
        };
        match typ {
            IgvmVariableHeaderType::IGVM_VHT_SUPPORTED_PLATFORM => {
                let Some(p) = body::<IGVM_VHS_SUPPORTED_PLATFORM>(data, length) else {
                    return Ok(());
                };
                platforms.insert(p.compatibility_mask, p.platform_type);
            }
            IgvmVariableHeaderType::IGVM_VHT_PAGE_DATA => {
                let Some(p) = body::<IGVM_VHS_PAGE_DATA>(data, length) else {
                    return Ok(());
                };
                if !offset_ok(p.file_offset) {
                    return Err(bad("page data offset before the file data section"));
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_PARAMETER_AREA => {
                let Some(p) = body::<IGVM_VHS_PARAMETER_AREA>(data, length) else {
                    return Ok(());
                };
                if !offset_ok(p.file_offset)
                    || (p.file_offset != 0 && p.number_of_bytes > bytes.len() as u64)
                {
                    return Err(bad("parameter area data outside the file"));
                }
            }
            // CoRIM document and signature (only parsed when the igvm crate's `corim`
            // feature is on): mask, file offset, size, reserved.
            IgvmVariableHeaderType(0x104 | 0x105) => {
                let Some([_mask, file_offset, _size, _reserved]) = body::<[U32; 4]>(data, length)
                else {
                    return Ok(());
                };
                if !offset_ok(file_offset.get()) {
                    return Err(bad("CoRIM data offset before the file data section"));
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_RELOCATABLE_REGION => {
                let Some(r) = body::<IGVM_VHS_RELOCATABLE_REGION>(data, length) else {
                    return Ok(());
                };
                if r.relocation_alignment == 0
                    || r.relocation_region_size == 0
                    || r.relocation_region_gpa
                        .checked_add(r.relocation_region_size)
                        .is_none()
                {
                    return Err(bad(
                        "empty or wrapping relocation region, or zero alignment",
                    ));
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => {
                let Some(r) = body::<IGVM_VHS_PAGE_TABLE_RELOCATION>(data, length) else {
                    return Ok(());
                };
                if r.size == 0 || r.gpa.checked_add(r.size).is_none() {
                    return Err(bad("empty or wrapping page table relocation region"));
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_VP_CONTEXT => {
                let Some(vp) = body::<IGVM_VHS_VP_CONTEXT>(data, length) else {
                    return Ok(());
                };
                check_vp_context(
                    &vp,
                    platforms.get(&vp.compatibility_mask),
                    data_start,
                    file_data,
                )?;
            }
            _ => {}
        }
        let Some(next) = rest.get(advance..) else {
            return Ok(());
        };
        headers = next;
    }
    Ok(())
}

fn check_vp_context(
    vp: &IGVM_VHS_VP_CONTEXT,
    platform: Option<&IgvmPlatformType>,
    data_start: u32,
    file_data: &[u8],
) -> Result<()> {
    let Some(platform) = platform else {
        // Unknown platform: the igvm crate rejects it before touching the offset.
        return Ok(());
    };
    let start = vp
        .file_offset
        .checked_sub(data_start)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| bad("VP context offset before the file data section"))?;
    if *platform != IgvmPlatformType::VSM_ISOLATION {
        return Ok(());
    }
    let regs = file_data
        .get(start..)
        .ok_or_else(|| bad("VP context offset beyond the file"))?;
    if vp.vp_index != 0 {
        return Err(bad("VBS VP context for a VP other than the BSP"));
    }
    let Some((count, regs)) = regs.split_first_chunk::<4>() else {
        return Ok(());
    };
    let count = u32::from_le_bytes(*count);
    // Each register record is 32 bytes, its VTL in the first byte; all must agree.
    let vtls: Vec<u8> = regs
        .chunks_exact(32)
        .take(usize::try_from(count).unwrap_or(usize::MAX))
        .filter_map(|r| r.first().copied())
        .collect();
    if vtls.windows(2).any(|w| w.first() != w.last()) {
        return Err(bad("VBS VP context mixes VTLs"));
    }
    Ok(())
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
    use crate::importer::IsolationType;
    use zerocopy::IntoBytes;

    /// Recomputes the header checksum after a test edited the headers.
    fn fix_checksum(bytes: &mut [u8]) {
        let (mut fixed, _) = IGVM_FIXED_HEADER::read_from_prefix(bytes).unwrap();
        let end = (fixed.variable_header_offset + fixed.variable_header_size) as usize;
        fixed.checksum = 0;
        bytes[..size_of::<IGVM_FIXED_HEADER>()].copy_from_slice(fixed.as_bytes());
        fixed.checksum = crate::builder::crc32(&bytes[..end]);
        bytes[..size_of::<IGVM_FIXED_HEADER>()].copy_from_slice(fixed.as_bytes());
    }

    fn one_page_file() -> Vec<u8> {
        let mut b = IgvmBuilder::<X86Register>::new();
        b.add_platform(PlatformConfig::new(IsolationConfig::new(
            IsolationType::Tdx,
        )))
        .unwrap()
        .import_pages(1, 1, "p", BootPageAcceptance::Exclusive, b"data")
        .unwrap();
        b.build_bytes().unwrap()
    }

    #[test]
    fn well_formed_files_pass() {
        parse(&one_page_file()).unwrap();
    }

    #[test]
    fn page_offset_below_file_data_is_rejected_not_a_panic() {
        let mut bytes = one_page_file();
        // The page data header is the last variable header: gpa(8) mask(4) file_offset(4)...
        let (fixed, _) = IGVM_FIXED_HEADER::read_from_prefix(&bytes).unwrap();
        let end = (fixed.variable_header_offset + fixed.variable_header_size) as usize;
        let page = end - size_of::<IGVM_VHS_PAGE_DATA>();
        bytes[page + 12..page + 16].copy_from_slice(&8u32.to_le_bytes());
        fix_checksum(&mut bytes);
        assert!(matches!(parse(&bytes), Err(Error::Malformed(_))));
    }

    #[test]
    fn a_header_section_past_the_end_is_truncation() {
        let mut bytes = one_page_file();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&bytes),
            Err(Error::Truncated {
                what: "the variable headers",
                ..
            })
        ));
    }

    #[test]
    fn truncated_files_say_what_is_missing() {
        let bytes = one_page_file();
        let total = bytes.len() as u64;
        let what = |len: usize| match parse(&bytes[..len]) {
            Err(Error::Truncated { what, len: l, .. }) => {
                assert_eq!(l, len as u64);
                what
            }
            other => panic!("{len}: {other:?}"),
        };
        assert_eq!(what(0), "the IGVM magic");
        assert_eq!(what(3), "the IGVM magic");
        assert_eq!(what(8), "the fixed header");
        assert_eq!(what(bytes.len() - 1), "the file size in the header");
        assert!(matches!(
            parse(&bytes[..bytes.len() - 1]),
            Err(Error::Truncated { needed, .. }) if needed == total
        ));
    }

    #[test]
    fn a_wrong_magic_is_named_before_anything_else() {
        let mut bytes = one_page_file();
        bytes[..4].copy_from_slice(b"ELF\x7f");
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadMagic {
                    found: 0x7f46_4c45,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("not an IGVM file"), "{err}");
        // Even a one-byte-too-short garbage file is a bad magic, not a truncation.
        assert!(matches!(parse(b"MZ\x90\0"), Err(Error::BadMagic { .. })));
    }
}
