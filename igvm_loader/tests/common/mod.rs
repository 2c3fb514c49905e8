//! Helpers shared by the loader, build and boot tests: payloads the tests make themselves.

#![allow(dead_code, reason = "each test binary uses a different subset")]

/// One entry of a cpio "newc" archive.
pub enum CpioEntry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A regular file with its mode bits.
    File(&'a str, u32, &'a [u8]),
    /// A character device (major, minor).
    CharDev(&'a str, u32, u32),
}

/// A cpio "newc" archive (the initramfs format) of `entries`, with the trailer.
pub fn cpio_newc(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1;
    let mut push = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    for e in entries {
        match e {
            CpioEntry::Dir(name) => push(&mut out, name, 0o040755, &[], (0, 0)),
            CpioEntry::File(name, mode, data) => {
                push(&mut out, name, 0o100000 | mode, data, (0, 0));
            }
            CpioEntry::CharDev(name, major, minor) => {
                push(&mut out, name, 0o020600, &[], (*major, *minor));
            }
        }
    }
    push(&mut out, "TRAILER!!!", 0, &[], (0, 0));
    out
}

/// A minimal bzImage: boot sector with the setup header, one setup sector, and a
/// protected-mode "kernel" of `kernel_len` bytes (filled with a pattern).
pub fn fake_bzimage(kernel_len: usize, init_size: u32) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x200] = 0xeb; // jmp
    img[0x201] = 0x6a; // header ends at 0x26c
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x234] = 1; // relocatable
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    img.extend((0..kernel_len).map(|i| (i % 251) as u8 + 1));
    img
}

/// A little-endian ELF64 x86-64 file with the given PT_LOAD segments
/// `(paddr, vaddr, file bytes, memsz, flags)` and entry point.
pub fn make_elf(e_type: u16, entry: u64, segments: &[(u64, u64, Vec<u8>, u64, u32)]) -> Vec<u8> {
    let with_type: Vec<_> = segments
        .iter()
        .map(|(p, v, b, m, f)| (1u32, *p, *v, b.clone(), *m, *f))
        .collect();
    make_elf_phdrs(e_type, entry, &with_type)
}

/// A program header and its file bytes: `(p_type, paddr, vaddr, file bytes, memsz, flags)`.
pub type Phdr = (u32, u64, u64, Vec<u8>, u64, u32);

/// [`make_elf`] with a program-header type per segment.
pub fn make_elf_phdrs(e_type: u16, entry: u64, segments: &[Phdr]) -> Vec<u8> {
    let phoff = 64u64;
    let phnum = segments.len() as u64;
    let mut data_off = phoff + 56 * phnum;
    let mut out = Vec::new();
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&e_type.to_le_bytes());
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&phoff.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    out.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    out.extend_from_slice(&(phnum as u16).to_le_bytes());
    out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
    let mut bodies = Vec::new();
    for (p_type, paddr, vaddr, bytes, memsz, flags) in segments {
        out.extend_from_slice(&p_type.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&data_off.to_le_bytes());
        out.extend_from_slice(&vaddr.to_le_bytes());
        out.extend_from_slice(&paddr.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&memsz.to_le_bytes());
        out.extend_from_slice(&0x1000u64.to_le_bytes());
        data_off += bytes.len() as u64;
        bodies.extend_from_slice(bytes);
    }
    out.extend_from_slice(&bodies);
    out
}

/// A 64 KiB flat firmware whose reset vector holds a jump.
pub fn fake_firmware() -> Vec<u8> {
    let mut fw = vec![0x90u8; 64 * 1024];
    let n = fw.len();
    fw[n - 16..n - 13].copy_from_slice(&[0xe9, 0x00, 0x00]);
    fw
}

/// A minimal arm64 Image of `len` bytes (at least 64).
pub fn fake_arm64_image(len: usize, image_size: u64) -> Vec<u8> {
    let mut img = vec![0u8; len];
    img[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes());
    img[16..24].copy_from_slice(&image_size.to_le_bytes());
    img[56..60].copy_from_slice(b"ARM\x64");
    img
}
