//! The crate's error type.

use crate::importer::IsolationType;
use crate::importer::ParameterAreaIndex;

/// Everything that can go wrong while building or measuring an image.
///
/// Builder errors leave the image as it was before the failing call: a rejected import is not
/// half-applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An import covers pages another import (or parameter area) already covers.
    #[error(
        "{tag}: pages {start:#x}..{end:#x} overlap {other} at {other_start:#x}..{other_end:#x}"
    )]
    Overlap {
        /// Debug tag of the rejected import.
        tag: String,
        /// First page of the rejected import.
        start: u64,
        /// Page after the rejected import.
        end: u64,
        /// Debug tag of the import already there.
        other: String,
        /// First page of the import already there.
        other_start: u64,
        /// Page after the import already there.
        other_end: u64,
    },
    /// An address or size is not aligned as the contract requires.
    #[error("{what} {value:#x} is not aligned to {alignment:#x}")]
    Misaligned {
        /// What was misaligned.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// A page range or size computation leaves the 64-bit guest physical address space.
    #[error("{what}: range starting at page {page_base:#x} with {page_count} pages overflows")]
    RangeOverflow {
        /// What was being imported.
        what: String,
        /// First page.
        page_base: u64,
        /// Number of pages.
        page_count: u64,
    },
    /// A zero-sized import or area.
    #[error("{0}: zero pages")]
    Empty(String),
    /// More data than the pages being imported can hold.
    #[error("{tag}: {len} bytes of data do not fit in {page_count} pages")]
    DataTooLarge {
        /// Debug tag of the import.
        tag: String,
        /// Length of the data.
        len: usize,
        /// Pages imported.
        page_count: u64,
    },
    /// A parameter area index that was never created (or belongs to another image).
    #[error("unknown parameter area {0:?}")]
    UnknownParameterArea(ParameterAreaIndex),
    /// A parameter offset outside its area.
    #[error("parameter offset {offset:#x} is outside area {area:?} of {size:#x} bytes")]
    ParameterOutOfArea {
        /// The area.
        area: ParameterAreaIndex,
        /// The offending byte offset.
        offset: u32,
        /// Size of the area in bytes.
        size: u64,
    },
    /// A second VP context page (or VP context import) for the same image.
    #[error("a VP context page is already set at page {existing:#x}")]
    DuplicateVpContextPage {
        /// The page already holding the VP context.
        existing: u64,
    },
    /// A VP context page for an isolation type that has none.
    #[error("isolation type {0:?} has no VP context page")]
    VpContextPageUnsupported(IsolationType),
    /// An acceptance type that this isolation platform cannot express.
    #[error("{tag}: acceptance {acceptance} is not available on {isolation:?}")]
    AcceptanceUnsupported {
        /// Debug tag of the import.
        tag: String,
        /// The acceptance requested.
        acceptance: &'static str,
        /// The platform.
        isolation: IsolationType,
    },
    /// A VP context import must be exactly one page.
    #[error("{0}: a VP context import must be exactly one page")]
    VpContextSize(String),
    /// The same register was imported twice.
    #[error("register {0} imported twice")]
    DuplicateRegister(String),
    /// SNP registers were imported but no VP context page was set.
    #[error("SNP VP registers imported but no VP context page set")]
    MissingVpContextPage,
    /// This architecture's registers cannot be expressed on this platform.
    #[error("{arch} registers cannot be expressed on {isolation:?}")]
    RegistersUnsupported {
        /// Architecture name.
        arch: &'static str,
        /// The platform.
        isolation: IsolationType,
    },
    /// Registers that no VP context (or TDX reset-page trampoline) can deliver.
    #[error("VP context: {0}")]
    VpContext(String),
    /// Invalid relocation parameters.
    #[error("invalid relocation: {0}")]
    InvalidRelocation(String),
    /// Relocation regions overlap each other.
    #[error("relocation region {gpa:#x}+{size:#x} overlaps another relocation region")]
    RelocationOverlap {
        /// Base of the rejected region.
        gpa: u64,
        /// Size of the rejected region.
        size: u64,
    },
    /// Only one page table relocation region per image.
    #[error("a page table relocation region is already set")]
    DuplicatePageTableRelocation,
    /// The imported-regions list does not fit in its page.
    #[error("{count} imported region descriptors do not fit in one page")]
    ImportedRegionsTooMany {
        /// Number of descriptors including the terminator.
        count: usize,
    },
    /// The same isolation type was added twice to one file.
    #[error("isolation type {0:?} is already part of this file")]
    DuplicatePlatform(IsolationType),
    /// A VP context structure could not be allocated.
    #[error("out of memory allocating a VP context")]
    OutOfMemory,
    /// Parameter area indices are 32-bit, across all platforms of a file.
    #[error("too many parameter areas")]
    TooManyParameterAreas,
    /// A file holds at most 32 platforms (one compatibility mask bit each).
    #[error("too many platforms")]
    TooManyPlatforms,
    /// The file has no platform to measure for the request.
    #[error("the file has no {0} platform")]
    PlatformNotInFile(String),
    /// Startup memory that the image cannot guarantee.
    #[error("startup memory at page {page_base:#x} (+{page_count}) is not available: {reason}")]
    StartupMemory {
        /// First page.
        page_base: u64,
        /// Number of pages.
        page_count: u64,
        /// Why not.
        reason: &'static str,
    },
    /// A malformed IGVM file (our pre-checks or the `igvm` crate's parser).
    #[error("malformed IGVM file: {0}")]
    Malformed(String),
    /// The input is shorter than an IGVM fixed header or than the size its header declares.
    #[error("truncated IGVM file: {what} needs {needed} bytes, the file has {len}")]
    Truncated {
        /// What did not fit.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        len: u64,
    },
    /// The input does not start with the IGVM magic.
    #[error("not an IGVM file: magic {found:#010x}, expected {expected:#010x} (\"IGVM\")")]
    BadMagic {
        /// The first four bytes, little endian.
        found: u32,
        /// The IGVM magic.
        expected: u32,
    },
    /// A platform would measure more pages than the limit allows.
    #[error("the file asks to measure more than {limit} pages (raise the limit with --max-pages)")]
    TooManyPages {
        /// The limit in force.
        limit: u64,
    },
    /// A range of pages runs past the end of the 64-bit guest physical address space.
    #[error("{what} at {gpa:#x} with {pages} pages wraps past 2^64")]
    AddressWrap {
        /// The directive kind.
        what: &'static str,
        /// Its first GPA.
        gpa: u64,
        /// Its pages.
        pages: u64,
    },
    /// A 2 MiB page directive with file data (the `igvm` crate reads only its first 4 KiB,
    /// so it cannot be measured correctly).
    #[error(
        "2 MiB page at {gpa:#x} carries file data, which cannot be measured (only 4 KiB of it \
         is read); split it into 4 KiB pages"
    )]
    LargePageWithData {
        /// GPA of the page.
        gpa: u64,
    },
    /// A parameter area index declared twice for one platform.
    #[error("parameter area {0} declared twice")]
    DuplicateParameterArea(u32),
    /// A parameter insert of an area never declared for that platform.
    #[error("parameter insert of undeclared area {0}")]
    UndeclaredParameterArea(u32),
    /// The `igvm` crate rejected what we built.
    #[error("igvm: {0}")]
    Igvm(#[from] igvm::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
