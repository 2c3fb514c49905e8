//! What the x86-64 kernel loaders share: the guest memory map, identity-mapped 4-level page
//! tables, the boot GDT and the 64-bit boot registers.
//!
//! The start state follows Linux's 64-bit boot protocol, which suits any 64-bit kernel:
//! long mode with paging on, an identity map covering memory, a GDT with a flat 64-bit code
//! segment at [`BOOT_CS`] and a flat data segment at [`BOOT_DS`], interrupts off.

use super::LoadError;
use super::Problem;
use super::Result;
use super::pages;
use crate::arch::SegmentRegister;
use crate::arch::TableRegister;
use crate::arch::X86Register;
use crate::importer::BootPageAcceptance;
use crate::importer::ImageLoad;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::importer::StartupMemoryType;
use crate::vp_context::CR0_PE;
use crate::vp_context::CR0_PG;
use crate::vp_context::CR4_PAE;
use crate::vp_context::EFER_LMA;
use crate::vp_context::EFER_LME;

/// Code selector of the boot GDT (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Data selector of the boot GDT (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// The boot GDT: null, unused, 64-bit flat code, flat data.
pub const BOOT_GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Hypervisor-format attributes of the 64-bit code segment (G, L, P, S, execute/read).
pub const CODE64_ATTRIBUTES: u16 = 0xa09b;
/// Hypervisor-format attributes of the flat data segment (G, D/B, P, S, read/write).
pub const DATA_ATTRIBUTES: u16 = 0xc093;
/// CR0 of the start state: PE, ET, NE, WP, PG.
pub const BOOT_CR0: u64 = CR0_PE | 0x10 | 0x20 | (1 << 16) | CR0_PG;
/// CR4 of the start state: PAE.
pub const BOOT_CR4: u64 = CR4_PAE;
/// EFER of the start state: LME and LMA.
pub const BOOT_EFER: u64 = EFER_LME | EFER_LMA;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_LARGE: u64 = 1 << 7;
/// Bytes one page directory maps with 2 MiB pages.
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// The identity map always covers the first 4 GiB, where the reset page, the firmware and
/// the MMIO the kernel touches early live.
const MIN_IDENTITY_MAP: u64 = 4 * GIB;
/// One PDPT of 1 GiB entries.
const MAX_IDENTITY_MAP: u64 = 512 * GIB;

/// A range of guest RAM, `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRange {
    /// The byte after the range (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where the x86 loaders put their boot structures, and which guest memory is RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X86Layout {
    /// Guest RAM, sorted and non-overlapping.
    pub ram: Vec<RamRange>,
    /// GPA of the boot GDT page.
    pub gdt_gpa: u64,
    /// GPA of the first page-table page (PML4, then PDPT, then one PD per GiB).
    pub page_tables_gpa: u64,
    /// GPA of the SNP VMSA page (used on SNP only).
    pub vmsa_gpa: u64,
    /// The SEV C-bit (CPUID 0x8000001F EBX bits 5:0, 51 on current EPYC parts), set in the page
    /// tables of SNP images without vTOM so that the kernel's private memory reads as
    /// private. `None`: tables carry no C-bit (SNP images then need vTOM).
    pub snp_c_bit: Option<u8>,
}

impl X86Layout {
    /// The default layout for `memory_size` bytes of RAM from address 0.
    pub fn with_memory(memory_size: u64) -> Self {
        Self {
            ram: vec![RamRange {
                base: 0,
                size: memory_size,
            }],
            gdt_gpa: 0x1000,
            page_tables_gpa: 0x10000,
            vmsa_gpa: 0xe000,
            snp_c_bit: None,
        }
    }

    /// The byte after the highest RAM byte.
    pub fn ram_top(&self) -> u64 {
        self.ram.iter().map(RamRange::end).max().unwrap_or(0)
    }

    /// Whether `[start, end)` lies in one RAM range.
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        self.ram
            .iter()
            .any(|r| start >= r.base && end <= r.end() && start < end)
    }

    /// Fails with [`Problem::MemoryTooSmall`] unless `[start, start + size)` is RAM.
    pub fn require_ram(&self, file: &str, what: &str, start: u64, size: u64) -> Result<u64> {
        let end = start.checked_add(size).ok_or_else(|| {
            LoadError::new(
                file,
                Problem::Invalid(format!("{what} wraps the address space")),
            )
        })?;
        if !self.is_ram(start, end) {
            return Err(LoadError::new(
                file,
                Problem::MemoryTooSmall {
                    what: what.to_string(),
                    start,
                    end,
                },
            ));
        }
        Ok(end)
    }

    /// Bytes the identity map covers: all RAM, at least 4 GiB, in whole GiB.
    pub fn identity_map_size(&self) -> u64 {
        super::align_up(self.ram_top().max(MIN_IDENTITY_MAP), GIB).unwrap_or(u64::MAX)
    }

    /// Checks that the layout itself is usable: sorted RAM, boot structures in RAM.
    pub fn validate(&self, file: &str) -> Result<()> {
        let mut prev_end = 0;
        for r in &self.ram {
            if r.size == 0
                || r.base < prev_end
                || !r.base.is_multiple_of(PAGE_SIZE)
                || !r.size.is_multiple_of(PAGE_SIZE)
            {
                return Err(LoadError::new(
                    file,
                    Problem::Invalid(format!(
                        "RAM range {:#x}+{:#x} is empty, unaligned or out of order",
                        r.base, r.size
                    )),
                ));
            }
            prev_end = r.end();
        }
        if self.identity_map_size() > MAX_IDENTITY_MAP {
            return Err(LoadError::new(
                file,
                Problem::Unsupported("more than 512 GiB of RAM to identity-map".into()),
            ));
        }
        for (what, gpa) in [
            ("GDT", self.gdt_gpa),
            ("page tables", self.page_tables_gpa),
            ("VMSA", self.vmsa_gpa),
        ] {
            if !gpa.is_multiple_of(PAGE_SIZE) {
                return Err(LoadError::new(
                    file,
                    Problem::Invalid(format!("{what} GPA {gpa:#x} is not page aligned")),
                ));
            }
        }
        self.require_ram(file, "GDT", self.gdt_gpa, PAGE_SIZE)?;
        self.require_ram(
            file,
            "page tables",
            self.page_tables_gpa,
            self.page_table_pages() * PAGE_SIZE,
        )?;
        Ok(())
    }

    /// Pages of page tables: PML4, PDPT, one PD per GiB.
    pub fn page_table_pages(&self) -> u64 {
        2 + self.identity_map_size() / GIB
    }

    /// Declares every RAM range as needed startup memory (in pieces the importer can
    /// express).
    pub fn declare_ram(&self, importer: &mut dyn ImageLoad<X86Register>, file: &str) -> Result<()> {
        // Requirements are 32-bit byte counts in IGVM: declare in 2 GiB pieces.
        const PIECE: u64 = 2 * GIB;
        for r in &self.ram {
            let mut at = r.base;
            while at < r.end() {
                let len = (r.end() - at).min(PIECE);
                importer
                    .verify_startup_memory_available(
                        at / PAGE_SIZE,
                        pages(len),
                        StartupMemoryType::Ram,
                    )
                    .map_err(|e| LoadError::new(file, e.into()))?;
                at += len;
            }
        }
        Ok(())
    }
}

/// Identity-mapped 4-level page tables at `base` covering `[0, size)` with 2 MiB pages:
/// PML4 at `base`, PDPT at `base + 4 KiB`, then one PD per GiB. `size` is a whole number of
/// GiB, at most 512 (larger sizes are cut to 512 GiB).
pub fn identity_page_tables(base: u64, size: u64) -> Vec<u8> {
    page_tables_with(base, size, 0)
}

/// [`identity_page_tables`] with `extra` (an encryption bit) ORed into every entry.
pub fn page_tables_with(base: u64, size: u64, extra: u64) -> Vec<u8> {
    let gibs = (size / GIB).min(MAX_IDENTITY_MAP / GIB);
    let pdpt = base + PAGE_SIZE;
    let mut out = Vec::with_capacity(((2 + gibs) * PAGE_SIZE) as usize);
    let table = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | extra;
    let mut pml4 = [0u64; 512];
    pml4[0] = pdpt | table;
    let mut pdpt_entries = [0u64; 512];
    for (i, e) in pdpt_entries.iter_mut().enumerate().take(gibs as usize) {
        *e = (base + (2 + i as u64) * PAGE_SIZE) | table;
    }
    for e in pml4.iter().chain(&pdpt_entries) {
        out.extend_from_slice(&e.to_le_bytes());
    }
    let leaf = PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY | PTE_LARGE | extra;
    for gib in 0..gibs {
        for i in 0..512u64 {
            let pa = gib * GIB + i * MIB2;
            out.extend_from_slice(&(pa | leaf).to_le_bytes());
        }
    }
    out
}

/// The GDT bytes for [`BOOT_GDT`].
pub fn gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Where the kernel starts and what it finds in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryState {
    /// Entry point (RIP).
    pub rip: u64,
    /// RSI (Linux: the boot_params zero page).
    pub rsi: u64,
    /// RSP, if the kernel wants a stack.
    pub rsp: Option<u64>,
}

/// Imports the GDT, the page tables and the 64-bit boot registers for `entry`; on SNP also
/// names the VMSA page. `file` names the payload in errors.
pub fn import_long_mode(
    importer: &mut dyn ImageLoad<X86Register>,
    layout: &X86Layout,
    entry: EntryState,
    file: &str,
) -> Result<()> {
    let fail = |e: crate::Error| LoadError::new(file, e.into());
    importer
        .import_pages(
            layout.gdt_gpa / PAGE_SIZE,
            1,
            "gdt",
            BootPageAcceptance::Exclusive,
            &gdt_bytes(),
        )
        .map_err(fail)?;
    let isolation = importer.isolation_config();
    let c_bit = match (isolation.isolation_type, layout.snp_c_bit) {
        (IsolationType::Snp, Some(bit)) if isolation.shared_gpa_boundary_bits.is_none() => {
            if !(32..=63).contains(&bit) {
                return Err(LoadError::new(
                    file,
                    Problem::Invalid(format!("C-bit {bit} is not a physical address bit")),
                ));
            }
            1u64 << bit
        }
        _ => 0,
    };
    let tables = page_tables_with(layout.page_tables_gpa, layout.identity_map_size(), c_bit);
    importer
        .import_pages(
            layout.page_tables_gpa / PAGE_SIZE,
            layout.page_table_pages(),
            "page-tables",
            BootPageAcceptance::Exclusive,
            &tables,
        )
        .map_err(fail)?;
    if importer.isolation_config().isolation_type == IsolationType::Snp {
        importer
            .set_vp_context_page(layout.vmsa_gpa / PAGE_SIZE)
            .map_err(fail)?;
    }
    for reg in boot_registers(layout, entry) {
        importer.import_vp_register(reg).map_err(fail)?;
    }
    Ok(())
}

/// The registers of the 64-bit start state, in import order.
pub fn boot_registers(layout: &X86Layout, entry: EntryState) -> Vec<X86Register> {
    let code = SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: BOOT_CS,
        attributes: CODE64_ATTRIBUTES,
    };
    let data = SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: BOOT_DS,
        attributes: DATA_ATTRIBUTES,
    };
    let mut regs = vec![
        X86Register::Gdtr(TableRegister {
            base: layout.gdt_gpa,
            limit: (BOOT_GDT.len() * 8 - 1) as u16,
        }),
        X86Register::Cs(code),
        X86Register::Ds(data),
        X86Register::Es(data),
        X86Register::Fs(data),
        X86Register::Gs(data),
        X86Register::Ss(data),
        X86Register::Cr0(BOOT_CR0),
        X86Register::Cr3(layout.page_tables_gpa),
        X86Register::Cr4(BOOT_CR4),
        X86Register::Efer(BOOT_EFER),
        X86Register::Rip(entry.rip),
        X86Register::Rsi(entry.rsi),
    ];
    if let Some(rsp) = entry.rsp {
        regs.push(X86Register::Rsp(rsp));
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks 4-level tables in `mem` (a GPA-indexed byte image) like the MMU does.
    fn translate(mem: &[u8], cr3: u64, va: u64) -> Option<u64> {
        let read =
            |pa: u64| u64::from_le_bytes(mem[pa as usize..pa as usize + 8].try_into().unwrap());
        let pml4e = read(cr3 + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & 0x000f_ffff_ffff_f000) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & 0x000f_ffff_ffff_f000) + ((va >> 21) & 511) * 8);
        if pde & 1 == 0 || pde & PTE_LARGE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) + (va & (MIB2 - 1)))
    }

    #[test]
    fn page_tables_identity_map_all_of_memory_and_nothing_more() {
        let layout = X86Layout::with_memory(6 * GIB);
        let base = layout.page_tables_gpa;
        let tables = identity_page_tables(base, layout.identity_map_size());
        assert_eq!(tables.len() as u64, layout.page_table_pages() * PAGE_SIZE);
        let mut mem = vec![0u8; (base as usize) + tables.len()];
        mem[base as usize..].copy_from_slice(&tables);
        for va in [
            0,
            0x1000,
            0x7000,
            0x100_0000,
            0xffff_fff0,
            0x1_2345_6789,
            6 * GIB - 1,
        ] {
            assert_eq!(translate(&mem, base, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, base, 6 * GIB), None);
        assert_eq!(translate(&mem, base, 1 << 39), None);
    }

    #[test]
    fn layouts_outside_ram_are_refused_with_the_file_name() {
        let mut layout = X86Layout::with_memory(0x8000);
        let err = layout.validate("manifest.toml").unwrap_err();
        assert_eq!(err.file, "manifest.toml");
        assert!(
            matches!(err.problem, Problem::MemoryTooSmall { .. }),
            "{err}"
        );
        layout.ram[0].size = 0x1234;
        assert!(matches!(
            layout.validate("m").unwrap_err().problem,
            Problem::Invalid(_)
        ));
    }
}
