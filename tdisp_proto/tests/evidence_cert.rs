//! Certificate chain validation with validity dates (`evidence::cert::validate_slot_at`): a
//! root valid 2020..2040 and a leaf valid 2025..2030, checked at times inside and on either side
//! of each period, and at no time at all.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use der::Encode;
use p384::ecdsa::DerSignature;
use p384::ecdsa::SigningKey;
use p384::ecdsa::VerifyingKey;
use std::str::FromStr;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;
use tdisp_proto::evidence::cert::CertError;
use tdisp_proto::evidence::cert::encode_slot;
use tdisp_proto::evidence::cert::validate_slot;
use tdisp_proto::evidence::cert::validate_slot_at;
use x509_cert::builder::Builder;
use x509_cert::builder::CertificateBuilder;
use x509_cert::builder::Profile;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Time;
use x509_cert::time::Validity;

/// Seconds from the epoch to 1 January of `year` (close enough: 365.25-day years, noon).
fn year(year: u64) -> Duration {
    Duration::from_secs((year - 1970) * 31_557_600 + 43_200)
}

fn at(y: u64) -> Option<SystemTime> {
    Some(UNIX_EPOCH + year(y))
}

fn certificate(
    profile: Profile,
    serial: u8,
    subject: &str,
    key: &VerifyingKey,
    issuer: &SigningKey,
    (from, to): (u64, u64),
) -> Vec<u8> {
    let validity = Validity {
        not_before: Time::try_from(UNIX_EPOCH + year(from)).unwrap(),
        not_after: Time::try_from(UNIX_EPOCH + year(to)).unwrap(),
    };
    CertificateBuilder::new(
        profile,
        SerialNumber::new(&[serial]).unwrap(),
        validity,
        Name::from_str(subject).unwrap(),
        SubjectPublicKeyInfoOwned::from_key(*key).unwrap(),
        issuer,
    )
    .unwrap()
    .build::<DerSignature>()
    .unwrap()
    .to_der()
    .unwrap()
}

/// (root DER, slot) for a root valid 2020..2040 and a leaf valid 2025..2030.
fn chain() -> (Vec<u8>, Vec<u8>) {
    let root_key = SigningKey::from_slice(&[0x11; 48]).unwrap();
    let leaf_key = SigningKey::from_slice(&[0x22; 48]).unwrap();
    let root = certificate(
        Profile::Root,
        1,
        "CN=dated root",
        root_key.verifying_key(),
        &root_key,
        (2020, 2040),
    );
    let issuer = Name::from_str("CN=dated root").unwrap();
    let leaf = certificate(
        Profile::Leaf {
            issuer,
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        2,
        "CN=dated device",
        leaf_key.verifying_key(),
        &root_key,
        (2025, 2030),
    );
    let slot = encode_slot(&root, &[root.clone(), leaf]).unwrap();
    (root, slot)
}

#[test]
fn dates_are_checked_only_when_a_time_is_given() {
    let (root, slot) = chain();
    assert!(validate_slot(&slot, &root).is_ok());
    assert!(validate_slot_at(&slot, &root, None).is_ok());
    assert!(validate_slot_at(&slot, &root, at(2027)).is_ok());
}

#[test]
fn a_certificate_outside_its_period_is_refused_by_position() {
    let (root, slot) = chain();
    // The leaf (position 1 in the slot; the root is position 0).
    assert_eq!(
        validate_slot_at(&slot, &root, at(2022)).err(),
        Some(CertError::NotYetValid(1))
    );
    assert_eq!(
        validate_slot_at(&slot, &root, at(2033)).err(),
        Some(CertError::Expired(1))
    );
    // The configured root itself.
    assert_eq!(
        validate_slot_at(&slot, &root, at(2019)).err(),
        Some(CertError::RootNotValid)
    );
    assert_eq!(
        validate_slot_at(&slot, &root, at(2045)).err(),
        Some(CertError::RootNotValid)
    );
    // A time before the epoch is before every notBefore.
    let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
    assert_eq!(
        validate_slot_at(&slot, &root, Some(before_epoch)).err(),
        Some(CertError::RootNotValid)
    );
}
