//! An x86-64 ELF kernel: PT_LOAD segments at their physical addresses, the entry point, and
//! relocation of position-independent (ET_DYN) kernels.
//!
//! Segments that share a page are loaded as one import; segments whose bytes overlap are
//! refused. An ET_DYN kernel may be loaded at another base ([`ElfConfig::load_base`]), its
//! R_X86_64_RELATIVE relocations applied for that base, and on
//! platforms whose VP context can follow a relocation (native, VBS) the loader also declares
//! the kernel relocatable so the IGVM loader may move it at launch (the IGVM loader then
//! adjusts only RIP: such a kernel must relocate itself, as Linux does).

use super::LoadError;
use super::Payload;
use super::Problem;
use super::Result;
use super::x86::EntryState;
use super::x86::X86Layout;
use super::x86::import_long_mode;
use crate::arch::X86Register;
use crate::importer::BootPageAcceptance;
use crate::importer::ImageLoad;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use object::elf;
use object::read::elf::FileHeader;
use object::read::elf::ProgramHeader;

/// Relocation granularity: kernels are linked for 2 MiB alignment.
const RELOCATION_ALIGNMENT: u64 = 2 << 20;

/// Largest span of guest memory the segments of one kernel may cover (first byte to last):
/// kernels load in tens of MiB.
pub const MAX_KERNEL_SPAN: u64 = 1 << 30;

/// What to load and how to start it.
#[derive(Debug, Clone)]
pub struct ElfConfig<'a> {
    /// The ELF file.
    pub kernel: Payload<'a>,
    /// Memory map and boot-structure placement.
    pub layout: X86Layout,
    /// Load an ET_DYN kernel so its lowest segment starts here (None: where it is linked).
    pub load_base: Option<u64>,
    /// RSI at entry (a boot-information pointer, if the kernel takes one).
    pub rsi: u64,
    /// RSP at entry, if the kernel needs a stack from the loader.
    pub rsp: Option<u64>,
}

impl<'a> ElfConfig<'a> {
    /// `kernel` at its linked address in `layout`, no RSI, no stack.
    pub fn new(kernel: Payload<'a>, layout: X86Layout) -> Self {
        Self {
            kernel,
            layout,
            load_base: None,
            rsi: 0,
            rsp: None,
        }
    }
}

/// One PT_LOAD segment as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address (after relocation).
    pub gpa: u64,
    /// Linked virtual address.
    pub vaddr: u64,
    /// Bytes in memory (`p_memsz`).
    pub mem_size: u64,
    /// Bytes from the file (`p_filesz`).
    pub file_size: u64,
    /// Offset in the file.
    pub offset: u64,
}

/// A parsed, checked ELF kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfKernel {
    /// Loadable segments, sorted by address, after relocation.
    pub segments: Vec<Segment>,
    /// Entry point (physical, after relocation).
    pub entry: u64,
    /// Whether the kernel is position independent (ET_DYN).
    pub relocatable: bool,
    /// The offset applied to the linked addresses.
    pub bias: u64,
    /// R_X86_64_RELATIVE relocations `(linked address, addend)` of an ET_DYN kernel,
    /// applied (as `addend + bias`) to the loaded image.
    pub relocations: Vec<(u64, i64)>,
}

impl ElfKernel {
    /// Parses `kernel`, placing an ET_DYN kernel at `load_base` if given.
    pub fn parse(kernel: &Payload<'_>, load_base: Option<u64>) -> Result<Self> {
        let file = kernel.name;
        let data = kernel.data;
        let bad = |p: Problem| LoadError::new(file, p);
        if data.len() < size_of::<elf::FileHeader64<object::LittleEndian>>() {
            if data.starts_with(&elf::ELFMAG) || data.is_empty() {
                return Err(bad(Problem::Truncated(format!(
                    "{} bytes hold no ELF header",
                    data.len()
                ))));
            }
            return Err(bad(Problem::BadMagic("not an ELF file".into())));
        }
        if !data.starts_with(&elf::ELFMAG) {
            return Err(bad(Problem::BadMagic("not an ELF file".into())));
        }
        let header = elf::FileHeader64::<object::LittleEndian>::parse(data)
            .map_err(|e| bad(Problem::Unsupported(format!("ELF header: {e}"))))?;
        let endian = header
            .endian()
            .map_err(|e| bad(Problem::Unsupported(e.to_string())))?;
        if header.e_machine(endian) != elf::EM_X86_64 {
            return Err(bad(Problem::Unsupported(format!(
                "machine {} is not x86-64",
                header.e_machine(endian)
            ))));
        }
        let relocatable = match header.e_type(endian) {
            elf::ET_EXEC => false,
            elf::ET_DYN => true,
            t => {
                return Err(bad(Problem::Unsupported(format!(
                    "ELF type {t} is neither executable nor position independent"
                ))));
            }
        };
        let phdrs = header
            .program_headers(endian, data)
            .map_err(|e| bad(Problem::Truncated(format!("program headers: {e}"))))?;
        let mut segments = Vec::new();
        let mut entry_segment = None;
        let entry_va = header.e_entry(endian);
        for ph in phdrs {
            if ph.p_type(endian) != elf::PT_LOAD {
                continue;
            }
            let (offset, file_size) = ph.file_range(endian);
            let mem_size = ph.p_memsz(endian);
            if file_size > mem_size {
                return Err(bad(Problem::Invalid(format!(
                    "segment at {:#x} has more file bytes ({file_size:#x}) than memory \
                     ({mem_size:#x})",
                    ph.p_paddr(endian)
                ))));
            }
            ph.data(endian, data).map_err(|_| {
                bad(Problem::Truncated(format!(
                    "segment data {offset:#x}+{file_size:#x} is past the end of the {}-byte \
                     file",
                    data.len()
                )))
            })?;
            if mem_size == 0 {
                continue;
            }
            let vaddr = ph.p_vaddr(endian);
            if entry_va >= vaddr
                && entry_va - vaddr < mem_size
                && ph.p_flags(endian) & elf::PF_X != 0
            {
                entry_segment = Some((vaddr, ph.p_paddr(endian)));
            }
            segments.push(Segment {
                gpa: ph.p_paddr(endian),
                vaddr,
                mem_size,
                file_size,
                offset,
            });
        }
        if segments.is_empty() {
            return Err(bad(Problem::Invalid("no loadable segment".into())));
        }
        let (entry_vaddr, entry_paddr) = entry_segment.ok_or_else(|| {
            bad(Problem::Invalid(format!(
                "entry point {entry_va:#x} is in no executable segment"
            )))
        })?;
        segments.sort_by_key(|s| s.gpa);
        let lowest = segments[0].gpa;
        let bias = match (load_base, relocatable) {
            (None, _) => 0,
            (Some(base), true) => {
                if base % PAGE_SIZE != lowest % PAGE_SIZE {
                    return Err(bad(Problem::Invalid(format!(
                        "load base {base:#x} does not keep the page offset of {lowest:#x}"
                    ))));
                }
                base.wrapping_sub(lowest)
            }
            (Some(base), false) if base == lowest => 0,
            (Some(base), false) => {
                return Err(bad(Problem::Unsupported(format!(
                    "an ET_EXEC kernel cannot move to {base:#x} (linked at {lowest:#x})"
                ))));
            }
        };
        let mut prev_end = 0u64;
        for (i, s) in segments.iter_mut().enumerate() {
            s.gpa = s.gpa.wrapping_add(bias);
            let end = s
                .gpa
                .checked_add(s.mem_size)
                .ok_or_else(|| bad(Problem::Invalid(format!("segment at {:#x} wraps", s.gpa))))?;
            if i > 0 && s.gpa < prev_end {
                return Err(bad(Problem::Overlap(format!(
                    "segment at {:#x} starts before the previous one ends at {prev_end:#x}",
                    s.gpa
                ))));
            }
            prev_end = end;
        }
        // The loader holds the segments' pages in memory and imports them page by page: a
        // few hundred bytes of program headers must not claim gigabytes.
        let span = prev_end - segments[0].gpa;
        if span > MAX_KERNEL_SPAN {
            return Err(bad(Problem::Invalid(format!(
                "segments span {span:#x} bytes from {:#x}, more than the {MAX_KERNEL_SPAN:#x} \
                 a kernel may",
                segments[0].gpa
            ))));
        }
        let entry = (entry_va - entry_vaddr)
            .wrapping_add(entry_paddr)
            .wrapping_add(bias);
        let relocations = if relocatable {
            dynamic_relocations(header, endian, data, &segments).map_err(bad)?
        } else {
            Vec::new()
        };
        Ok(Self {
            segments,
            entry,
            relocatable,
            bias,
            relocations,
        })
    }

    /// The segments grouped into page runs: `(first page, page count, bytes)` with the
    /// file data in place, relocations applied, and zeros elsewhere.
    fn page_runs(&self, data: &[u8]) -> Result<Vec<(u64, u64, Vec<u8>)>, Problem> {
        let mut runs: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for s in &self.segments {
            let first = s.gpa / PAGE_SIZE;
            let last = (s.gpa + s.mem_size).div_ceil(PAGE_SIZE);
            let start = match runs.last_mut() {
                Some(run) if first < run.0 + run.1 => {
                    run.1 = run.1.max(last - run.0);
                    runs.len() - 1
                }
                _ => {
                    runs.push((first, last - first, Vec::new()));
                    runs.len() - 1
                }
            };
            let run = &mut runs[start];
            let at = (s.gpa - run.0 * PAGE_SIZE) as usize;
            let bytes = usize::try_from(s.offset)
                .ok()
                .zip(usize::try_from(s.offset.saturating_add(s.file_size)).ok())
                .and_then(|(start, end)| data.get(start..end))
                .ok_or_else(|| {
                    Problem::Truncated(format!("segment data at {:#x} is past the end", s.offset))
                })?;
            if run.2.len() < at + bytes.len() {
                run.2.resize(at + bytes.len(), 0);
            }
            run.2[at..at + bytes.len()].copy_from_slice(bytes);
        }
        for &(vaddr, addend) in &self.relocations {
            let gpa = self
                .segments
                .iter()
                .find(|s| {
                    vaddr >= s.vaddr
                        && vaddr
                            .checked_add(8)
                            .is_some_and(|end| end <= s.vaddr.saturating_add(s.mem_size))
                })
                .map(|s| s.gpa + (vaddr - s.vaddr))
                .ok_or_else(|| {
                    Problem::Invalid(format!("relocation at {vaddr:#x} is outside every segment"))
                })?;
            let run = runs
                .iter_mut()
                .find(|r| gpa >= r.0 * PAGE_SIZE && gpa + 8 <= (r.0 + r.1) * PAGE_SIZE)
                .ok_or_else(|| Problem::Invalid(format!("relocation at {vaddr:#x} not loaded")))?;
            let at = (gpa - run.0 * PAGE_SIZE) as usize;
            if run.2.len() < at + 8 {
                run.2.resize(at + 8, 0);
            }
            let value = addend.cast_unsigned().wrapping_add(self.bias);
            run.2[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        for run in &mut runs {
            // Trailing zeros are the importer's to supply.
            let keep = run.2.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            run.2.truncate(keep);
        }
        Ok(runs)
    }
}

/// `DT_RELR` (compact relative relocations), which `object` 0.37 does not name.
const DT_RELR: u32 = 36;

/// Largest relocation table accepted (entries): far more than any kernel has, small enough
/// that a hostile size costs nothing.
const MAX_RELOCATIONS: u64 = 1 << 20;

/// The R_X86_64_RELATIVE relocations of an ET_DYN file's PT_DYNAMIC RELA table; any other
/// relocation kind is refused (a kernel has no symbols to bind).
fn dynamic_relocations(
    header: &elf::FileHeader64<object::LittleEndian>,
    endian: object::LittleEndian,
    data: &[u8],
    segments: &[Segment],
) -> std::result::Result<Vec<(u64, i64)>, Problem> {
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| Problem::Truncated(format!("program headers: {e}")))?;
    let mut out = Vec::new();
    for ph in phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_DYNAMIC) {
        let dyns = ph
            .dynamic(endian, data)
            .map_err(|e| Problem::Truncated(format!("dynamic section: {e}")))?
            .unwrap_or_default();
        let (mut rela, mut size, mut entsize) = (None, 0u64, 24u64);
        for d in dyns {
            let val = d.d_val.get(endian);
            match u32::try_from(d.d_tag.get(endian)) {
                Ok(elf::DT_NULL) => break,
                Ok(elf::DT_RELA) => rela = Some(val),
                Ok(elf::DT_RELASZ) => size = val,
                Ok(elf::DT_RELAENT) => entsize = val,
                Ok(elf::DT_REL | DT_RELR) if val != 0 => {
                    return Err(Problem::Unsupported(
                        "REL/RELR relocations (only RELA is supported)".into(),
                    ));
                }
                _ => {}
            }
        }
        let Some(rela) = rela else { continue };
        if entsize != 24 || !size.is_multiple_of(24) || size / 24 > MAX_RELOCATIONS {
            return Err(Problem::Invalid(format!(
                "RELA table of {size:#x} bytes in {entsize}-byte entries"
            )));
        }
        // The table is in a loaded segment's file bytes.
        let table = segments
            .iter()
            .find(|s| rela >= s.vaddr && rela - s.vaddr < s.file_size)
            .and_then(|s| {
                let start = s.offset.checked_add(rela - s.vaddr)?;
                let end = start.checked_add(size)?;
                if end > s.offset + s.file_size {
                    return None;
                }
                data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
            })
            .ok_or_else(|| {
                Problem::Truncated(format!(
                    "RELA table at {rela:#x}+{size:#x} is not in the file"
                ))
            })?;
        for e in table.chunks_exact(24) {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let (offset, info, addend) = (word(0), word(1), word(2).cast_signed());
            match (info & 0xffff_ffff) as u32 {
                elf::R_X86_64_NONE => {}
                elf::R_X86_64_RELATIVE => out.push((offset, addend)),
                t => {
                    return Err(Problem::Unsupported(format!(
                        "relocation type {t} at {offset:#x} (only R_X86_64_RELATIVE)"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Loads `config` through `importer`.
pub fn load_elf(
    importer: &mut dyn ImageLoad<X86Register>,
    config: &ElfConfig<'_>,
) -> Result<ElfKernel> {
    let file = config.kernel.name;
    let layout = &config.layout;
    layout.validate(file)?;
    let kernel = ElfKernel::parse(&config.kernel, config.load_base)?;
    for s in &kernel.segments {
        layout.require_ram(file, "a PT_LOAD segment", s.gpa, s.mem_size)?;
    }
    let fail = |e: crate::Error| LoadError::new(file, e.into());
    layout.declare_ram(importer, file)?;
    let runs = kernel
        .page_runs(config.kernel.data)
        .map_err(|p| LoadError::new(file, p))?;
    for (page, count, bytes) in runs {
        importer
            .import_pages(page, count, "kernel", BootPageAcceptance::Exclusive, &bytes)
            .map_err(fail)?;
    }
    import_long_mode(
        importer,
        layout,
        EntryState {
            rip: kernel.entry,
            rsi: config.rsi,
            rsp: config.rsp,
        },
        file,
    )?;
    let isolation = importer.isolation_config().isolation_type;
    if kernel.relocatable && matches!(isolation, IsolationType::None | IsolationType::Vbs) {
        let first = kernel.segments[0].gpa & !(PAGE_SIZE - 1);
        let last = kernel
            .segments
            .iter()
            .map(|s| s.gpa + s.mem_size)
            .max()
            .unwrap_or(first);
        let size = super::align_up(last - first, PAGE_SIZE).unwrap_or(u64::MAX);
        if first.is_multiple_of(RELOCATION_ALIGNMENT) {
            importer
                .relocation_region(
                    first,
                    size,
                    RELOCATION_ALIGNMENT,
                    first,
                    layout.ram_top().saturating_sub(size) & !(RELOCATION_ALIGNMENT - 1),
                    true,
                    false,
                    0,
                )
                .map_err(fail)?;
        } else {
            tracing::info!(
                file,
                first,
                "kernel not 2 MiB aligned: not declared relocatable"
            );
        }
    }
    tracing::info!(
        file,
        entry = kernel.entry,
        segments = kernel.segments.len(),
        "ELF kernel loaded"
    );
    Ok(kernel)
}
