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
//! Layout: [`importer`] holds the contract and its types, [`arch`] the register sets,
//! [`builder`] the images and the multi-platform merge, [`measure`] the digests,
//! [`recording`] a call recorder for loader tests, [`dump`] the human-readable listing.

#![forbid(unsafe_code)]

pub mod arch;
pub mod builder;
pub mod dump;
mod error;
pub mod importer;
pub mod measure;
mod parse;
pub mod recording;

pub use error::Error;
pub use error::Result;
pub use importer::ImageLoad;
pub use parse::parse;
