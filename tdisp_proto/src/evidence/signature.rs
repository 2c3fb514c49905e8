//! SPDM 1.2 signature verification for the one suite the stack negotiates (SHA-384,
//! ECDSA P-384 with raw `r || s` signatures), DSP0274 1.2 section 15: the signed message is the
//! 64-byte prefix "dmtf-spdm-v1.2.*" four times, the context string right-aligned in 36 bytes,
//! then the transcript hash.

use p384::ecdsa::Signature;
use p384::ecdsa::VerifyingKey;
use p384::ecdsa::signature::Verifier;
use sha2::Digest;
use sha2::Sha384;
use thiserror::Error;

/// SHA-384 digest size.
pub const HASH_SIZE: usize = 48;
/// ECDSA P-384 raw signature size (`r || s`).
pub const SIGNATURE_SIZE: usize = 96;

/// The signing prefix: "dmtf-spdm-v1.2.*" four times.
const SIGNING_PREFIX: &[u8; 16] = b"dmtf-spdm-v1.2.*";
/// Bytes reserved for the context string after the prefix.
const SIGNING_CONTEXT_SIZE: usize = 36;

/// Signing contexts of DSP0274 1.2 table 52 used here.
pub mod context {
    /// KEY_EXCHANGE_RSP, signed by the responder.
    pub const KEY_EXCHANGE_RSP: &str = "responder-key_exchange_rsp signing";
    /// MEASUREMENTS, signed by the responder.
    pub const MEASUREMENTS: &str = "responder-measurements signing";
}

/// A signature did not verify (or is not a valid `r || s` pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature verification failed")]
pub struct BadSignature;

/// SHA-384 of `data`.
pub fn hash(data: &[u8]) -> [u8; HASH_SIZE] {
    Sha384::digest(data).into()
}

/// The message an SPDM 1.2 signature covers (ECDSA then hashes it with SHA-384).
pub fn signing_message(context: &str, transcript_hash: &[u8; HASH_SIZE]) -> Vec<u8> {
    let context = context.as_bytes();
    let context = &context[..context.len().min(SIGNING_CONTEXT_SIZE)];
    let mut out = Vec::with_capacity(4 * SIGNING_PREFIX.len() + SIGNING_CONTEXT_SIZE + HASH_SIZE);
    for _ in 0..4 {
        out.extend_from_slice(SIGNING_PREFIX);
    }
    out.resize(out.len() + SIGNING_CONTEXT_SIZE - context.len(), 0);
    out.extend_from_slice(context);
    out.extend_from_slice(transcript_hash);
    out
}

/// Verifies a raw `r || s` signature of `transcript_hash` under `context`.
pub fn verify(
    key: &VerifyingKey,
    context: &str,
    transcript_hash: &[u8; HASH_SIZE],
    signature: &[u8; SIGNATURE_SIZE],
) -> Result<(), BadSignature> {
    let signature = Signature::from_slice(signature).map_err(|_| BadSignature)?;
    key.verify(&signing_message(context, transcript_hash), &signature)
        .map_err(|_| BadSignature)
}
