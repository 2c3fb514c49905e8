//! Version, capabilities and algorithms negotiation: what the requester announces and
//! offers, what it requires of the responder, and the VCA transcript it records.

use super::SpdmError;
use super::SpdmRequester;
use super::codec;
use crate::spdm::codes::*;
use crate::spdm::messages::*;
use crate::spdm::transport::decode_padded;
use crate::tsm::doe::DoeMailbox;
use zerocopy::IntoBytes;

/// Capabilities the requester announces: certificates, encryption, MAC and key exchange.
pub fn requester_capabilities() -> CapabilityFlags {
    CapabilityFlags::new()
        .with_cert(true)
        .with_encrypt(true)
        .with_mac(true)
        .with_key_ex(true)
}

/// Largest message the requester accepts in one transfer.
pub const REQUESTER_DATA_TRANSFER_SIZE: u32 = 4096;
/// CTExponent announced (2^20 us, about a second, for cryptographic operations).
pub const CT_EXPONENT: u8 = 20;

/// The GET_CAPABILITIES this requester sends: SPDM 1.2, [`CT_EXPONENT`],
/// [`requester_capabilities`] and [`REQUESTER_DATA_TRANSFER_SIZE`] for both sizes.
pub fn requested_capabilities() -> Capabilities {
    Capabilities {
        version: SPDM_VERSION_1_2,
        ct_exponent: CT_EXPONENT,
        flags: requester_capabilities(),
        data_transfer_size: REQUESTER_DATA_TRANSFER_SIZE,
        max_spdm_msg_size: REQUESTER_DATA_TRANSFER_SIZE,
    }
}

/// The algorithms this implementation offers (and the only ones it accepts).
pub fn offered_algorithms() -> NegotiateAlgorithms {
    NegotiateAlgorithms {
        measurement_spec: MEAS_SPEC_DMTF,
        other_params: OPAQUE_DATA_FMT1,
        base_asym: BASE_ASYM_ECDSA_P384,
        base_hash: BASE_HASH_SHA_384,
        algs: AlgSet {
            dhe: DHE_SECP384R1,
            aead: AEAD_AES_256_GCM,
            req_base_asym: REQ_ASYM_ECDSA_P384,
            key_schedule: KEY_SCHEDULE_SPDM,
        },
    }
}

/// Checks the responder's selection against what was offered.
pub fn check_selection(selected: &Algorithms) -> Result<(), SpdmError> {
    let checks = [
        (
            selected.base_hash == BASE_HASH_SHA_384,
            "hash is not SHA-384",
        ),
        (
            selected.base_asym == BASE_ASYM_ECDSA_P384,
            "signature is not ECDSA P-384",
        ),
        (selected.algs.dhe == DHE_SECP384R1, "DHE is not secp384r1"),
        (
            selected.algs.aead == AEAD_AES_256_GCM,
            "AEAD is not AES-256-GCM",
        ),
        (
            selected.algs.key_schedule == KEY_SCHEDULE_SPDM,
            "key schedule is not SPDM",
        ),
        (
            selected.algs.req_base_asym & !REQ_ASYM_ECDSA_P384 == 0,
            "requester asymmetric algorithm not offered",
        ),
        // MeasurementHashAlgo is the responder's own choice (the request offers none; spdm-emu
        // picks SHA-512 by default): the decoder already holds it to one bit, and measurement
        // blocks carry their own digest sizes.
        (
            selected.measurement_spec & !MEAS_SPEC_DMTF == 0,
            "measurement specification not offered",
        ),
        (
            selected.other_params & !OPAQUE_DATA_FMT1 == 0,
            "opaque data format not offered",
        ),
    ];
    for (ok, why) in checks {
        if !ok {
            return Err(SpdmError::Negotiation(why));
        }
    }
    Ok(())
}

impl SpdmRequester {
    pub(super) fn negotiate(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), SpdmError> {
        let get_version = Header::new(SPDM_VERSION_1_0, SpdmCode::GET_VERSION)
            .as_bytes()
            .to_vec();
        let response = self.plain(mailbox, &get_version)?;
        let (version, exact) =
            decode_padded(&response, Version::decode).map_err(codec("VERSION"))?;
        if !version
            .entries
            .iter()
            .any(|e| e >> 8 == VERSION_ENTRY_1_2 >> 8)
        {
            return Err(SpdmError::Negotiation(
                "responder does not support SPDM 1.2",
            ));
        }
        self.vca.extend_from_slice(&get_version);
        self.vca.extend_from_slice(exact);

        let request = requested_capabilities().encode(SpdmCode::GET_CAPABILITIES);
        let response = self.plain(mailbox, &request)?;
        let (caps, exact) = decode_padded(&response, |b| {
            Capabilities::decode(b, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES)
        })
        .map_err(codec("CAPABILITIES"))?;
        let flags = caps.flags;
        if !(flags.cert() && flags.encrypt() && flags.mac() && flags.key_ex()) {
            return Err(SpdmError::Negotiation(
                "responder lacks CERT, ENCRYPT, MAC or KEY_EX",
            ));
        }
        self.vca.extend_from_slice(&request);
        self.vca.extend_from_slice(exact);

        let request = offered_algorithms().encode();
        let response = self.plain(mailbox, &request)?;
        let (selected, exact) =
            decode_padded(&response, Algorithms::decode).map_err(codec("ALGORITHMS"))?;
        check_selection(&selected)?;
        self.vca.extend_from_slice(&request);
        self.vca.extend_from_slice(exact);
        Ok(())
    }
}
