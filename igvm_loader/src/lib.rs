//! IGVM images: the ImageLoad trait loaders program against, an IGVM builder implementing it, and SEV-SNP / TDX / VBS launch measurements.
//!
//! This crate is being built in the first wave of issues; its modules land with them.

#![forbid(unsafe_code)]
