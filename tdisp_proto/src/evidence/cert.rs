//! SPDM certificate chains: the slot format (DSP0274 1.2 table 28) and their validation against
//! a configured root. One implementation for both ends: the host's SPDM requester validates the
//! chain it reads from the device, and a guest validates the chain the host serves it.
//! [`validate_slot_at`] also checks validity dates against a time the caller trusts;
//! revocation is never checked.
//!
//! Slot format: `Length u16 LE (whole chain) | Reserved u16 | RootHash [48] | Certificates`,
//! the certificates DER-encoded and concatenated from the one the root issued (or the root
//! itself) down to the leaf, whose key signs KEY_EXCHANGE_RSP and MEASUREMENTS.
//!
//! Validation checks: the RootHash is the hash of the configured root; each certificate is
//! issued and ECDSA-P384/SHA-384 signed by the one before it (the first by the root); every
//! certificate but the leaf is a CA; the leaf key is a P-384 key; with [`validate_slot_at`] and
//! a time, the root and every certificate are within their validity periods. Revocation is
//! never checked. The host's requester checks no dates (it has no trusted clock).

use super::signature::HASH_SIZE;
use super::signature::hash;
use der::Decode;
use der::Encode;
use der::Reader;
use p384::ecdsa::DerSignature;
use p384::ecdsa::VerifyingKey;
use p384::ecdsa::signature::Verifier;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;
use thiserror::Error;
use x509_cert::Certificate;
use x509_cert::ext::pkix::BasicConstraints;

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The slot header is malformed or its length disagrees with the bytes.
    #[error("malformed certificate chain: {0}")]
    Malformed(&'static str),
    /// A certificate is not valid DER X.509.
    #[error("certificate {0} is not valid DER X.509")]
    Der(usize),
    /// The RootHash is not the hash of the configured root.
    #[error("the chain's root hash is not the configured root")]
    RootMismatch,
    /// A certificate is not issued by the previous one (or the root).
    #[error("certificate {0} is not issued by its predecessor")]
    IssuerMismatch(usize),
    /// A certificate's signature does not verify, or uses another algorithm.
    #[error("certificate {0} has a bad signature")]
    BadSignature(usize),
    /// A certificate other than the leaf is not a CA.
    #[error("certificate {0} issues another but is not a CA")]
    NotCa(usize),
    /// A key is not a P-384 key.
    #[error("certificate {0} does not hold a P-384 key")]
    UnsupportedKey(usize),
    /// A certificate of the chain is not yet valid at the time checked.
    #[error("certificate {0} is not yet valid at the time checked")]
    NotYetValid(usize),
    /// A certificate of the chain has expired at the time checked.
    #[error("certificate {0} has expired at the time checked")]
    Expired(usize),
    /// The configured root is outside its validity period at the time checked.
    #[error("the configured root is not valid at the time checked")]
    RootNotValid,
    /// Certificate generation failed (generation lives in `tdisp_host`).
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// OID of ecdsa-with-SHA384.
const ECDSA_WITH_SHA384: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// Size of the slot header before the root hash.
const SLOT_HEADER_SIZE: usize = 4;

/// Encodes a chain in the slot format: `certificates` from the first under the root to the leaf.
pub fn encode_slot(root_der: &[u8], certificates: &[Vec<u8>]) -> Result<Vec<u8>, CertError> {
    let body: usize = certificates.iter().map(Vec::len).sum();
    let length = u16::try_from(SLOT_HEADER_SIZE + HASH_SIZE + body)
        .map_err(|_| CertError::Malformed("chain longer than 64 KiB"))?;
    let mut out = Vec::with_capacity(length.into());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&hash(root_der));
    for certificate in certificates {
        out.extend_from_slice(certificate);
    }
    Ok(out)
}

fn public_key(certificate: &Certificate, index: usize) -> Result<VerifyingKey, CertError> {
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::UnsupportedKey(index))?;
    VerifyingKey::from_sec1_bytes(spki).map_err(|_| CertError::UnsupportedKey(index))
}

fn check_issued(
    issuer: &Certificate,
    subject: &Certificate,
    index: usize,
) -> Result<(), CertError> {
    if subject.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(CertError::IssuerMismatch(index));
    }
    if subject.signature_algorithm.oid != ECDSA_WITH_SHA384 {
        return Err(CertError::BadSignature(index));
    }
    let key = public_key(issuer, index)?;
    let tbs = subject
        .tbs_certificate
        .to_der()
        .map_err(|_| CertError::Der(index))?;
    let signature = DerSignature::from_bytes(
        subject
            .signature
            .as_bytes()
            .ok_or(CertError::BadSignature(index))?,
    )
    .map_err(|_| CertError::BadSignature(index))?;
    key.verify(&tbs, &signature)
        .map_err(|_| CertError::BadSignature(index))
}

fn is_ca(certificate: &Certificate) -> bool {
    certificate
        .tbs_certificate
        .get::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|(_, constraints)| constraints.ca)
}

/// A chain that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedChain {
    /// The chain in slot format, as received.
    pub slot: Vec<u8>,
    /// The leaf's public key.
    pub leaf_key: VerifyingKey,
}

/// Where `at` falls in `certificate`'s validity period: `Ok` inside (bounds included),
/// `Err(true)` after it, `Err(false)` before it.
fn within_validity(certificate: &Certificate, at: Duration) -> Result<(), bool> {
    let validity = &certificate.tbs_certificate.validity;
    if at < validity.not_before.to_unix_duration() {
        Err(false)
    } else if at > validity.not_after.to_unix_duration() {
        Err(true)
    } else {
        Ok(())
    }
}

/// Validates a chain in slot format against the configured root certificate (DER), without
/// looking at validity dates (see [`validate_slot_at`]).
pub fn validate_slot(slot: &[u8], root_der: &[u8]) -> Result<ValidatedChain, CertError> {
    validate_slot_at(slot, root_der, None)
}

/// Validates a chain in slot format against the configured root certificate (DER) and, when
/// `at` is given, requires the root and every certificate of the chain to be within their
/// validity period (notBefore ..= notAfter) at that time. `at` must come from a clock the
/// caller trusts; a time before the Unix epoch is refused as before every notBefore.
pub fn validate_slot_at(
    slot: &[u8],
    root_der: &[u8],
    at: Option<SystemTime>,
) -> Result<ValidatedChain, CertError> {
    let (header, rest) = slot
        .split_at_checked(SLOT_HEADER_SIZE)
        .ok_or(CertError::Malformed("shorter than its header"))?;
    let length = usize::from(u16::from_le_bytes([header[0], header[1]]));
    if length != slot.len() {
        return Err(CertError::Malformed(
            "length field disagrees with the chain",
        ));
    }
    let (root_hash, mut certificates) = rest
        .split_at_checked(HASH_SIZE)
        .ok_or(CertError::Malformed("no root hash"))?;
    if root_hash != hash(root_der) {
        return Err(CertError::RootMismatch);
    }
    let root = Certificate::from_der(root_der).map_err(|_| CertError::Der(0))?;
    let mut parsed = Vec::new();
    while !certificates.is_empty() {
        let index = parsed.len();
        let mut reader = der::SliceReader::new(certificates).map_err(|_| CertError::Der(index))?;
        let certificate = Certificate::decode(&mut reader).map_err(|_| CertError::Der(index))?;
        let consumed = usize::try_from(reader.position()).map_err(|_| CertError::Der(index))?;
        certificates = certificates.get(consumed..).ok_or(CertError::Der(index))?;
        parsed.push(certificate);
    }
    let Some(leaf) = parsed.last() else {
        return Err(CertError::Malformed("no certificates"));
    };
    // The first certificate is the root itself or issued by it.
    let mut issuer = &root;
    for (index, certificate) in parsed.iter().enumerate() {
        if index == 0 && *certificate == root {
            continue;
        }
        if !is_ca(issuer) {
            return Err(CertError::NotCa(index));
        }
        check_issued(issuer, certificate, index)?;
        issuer = certificate;
    }
    if let Some(at) = at {
        let at = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        within_validity(&root, at).map_err(|_| CertError::RootNotValid)?;
        for (index, certificate) in parsed.iter().enumerate() {
            within_validity(certificate, at).map_err(|expired| {
                if expired {
                    CertError::Expired(index)
                } else {
                    CertError::NotYetValid(index)
                }
            })?;
        }
    }
    let leaf_key = public_key(leaf, parsed.len() - 1)?;
    Ok(ValidatedChain {
        slot: slot.to_vec(),
        leaf_key,
    })
}
