//! Linux direct boot of an x86-64 bzImage through its 64-bit entry point.
//!
//! The loader reads the setup header (the layout is rust-vmm `linux-loader`'s
//! `setup_header`), loads the protected-mode kernel at its preferred address, places the
//! command line and the initrd, and builds the boot_params zero page with an e820 map of the
//! layout's RAM. The start state is the 64-bit boot protocol's: long mode, identity map,
//! `__BOOT_CS`/`__BOOT_DS`, RSI = zero page, RIP = load address + 0x200.

use super::LoadError;
use super::Payload;
use super::Problem;
use super::Result;
use super::pages;
use super::x86::EntryState;
use super::x86::X86Layout;
use super::x86::import_long_mode;
use crate::arch::X86Register;
use crate::importer::BootPageAcceptance;
use crate::importer::ImageLoad;
use crate::importer::PAGE_SIZE;
use linux_loader::bootparam::E820_MAX_ENTRIES_ZEROPAGE;
use linux_loader::bootparam::XLF_KERNEL_64;
use linux_loader::bootparam::boot_e820_entry;
use linux_loader::bootparam::boot_params;
use linux_loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Offset of the setup header in a bzImage (and in boot_params).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag` value.
const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
const HDRS: u32 = 0x5372_6448;
/// Oldest boot protocol with `xloadflags` and a 64-bit entry (2.12).
const MIN_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry point is this far into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Where a non-relocatable kernel must go.
const DEFAULT_LOAD_ADDRESS: u64 = 0x10_0000;
/// e820 types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// The legacy hole (EBDA, VGA, option and BIOS ROMs) reported as reserved.
const LEGACY_HOLE: (u64, u64) = (0x9_fc00, 0x10_0000);
/// boot_params `type_of_loader`: an undefined boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// What to load and where.
#[derive(Debug, Clone)]
pub struct LinuxConfig<'a> {
    /// The bzImage.
    pub kernel: Payload<'a>,
    /// The initrd, if any.
    pub initrd: Option<Payload<'a>>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Memory map and boot-structure placement.
    pub layout: X86Layout,
    /// GPA of the boot_params zero page.
    pub zero_page_gpa: u64,
    /// GPA of the command line.
    pub cmdline_gpa: u64,
}

impl<'a> LinuxConfig<'a> {
    /// The usual placement (zero page at 0x7000, command line at 0x20000) for `kernel` in
    /// `layout`.
    pub fn new(kernel: Payload<'a>, layout: X86Layout) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: "",
            layout,
            zero_page_gpa: 0x7000,
            cmdline_gpa: 0x2_0000,
        }
    }
}

/// Where the pieces ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxInfo {
    /// GPA the protected-mode kernel was loaded at.
    pub kernel_gpa: u64,
    /// Bytes the kernel needs from its load address (`init_size`).
    pub kernel_size: u64,
    /// GPA and size of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// The 64-bit entry point.
    pub entry: u64,
}

/// A parsed, checked bzImage setup header.
#[derive(Debug, Clone, Copy)]
pub struct BzImage {
    /// The setup header as the file carries it.
    pub header: setup_header,
    /// Offset of the protected-mode kernel in the file.
    pub kernel_offset: usize,
}

impl BzImage {
    /// Parses and checks the setup header of `kernel`.
    pub fn parse(kernel: &Payload<'_>) -> Result<Self> {
        let data = kernel.data;
        let file = kernel.name;
        let size = size_of::<setup_header>();
        // The header proper ends at 0x202 + the jump's byte offset; read what the file has
        // and leave the rest zero, as for an older protocol.
        if data.len() < 0x202 {
            return Err(LoadError::new(
                file,
                Problem::Truncated(format!("{} bytes hold no setup header", data.len())),
            ));
        }
        let mut bytes = vec![0u8; size];
        let avail = data.len().saturating_sub(SETUP_HEADER_OFFSET).min(size);
        bytes[..avail].copy_from_slice(&data[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + avail]);
        let header = *setup_header::from_slice(&bytes)
            .ok_or_else(|| LoadError::new(file, Problem::Truncated("setup header".into())))?;
        let boot_flag = header.boot_flag;
        let magic = header.header;
        if boot_flag != BOOT_FLAG || magic != HDRS {
            return Err(LoadError::new(
                file,
                Problem::BadMagic(format!(
                    "boot flag {boot_flag:#06x} and header {magic:#010x} are not a bzImage's \
                     (0xaa55, \"HdrS\")"
                )),
            ));
        }
        let version = header.version;
        if version < MIN_PROTOCOL {
            return Err(LoadError::new(
                file,
                Problem::Unsupported(format!(
                    "boot protocol {}.{} has no 64-bit entry (need 2.12)",
                    version >> 8,
                    version & 0xff
                )),
            ));
        }
        let xloadflags = header.xloadflags;
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::new(
                file,
                Problem::Unsupported("not a 64-bit kernel (XLF_KERNEL_64 clear)".into()),
            ));
        }
        let setup_sects = match header.setup_sects {
            0 => 4,
            n => usize::from(n),
        };
        let kernel_offset = (setup_sects + 1) * 512;
        if kernel_offset >= data.len() {
            return Err(LoadError::new(
                file,
                Problem::Truncated(format!(
                    "{setup_sects} setup sectors leave no protected-mode kernel in {} bytes",
                    data.len()
                )),
            ));
        }
        Ok(Self {
            header,
            kernel_offset,
        })
    }

    /// Where the kernel goes: its preferred address if it is relocatable (and aligned as it
    /// asks), 1 MiB otherwise.
    pub fn load_address(&self, file: &str) -> Result<u64> {
        if self.header.relocatable_kernel == 0 {
            return Ok(DEFAULT_LOAD_ADDRESS);
        }
        let pref = self.header.pref_address;
        let align = u64::from(self.header.kernel_alignment);
        if pref < DEFAULT_LOAD_ADDRESS || (align.is_power_of_two() && !pref.is_multiple_of(align)) {
            return Err(LoadError::new(
                file,
                Problem::Invalid(format!(
                    "preferred address {pref:#x} is below 1 MiB or not aligned to {align:#x}"
                )),
            ));
        }
        Ok(pref)
    }
}

/// The e820 map of `layout`'s RAM, with the legacy hole below 1 MiB reserved.
pub fn e820_map(layout: &X86Layout) -> Vec<boot_e820_entry> {
    let mut out = Vec::new();
    let mut hole_added = false;
    for r in &layout.ram {
        let (start, end) = (r.base, r.end());
        if start < LEGACY_HOLE.1 && end > LEGACY_HOLE.0 {
            if start < LEGACY_HOLE.0 {
                out.push(entry(start, LEGACY_HOLE.0, E820_RAM));
            }
            out.push(entry(LEGACY_HOLE.0, LEGACY_HOLE.1, E820_RESERVED));
            hole_added = true;
            if end > LEGACY_HOLE.1 {
                out.push(entry(LEGACY_HOLE.1, end, E820_RAM));
            }
        } else {
            out.push(entry(start, end, E820_RAM));
        }
    }
    if !hole_added {
        out.push(entry(LEGACY_HOLE.0, LEGACY_HOLE.1, E820_RESERVED));
        out.sort_by_key(|e| e.addr);
    }
    out
}

fn entry(start: u64, end: u64, kind: u32) -> boot_e820_entry {
    boot_e820_entry {
        addr: start,
        size: end - start,
        r#type: kind,
    }
}

/// Loads `config` through `importer` for direct boot.
pub fn load_linux(
    importer: &mut dyn ImageLoad<X86Register>,
    config: &LinuxConfig<'_>,
) -> Result<LinuxInfo> {
    let file = config.kernel.name;
    let layout = &config.layout;
    layout.validate(file)?;
    let bz = BzImage::parse(&config.kernel)?;
    let kernel = config
        .kernel
        .data
        .get(bz.kernel_offset..)
        .unwrap_or_default();
    let load = bz.load_address(file)?;
    let kernel_size = u64::from(bz.header.init_size).max(kernel.len() as u64);
    let kernel_end = layout.require_ram(file, "the kernel and its init_size", load, kernel_size)?;

    // The command line, NUL-terminated, within the kernel's limit.
    let cmdline_max = match bz.header.cmdline_size {
        0 => 255,
        n => u64::from(n),
    };
    let mut cmdline = config.cmdline.as_bytes().to_vec();
    if cmdline.contains(&0) {
        return Err(LoadError::new(
            file,
            Problem::Invalid("the command line contains a NUL byte".into()),
        ));
    }
    if cmdline.len() as u64 > cmdline_max {
        return Err(LoadError::new(
            file,
            Problem::Invalid(format!(
                "the command line is {} bytes; this kernel takes at most {cmdline_max}",
                cmdline.len()
            )),
        ));
    }
    cmdline.push(0);
    layout.require_ram(
        file,
        "the command line",
        config.cmdline_gpa,
        cmdline.len() as u64,
    )?;
    layout.require_ram(file, "the zero page", config.zero_page_gpa, PAGE_SIZE)?;

    // The initrd goes as high as the kernel lets it, page aligned, above the kernel.
    let initrd = match &config.initrd {
        None => None,
        Some(initrd) if initrd.data.is_empty() => None,
        Some(initrd) => {
            let size = initrd.data.len() as u64;
            let limit = u64::from(bz.header.initrd_addr_max).saturating_add(1);
            let top = layout
                .ram
                .iter()
                .filter(|r| r.base < limit)
                .map(|r| r.end().min(limit))
                .max()
                .unwrap_or(0);
            let gpa = top.checked_sub(size).map(|g| g & !(PAGE_SIZE - 1));
            match gpa {
                Some(gpa) if gpa >= kernel_end && layout.is_ram(gpa, gpa + size) => {
                    Some((gpa, size))
                }
                _ => {
                    return Err(LoadError::new(
                        initrd.name,
                        Problem::MemoryTooSmall {
                            what: "the initrd above the kernel".into(),
                            start: kernel_end,
                            end: kernel_end.saturating_add(size),
                        },
                    ));
                }
            }
        }
    };

    let fail = |name: &str, e: crate::Error| LoadError::new(name, e.into());
    layout.declare_ram(importer, file)?;
    importer
        .import_pages(
            load / PAGE_SIZE,
            pages(kernel.len() as u64),
            "kernel",
            BootPageAcceptance::Exclusive,
            kernel,
        )
        .map_err(|e| fail(file, e))?;
    if let (Some((gpa, size)), Some(payload)) = (initrd, &config.initrd) {
        importer
            .import_pages(
                gpa / PAGE_SIZE,
                pages(size),
                "initrd",
                BootPageAcceptance::Exclusive,
                payload.data,
            )
            .map_err(|e| fail(payload.name, e))?;
    }
    importer
        .import_pages(
            config.cmdline_gpa / PAGE_SIZE,
            pages(cmdline.len() as u64),
            "cmdline",
            BootPageAcceptance::Exclusive,
            &cmdline,
        )
        .map_err(|e| fail(file, e))?;

    let mut params = boot_params {
        hdr: bz.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = low32(config.cmdline_gpa);
    params.ext_cmd_line_ptr = (config.cmdline_gpa >> 32) as u32;
    if let Some((gpa, size)) = initrd {
        params.hdr.ramdisk_image = low32(gpa);
        params.ext_ramdisk_image = (gpa >> 32) as u32;
        params.hdr.ramdisk_size = low32(size);
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let e820 = e820_map(layout);
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LoadError::new(
            file,
            Problem::Unsupported(format!(
                "{} e820 entries do not fit the zero page",
                e820.len()
            )),
        ));
    }
    let mut table = params.e820_table;
    for (slot, e) in table.iter_mut().zip(&e820) {
        *slot = *e;
    }
    params.e820_table = table;
    params.e820_entries = e820.len() as u8;
    importer
        .import_pages(
            config.zero_page_gpa / PAGE_SIZE,
            1,
            "boot-params",
            BootPageAcceptance::Exclusive,
            params.as_slice(),
        )
        .map_err(|e| fail(file, e))?;

    let entry = load + ENTRY_64_OFFSET;
    import_long_mode(
        importer,
        layout,
        EntryState {
            rip: entry,
            rsi: config.zero_page_gpa,
            rsp: None,
        },
        file,
    )?;
    tracing::info!(file, load, entry, ?initrd, "linux direct boot loaded");
    Ok(LinuxInfo {
        kernel_gpa: load,
        kernel_size,
        initrd,
        entry,
    })
}

fn low32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}
