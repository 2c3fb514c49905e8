//! Reading IGVM files we did not build.

use crate::error::Error;
use crate::error::Result;
use igvm::IgvmFile;

/// Parses an IGVM binary (every platform kept).
pub fn parse(bytes: &[u8]) -> Result<IgvmFile> {
    IgvmFile::new_from_binary(bytes, None).map_err(|e| Error::Malformed(e.to_string()))
}
