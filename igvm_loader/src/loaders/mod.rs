//! Loaders: turn a payload (kernel, firmware) into [`ImageLoad`] calls.
//!
//! Every loader is written against [`ImageLoad`] only, so the same code fills an IGVM
//! builder image, a test recorder, or any other importer. Each one declares the memory it
//! needs with [`ImageLoad::verify_startup_memory_available`] and refuses bad input with a
//! [`LoadError`] naming the file and the problem.
//!
//! - [`elf`]: an x86-64 ELF kernel (PT_LOAD segments, entry, relocation of ET_DYN kernels).
//! - [`linux`]: Linux direct boot of a bzImage (boot_params zero page, e820, command line,
//!   initrd).
//! - [`firmware`]: a flat firmware blob ending at the reset vector.
//! - [`aarch64`]: an AArch64 Linux `Image` with a device-tree parameter area.
//! - [`x86`]: what the x86 kernel loaders share: the memory map, identity-mapped 4-level
//!   page tables, the boot GDT and the 64-bit boot registers.
//!
//! Not done by these loaders (absent, not emulated): accepting or validating guest memory
//! beyond the imported pages. On TDX and SNP the pages a loader imports are accepted at
//! launch; the rest of RAM is only declared with `verify_startup_memory_available`, and a
//! kernel started directly must accept it itself (or be started by a firmware or shim that
//! does, as TDVF, TD-shim and COCONUT-SVSM do). The QEMU boot tests run the TDX and SNP
//! start states without isolation, so they prove the start state, not memory acceptance.
//!
//! A loader fills any importer; here a recorder shows what an ELF kernel asks for:
//!
//! ```
//! use igvm_loader::arch::X86Register;
//! use igvm_loader::importer::{IsolationConfig, IsolationType};
//! use igvm_loader::loaders::elf::{ElfConfig, load_elf};
//! use igvm_loader::loaders::{Payload, Problem};
//! use igvm_loader::loaders::x86::X86Layout;
//! use igvm_loader::recording::RecordingImporter;
//!
//! let mut importer =
//!     RecordingImporter::<X86Register>::new(IsolationConfig::new(IsolationType::None));
//! let layout = X86Layout::with_memory(64 << 20);
//! // Not an ELF file: refused, naming the file and the problem.
//! let config = ElfConfig::new(Payload::new("kernel.elf", b"MZ not an ELF file at all, no"), layout);
//! let err = load_elf(&mut importer, &config).unwrap_err();
//! assert_eq!(err.file, "kernel.elf");
//! assert!(matches!(err.problem, Problem::BadMagic(_)));
//! assert!(importer.calls().is_empty(), "nothing imported before the checks pass");
//! ```
//!
//! [`ImageLoad`]: crate::ImageLoad
//! [`ImageLoad::verify_startup_memory_available`]: crate::ImageLoad::verify_startup_memory_available

pub mod aarch64;
pub mod elf;
pub mod firmware;
pub mod linux;
pub mod x86;

use crate::importer::PAGE_SIZE;
use crate::vp_context::ContextError;
use thiserror::Error;

/// A payload file: its name (for errors and the map) and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// The file name, as errors report it.
    pub name: &'a str,
    /// The contents.
    pub data: &'a [u8],
}

impl<'a> Payload<'a> {
    /// A payload called `name` holding `data`.
    pub fn new(name: &'a str, data: &'a [u8]) -> Self {
        Self { name, data }
    }
}

/// A loader failure: which file, and what is wrong with it (or with the guest it was to be
/// loaded into).
#[derive(Debug, Error)]
#[error("{file}: {problem}")]
pub struct LoadError {
    /// The payload (or manifest item) at fault.
    pub file: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What a loader refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Problem {
    /// The file ends before a structure it declares.
    #[error("truncated: {0}")]
    Truncated(String),
    /// The file is not of the expected format.
    #[error("bad magic: {0}")]
    BadMagic(String),
    /// The file is of the right format but a variant this loader cannot start.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Two parts of the payload claim the same guest memory.
    #[error("overlapping segments: {0}")]
    Overlap(String),
    /// The guest memory map has no room for the payload.
    #[error("memory too small: {what} needs {start:#x}..{end:#x}, which is not RAM")]
    MemoryTooSmall {
        /// What was being placed.
        what: String,
        /// First byte needed.
        start: u64,
        /// Byte after the last one needed.
        end: u64,
    },
    /// A value outside what the format allows.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The boot registers cannot be delivered on this platform.
    #[error("start state: {0}")]
    Context(ContextError),
    /// The importer refused a call.
    #[error("import: {0}")]
    Import(crate::Error),
}

// Display carries the inner error, so it is not also a `source` (which `{:#}` would print
// twice).
impl From<ContextError> for Problem {
    fn from(e: ContextError) -> Self {
        Problem::Context(e)
    }
}

impl From<crate::Error> for Problem {
    fn from(e: crate::Error) -> Self {
        Problem::Import(e)
    }
}

impl LoadError {
    /// A failure of `file`.
    pub fn new(file: impl Into<String>, problem: Problem) -> Self {
        let e = Self {
            file: file.into(),
            problem,
        };
        tracing::warn!(error = %e, "load refused");
        e
    }
}

/// Result type of the loaders.
pub type Result<T, E = LoadError> = std::result::Result<T, E>;

/// Pages needed for `bytes` bytes.
pub(crate) fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

/// `value` rounded up to `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}
