//! IGVM images for confidential VMs: the [`ImageLoad`] contract loaders program against, an
//! IGVM builder implementing it for several isolation platforms at once, and launch
//! measurements (SEV-SNP launch digest, TDX MRTD, VBS boot digest) computed by this crate.
//!
//! Start with [`builder::IgvmBuilder`]: add a platform, let a loader (or your code) call
//! [`ImageLoad`] on its image, build the file, then [`measure::measure_all`] it.
//!
//! ```
//! use igvm_loader::builder::{IgvmBuilder, PlatformConfig};
//! use igvm_loader::importer::{BootPageAcceptance, ImageLoad, IsolationConfig, IsolationType};
//! use igvm_loader::measure::{measure_all, MeasureOptions};
//! use igvm_loader::arch::X86Register;
//!
//! let mut builder = IgvmBuilder::<X86Register>::new();
//! for isolation in [IsolationType::Snp, IsolationType::Tdx] {
//!     let image = builder.add_platform(PlatformConfig::new(IsolationConfig::new(isolation)))?;
//!     image.import_pages(0x100, 2, "firmware", BootPageAcceptance::Exclusive, b"boot code")?;
//! }
//! let file = builder.build()?;
//! let digests = measure_all(&file, &MeasureOptions::default())?;
//! assert_eq!(digests.len(), 2);
//! # Ok::<(), igvm_loader::Error>(())
//! ```
//!
//! To build from payloads rather than by hand, let a loader make the calls: [`loaders`] has
//! an x86-64 ELF kernel loader, Linux direct boot of a bzImage, flat firmware and AArch64
//! `Image`, each written against [`ImageLoad`] only. [`build`] does the whole job from a TOML
//! [`manifest`] (what `igvmgen build --manifest M.toml -o out.igvm` runs; examples in
//! `docs/examples/`; its measurement JSON follows the manifest's `vmm`, else `igvmgen
//! measure`'s defaults), and [`qemu`] runs a file's native platform, or another platform's
//! start state without its isolation, on a stock QEMU (`igvmgen qemu`), which is how the
//! tests prove that a built image boots.
//!
//! Layout: [`importer`] holds the contract and its types, [`arch`] the register sets,
//! [`vp_context`] the start states reached through generated trampolines (TDX reset page,
//! QEMU BIOS), [`builder`] the images and the multi-platform merge, [`loaders`] the payload
//! loaders, [`manifest`] and [`build`] the manifest-driven build, [`measure`] the digests,
//! [`qemu`] the QEMU runner, [`recording`] a call recorder for loader tests, [`dump`] the
//! human-readable listing, [`parse()`] a hardened reader for foreign files. The `igvmgen`
//! binary (`dump`, `measure`, `build`, `qemu`) wraps them.
//!
//! Conventions worth knowing:
//! - SNP digests depend on how the VMM launches the file: [`measure::Vmm`] selects both
//!   conventions at once ([`measure::MeasureOptions::for_vmm`], QEMU by default). QEMU's IGVM
//!   loader fills data-less measured pages with zeros and measures them as NORMAL pages, and
//!   KVM measures every VMSA at its fixed GPA 0xfffffffff000 after all pages; Hyper-V (and the
//!   `igvm` crate) measure data-less pages as NORMAL zero pages too, and VMSAs at the file's
//!   GPA in file order. PAGE_TYPE_ZERO ([`measure::ZeroPages::Zero`]) is available for VMMs
//!   that use it. Parameter areas are UNMEASURED for their whole size.
//! - Hostile files: a data-less range is one record however long, and a platform that would
//!   measure more than [`measure::MeasureOptions::max_pages`] pages
//!   ([`measure::DEFAULT_MAX_PAGES`] by default) is refused before any page is hashed. A range
//!   past 2^64, a parameter area declared twice, and a 2 MiB page carrying file data (the
//!   `igvm` crate reads only 4 KiB of it) are errors, never a wrong digest.
//! - Hostile inputs to a build: the manifest, payloads and files to measure must be regular
//!   files (a device such as `/dev/zero`, a FIFO or a directory is refused before it is
//!   opened; payloads at most [`build::MAX_PAYLOAD_SIZE`]), and an ELF kernel whose segments
//!   span more than [`loaders::elf::MAX_KERNEL_SPAN`] is refused before its pages are
//!   gathered.
//! - A 2 MiB page directive is measured as 512 consecutive 4 KiB pages on every platform
//!   (what a VMM issuing 4 KiB launch updates, such as KVM, produces). The builder emits
//!   2 MiB directives only for data-less runs, and only when asked
//!   ([`builder::PlatformConfig::large_pages`]). The `igvm` crate's own measurement (0.5)
//!   counts a 2 MiB directive as a single page, so it is an oracle for 4 KiB files only.
//! - A TD starts at the reset vector and has no VP context structure: registers imported for
//!   TDX become a measured reset page at 0xFFFFF000 whose trampoline loads them
//!   ([`vp_context::tdx`]). SNP VMSAs start from the architectural reset state and always
//!   have EFER.SVME. Relocations need a VP context the loader can adjust: VBS and native.
//! - `igvmgen measure` names the file in every error and exits with 0 (measured), 1 (other
//!   failure), 2 (bad command line), 3 (file unreadable), 4 (not a valid IGVM file: bad magic,
//!   truncated, invalid headers or directives) or 5 (valid, but not measurable as asked:
//!   platform absent, page limit, 2 MiB page with data).
//! - Page hashing runs on rayon's pool; the chains (SNP PAGE_INFO, TDX stream, VBS) are
//!   sequential, and [`measure::measure_all`] runs the platforms concurrently.

#![forbid(unsafe_code)]

pub mod arch;
pub mod build;
pub mod builder;
pub mod dump;
mod error;
pub mod importer;
pub mod loaders;
pub mod manifest;
pub mod measure;
mod parse;
pub mod qemu;
pub mod recording;
pub mod vp_context;

pub use error::Error;
pub use error::Result;
pub use importer::ImageLoad;
pub use parse::parse;
