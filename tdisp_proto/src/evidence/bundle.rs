//! The session evidence a host serves as the `Measurements` report: the SPDM 1.2 messages a
//! verifier needs to check, with nothing but the device's certificate chain, that the device
//! opened a session and then signed measurements inside it.
//!
//! Layout (all lengths u32 LE, no padding, nothing after the last field):
//!
//! | field | size |
//! |---|---|
//! | magic `"TDEV"` | 4 |
//! | version, u16 LE, 1 | 2 |
//! | reserved, u16, 0 | 2 |
//! | VCA: GET_VERSION .. ALGORITHMS as exchanged | 4 + n |
//! | KEY_EXCHANGE request | 4 + n |
//! | KEY_EXCHANGE_RSP up to, not including, its signature | 4 + n |
//! | KEY_EXCHANGE_RSP signature (ECDSA P-384 `r || s`) | 96 |
//! | GET_MEASUREMENTS request (signed, with the requester's nonce) | 4 + n |
//! | MEASUREMENTS response up to, not including, its signature | 4 + n |
//! | MEASUREMENTS signature | 96 |
//!
//! From these and the chain (slot format) a verifier rebuilds the two signed transcripts of
//! DSP0274 1.2:
//!
//! - the key exchange: `VCA || SHA-384(chain) || KEY_EXCHANGE || KEY_EXCHANGE_RSP` (signed
//!   under "responder-key_exchange_rsp signing"); with the signature appended its hash is the
//!   session's **TH1**, the value the SPDM key schedule derives every session key from;
//! - the measurements (L1): `VCA || GET_MEASUREMENTS || MEASUREMENTS` (signed under
//!   "responder-measurements signing").
//!
//! [`SessionEvidence::decode`] only parses (every length checked, typed errors); the decisions
//! are the verifier's (`tdisp_guest`).

use super::binding::BINDING_INDEX_FIRST;
use super::binding::BINDING_INDEX_LAST;
use super::binding::BINDING_VALUE_TYPE;
use super::binding::BindingBlockError;
use super::binding::TdiBinding;
use super::measurements::MEASUREMENTS_CODE;
use super::measurements::MeasurementsResponse;
use super::measurements::SPDM_VERSION_1_2;
use super::signature::HASH_SIZE;
use super::signature::SIGNATURE_SIZE;
use super::signature::hash;
use crate::wire::MAX_REPORT_BUFFER;
use thiserror::Error;

/// The container's magic.
pub const EVIDENCE_MAGIC: [u8; 4] = *b"TDEV";
/// The container's version.
pub const EVIDENCE_VERSION: u16 = 1;
/// Request and response codes the container carries.
const KEY_EXCHANGE: u8 = 0xE4;
const KEY_EXCHANGE_RSP: u8 = 0x64;
const GET_MEASUREMENTS: u8 = 0xE0;
/// GET_MEASUREMENTS: header, nonce, slot.
const SIGNED_GET_MEASUREMENTS_SIZE: usize = 4 + 32 + 1;
/// Smallest KEY_EXCHANGE / KEY_EXCHANGE_RSP prefix holding the session id halves.
const SESSION_ID_END: usize = 6;

/// Why session evidence could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvidenceError {
    /// The container is larger than a report buffer.
    #[error("evidence of {0} bytes exceeds a report buffer")]
    Oversize(usize),
    /// A field runs past the end.
    #[error("evidence truncated in {0}")]
    Truncated(&'static str),
    /// The magic is wrong.
    #[error("not session evidence (bad magic)")]
    Magic,
    /// The version is not supported.
    #[error("session evidence version {0} is not supported")]
    Version(u16),
    /// The reserved field is not zero.
    #[error("session evidence reserved field is not zero")]
    Reserved,
    /// Bytes follow the last field.
    #[error("{0} bytes follow the session evidence")]
    Trailing(usize),
    /// A field is not the SPDM 1.2 message it should be.
    #[error("{field} is not an SPDM 1.2 {expected}")]
    NotMessage {
        /// The container field.
        field: &'static str,
        /// The message expected there.
        expected: &'static str,
    },
    /// The MEASUREMENTS response or one of its blocks is malformed.
    #[error("malformed MEASUREMENTS: {0}")]
    Measurements(&'static str),
    /// A binding block is malformed.
    #[error("malformed binding block at index {index:#04x}")]
    Binding {
        /// The block's measurement index.
        index: u8,
        /// Why.
        #[source]
        error: BindingBlockError,
    },
}

/// The parsed container (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvidence {
    /// GET_VERSION .. ALGORITHMS.
    pub vca: Vec<u8>,
    /// KEY_EXCHANGE.
    pub key_exchange: Vec<u8>,
    /// KEY_EXCHANGE_RSP without its signature and verify data.
    pub key_exchange_rsp: Vec<u8>,
    /// KEY_EXCHANGE_RSP's signature.
    pub key_exchange_signature: [u8; SIGNATURE_SIZE],
    /// GET_MEASUREMENTS.
    pub get_measurements: Vec<u8>,
    /// MEASUREMENTS without its signature.
    pub measurements: Vec<u8>,
    /// MEASUREMENTS's signature.
    pub measurements_signature: [u8; SIGNATURE_SIZE],
}

/// One DMTF measurement block (defined beside the MEASUREMENTS parser; re-exported here where
/// it was first public).
pub use super::measurements::Block;

/// A bounds-checked cursor: no length read from the input is trusted.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EvidenceError> {
        let (head, rest) = self
            .bytes
            .split_at_checked(n)
            .ok_or(EvidenceError::Truncated(field))?;
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EvidenceError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn sized(&mut self, field: &'static str) -> Result<&'a [u8], EvidenceError> {
        let length = u32::from_le_bytes(self.array(field)?);
        let length = usize::try_from(length).map_err(|_| EvidenceError::Truncated(field))?;
        self.take(length, field)
    }
}

fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are bounded by MAX_REPORT_BUFFER on decode; encode writes what it holds.
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn expect_message(
    bytes: &[u8],
    code: u8,
    field: &'static str,
    expected: &'static str,
) -> Result<(), EvidenceError> {
    match bytes {
        [SPDM_VERSION_1_2, c, ..] if *c == code => Ok(()),
        _ => Err(EvidenceError::NotMessage { field, expected }),
    }
}

impl SessionEvidence {
    /// The container's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&EVIDENCE_MAGIC);
        out.extend_from_slice(&EVIDENCE_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        put_sized(&mut out, &self.vca);
        put_sized(&mut out, &self.key_exchange);
        put_sized(&mut out, &self.key_exchange_rsp);
        out.extend_from_slice(&self.key_exchange_signature);
        put_sized(&mut out, &self.get_measurements);
        put_sized(&mut out, &self.measurements);
        out.extend_from_slice(&self.measurements_signature);
        out
    }

    /// Parses a container: every length is checked against the bytes, and each message field
    /// must start as the SPDM 1.2 message it names.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_REPORT_BUFFER {
            return Err(EvidenceError::Oversize(bytes.len()));
        }
        let mut cursor = Cursor { bytes };
        if cursor.array::<4>("magic")? != EVIDENCE_MAGIC {
            return Err(EvidenceError::Magic);
        }
        let version = u16::from_le_bytes(cursor.array("version")?);
        if version != EVIDENCE_VERSION {
            return Err(EvidenceError::Version(version));
        }
        if cursor.array::<2>("reserved")? != [0, 0] {
            return Err(EvidenceError::Reserved);
        }
        let evidence = Self {
            vca: cursor.sized("VCA")?.to_vec(),
            key_exchange: cursor.sized("KEY_EXCHANGE")?.to_vec(),
            key_exchange_rsp: cursor.sized("KEY_EXCHANGE_RSP")?.to_vec(),
            key_exchange_signature: cursor.array("KEY_EXCHANGE_RSP signature")?,
            get_measurements: cursor.sized("GET_MEASUREMENTS")?.to_vec(),
            measurements: cursor.sized("MEASUREMENTS")?.to_vec(),
            measurements_signature: cursor.array("MEASUREMENTS signature")?,
        };
        if !cursor.bytes.is_empty() {
            return Err(EvidenceError::Trailing(cursor.bytes.len()));
        }
        expect_message(
            &evidence.key_exchange,
            KEY_EXCHANGE,
            "KEY_EXCHANGE",
            "KEY_EXCHANGE",
        )?;
        if evidence.key_exchange.len() < SESSION_ID_END {
            return Err(EvidenceError::Truncated("KEY_EXCHANGE"));
        }
        expect_message(
            &evidence.key_exchange_rsp,
            KEY_EXCHANGE_RSP,
            "KEY_EXCHANGE_RSP",
            "KEY_EXCHANGE_RSP",
        )?;
        if evidence.key_exchange_rsp.len() < SESSION_ID_END {
            return Err(EvidenceError::Truncated("KEY_EXCHANGE_RSP"));
        }
        expect_message(
            &evidence.get_measurements,
            GET_MEASUREMENTS,
            "GET_MEASUREMENTS",
            "GET_MEASUREMENTS",
        )?;
        expect_message(
            &evidence.measurements,
            MEASUREMENTS_CODE,
            "MEASUREMENTS",
            "MEASUREMENTS",
        )?;
        Ok(evidence)
    }

    /// The key-exchange transcript the KEY_EXCHANGE_RSP signature covers, for the chain
    /// `chain_slot`: `VCA || SHA-384(chain) || KEY_EXCHANGE || KEY_EXCHANGE_RSP`.
    pub fn key_exchange_transcript(&self, chain_slot: &[u8]) -> Vec<u8> {
        let mut out = self.vca.clone();
        out.extend_from_slice(&hash(chain_slot));
        out.extend_from_slice(&self.key_exchange);
        out.extend_from_slice(&self.key_exchange_rsp);
        out
    }

    /// The session's TH1: the hash of the key-exchange transcript with its signature.
    pub fn th1(&self, chain_slot: &[u8]) -> [u8; HASH_SIZE] {
        let mut transcript = self.key_exchange_transcript(chain_slot);
        transcript.extend_from_slice(&self.key_exchange_signature);
        hash(&transcript)
    }

    /// The transcript the MEASUREMENTS signature covers (SPDM 1.2 L1).
    pub fn measurements_transcript(&self) -> Vec<u8> {
        let mut out = self.vca.clone();
        out.extend_from_slice(&self.get_measurements);
        out.extend_from_slice(&self.measurements);
        out
    }

    /// The SPDM session id: RspSessionID in the high half, ReqSessionID in the low half.
    pub fn session_id(&self) -> u32 {
        let half = |m: &[u8]| match m.get(4..SESSION_ID_END) {
            Some(&[a, b]) => u16::from_le_bytes([a, b]),
            _ => 0,
        };
        (u32::from(half(&self.key_exchange_rsp)) << 16) | u32::from(half(&self.key_exchange))
    }

    /// The requester's nonce of a signed GET_MEASUREMENTS for all blocks.
    pub fn requester_nonce(&self) -> Result<[u8; 32], EvidenceError> {
        let request = self.get_measurements.as_slice();
        if request.len() != SIGNED_GET_MEASUREMENTS_SIZE
            || request.get(2) != Some(&1)
            || request.get(3) != Some(&0xff)
        {
            return Err(EvidenceError::Measurements(
                "GET_MEASUREMENTS is not a signed request for all blocks",
            ));
        }
        let mut nonce = [0; 32];
        nonce.copy_from_slice(&request[4..36]);
        Ok(nonce)
    }

    /// The blocks of the MEASUREMENTS response, parsed exactly (count, sizes, nonce, opaque
    /// data, nothing after).
    pub fn blocks(&self) -> Result<Vec<Block<'_>>, EvidenceError> {
        let bad = EvidenceError::Measurements;
        let response =
            MeasurementsResponse::parse(&self.measurements).map_err(|e| bad(e.reason()))?;
        if !response.rest.is_empty() {
            return Err(bad("bytes follow the opaque data"));
        }
        Ok(response.blocks)
    }

    /// The binding blocks among the measurement blocks (index and value type as
    /// [`super::binding`] defines them), each decoded and validated.
    pub fn bindings(&self) -> Result<Vec<TdiBinding>, EvidenceError> {
        self.blocks()?
            .into_iter()
            .filter(|b| {
                (BINDING_INDEX_FIRST..=BINDING_INDEX_LAST).contains(&b.index)
                    && b.value_type == BINDING_VALUE_TYPE
            })
            .map(|b| {
                TdiBinding::decode(b.value).map_err(|error| EvidenceError::Binding {
                    index: b.index,
                    error,
                })
            })
            .collect()
    }
}
