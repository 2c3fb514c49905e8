//! The SPDM 1.2 requester (the TSM's end): negotiates version, capabilities and algorithms,
//! reads and validates the device's certificate chain against a configured root, opens a
//! secured session with KEY_EXCHANGE and FINISH, then carries application messages (TDISP
//! VENDOR_DEFINED requests) and signed GET_MEASUREMENTS inside it, and ends it.
//!
//! States and transitions: [`SpdmRequester::connect`] takes any state to `Established` or,
//! on any failure, to `Failed` (no keys kept); a failed or ended session is recovered only by
//! connecting again, which starts over from GET_VERSION. Inside a session, a record that does
//! not authenticate ends it (the two sides' sequence numbers no longer agree).

use super::cert;
use super::cert::CertError;
use super::cert::ValidatedChain;
use super::codes::*;
use super::crypto;
use super::crypto::CryptoError;
use super::crypto::EphemeralKey;
use super::crypto::KeySchedule;
use super::crypto::PhaseKeys;
use super::messages::*;
use super::secured;
use super::secured::SecuredError;
use super::transport::decode_object;
use super::transport::decode_padded;
use super::transport::encode_object;
use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::MailboxError;
use tdisp_proto::framing::doe::DoeError;
use tdisp_proto::framing::doe::DoeObjectType;
use thiserror::Error;
use zerocopy::IntoBytes;
use zeroize::Zeroizing;

/// Why an SPDM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpdmError {
    /// The DOE mailbox failed.
    #[error("DOE mailbox failed")]
    Mailbox(#[from] MailboxError),
    /// The answer is not a valid DOE object.
    #[error("invalid DOE object")]
    Doe(#[from] DoeError),
    /// The answer is a DOE object of an unexpected type.
    #[error("DOE object type {found}, expected {expected}")]
    ObjectType {
        /// Type found.
        found: u8,
        /// Type expected.
        expected: u8,
    },
    /// A message could not be decoded.
    #[error("malformed {message}")]
    Codec {
        /// Which message.
        message: &'static str,
        /// Why.
        #[source]
        error: CodecError,
    },
    /// The peer answered with an SPDM ERROR.
    #[error("peer answered ERROR {:#04x} (data {:#04x})", .0.code.0, .0.data)]
    Peer(ErrorResponse),
    /// The peer kept answering ResponseNotReady.
    #[error("the peer was not ready after {0} attempts")]
    NotReady(u32),
    /// Negotiation failed: the peer lacks something required or chose something not offered.
    #[error("negotiation failed: {0}")]
    Negotiation(&'static str),
    /// The certificate chain was refused.
    #[error("certificate chain refused")]
    Certificate(#[from] CertError),
    /// A signature, key or verify data was refused.
    #[error("cryptographic check failed")]
    Crypto(#[from] CryptoError),
    /// A secured record was refused.
    #[error("secured message refused")]
    Secured(#[from] SecuredError),
    /// No session is established.
    #[error("no SPDM session is established")]
    NoSession,
}

fn codec(message: &'static str) -> impl Fn(CodecError) -> SpdmError {
    move |error| SpdmError::Codec { message, error }
}

/// What the requester requires of the responder and trusts.
#[derive(Clone)]
pub struct RequesterConfig {
    /// The root certificate (DER) the device's chain must lead to.
    pub root_der: Vec<u8>,
    /// The certificate slot to use.
    pub slot: u8,
    /// How many ResponseNotReady answers to accept for one request.
    pub max_not_ready: u32,
    /// A fixed ECDHE private key (secp384r1 scalar, big-endian) instead of a fresh one per
    /// KEY_EXCHANGE. Only for capturing a transcript whose key schedule a known-answer test
    /// can recompute: it removes forward secrecy, and every connect logs a warning. `None`
    /// (the default) draws a fresh key each time.
    pub fixed_ephemeral_key: Option<Zeroizing<[u8; 48]>>,
}

impl std::fmt::Debug for RequesterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the fixed ephemeral key.
        f.debug_struct("RequesterConfig")
            .field("root_der_len", &self.root_der.len())
            .field("slot", &self.slot)
            .field("max_not_ready", &self.max_not_ready)
            .field("fixed_ephemeral_key", &self.fixed_ephemeral_key.is_some())
            .finish()
    }
}

impl RequesterConfig {
    /// A configuration trusting `root_der`, using slot 0.
    pub fn new(root_der: Vec<u8>) -> Self {
        Self {
            root_der,
            slot: 0,
            max_not_ready: 8,
            fixed_ephemeral_key: None,
        }
    }
}

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
/// Bytes asked per GET_CERTIFICATE.
const CERTIFICATE_PORTION: u16 = 1024;
/// Largest chain the requester reads (the slot length field is 16 bits).
const MAX_CHAIN: usize = u16::MAX as usize;

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

/// Opaque data of KEY_EXCHANGE in format 1 (DSP0277 general opaque data): one DMTF element
/// listing the secured-message versions supported (1.1).
pub fn supported_versions_opaque() -> Vec<u8> {
    // TotalElements, reserved[3]; element: id 0 (DMTF), vendor len 0, data len 5,
    // SMDataVersion 1, SMDataID 1 (supported versions), count 1, version 1.1; pad to 4.
    vec![1, 0, 0, 0, 0, 0, 5, 0, 1, 1, 1, 0x00, 0x11, 0, 0, 0]
}

/// Keys and counters of an established session, and the key-exchange messages that name it.
struct Session {
    id: u32,
    keys: PhaseKeys,
    key_exchange: KeyExchangeRecord,
}

/// The messages of a session's key exchange that its responder signed, as exchanged: with
/// the VCA and the chain they are the transcript a verifier checks the signature against, and
/// its hash with the signature is the session's TH1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchangeRecord {
    /// KEY_EXCHANGE as sent.
    pub request: Vec<u8>,
    /// KEY_EXCHANGE_RSP up to, not including, its signature.
    pub response_unsigned: Vec<u8>,
    /// KEY_EXCHANGE_RSP's signature.
    pub signature: [u8; SIGNATURE_SIZE],
    /// TH1: SHA-384 of VCA, the chain's hash, both messages and the signature.
    pub th1: [u8; HASH_SIZE],
}

/// Signed measurements as received, with what a verifier needs to check them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMeasurements {
    /// The transcript the signature covers: VCA, GET_MEASUREMENTS, MEASUREMENTS without the
    /// signature (SPDM 1.2 L1).
    pub signed_transcript: Vec<u8>,
    /// The GET_MEASUREMENTS request as sent (with the requester's nonce).
    pub request: Vec<u8>,
    /// Length of the response's signed part (the signature follows it).
    pub signed_length: usize,
    /// The whole MEASUREMENTS response.
    pub response: Vec<u8>,
    /// The measurement blocks.
    pub blocks: Vec<MeasurementBlock>,
}

/// Where a requester stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequesterState {
    /// Nothing negotiated.
    Idle,
    /// A session is established.
    Established,
    /// The last connect or a record failed; connect again.
    Failed,
    /// The session was ended.
    Ended,
}

/// The requester end of one device's SPDM connection.
pub struct SpdmRequester {
    config: RequesterConfig,
    state: RequesterState,
    vca: Vec<u8>,
    chain: Option<ValidatedChain>,
    session: Option<Session>,
}

impl std::fmt::Debug for SpdmRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdmRequester")
            .field("state", &self.state)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

impl SpdmRequester {
    /// A requester that trusts what `config` says.
    pub fn new(config: RequesterConfig) -> Self {
        Self {
            config,
            state: RequesterState::Idle,
            vca: Vec::new(),
            chain: None,
            session: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> RequesterState {
        self.state
    }

    /// The session id, when established.
    pub fn session_id(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.id)
    }

    /// The device's validated certificate chain (slot format), after a connect.
    pub fn certificate_chain(&self) -> Option<&[u8]> {
        self.chain.as_ref().map(|c| c.slot.as_slice())
    }

    /// The signed key-exchange messages of the established session.
    pub fn key_exchange_record(&self) -> Option<&KeyExchangeRecord> {
        self.session.as_ref().map(|s| &s.key_exchange)
    }

    /// The VCA transcript (GET_VERSION .. ALGORITHMS) of the last connect.
    pub fn vca(&self) -> &[u8] {
        &self.vca
    }

    /// Runs the whole handshake: VCA, digests, certificate chain, KEY_EXCHANGE, FINISH.
    pub fn connect(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<u32, SpdmError> {
        self.session = None;
        self.chain = None;
        self.vca.clear();
        self.state = RequesterState::Failed;
        let result = self.handshake(mailbox);
        match &result {
            Ok(id) => {
                tracing::debug!(session_id = id, "SPDM session established");
                self.state = RequesterState::Established;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SPDM connect failed");
                self.session = None;
            }
        }
        result
    }

    fn handshake(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<u32, SpdmError> {
        self.negotiate(mailbox)?;
        let chain = self.read_chain(mailbox)?;
        let id = self.key_exchange(mailbox, &chain)?;
        self.chain = Some(chain);
        Ok(id)
    }

    /// Sends a plain request and returns the response payload (padding included), following
    /// ResponseNotReady with RESPOND_IF_READY.
    fn plain(&self, mailbox: &mut dyn DoeMailbox, request: &[u8]) -> Result<Vec<u8>, SpdmError> {
        let mut request = request.to_vec();
        for _ in 0..=self.config.max_not_ready {
            let answer = mailbox.exchange(&encode_object(DoeObjectType::SPDM, &request)?)?;
            let (object_type, payload) = decode_object(&answer)?;
            if object_type != DoeObjectType::SPDM {
                return Err(SpdmError::ObjectType {
                    found: object_type.0,
                    expected: DoeObjectType::SPDM.0,
                });
            }
            match not_ready_or_error(payload)? {
                Some(retry) => request = retry,
                None => return Ok(payload.to_vec()),
            }
        }
        Err(SpdmError::NotReady(self.config.max_not_ready))
    }

    fn negotiate(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), SpdmError> {
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

        let request = Capabilities {
            version: SPDM_VERSION_1_2,
            ct_exponent: CT_EXPONENT,
            flags: requester_capabilities(),
            data_transfer_size: REQUESTER_DATA_TRANSFER_SIZE,
            max_spdm_msg_size: REQUESTER_DATA_TRANSFER_SIZE,
        }
        .encode(SpdmCode::GET_CAPABILITIES);
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

    fn read_chain(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<ValidatedChain, SpdmError> {
        let request = Header::new(SPDM_VERSION_1_2, SpdmCode::GET_DIGESTS)
            .as_bytes()
            .to_vec();
        let response = self.plain(mailbox, &request)?;
        let (digests, _) = decode_padded(&response, Digests::decode).map_err(codec("DIGESTS"))?;
        let slot = self.config.slot;
        if digests.slot_mask & (1 << slot) == 0 {
            return Err(SpdmError::Negotiation("the configured slot is empty"));
        }
        let position = (digests.slot_mask & ((1u8 << slot) - 1)).count_ones() as usize;
        let digest = digests
            .digests
            .get(position)
            .copied()
            .ok_or(SpdmError::Negotiation("digest missing"))?;

        let mut chain = Vec::new();
        loop {
            let offset = u16::try_from(chain.len())
                .map_err(|_| SpdmError::Negotiation("certificate chain too long"))?;
            let request = GetCertificate {
                slot,
                offset,
                length: CERTIFICATE_PORTION,
            }
            .encode();
            let response = self.plain(mailbox, &request)?;
            let (portion, _) =
                decode_padded(&response, Certificate::decode).map_err(codec("CERTIFICATE"))?;
            if portion.slot != slot
                || portion.portion.len() > usize::from(CERTIFICATE_PORTION)
                || (portion.portion.is_empty() && portion.remainder_length != 0)
            {
                return Err(SpdmError::Negotiation("inconsistent CERTIFICATE portion"));
            }
            chain.extend_from_slice(&portion.portion);
            if chain.len() + usize::from(portion.remainder_length) > MAX_CHAIN {
                return Err(SpdmError::Negotiation("certificate chain too long"));
            }
            if portion.remainder_length == 0 {
                break;
            }
        }
        if crypto::hash(&chain) != digest {
            return Err(SpdmError::Negotiation(
                "certificate chain does not match its digest",
            ));
        }
        Ok(cert::validate_slot(&chain, &self.config.root_der)?)
    }

    fn key_exchange(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        chain: &ValidatedChain,
    ) -> Result<u32, SpdmError> {
        let ephemeral = match &self.config.fixed_ephemeral_key {
            Some(bytes) => {
                tracing::warn!("SPDM KEY_EXCHANGE with a fixed ephemeral key (capture mode)");
                EphemeralKey::from_bytes(bytes)?
            }
            None => EphemeralKey::generate()?,
        };
        let mut random = [0; NONCE_SIZE];
        crypto::random_bytes(&mut random)?;
        let mut session_half = [0; 2];
        crypto::random_bytes(&mut session_half)?;
        let request = KeyExchange {
            measurement_summary_hash_type: 0,
            slot: self.config.slot,
            req_session_id: u16::from_le_bytes(session_half),
            session_policy: 0,
            random,
            exchange_data: ephemeral.exchange_data(),
            opaque: supported_versions_opaque(),
        };
        let request_bytes = request.encode();
        let response = self.plain(mailbox, &request_bytes)?;
        let ((rsp, split), exact) = decode_padded(&response, |b| KeyExchangeRsp::decode(b, false))
            .map_err(codec("KEY_EXCHANGE_RSP"))?;
        if rsp.mut_auth_requested != 0 {
            return Err(SpdmError::Negotiation("mutual authentication requested"));
        }

        // Transcript: VCA, hash of the chain, KEY_EXCHANGE, KEY_EXCHANGE_RSP.
        let mut message_k = self.vca.clone();
        message_k.extend_from_slice(&crypto::hash(&chain.slot));
        message_k.extend_from_slice(&request_bytes);
        message_k.extend_from_slice(&exact[..split.before_signature]);
        crypto::verify(
            &chain.leaf_key,
            crypto::context::KEY_EXCHANGE_RSP,
            &crypto::hash(&message_k),
            &rsp.signature,
        )?;
        let response_unsigned = exact[..split.before_signature].to_vec();
        message_k.extend_from_slice(&rsp.signature);
        let th1 = crypto::hash(&message_k);
        let dhe = ephemeral.diffie_hellman(&rsp.exchange_data)?;
        let schedule = KeySchedule::new(dhe.as_ref(), &th1);
        crypto::check_hmac(
            schedule.response_finished_key().as_ref(),
            &th1,
            &rsp.verify_data,
        )?;
        message_k.extend_from_slice(&rsp.verify_data);

        let session_id = (u32::from(rsp.rsp_session_id) << 16) | u32::from(request.req_session_id);
        let mut handshake = schedule.handshake_keys();
        message_k.extend_from_slice(finish_header().as_bytes());
        let verify_data = crypto::hmac(
            schedule.request_finished_key().as_ref(),
            &crypto::hash(&message_k),
        );
        message_k.extend_from_slice(&verify_data);
        let finish = Finish { verify_data }.encode();
        let response = secured_exchange(
            mailbox,
            &mut handshake,
            session_id,
            &finish,
            self.config.max_not_ready,
        )?;
        decode_header_only(&response, SPDM_VERSION_1_2, SpdmCode::FINISH_RSP)
            .map_err(codec("FINISH_RSP"))?;
        message_k.extend_from_slice(&response);
        let keys = schedule.application_keys(&crypto::hash(&message_k));
        self.session = Some(Session {
            id: session_id,
            keys,
            key_exchange: KeyExchangeRecord {
                request: request_bytes,
                response_unsigned,
                signature: rsp.signature,
                th1,
            },
        });
        Ok(session_id)
    }

    /// Sends one SPDM request inside the session and returns the response. A record that does
    /// not authenticate ends the session.
    pub fn send_in_session(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        request: &[u8],
    ) -> Result<Vec<u8>, SpdmError> {
        let max_not_ready = self.config.max_not_ready;
        let session = self.session.as_mut().ok_or(SpdmError::NoSession)?;
        let result = secured_exchange(
            mailbox,
            &mut session.keys,
            session.id,
            request,
            max_not_ready,
        );
        if let Err(e) = &result
            && !matches!(e, SpdmError::Peer(_) | SpdmError::NotReady(_))
        {
            tracing::warn!(error = %e, "SPDM session failed; it must be re-established");
            self.session = None;
            self.state = RequesterState::Failed;
        }
        result
    }

    /// Asks for all measurement blocks, signed by the leaf key over a fresh nonce, inside
    /// the session, and verifies the signature.
    pub fn get_signed_measurements(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
    ) -> Result<SignedMeasurements, SpdmError> {
        self.get_signed_measurements_with_nonce(mailbox, None)
    }

    /// As [`Self::get_signed_measurements`], with `nonce` as the requester nonce when given
    /// (a verifier's own, so that it can tell the signature is fresh).
    pub fn get_signed_measurements_with_nonce(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        nonce: Option<[u8; NONCE_SIZE]>,
    ) -> Result<SignedMeasurements, SpdmError> {
        let leaf_key = self
            .chain
            .as_ref()
            .map(|c| c.leaf_key)
            .ok_or(SpdmError::NoSession)?;
        let nonce = match nonce {
            Some(nonce) => nonce,
            None => {
                let mut nonce = [0; NONCE_SIZE];
                crypto::random_bytes(&mut nonce)?;
                nonce
            }
        };
        let request = GetMeasurements {
            operation: MEASUREMENT_OPERATION_ALL,
            signed: Some((nonce, self.config.slot)),
        }
        .encode();
        let response = self.send_in_session(mailbox, &request)?;
        let (measurements, signed_length) =
            Measurements::decode(&response, true).map_err(codec("MEASUREMENTS"))?;
        let signature = measurements
            .signature
            .ok_or(SpdmError::Negotiation("unsigned measurements"))?;
        let mut signed_transcript = self.vca.clone();
        signed_transcript.extend_from_slice(&request);
        signed_transcript.extend_from_slice(&response[..signed_length]);
        crypto::verify(
            &leaf_key,
            crypto::context::MEASUREMENTS,
            &crypto::hash(&signed_transcript),
            &signature,
        )?;
        let blocks =
            MeasurementBlock::parse_record(&measurements.record).map_err(codec("MEASUREMENTS"))?;
        Ok(SignedMeasurements {
            signed_transcript,
            request,
            signed_length,
            response,
            blocks,
        })
    }

    /// Ends the session with END_SESSION. The keys are dropped whatever the device answers.
    pub fn end_session(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), SpdmError> {
        let request = Header::new(SPDM_VERSION_1_2, SpdmCode::END_SESSION)
            .as_bytes()
            .to_vec();
        let result = self.send_in_session(mailbox, &request);
        self.session = None;
        self.state = RequesterState::Ended;
        let response = result?;
        decode_header_only(&response, SPDM_VERSION_1_2, SpdmCode::END_SESSION_ACK)
            .map_err(codec("END_SESSION_ACK"))?;
        Ok(())
    }
}

/// Classifies a response: `Ok(None)` for an answer to keep, `Ok(Some(retry))` for
/// ResponseNotReady (the RESPOND_IF_READY to send), `Err` for any other ERROR.
fn not_ready_or_error(payload: &[u8]) -> Result<Option<Vec<u8>>, SpdmError> {
    if payload.get(1) != Some(&SpdmCode::ERROR.0) {
        return Ok(None);
    }
    let (error, _) = decode_padded(payload, ErrorResponse::decode).map_err(codec("ERROR"))?;
    match error.not_ready() {
        Some(not_ready) => {
            tracing::debug!(
                request_code = not_ready.request_code,
                token = not_ready.token,
                "SPDM responder not ready; asking again"
            );
            Ok(Some(respond_if_ready(
                not_ready.request_code,
                not_ready.token,
            )))
        }
        None => Err(SpdmError::Peer(error)),
    }
}

/// One secured request/response under `keys`, following ResponseNotReady.
fn secured_exchange(
    mailbox: &mut dyn DoeMailbox,
    keys: &mut PhaseKeys,
    session_id: u32,
    request: &[u8],
    max_not_ready: u32,
) -> Result<Vec<u8>, SpdmError> {
    let mut request = request.to_vec();
    for _ in 0..=max_not_ready {
        let record = secured::seal(&mut keys.request, session_id, &request)?;
        let answer = mailbox.exchange(&encode_object(DoeObjectType::SECURED_SPDM, &record)?)?;
        let (object_type, payload) = decode_object(&answer)?;
        if object_type == DoeObjectType::SPDM {
            // A responder that could not open the record answers a plain ERROR and drops the
            // session.
            let error = decode_padded(payload, ErrorResponse::decode)
                .map(|(e, _)| SpdmError::Peer(e))
                .unwrap_or(SpdmError::ObjectType {
                    found: object_type.0,
                    expected: DoeObjectType::SECURED_SPDM.0,
                });
            return Err(SpdmError::Secured(match error {
                SpdmError::Peer(e) if e.code == SpdmErrorCode::DECRYPT_ERROR => {
                    SecuredError::Authentication
                }
                _ => return Err(error),
            }));
        }
        if object_type != DoeObjectType::SECURED_SPDM {
            return Err(SpdmError::ObjectType {
                found: object_type.0,
                expected: DoeObjectType::SECURED_SPDM.0,
            });
        }
        let response = secured::open(&mut keys.response, session_id, payload)?;
        match not_ready_or_error(&response)? {
            Some(retry) => request = retry,
            None => return Ok(response),
        }
    }
    Err(SpdmError::NotReady(max_not_ready))
}
