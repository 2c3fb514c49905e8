//! SPDM certificate chains for the emulated device and tests: the slot format and its
//! validation against a configured root live in [`tdisp_proto::evidence::cert`] (one
//! implementation shared with the guest, re-exported here), the generation of a device identity
//! and the loading of identities and roots from files here.
//!
//! Validation checks: the RootHash is the hash of the configured root; each certificate is
//! issued and ECDSA-P384/SHA-384 signed by the one before it (the first by the root); every
//! certificate but the leaf is a CA; the leaf key is a P-384 key. The requester does **not**
//! check validity periods (the host has no trusted clock here) or revocation; a guest may check
//! dates with [`validate_slot_at`] and a time it trusts.

pub use tdisp_proto::evidence::cert::CertError;
pub use tdisp_proto::evidence::cert::ValidatedChain;
pub use tdisp_proto::evidence::cert::encode_slot;
pub use tdisp_proto::evidence::cert::validate_slot;
pub use tdisp_proto::evidence::cert::validate_slot_at;

use der::Decode;
use der::Encode;
use der::Reader;
use p384::ecdsa::DerSignature;
use p384::ecdsa::SigningKey;
use p384::ecdsa::VerifyingKey;
use thiserror::Error;
use x509_cert::Certificate;
use zeroize::Zeroizing;

/// A device identity: a root CA, a leaf certificate it issued, and the leaf's signing key.
#[derive(Clone)]
pub struct DeviceIdentity {
    /// The root certificate (DER), which verifiers configure as their trust anchor.
    pub root_der: Vec<u8>,
    /// The chain in slot format (root hash, root, leaf).
    pub slot: Vec<u8>,
    /// The leaf's private key.
    pub leaf_key: SigningKey,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("root_der_len", &self.root_der.len())
            .field("slot_len", &self.slot.len())
            .finish_non_exhaustive()
    }
}

fn random_signing_key() -> Result<SigningKey, CertError> {
    for _ in 0..8 {
        let mut bytes = Zeroizing::new([0u8; 48]);
        super::crypto::random_bytes(bytes.as_mut())
            .map_err(|e| CertError::Generate(e.to_string()))?;
        if let Ok(key) = SigningKey::from_slice(bytes.as_ref()) {
            return Ok(key);
        }
    }
    Err(CertError::Generate("random source".into()))
}

/// Builds one certificate of `subject` for `key`, signed by `issuer_key` under `profile`.
fn build_certificate(
    profile: x509_cert::builder::Profile,
    serial: u8,
    subject: &str,
    key: &VerifyingKey,
    issuer_key: &SigningKey,
) -> Result<Certificate, CertError> {
    use std::str::FromStr;
    use x509_cert::builder::Builder;
    use x509_cert::builder::CertificateBuilder;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::Validity;
    let generate = |e: &dyn std::fmt::Display| CertError::Generate(e.to_string());
    let validity = Validity::from_now(std::time::Duration::from_secs(10 * 365 * 24 * 3600))
        .map_err(|e| generate(&e))?;
    let subject = Name::from_str(subject).map_err(|e| generate(&e))?;
    let spki = SubjectPublicKeyInfoOwned::from_key(*key).map_err(|e| generate(&e))?;
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::new(&[serial]).map_err(|e| generate(&e))?,
        validity,
        subject,
        spki,
        issuer_key,
    )
    .map_err(|e| generate(&e))?;
    builder.build::<DerSignature>().map_err(|e| generate(&e))
}

impl DeviceIdentity {
    /// Generates a fresh root CA and a leaf certificate for `device_name`.
    pub fn generate(device_name: &str) -> Result<Self, CertError> {
        use x509_cert::builder::Profile;
        let root_key = random_signing_key()?;
        let leaf_key = random_signing_key()?;
        let root_subject = format!("CN={device_name} root CA");
        let root = build_certificate(
            Profile::Root,
            1,
            &root_subject,
            root_key.verifying_key(),
            &root_key,
        )?;
        let issuer = root.tbs_certificate.subject.clone();
        let leaf = build_certificate(
            Profile::Leaf {
                issuer,
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            2,
            &format!("CN={device_name} device"),
            leaf_key.verifying_key(),
            &root_key,
        )?;
        let generate = |e: der::Error| CertError::Generate(e.to_string());
        let root_der = root.to_der().map_err(generate)?;
        let leaf_der = leaf.to_der().map_err(generate)?;
        let slot = encode_slot(&root_der, &[root_der.clone(), leaf_der])?;
        Ok(Self {
            root_der,
            slot,
            leaf_key,
        })
    }
}

/// Why a certificate or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    /// The PEM armour is malformed.
    #[error("malformed PEM")]
    Pem,
    /// A PEM block has a label other than the one expected.
    #[error("PEM label {found:?}, expected {expected:?}")]
    Label {
        /// The label found.
        found: String,
        /// The label expected.
        expected: &'static str,
    },
    /// The bytes are not DER X.509 certificates.
    #[error("not a DER X.509 certificate (certificate {0})")]
    Certificate(usize),
    /// No certificate at all.
    #[error("no certificate")]
    Empty,
    /// The key is neither a PKCS#8 nor a SEC1 P-384 private key.
    #[error("not a P-384 private key (PKCS#8 or SEC1, DER or PEM)")]
    Key,
    /// The key does not belong to the leaf certificate.
    #[error("the private key is not the leaf certificate's key")]
    KeyMismatch,
    /// The chain does not validate against its root.
    #[error("the chain does not validate against its root")]
    Chain(#[from] CertError),
}

const PEM_CERTIFICATE: &str = "CERTIFICATE";

fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN "))
}

/// Splits certificates given as DER (one or several concatenated, as spdm-emu's
/// `bundle_*.certchain.der`) or as PEM `CERTIFICATE` blocks, in order; each is checked to be
/// X.509.
pub fn load_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, LoadError> {
    let mut out = Vec::new();
    if is_pem(bytes) {
        let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Pem)?;
        let mut rest = text;
        while let Some(begin) = rest.find("-----BEGIN ") {
            let block = &rest[begin..];
            let end_marker = block.find("-----END ").ok_or(LoadError::Pem)?;
            let end = block[end_marker + 9..]
                .find("-----")
                .map(|i| end_marker + 9 + i + 5)
                .ok_or(LoadError::Pem)?;
            let (label, der) =
                der::pem::decode_vec(&block.as_bytes()[..end]).map_err(|_| LoadError::Pem)?;
            if label != PEM_CERTIFICATE {
                return Err(LoadError::Label {
                    found: label.to_owned(),
                    expected: PEM_CERTIFICATE,
                });
            }
            Certificate::from_der(&der).map_err(|_| LoadError::Certificate(out.len()))?;
            out.push(der);
            rest = &block[end..];
        }
    } else {
        let mut remaining = bytes;
        while !remaining.is_empty() {
            let index = out.len();
            let mut reader =
                der::SliceReader::new(remaining).map_err(|_| LoadError::Certificate(index))?;
            Certificate::decode(&mut reader).map_err(|_| LoadError::Certificate(index))?;
            let consumed =
                usize::try_from(reader.position()).map_err(|_| LoadError::Certificate(index))?;
            let (der, tail) = remaining
                .split_at_checked(consumed)
                .ok_or(LoadError::Certificate(index))?;
            out.push(der.to_vec());
            remaining = tail;
        }
    }
    if out.is_empty() {
        return Err(LoadError::Empty);
    }
    Ok(out)
}

/// Loads one certificate (DER or PEM), such as a root to trust.
pub fn load_certificate(bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    load_certificates(bytes)?
        .into_iter()
        .next()
        .ok_or(LoadError::Empty)
}

/// Loads a P-384 private key: PKCS#8 or SEC1, DER or PEM.
pub fn load_signing_key(bytes: &[u8]) -> Result<SigningKey, LoadError> {
    use p384::pkcs8::DecodePrivateKey;
    let der = if is_pem(bytes) {
        let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Pem)?;
        let begin = text.find("-----BEGIN ").ok_or(LoadError::Pem)?;
        Zeroizing::new(
            der::pem::decode_vec(&text.as_bytes()[begin..])
                .map_err(|_| LoadError::Pem)?
                .1,
        )
    } else {
        Zeroizing::new(bytes.to_vec())
    };
    let key = p384::SecretKey::from_pkcs8_der(&der)
        .or_else(|_| p384::SecretKey::from_sec1_der(&der))
        .map_err(|_| LoadError::Key)?;
    Ok(SigningKey::from(key))
}

impl DeviceIdentity {
    /// An identity from existing material: the root (DER), the chain from the first
    /// certificate under the root (or the root itself) down to the leaf, and the leaf's key.
    /// The chain must validate against the root and the key must be the leaf's.
    pub fn from_parts(
        root_der: Vec<u8>,
        chain: &[Vec<u8>],
        leaf_key: SigningKey,
    ) -> Result<Self, LoadError> {
        let slot = encode_slot(&root_der, chain)?;
        let validated = validate_slot(&slot, &root_der)?;
        if validated.leaf_key != *leaf_key.verifying_key() {
            return Err(LoadError::KeyMismatch);
        }
        Ok(Self {
            root_der,
            slot,
            leaf_key,
        })
    }

    /// Loads an identity from files' bytes: the root certificate, the chain (concatenated
    /// DER or PEM; it may start with the root) and the leaf's private key.
    pub fn load(root: &[u8], chain: &[u8], leaf_key: &[u8]) -> Result<Self, LoadError> {
        Self::from_parts(
            load_certificate(root)?,
            &load_certificates(chain)?,
            load_signing_key(leaf_key)?,
        )
    }
}
