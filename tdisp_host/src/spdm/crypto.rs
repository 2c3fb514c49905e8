//! The SPDM 1.2 cryptography of the one suite this implementation negotiates: SHA-384
//! transcripts, ECDSA P-384 signatures with the SPDM 1.2 signing prefix, ECDHE secp384r1 and
//! the SPDM key schedule (DSP0274 1.2 section 12, DSP0277 for the AEAD nonce), all from
//! RustCrypto crates. Every secret is zeroized when dropped.

use super::codes::DHE_SIZE;
use super::codes::HASH_SIZE;
use super::codes::SIGNATURE_SIZE;
use hkdf::Hkdf;
use hmac::Hmac;
use hmac::Mac;
use p384::ecdsa::Signature;
use p384::ecdsa::SigningKey;
use p384::ecdsa::VerifyingKey;
use p384::ecdsa::signature::Signer;
use p384::elliptic_curve::sec1::ToEncodedPoint;
use sha2::Sha384;
use thiserror::Error;
use zeroize::Zeroize;
use zeroize::ZeroizeOnDrop;
use zeroize::Zeroizing;

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The peer's public key is not a valid secp384r1 / P-384 point.
    #[error("invalid P-384 public key")]
    InvalidPublicKey,
    /// A signature does not verify (or is not a valid r || s pair).
    #[error("signature verification failed")]
    BadSignature,
    /// An HMAC (verify data) does not match.
    #[error("verify data mismatch")]
    BadVerifyData,
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
    /// AEAD sealing or opening failed.
    #[error("AEAD failure")]
    Aead,
}

/// SHA-384 of `data`.
pub fn hash(data: &[u8]) -> [u8; HASH_SIZE] {
    tdisp_proto::evidence::signature::hash(data)
}

/// Fills `out` from the operating system's random source.
pub fn random_bytes(out: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(out).map_err(|_| CryptoError::Random)
}

/// Signing contexts of DSP0274 1.2 table 52 used here (shared with the guest's verifier).
pub use tdisp_proto::evidence::signature::context;
/// The message an SPDM 1.2 signature covers (shared with the guest's verifier).
pub use tdisp_proto::evidence::signature::signing_message;

/// Signs `transcript_hash` under `context` (raw r || s).
pub fn sign(
    key: &SigningKey,
    context: &str,
    transcript_hash: &[u8; HASH_SIZE],
) -> [u8; SIGNATURE_SIZE] {
    let signature: Signature = key.sign(&signing_message(context, transcript_hash));
    let mut out = [0; SIGNATURE_SIZE];
    out.copy_from_slice(&signature.to_bytes());
    out
}

/// Verifies a raw r || s signature of `transcript_hash` under `context`.
pub fn verify(
    key: &VerifyingKey,
    context: &str,
    transcript_hash: &[u8; HASH_SIZE],
    signature: &[u8; SIGNATURE_SIZE],
) -> Result<(), CryptoError> {
    tdisp_proto::evidence::signature::verify(key, context, transcript_hash, signature)
        .map_err(|_| CryptoError::BadSignature)
}

/// An ephemeral secp384r1 key for one KEY_EXCHANGE.
pub struct EphemeralKey(p384::SecretKey);

impl EphemeralKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, CryptoError> {
        // A random 48-byte string is a valid scalar with overwhelming probability; retry the
        // rare zero or out-of-range value.
        for _ in 0..8 {
            let mut bytes = Zeroizing::new([0u8; 48]);
            random_bytes(bytes.as_mut())?;
            if let Ok(key) = p384::SecretKey::from_slice(bytes.as_ref()) {
                return Ok(Self(key));
            }
        }
        Err(CryptoError::Random)
    }

    /// A key from fixed bytes (known-answer tests).
    pub fn from_bytes(bytes: &[u8; 48]) -> Result<Self, CryptoError> {
        p384::SecretKey::from_slice(bytes)
            .map(Self)
            .map_err(|_| CryptoError::InvalidPublicKey)
    }

    /// The public key as SPDM ExchangeData: X || Y.
    pub fn exchange_data(&self) -> [u8; DHE_SIZE] {
        let point = self.0.public_key().to_encoded_point(false);
        let mut out = [0; DHE_SIZE];
        // An uncompressed point is 0x04 || X || Y.
        if let Some(xy) = point.as_bytes().get(1..) {
            let n = xy.len().min(DHE_SIZE);
            out[..n].copy_from_slice(&xy[..n]);
        }
        out
    }

    /// The shared secret with the peer's ExchangeData (the X coordinate of the shared point).
    pub fn diffie_hellman(
        &self,
        peer: &[u8; DHE_SIZE],
    ) -> Result<Zeroizing<[u8; HASH_SIZE]>, CryptoError> {
        let mut sec1 = [0u8; 1 + DHE_SIZE];
        sec1[0] = 0x04;
        sec1[1..].copy_from_slice(peer);
        let peer =
            p384::PublicKey::from_sec1_bytes(&sec1).map_err(|_| CryptoError::InvalidPublicKey)?;
        let shared = p384::ecdh::diffie_hellman(self.0.to_nonzero_scalar(), peer.as_affine());
        let mut out = Zeroizing::new([0u8; HASH_SIZE]);
        out.copy_from_slice(shared.raw_secret_bytes());
        Ok(out)
    }
}

/// HMAC-SHA-384.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; HASH_SIZE] {
    // HMAC accepts keys of any length, so this cannot fail.
    match <Hmac<Sha384> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; HASH_SIZE],
    }
}

/// Checks `verify_data` = HMAC(`key`, `data`) in constant time.
pub fn check_hmac(key: &[u8], data: &[u8], verify_data: &[u8]) -> Result<(), CryptoError> {
    let mut mac =
        <Hmac<Sha384> as Mac>::new_from_slice(key).map_err(|_| CryptoError::BadVerifyData)?;
    mac.update(data);
    mac.verify_slice(verify_data)
        .map_err(|_| CryptoError::BadVerifyData)
}

/// The SPDM key schedule's BinConcat: `u16 LE length || "spdm1.2 " || label || context`.
pub fn bin_concat(length: u16, label: &str, context: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 8 + label.len() + context.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(b"spdm1.2 ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(context);
    out
}

fn expand<const N: usize>(
    prk: &[u8; HASH_SIZE],
    label: &str,
    context: &[u8],
) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // A 48-byte PRK and outputs of at most 48 bytes are always valid for HKDF-SHA-384.
    if let Ok(hkdf) = Hkdf::<Sha384>::from_prk(prk) {
        let length = u16::try_from(N).unwrap_or(u16::MAX);
        let _ = hkdf.expand(&bin_concat(length, label, context), out.as_mut());
    }
    out
}

fn extract(salt: &[u8; HASH_SIZE], ikm: &[u8]) -> Zeroizing<[u8; HASH_SIZE]> {
    let (prk, _) = Hkdf::<Sha384>::extract(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; HASH_SIZE]);
    out.copy_from_slice(&prk);
    out
}

/// AES-256-GCM key size.
pub const AEAD_KEY_SIZE: usize = 32;
/// AES-256-GCM IV size.
pub const AEAD_IV_SIZE: usize = 12;

/// The keys of one direction of a session phase, with its sequence number.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DirectionKeys {
    /// The AEAD key.
    pub(crate) key: [u8; AEAD_KEY_SIZE],
    /// The AEAD IV (salt).
    pub(crate) iv: [u8; AEAD_IV_SIZE],
    /// The next sequence number.
    pub(crate) sequence: u64,
}

impl DirectionKeys {
    fn derive(secret: &[u8; HASH_SIZE]) -> Self {
        Self {
            key: *expand::<AEAD_KEY_SIZE>(secret, "key", &[]),
            iv: *expand::<AEAD_IV_SIZE>(secret, "iv", &[]),
            sequence: 0,
        }
    }

    /// The nonce of `sequence`: the IV with the sequence number XORed, little-endian, into
    /// its first eight bytes (libspdm's default for SPDM 1.2 sessions).
    pub fn nonce(&self, sequence: u64) -> [u8; AEAD_IV_SIZE] {
        let mut nonce = self.iv;
        for (n, s) in nonce.iter_mut().zip(sequence.to_le_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// The key bytes (known-answer tests).
    pub fn key(&self) -> &[u8; AEAD_KEY_SIZE] {
        &self.key
    }

    /// The IV bytes (known-answer tests).
    pub fn iv(&self) -> &[u8; AEAD_IV_SIZE] {
        &self.iv
    }
}

/// One phase's keys (handshake or application), both directions.
pub struct PhaseKeys {
    /// Requester to responder.
    pub request: DirectionKeys,
    /// Responder to requester.
    pub response: DirectionKeys,
}

/// The key schedule after the ECDHE exchange.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeySchedule {
    handshake_secret: [u8; HASH_SIZE],
    request_handshake_secret: [u8; HASH_SIZE],
    response_handshake_secret: [u8; HASH_SIZE],
}

impl KeySchedule {
    /// Derives the handshake secrets from the ECDHE secret and TH1.
    pub fn new(dhe_secret: &[u8], th1: &[u8; HASH_SIZE]) -> Self {
        let handshake_secret = extract(&[0; HASH_SIZE], dhe_secret);
        Self {
            request_handshake_secret: *expand::<HASH_SIZE>(&handshake_secret, "req hs data", th1),
            response_handshake_secret: *expand::<HASH_SIZE>(&handshake_secret, "rsp hs data", th1),
            handshake_secret: *handshake_secret,
        }
    }

    /// The requester's finished key (FINISH verify data).
    pub fn request_finished_key(&self) -> Zeroizing<[u8; HASH_SIZE]> {
        expand::<HASH_SIZE>(&self.request_handshake_secret, "finished", &[])
    }

    /// The responder's finished key (KEY_EXCHANGE_RSP verify data).
    pub fn response_finished_key(&self) -> Zeroizing<[u8; HASH_SIZE]> {
        expand::<HASH_SIZE>(&self.response_handshake_secret, "finished", &[])
    }

    /// The handshake-phase AEAD keys (FINISH and FINISH_RSP travel under them).
    pub fn handshake_keys(&self) -> PhaseKeys {
        PhaseKeys {
            request: DirectionKeys::derive(&self.request_handshake_secret),
            response: DirectionKeys::derive(&self.response_handshake_secret),
        }
    }

    /// The application-phase AEAD keys from TH2.
    pub fn application_keys(&self, th2: &[u8; HASH_SIZE]) -> PhaseKeys {
        let salt = expand::<HASH_SIZE>(&self.handshake_secret, "derived", &[]);
        let master = extract(&salt, &[0; HASH_SIZE]);
        let request = expand::<HASH_SIZE>(&master, "req app data", th2);
        let response = expand::<HASH_SIZE>(&master, "rsp app data", th2);
        PhaseKeys {
            request: DirectionKeys::derive(&request),
            response: DirectionKeys::derive(&response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_message_is_prefix_padding_context_hash() {
        let message = signing_message(context::KEY_EXCHANGE_RSP, &[0xab; HASH_SIZE]);
        assert_eq!(message.len(), 64 + 36 + 48);
        assert_eq!(&message[..16], b"dmtf-spdm-v1.2.*");
        assert_eq!(&message[48..64], b"dmtf-spdm-v1.2.*");
        // 34-byte context: two zero bytes before it.
        assert_eq!(&message[64..66], &[0, 0]);
        assert_eq!(&message[66..100], context::KEY_EXCHANGE_RSP.as_bytes());
        assert_eq!(&message[100..], &[0xab; HASH_SIZE]);
    }

    #[test]
    fn bin_concat_matches_the_spec_layout() {
        assert_eq!(
            bin_concat(48, "finished", &[]),
            b"\x30\x00spdm1.2 finished".to_vec()
        );
    }

    #[test]
    fn nonce_xors_the_sequence_little_endian_into_the_first_bytes() {
        let keys = DirectionKeys {
            key: [0; 32],
            iv: [0x10; 12],
            sequence: 0,
        };
        assert_eq!(
            keys.nonce(0x0102),
            [
                0x12, 0x11, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10
            ]
        );
    }

    #[test]
    fn ecdhe_agrees_and_rejects_points_off_the_curve() {
        let a = EphemeralKey::generate().unwrap();
        let b = EphemeralKey::generate().unwrap();
        assert_eq!(
            *a.diffie_hellman(&b.exchange_data()).unwrap(),
            *b.diffie_hellman(&a.exchange_data()).unwrap()
        );
        assert_eq!(
            a.diffie_hellman(&[1; DHE_SIZE]).err(),
            Some(CryptoError::InvalidPublicKey)
        );
    }
}
