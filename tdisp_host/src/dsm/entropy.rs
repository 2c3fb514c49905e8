//! Where the device's START_INTERFACE nonces come from.

use thiserror::Error;

/// The entropy source could not deliver random bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("entropy source failed: {0}")]
pub struct EntropyError(pub String);

/// A source of random bytes for nonces. The device answers INSUFFICIENT_ENTROPY when it fails.
pub trait EntropySource: Send {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// The operating system's random number generator (`getrandom`), the default source.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl EntropySource for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::fill(buf).map_err(|e| EntropyError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_entropy_gives_different_nonces() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        OsEntropy.fill(&mut a).unwrap();
        OsEntropy.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
