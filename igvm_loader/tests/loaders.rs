//! Each loader against the recording importer: the exact pages, registers and page tables
//! it asks for (the page tables are walked to translate addresses), and clear errors for
//! malformed payloads.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

mod common;

use igvm_loader::arch::AArch64Register;
use igvm_loader::arch::SegmentRegister;
use igvm_loader::arch::TableRegister;
use igvm_loader::arch::X86Register;
use igvm_loader::importer::BootPageAcceptance;
use igvm_loader::importer::IgvmParameterType;
use igvm_loader::importer::IsolationConfig;
use igvm_loader::importer::IsolationType;
use igvm_loader::importer::ParameterAreaIndex;
use igvm_loader::importer::StartupMemoryType;
use igvm_loader::loaders::LoadError;
use igvm_loader::loaders::Payload;
use igvm_loader::loaders::Problem;
use igvm_loader::loaders::aarch64::Aarch64Config;
use igvm_loader::loaders::aarch64::load_aarch64_image;
use igvm_loader::loaders::elf::ElfConfig;
use igvm_loader::loaders::elf::load_elf;
use igvm_loader::loaders::firmware::load_firmware;
use igvm_loader::loaders::linux::LinuxConfig;
use igvm_loader::loaders::linux::load_linux;
use igvm_loader::loaders::x86::BOOT_CR0;
use igvm_loader::loaders::x86::BOOT_CR4;
use igvm_loader::loaders::x86::BOOT_EFER;
use igvm_loader::loaders::x86::BOOT_GDT;
use igvm_loader::loaders::x86::X86Layout;
use igvm_loader::recording::ImportCall;
use igvm_loader::recording::RecordingImporter;
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn recorder<R: igvm_loader::arch::GuestArch>(t: IsolationType) -> RecordingImporter<R> {
    RecordingImporter::new(IsolationConfig::new(t))
}

/// Guest memory as the recorded imports leave it: page number -> 4 KiB.
fn memory<R>(calls: &[ImportCall<R>]) -> BTreeMap<u64, Vec<u8>> {
    let mut mem = BTreeMap::new();
    for c in calls {
        if let ImportCall::ImportPages {
            page_base,
            page_count,
            data,
            ..
        } = c
        {
            for i in 0..*page_count {
                let start = (i * PAGE) as usize;
                let mut page = vec![0u8; PAGE as usize];
                if start < data.len() {
                    let end = (start + PAGE as usize).min(data.len());
                    page[..end - start].copy_from_slice(&data[start..end]);
                }
                assert!(
                    mem.insert(page_base + i, page).is_none(),
                    "page imported twice"
                );
            }
        }
    }
    mem
}

fn read_u64(mem: &BTreeMap<u64, Vec<u8>>, pa: u64) -> u64 {
    let page = &mem[&(pa / PAGE)];
    let o = (pa % PAGE) as usize;
    u64::from_le_bytes(page[o..o + 8].try_into().unwrap())
}

/// The MMU's 4-level walk (2 MiB leaves) through the imported page tables.
fn translate(mem: &BTreeMap<u64, Vec<u8>>, cr3: u64, va: u64) -> Option<u64> {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR;
    for (level, shift) in [(4, 39), (3, 30), (2, 21)] {
        let e = read_u64(mem, table + ((va >> shift) & 511) * 8);
        if e & 1 == 0 {
            return None;
        }
        if level == 2 {
            assert_ne!(e & 0x80, 0, "only 2 MiB leaves are generated");
            return Some((e & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff));
        }
        table = e & ADDR;
    }
    None
}

fn registers<R: Copy>(calls: &[ImportCall<R>]) -> Vec<R> {
    calls
        .iter()
        .filter_map(|c| match c {
            ImportCall::ImportVpRegister(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn pages_tagged<'a, R>(calls: &'a [ImportCall<R>], tag: &str) -> Vec<(u64, u64, &'a [u8])> {
    calls
        .iter()
        .filter_map(|c| match c {
            ImportCall::ImportPages {
                page_base,
                page_count,
                debug_tag,
                acceptance,
                data,
            } if debug_tag == tag => {
                assert_eq!(*acceptance, BootPageAcceptance::Exclusive);
                Some((*page_base, *page_count, data.as_slice()))
            }
            _ => None,
        })
        .collect()
}

fn boot_registers(rip: u64, rsi: u64) -> Vec<X86Register> {
    let code = SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x10,
        attributes: 0xa09b,
    };
    let data = SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x18,
        attributes: 0xc093,
    };
    vec![
        X86Register::Gdtr(TableRegister {
            base: 0x1000,
            limit: 31,
        }),
        X86Register::Cs(code),
        X86Register::Ds(data),
        X86Register::Es(data),
        X86Register::Fs(data),
        X86Register::Gs(data),
        X86Register::Ss(data),
        X86Register::Cr0(BOOT_CR0),
        X86Register::Cr3(0x10000),
        X86Register::Cr4(BOOT_CR4),
        X86Register::Efer(BOOT_EFER),
        X86Register::Rip(rip),
        X86Register::Rsi(rsi),
    ]
}

/// The GDT, page tables and registers every x86 loader leaves.
fn check_x86_start(calls: &[ImportCall<X86Register>], rip: u64, rsi: u64, ram: u64) {
    assert_eq!(registers(calls), boot_registers(rip, rsi));
    let gdt = pages_tagged(calls, "gdt");
    assert_eq!(gdt.len(), 1);
    assert_eq!(gdt[0].0, 1);
    let expected: Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    assert_eq!(gdt[0].2, expected.as_slice());
    let tables = pages_tagged(calls, "page-tables");
    assert_eq!((tables[0].0, tables[0].1), (0x10, 2 + 4));
    let mem = memory(calls);
    for va in [0, 0x7000, rip, rsi, 0xffff_fff0, ram - 1] {
        assert_eq!(translate(&mem, 0x10000, va), Some(va), "{va:#x}");
    }
    // Exactly the first 4 GiB: nothing above is mapped.
    assert_eq!(translate(&mem, 0x10000, 4 << 30), None);
}

#[test]
fn linux_loader_builds_zero_page_cmdline_initrd_tables_and_registers() {
    let kernel = common::fake_bzimage(10_000, 0x40_0000);
    let initrd = vec![0x5a; 5000];
    let ram = 256 * MIB;
    let mut config = LinuxConfig::new(
        Payload::new("bzImage", &kernel),
        X86Layout::with_memory(ram),
    );
    config.initrd = Some(Payload::new("initrd.cpio", &initrd));
    config.cmdline = "console=ttyS0";
    let mut rec = recorder::<X86Register>(IsolationType::None);
    let info = load_linux(&mut rec, &config).unwrap();
    let calls = rec.calls();

    assert_eq!(info.kernel_gpa, 0x100_0000);
    assert_eq!(info.entry, 0x100_0200);
    let initrd_gpa = (ram - 5000) & !(PAGE - 1);
    assert_eq!(info.initrd, Some((initrd_gpa, 5000)));

    assert_eq!(
        calls[0],
        ImportCall::VerifyStartupMemory {
            page_base: 0,
            page_count: ram / PAGE,
            memory_type: StartupMemoryType::Ram,
        }
    );
    assert_eq!(
        pages_tagged(calls, "kernel"),
        vec![(0x1000, 3, &kernel[1024..])]
    );
    assert_eq!(
        pages_tagged(calls, "initrd"),
        vec![(initrd_gpa / PAGE, 2, initrd.as_slice())]
    );
    assert_eq!(
        pages_tagged(calls, "cmdline"),
        vec![(0x20, 1, b"console=ttyS0\0".as_slice())]
    );

    let zero = pages_tagged(calls, "boot-params");
    assert_eq!((zero[0].0, zero[0].1), (7, 1));
    let zp = zero[0].2;
    assert_eq!(zp.len(), 4096);
    let u32_at = |o: usize| u32::from_le_bytes(zp[o..o + 4].try_into().unwrap());
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(zp[0x210], 0xff, "type_of_loader");
    assert_eq!(u32_at(0x228), 0x20000, "cmd_line_ptr");
    assert_eq!(u32_at(0x218), initrd_gpa as u32, "ramdisk_image");
    assert_eq!(u32_at(0x21c), 5000, "ramdisk_size");
    assert_eq!(zp[0x1e8], 3, "e820 entries");
    let e820: Vec<(u64, u64, u32)> = (0..3)
        .map(|i| {
            let o = 0x2d0 + i * 20;
            (
                u64::from_le_bytes(zp[o..o + 8].try_into().unwrap()),
                u64::from_le_bytes(zp[o + 8..o + 16].try_into().unwrap()),
                u32::from_le_bytes(zp[o + 16..o + 20].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9_fc00, 1),
            (0x9_fc00, 0x10_0000 - 0x9_fc00, 2),
            (0x10_0000, ram - 0x10_0000, 1)
        ]
    );
    check_x86_start(calls, 0x100_0200, 0x7000, ram);
}

#[test]
fn elf_loader_loads_segments_at_physical_addresses_and_enters_at_the_entry() {
    let text = vec![0xc3u8; 0x1800];
    let data = vec![0x11u8; 0x100];
    let elf = common::make_elf(
        2,
        0xffff_ffff_8100_0010,
        &[
            (0x100_0000, 0xffff_ffff_8100_0000, text.clone(), 0x1800, 5),
            // Shares the page 0x1001 with the end of .text, and has .bss after its data.
            (0x100_1800, 0xffff_ffff_8100_1800, data.clone(), 0x2000, 6),
        ],
    );
    let mut rec = recorder::<X86Register>(IsolationType::None);
    let config = ElfConfig::new(
        Payload::new("vmlinux", &elf),
        X86Layout::with_memory(64 * MIB),
    );
    let kernel = load_elf(&mut rec, &config).unwrap();
    assert_eq!(kernel.entry, 0x100_0010);
    assert!(!kernel.relocatable);
    let calls = rec.calls();
    let mut expected = text.clone();
    expected.extend(&data);
    // One run for both segments, up to the end of .bss; trailing zeros left implicit.
    assert_eq!(
        pages_tagged(calls, "kernel"),
        vec![(0x1000, 4, expected.as_slice())]
    );
    check_x86_start(calls, 0x100_0010, 0, 64 * MIB);
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, ImportCall::RelocationRegion { .. }))
    );
}

#[test]
fn position_independent_elf_moves_and_is_relocatable_only_where_the_context_follows() {
    let elf = common::make_elf(3, 0x40, &[(0, 0, vec![0x90; 0x200], 0x1000, 5)]);
    for (isolation, relocates) in [
        (IsolationType::None, true),
        (IsolationType::Vbs, true),
        (IsolationType::Snp, false),
        (IsolationType::Tdx, false),
    ] {
        let mut rec = recorder::<X86Register>(isolation);
        let mut config = ElfConfig::new(
            Payload::new("pie.elf", &elf),
            X86Layout::with_memory(64 * MIB),
        );
        config.load_base = Some(0x20_0000);
        let kernel = load_elf(&mut rec, &config).unwrap();
        assert_eq!(kernel.entry, 0x20_0040);
        assert_eq!(pages_tagged(rec.calls(), "kernel")[0].0, 0x200);
        let reloc = rec.calls().iter().find_map(|c| match c {
            ImportCall::RelocationRegion {
                gpa,
                size_bytes,
                relocation_alignment,
                apply_rip_offset,
                ..
            } => Some((*gpa, *size_bytes, *relocation_alignment, *apply_rip_offset)),
            _ => None,
        });
        assert_eq!(
            reloc,
            relocates.then_some((0x20_0000, 0x1000, 0x20_0000, true)),
            "{isolation:?}"
        );
        if isolation == IsolationType::Snp {
            assert!(rec.calls().contains(&ImportCall::SetVpContextPage(0xe)));
        }
    }
    // An ET_EXEC kernel cannot move.
    let exec = common::make_elf(2, 0x40, &[(0, 0, vec![0x90; 0x200], 0x1000, 5)]);
    let mut config = ElfConfig::new(
        Payload::new("exec.elf", &exec),
        X86Layout::with_memory(64 * MIB),
    );
    config.load_base = Some(0x20_0000);
    let err = load_elf(&mut recorder(IsolationType::None), &config).unwrap_err();
    assert!(matches!(err.problem, Problem::Unsupported(_)), "{err}");
}

/// A PIE whose word at 0x200 holds a pointer (addend 0x40) fixed by one RELATIVE
/// relocation, with `kind` as its relocation type.
fn pie_with_relocation(kind: u64, rela_size: u64) -> Vec<u8> {
    let mut image = vec![0x90u8; 0x100];
    for (offset, info, addend) in [(0x200u64, kind, 0x40u64), (0, 0, 0)] {
        image.extend_from_slice(&offset.to_le_bytes());
        image.extend_from_slice(&info.to_le_bytes());
        image.extend_from_slice(&addend.to_le_bytes());
    }
    image.resize(0x208, 0);
    let mut dynamic = Vec::new();
    for (tag, val) in [(7u64, 0x100u64), (8, rela_size), (9, 24), (0, 0)] {
        dynamic.extend_from_slice(&tag.to_le_bytes());
        dynamic.extend_from_slice(&val.to_le_bytes());
    }
    common::make_elf_phdrs(
        3,
        0,
        &[
            (1, 0, 0, image, 0x1000, 7),
            (2, 0x800, 0x800, dynamic.clone(), dynamic.len() as u64, 6),
        ],
    )
}

#[test]
fn position_independent_elf_gets_its_relative_relocations_for_its_load_base() {
    let elf = pie_with_relocation(8, 48);
    let mut config = ElfConfig::new(
        Payload::new("pie.elf", &elf),
        X86Layout::with_memory(64 * MIB),
    );
    config.load_base = Some(0x40_0000);
    let mut rec = recorder::<X86Register>(IsolationType::Tdx);
    let kernel = load_elf(&mut rec, &config).unwrap();
    assert_eq!(kernel.relocations, vec![(0x200, 0x40)]);
    let mem = memory(rec.calls());
    assert_eq!(read_u64(&mem, 0x40_0200), 0x40_0040);
    // At its linked base the pointer is the addend itself.
    let config = ElfConfig::new(
        Payload::new("pie.elf", &elf),
        X86Layout::with_memory(64 * MIB),
    );
    let mut rec = recorder::<X86Register>(IsolationType::Tdx);
    load_elf(&mut rec, &config).unwrap();
    assert_eq!(read_u64(&memory(rec.calls()), 0x200), 0x40);

    // A symbol relocation (R_X86_64_64) and a table past its segment are refused.
    for (elf, name) in [
        (pie_with_relocation(1, 48), "reloc-type.elf"),
        (pie_with_relocation(8, 48 * 1000), "reloc-size.elf"),
    ] {
        let config = ElfConfig::new(Payload::new(name, &elf), X86Layout::with_memory(64 * MIB));
        let err = load_elf(&mut recorder(IsolationType::None), &config).unwrap_err();
        assert_names(&err, name);
        assert!(
            matches!(err.problem, Problem::Unsupported(_) | Problem::Truncated(_)),
            "{err}"
        );
    }
}

#[test]
fn flat_firmware_ends_at_the_reset_vector() {
    let fw = common::fake_firmware();
    let layout = X86Layout::with_memory(64 * MIB);
    let mut rec = recorder::<X86Register>(IsolationType::Snp);
    let info = load_firmware(&mut rec, &Payload::new("OVMF.fd", &fw), &layout).unwrap();
    assert_eq!(info.gpa, 0xffff_0000);
    assert_eq!(
        pages_tagged(rec.calls(), "firmware"),
        vec![(0xffff0, 16, fw.as_slice())]
    );
    assert!(
        registers(rec.calls()).is_empty(),
        "firmware starts at reset"
    );
    assert!(rec.calls().contains(&ImportCall::SetVpContextPage(0xe)));
    let mut rec = recorder::<X86Register>(IsolationType::Tdx);
    load_firmware(&mut rec, &Payload::new("OVMF.fd", &fw), &layout).unwrap();
    assert!(
        !rec.calls()
            .iter()
            .any(|c| matches!(c, ImportCall::SetVpContextPage(_)))
    );
}

#[test]
fn aarch64_image_gets_its_entry_and_a_device_tree_parameter_area() {
    let image = common::fake_arm64_image(0x3000, 0x10_0000);
    let config = Aarch64Config {
        ram_base: 0x4000_0000,
        ram_size: 128 * MIB,
        device_tree_pages: 16,
    };
    let mut rec = recorder::<AArch64Register>(IsolationType::Vbs);
    let info = load_aarch64_image(&mut rec, &Payload::new("Image", &image), &config).unwrap();
    assert_eq!(info.kernel_gpa, 0x4008_0000);
    assert_eq!(info.device_tree_gpa, 0x4020_0000);
    let calls = rec.calls();
    assert_eq!(
        pages_tagged(calls, "kernel"),
        vec![(0x4_0080, 3, image.as_slice())]
    );
    assert!(calls.contains(&ImportCall::CreateParameterArea {
        page_base: 0x4_0200,
        page_count: 16,
        debug_tag: "device-tree".into(),
        initial_data: vec![],
        index: ParameterAreaIndex(0),
    }));
    assert!(calls.contains(&ImportCall::ImportParameter {
        area: ParameterAreaIndex(0),
        byte_offset: 0,
        parameter_type: IgvmParameterType::DeviceTree,
    }));
    assert_eq!(
        registers(calls),
        vec![
            AArch64Register::X0(0x4020_0000),
            AArch64Register::Pc(0x4008_0000),
            AArch64Register::Cpsr(0x3c5),
        ]
    );
}

fn assert_names(err: &LoadError, file: &str) {
    assert_eq!(err.file, file);
    assert!(err.to_string().starts_with(&format!("{file}: ")), "{err}");
}

#[test]
fn malformed_payloads_are_refused_naming_file_and_problem() {
    let layout = X86Layout::with_memory(64 * MIB);
    let elf = common::make_elf(
        2,
        0x100_0000,
        &[(0x100_0000, 0x100_0000, vec![1; 0x100], 0x100, 5)],
    );

    // Truncated ELF: header cut, and segment data past the end.
    for cut in [10, elf.len() - 0x80] {
        let err = load_elf(
            &mut recorder(IsolationType::None),
            &ElfConfig::new(Payload::new("cut.elf", &elf[..cut]), layout.clone()),
        )
        .unwrap_err();
        assert_names(&err, "cut.elf");
        assert!(matches!(err.problem, Problem::Truncated(_)), "{err}");
    }

    // Overlapping segments.
    let overlapping = common::make_elf(
        2,
        0x100_0000,
        &[
            (0x100_0000, 0x100_0000, vec![1; 0x2000], 0x2000, 5),
            (0x100_1000, 0x100_1000, vec![2; 0x100], 0x100, 6),
        ],
    );
    let err = load_elf(
        &mut recorder(IsolationType::None),
        &ElfConfig::new(Payload::new("overlap.elf", &overlapping), layout.clone()),
    )
    .unwrap_err();
    assert_names(&err, "overlap.elf");
    assert!(matches!(err.problem, Problem::Overlap(_)), "{err}");

    // bzImage with a bad magic.
    let mut bz = common::fake_bzimage(4096, 0x1000);
    bz[0x202..0x206].copy_from_slice(b"HdrX");
    let err = load_linux(
        &mut recorder(IsolationType::None),
        &LinuxConfig::new(Payload::new("bad.bzImage", &bz), layout.clone()),
    )
    .unwrap_err();
    assert_names(&err, "bad.bzImage");
    assert!(matches!(err.problem, Problem::BadMagic(_)), "{err}");

    // Memory too small: a kernel needing 64 MiB from 16 MiB in 32 MiB of RAM.
    let bz = common::fake_bzimage(4096, 64 << 20);
    let err = load_linux(
        &mut recorder(IsolationType::None),
        &LinuxConfig::new(
            Payload::new("big.bzImage", &bz),
            X86Layout::with_memory(32 * MIB),
        ),
    )
    .unwrap_err();
    assert_names(&err, "big.bzImage");
    assert!(
        matches!(err.problem, Problem::MemoryTooSmall { .. }),
        "{err}"
    );

    // An initrd that does not fit above the kernel names the initrd.
    let bz = common::fake_bzimage(4096, 0x10_0000);
    let initrd = vec![1u8; 20 << 20];
    let mut config = LinuxConfig::new(Payload::new("k", &bz), X86Layout::with_memory(32 * MIB));
    config.initrd = Some(Payload::new("huge.cpio", &initrd));
    let err = load_linux(&mut recorder(IsolationType::None), &config).unwrap_err();
    assert_names(&err, "huge.cpio");
    assert!(
        matches!(err.problem, Problem::MemoryTooSmall { .. }),
        "{err}"
    );

    // A command line longer than the kernel takes.
    let long = "x".repeat(3000);
    let mut config = LinuxConfig::new(Payload::new("k", &bz), layout.clone());
    config.cmdline = &long;
    assert!(matches!(
        load_linux(&mut recorder(IsolationType::None), &config)
            .unwrap_err()
            .problem,
        Problem::Invalid(_)
    ));

    // Firmware: blank reset vector, unaligned size.
    let err = load_firmware(
        &mut recorder(IsolationType::None),
        &Payload::new("fw", &[0; 8192]),
        &layout,
    )
    .unwrap_err();
    assert!(matches!(err.problem, Problem::Invalid(_)), "{err}");
    let err = load_firmware(
        &mut recorder(IsolationType::None),
        &Payload::new("fw", &[0x90; 100]),
        &layout,
    )
    .unwrap_err();
    assert!(matches!(err.problem, Problem::Invalid(_)), "{err}");

    // arm64 Image with a bad magic, and one too big for its RAM.
    let mut image = common::fake_arm64_image(0x1000, 0x1000);
    image[56] = b'X';
    let config = Aarch64Config {
        ram_base: 0x4000_0000,
        ram_size: 4 * MIB,
        device_tree_pages: 1,
    };
    let err = load_aarch64_image(
        &mut recorder(IsolationType::Vbs),
        &Payload::new("Image", &image),
        &config,
    )
    .unwrap_err();
    assert!(matches!(err.problem, Problem::BadMagic(_)), "{err}");
    let image = common::fake_arm64_image(0x1000, 8 * MIB);
    let err = load_aarch64_image(
        &mut recorder(IsolationType::Vbs),
        &Payload::new("Image", &image),
        &config,
    )
    .unwrap_err();
    assert!(
        matches!(err.problem, Problem::MemoryTooSmall { .. }),
        "{err}"
    );
}

mod properties {
    use super::*;
    use igvm_loader::loaders::x86::identity_page_tables;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the memory size, every address below the map translates to itself and
        /// none above it translates.
        #[test]
        fn identity_map_translates_every_address_to_itself(
            gib in 4u64..=16,
            offset in any::<u64>(),
        ) {
            let size = gib << 30;
            let base = 0x10000;
            let tables = identity_page_tables(base, size);
            let mut mem = BTreeMap::new();
            for (i, page) in tables.chunks(4096).enumerate() {
                mem.insert(base / PAGE + i as u64, page.to_vec());
            }
            let inside = offset % size;
            prop_assert_eq!(translate(&mem, base, inside), Some(inside));
            let outside = size + offset % ((1 << 39) - size);
            prop_assert_eq!(translate(&mem, base, outside), None);
        }

        /// The ELF loader never panics on a corrupted kernel, and refuses it or loads it.
        #[test]
        fn corrupted_elf_is_refused_or_loaded_never_a_panic(
            flips in proptest::collection::vec((0usize..0x200, any::<u8>()), 1..8),
        ) {
            let mut elf = common::make_elf(
                2,
                0x100_0000,
                &[(0x100_0000, 0x100_0000, vec![0xc3; 0x100], 0x1000, 5)],
            );
            for (at, byte) in flips {
                if let Some(b) = elf.get_mut(at) {
                    *b = byte;
                }
            }
            let config = ElfConfig::new(Payload::new("fuzzed.elf", &elf), X86Layout::with_memory(64 * MIB));
            if let Err(e) = load_elf(&mut recorder(IsolationType::None), &config) {
                prop_assert_eq!(e.file, "fuzzed.elf");
            }
        }
    }
}
