//! The SPDM 1.2 responder (the device's end, around the emulated DSM): answers VCA, digests,
//! certificate portions, signed measurements and KEY_EXCHANGE in the clear, FINISH under the
//! handshake keys, then application messages (VENDOR_DEFINED, handed to a [`VendorHandler`]),
//! GET_MEASUREMENTS and END_SESSION inside the session. It is a [`DoeMailbox`], so the TSM
//! reaches it exactly as it reaches a device.
//!
//! Connection states follow the order DSP0274 requires ([`ConnectionState`]); a request out of
//! order gets ERROR UnexpectedRequest and changes nothing, GET_VERSION starts over (and ends
//! any session). A secured record that does not authenticate gets a plain ERROR DecryptError
//! and ends the session, as DSP0277 asks. VENDOR_DEFINED requests in the clear are refused
//! with SessionRequired unless the configuration allows them.

use super::cert::DeviceIdentity;
use super::codes::*;
use super::crypto;
use super::crypto::EphemeralKey;
use super::crypto::KeySchedule;
use super::crypto::PhaseKeys;
use super::messages::*;
use super::secured;
use super::transport::decode_object;
use super::transport::decode_padded;
use super::transport::encode_object;
use crate::tsm::doe::DiscoveryRequestWire;
use crate::tsm::doe::DiscoveryResponseWire;
use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::MailboxError;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::doe::PCI_SIG_VENDOR_ID;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// Answers the VENDOR_DEFINED requests that reach the responder (TDISP for the emulated DSM).
pub trait VendorHandler: Send {
    /// Takes a whole VENDOR_DEFINED_REQUEST message and returns the whole SPDM response.
    fn handle_vendor(&mut self, request: &[u8]) -> Vec<u8>;

    /// Measurement blocks to report, after the configured ones, to a GET_MEASUREMENTS that
    /// arrived inside the session whose TH1 is `session_th1` (never in the clear). The
    /// emulated DSM reports its TDI binding blocks here; the default reports none.
    fn session_measurements(&mut self, session_th1: &[u8; HASH_SIZE]) -> Vec<MeasurementBlock> {
        let _ = session_th1;
        Vec::new()
    }
}

impl<F: FnMut(&[u8]) -> Vec<u8> + Send> VendorHandler for F {
    fn handle_vendor(&mut self, request: &[u8]) -> Vec<u8> {
        self(request)
    }
}

/// The emulated DSM answers TDISP and IDE_KM (and refuses other vendor protocols) as a device
/// would; the responder hands it vendor requests only inside a session unless configured
/// otherwise, and IDE_KM keys must never travel in the clear, so enable
/// `allow_vendor_in_clear` only for tests.
impl VendorHandler for crate::dsm::EmulatedDsm {
    fn handle_vendor(&mut self, request: &[u8]) -> Vec<u8> {
        self.handle_session_vendor(request)
    }

    fn session_measurements(&mut self, session_th1: &[u8; HASH_SIZE]) -> Vec<MeasurementBlock> {
        self.binding_blocks(session_th1)
    }
}

/// A DSM shared with its owner (who may change its configuration while it serves).
impl VendorHandler for std::sync::Arc<std::sync::Mutex<crate::dsm::EmulatedDsm>> {
    fn handle_vendor(&mut self, request: &[u8]) -> Vec<u8> {
        match self.lock() {
            Ok(mut dsm) => dsm.handle_session_vendor(request),
            Err(_) => error(SpdmErrorCode::UNSPECIFIED, 0),
        }
    }

    fn session_measurements(&mut self, session_th1: &[u8; HASH_SIZE]) -> Vec<MeasurementBlock> {
        match self.lock() {
            Ok(dsm) => dsm.binding_blocks(session_th1),
            // A poisoned device reports no binding: a verifier that needs one refuses.
            Err(_) => Vec::new(),
        }
    }
}

/// What the responder serves.
#[derive(Debug)]
pub struct ResponderConfig {
    /// The device identity: chain in slot 0 and the leaf key that signs.
    pub identity: DeviceIdentity,
    /// The measurement blocks served by GET_MEASUREMENTS.
    pub measurements: Vec<MeasurementBlock>,
    /// Whether VENDOR_DEFINED requests are answered outside a session (tests only).
    pub allow_vendor_in_clear: bool,
}

impl ResponderConfig {
    /// Serves `identity` and `measurements`; vendor requests only inside a session.
    pub fn new(identity: DeviceIdentity, measurements: Vec<MeasurementBlock>) -> Self {
        Self {
            identity,
            measurements,
            allow_vendor_in_clear: false,
        }
    }
}

/// How far the connection has been negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectionState {
    /// Waiting for GET_VERSION.
    NotStarted,
    /// VERSION sent.
    AfterVersion,
    /// CAPABILITIES sent.
    AfterCapabilities,
    /// ALGORITHMS sent: the connection is negotiated.
    Negotiated,
}

/// A session's phase.
enum SessionPhase {
    /// KEY_EXCHANGE_RSP sent; waiting for FINISH under the handshake keys.
    Handshake {
        schedule: Box<KeySchedule>,
        keys: PhaseKeys,
        message_k: Vec<u8>,
    },
    /// FINISH_RSP sent: application keys in force.
    Established { keys: PhaseKeys },
}

struct Session {
    id: u32,
    /// TH1 of the key exchange: names the session in the TDI binding blocks.
    th1: [u8; HASH_SIZE],
    phase: SessionPhase,
}

/// Capabilities the responder announces.
pub fn responder_capabilities() -> CapabilityFlags {
    CapabilityFlags::new()
        .with_cert(true)
        .with_meas(MEAS_CAP_SIGNED)
        .with_encrypt(true)
        .with_mac(true)
        .with_key_ex(true)
}

/// The responder's data transfer size.
pub const RESPONDER_DATA_TRANSFER_SIZE: u32 = 4096;
/// The RspSessionID half this responder allocates.
const RSP_SESSION_ID: u16 = 0xffff;

/// The responder end of the device's SPDM connection.
pub struct SpdmResponder<H> {
    config: ResponderConfig,
    handler: H,
    state: ConnectionState,
    vca: Vec<u8>,
    session: Option<Session>,
}

impl<H> std::fmt::Debug for SpdmResponder<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdmResponder")
            .field("state", &self.state)
            .field("session_id", &self.session.as_ref().map(|s| s.id))
            .finish_non_exhaustive()
    }
}

/// Whether a VENDOR_DEFINED_REQUEST is PCI-SIG's (standard id 3, vendor id len 2) with
/// protocol id 0, PCIe IDE_KM.
fn carries_ide_km(request: &[u8]) -> bool {
    matches!(request.get(4..12), Some([3, 0, 2, _, _, _, _, 0]))
}

fn error(code: SpdmErrorCode, data: u8) -> Vec<u8> {
    ErrorResponse::new(SPDM_VERSION_1_2, code, data).encode()
}

impl<H: VendorHandler> SpdmResponder<H> {
    /// A responder serving `config`, handing vendor requests to `handler`.
    pub fn new(config: ResponderConfig, handler: H) -> Self {
        Self {
            config,
            handler,
            state: ConnectionState::NotStarted,
            vca: Vec::new(),
            session: None,
        }
    }

    /// The negotiation state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The session id, once KEY_EXCHANGE succeeded (handshake or established).
    pub fn session_id(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Whether a session is established (FINISH done).
    pub fn is_established(&self) -> bool {
        matches!(
            self.session,
            Some(Session {
                phase: SessionPhase::Established { .. },
                ..
            })
        )
    }

    /// The vendor handler (for tests and the emulated device's owner).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Answers one plain SPDM request (the payload of a DOE type 1 object).
    pub fn handle_plain(&mut self, payload: &[u8]) -> Vec<u8> {
        let code = match Header::peek(payload) {
            Ok(header) if header.version >> 4 == 1 => header.code,
            Ok(_) => {
                return ErrorResponse::new(SPDM_VERSION_1_0, SpdmErrorCode::VERSION_MISMATCH, 0)
                    .encode();
            }
            Err(_) => return error(SpdmErrorCode::INVALID_REQUEST, 0),
        };
        let required = match code {
            SpdmCode::GET_VERSION => ConnectionState::NotStarted,
            SpdmCode::GET_CAPABILITIES => ConnectionState::AfterVersion,
            SpdmCode::NEGOTIATE_ALGORITHMS => ConnectionState::AfterCapabilities,
            _ => ConnectionState::Negotiated,
        };
        let in_order = match code {
            SpdmCode::GET_VERSION => true,
            SpdmCode::GET_CAPABILITIES | SpdmCode::NEGOTIATE_ALGORITHMS => self.state == required,
            _ => self.state >= required,
        };
        if !in_order {
            tracing::debug!(code = code.0, state = ?self.state, "SPDM request out of order");
            return error(SpdmErrorCode::UNEXPECTED_REQUEST, 0);
        }
        let result = match code {
            SpdmCode::GET_VERSION => Ok(self.version(payload)),
            SpdmCode::GET_CAPABILITIES => self.capabilities(payload),
            SpdmCode::NEGOTIATE_ALGORITHMS => self.algorithms(payload),
            SpdmCode::GET_DIGESTS => self.digests(payload),
            SpdmCode::GET_CERTIFICATE => self.certificate(payload),
            SpdmCode::GET_MEASUREMENTS => self.measurements(payload, None),
            SpdmCode::KEY_EXCHANGE => self.key_exchange(payload),
            // IDE_KM carries keys: never in the clear, whatever the configuration.
            SpdmCode::VENDOR_DEFINED_REQUEST if carries_ide_km(payload) => {
                Err(SpdmErrorCode::SESSION_REQUIRED)
            }
            SpdmCode::VENDOR_DEFINED_REQUEST if self.config.allow_vendor_in_clear => {
                Ok(self.handler.handle_vendor(payload))
            }
            SpdmCode::VENDOR_DEFINED_REQUEST => Err(SpdmErrorCode::SESSION_REQUIRED),
            _ => Err(SpdmErrorCode::UNSUPPORTED_REQUEST),
        };
        result.unwrap_or_else(|code| error(code, 0))
    }

    fn version(&mut self, payload: &[u8]) -> Vec<u8> {
        // GET_VERSION resets the connection and any session.
        self.session = None;
        self.vca.clear();
        self.state = ConnectionState::NotStarted;
        let Ok((_, exact)) = decode_padded(payload, |b| {
            decode_header_only(b, SPDM_VERSION_1_0, SpdmCode::GET_VERSION)
        }) else {
            return ErrorResponse::new(SPDM_VERSION_1_0, SpdmErrorCode::INVALID_REQUEST, 0)
                .encode();
        };
        let response = Version {
            entries: vec![VERSION_ENTRY_1_2],
        }
        .encode();
        self.vca.extend_from_slice(exact);
        self.vca.extend_from_slice(&response);
        self.state = ConnectionState::AfterVersion;
        response
    }

    fn capabilities(&mut self, payload: &[u8]) -> Result<Vec<u8>, SpdmErrorCode> {
        let (_, exact) = decode_padded(payload, |b| {
            Capabilities::decode(b, SPDM_VERSION_1_2, SpdmCode::GET_CAPABILITIES)
        })
        .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        let response = Capabilities {
            version: SPDM_VERSION_1_2,
            ct_exponent: super::requester::CT_EXPONENT,
            flags: responder_capabilities(),
            data_transfer_size: RESPONDER_DATA_TRANSFER_SIZE,
            max_spdm_msg_size: RESPONDER_DATA_TRANSFER_SIZE,
        }
        .encode(SpdmCode::CAPABILITIES);
        self.vca.extend_from_slice(exact);
        self.vca.extend_from_slice(&response);
        self.state = ConnectionState::AfterCapabilities;
        Ok(response)
    }

    fn algorithms(&mut self, payload: &[u8]) -> Result<Vec<u8>, SpdmErrorCode> {
        let (offer, exact) = decode_padded(payload, NegotiateAlgorithms::decode)
            .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        let pick32 = |offered: u32, ours: u32| offered & ours;
        let pick16 = |offered: u16, ours: u16| offered & ours;
        let response = Algorithms {
            measurement_spec: offer.measurement_spec & MEAS_SPEC_DMTF,
            other_params: offer.other_params & OPAQUE_DATA_FMT1,
            measurement_hash: if offer.measurement_spec & MEAS_SPEC_DMTF != 0 {
                MEAS_HASH_SHA_384
            } else {
                0
            },
            base_asym: pick32(offer.base_asym, BASE_ASYM_ECDSA_P384),
            base_hash: pick32(offer.base_hash, BASE_HASH_SHA_384),
            algs: AlgSet {
                dhe: pick16(offer.algs.dhe, DHE_SECP384R1),
                aead: pick16(offer.algs.aead, AEAD_AES_256_GCM),
                req_base_asym: pick16(offer.algs.req_base_asym, REQ_ASYM_ECDSA_P384),
                key_schedule: pick16(offer.algs.key_schedule, KEY_SCHEDULE_SPDM),
            },
        };
        if response.base_asym == 0
            || response.base_hash == 0
            || response.algs.dhe == 0
            || response.algs.aead == 0
            || response.algs.key_schedule == 0
        {
            tracing::debug!("requester offers none of this responder's algorithms");
            return Err(SpdmErrorCode::INVALID_REQUEST);
        }
        let response = response.encode();
        self.vca.extend_from_slice(exact);
        self.vca.extend_from_slice(&response);
        self.state = ConnectionState::Negotiated;
        Ok(response)
    }

    fn digests(&mut self, payload: &[u8]) -> Result<Vec<u8>, SpdmErrorCode> {
        decode_padded(payload, |b| {
            decode_header_only(b, SPDM_VERSION_1_2, SpdmCode::GET_DIGESTS)
        })
        .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        Ok(Digests {
            slot_mask: 1,
            digests: vec![crypto::hash(&self.config.identity.slot)],
        }
        .encode())
    }

    fn certificate(&mut self, payload: &[u8]) -> Result<Vec<u8>, SpdmErrorCode> {
        let (request, _) = decode_padded(payload, GetCertificate::decode)
            .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        if request.slot != 0 {
            return Err(SpdmErrorCode::INVALID_REQUEST);
        }
        let chain = &self.config.identity.slot;
        let offset = usize::from(request.offset);
        if offset >= chain.len() {
            return Err(SpdmErrorCode::INVALID_REQUEST);
        }
        let room = RESPONDER_DATA_TRANSFER_SIZE as usize - 8;
        let length = usize::from(request.length)
            .min(room)
            .min(chain.len() - offset);
        let remainder = chain.len() - offset - length;
        Ok(Certificate {
            slot: 0,
            remainder_length: u16::try_from(remainder).map_err(|_| SpdmErrorCode::UNSPECIFIED)?,
            portion: chain[offset..offset + length].to_vec(),
        }
        .encode())
    }

    /// Answers GET_MEASUREMENTS; `session_th1` is the session's TH1 when the request arrived
    /// inside one (the vendor handler may then add blocks bound to it).
    fn measurements(
        &mut self,
        payload: &[u8],
        session_th1: Option<[u8; HASH_SIZE]>,
    ) -> Result<Vec<u8>, SpdmErrorCode> {
        let (request, exact) = decode_padded(payload, GetMeasurements::decode)
            .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        let mut available = self.config.measurements.clone();
        if let Some(th1) = &session_th1 {
            available.extend(self.handler.session_measurements(th1));
        }
        let blocks: Vec<&MeasurementBlock> = match request.operation {
            0 => Vec::new(),
            MEASUREMENT_OPERATION_ALL => available.iter().collect(),
            index => available.iter().filter(|b| b.index == index).collect(),
        };
        if request.operation != 0
            && request.operation != MEASUREMENT_OPERATION_ALL
            && blocks.is_empty()
        {
            return Err(SpdmErrorCode::INVALID_REQUEST);
        }
        let mut record = Vec::new();
        for block in &blocks {
            block.encode(&mut record);
        }
        let mut nonce = [0; NONCE_SIZE];
        crypto::random_bytes(&mut nonce).map_err(|_| SpdmErrorCode::UNSPECIFIED)?;
        let total = if request.operation == 0 {
            u8::try_from(available.len()).unwrap_or(u8::MAX)
        } else {
            0
        };
        let mut response = Measurements {
            total_indices: total,
            param2: request.signed.map_or(0, |(_, slot)| slot & 0x0f),
            number_of_blocks: u8::try_from(blocks.len()).map_err(|_| SpdmErrorCode::UNSPECIFIED)?,
            record,
            nonce,
            opaque: Vec::new(),
            signature: None,
        };
        if request.signed.is_some() {
            let mut l1 = self.vca.clone();
            l1.extend_from_slice(exact);
            l1.extend_from_slice(&response.encode_unsigned());
            response.signature = Some(crypto::sign(
                &self.config.identity.leaf_key,
                crypto::context::MEASUREMENTS,
                &crypto::hash(&l1),
            ));
        }
        Ok(response.encode())
    }

    fn key_exchange(&mut self, payload: &[u8]) -> Result<Vec<u8>, SpdmErrorCode> {
        let (request, exact) = decode_padded(payload, KeyExchange::decode)
            .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        if request.slot != 0 {
            return Err(SpdmErrorCode::INVALID_REQUEST);
        }
        if self.session.is_some() {
            return Err(SpdmErrorCode::SESSION_LIMIT_EXCEEDED);
        }
        let ephemeral = EphemeralKey::generate().map_err(|_| SpdmErrorCode::UNSPECIFIED)?;
        let dhe = ephemeral
            .diffie_hellman(&request.exchange_data)
            .map_err(|_| SpdmErrorCode::INVALID_REQUEST)?;
        let mut random = [0; NONCE_SIZE];
        crypto::random_bytes(&mut random).map_err(|_| SpdmErrorCode::UNSPECIFIED)?;
        let summary = match request.measurement_summary_hash_type {
            0 => None,
            _ => {
                let mut record = Vec::new();
                for block in &self.config.measurements {
                    block.encode(&mut record);
                }
                Some(crypto::hash(&record))
            }
        };
        let mut response = KeyExchangeRsp {
            heartbeat_period: 0,
            rsp_session_id: RSP_SESSION_ID,
            mut_auth_requested: 0,
            req_slot: 0,
            random,
            exchange_data: ephemeral.exchange_data(),
            measurement_summary_hash: summary,
            // Secured-message version selection: 1.1, in opaque data format 1.
            opaque: vec![1, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0x00, 0x11],
            signature: [0; SIGNATURE_SIZE],
            verify_data: [0; HASH_SIZE],
        };
        let mut message_k = self.vca.clone();
        message_k.extend_from_slice(&crypto::hash(&self.config.identity.slot));
        message_k.extend_from_slice(exact);
        message_k.extend_from_slice(&response.encode_unsigned());
        response.signature = crypto::sign(
            &self.config.identity.leaf_key,
            crypto::context::KEY_EXCHANGE_RSP,
            &crypto::hash(&message_k),
        );
        message_k.extend_from_slice(&response.signature);
        let th1 = crypto::hash(&message_k);
        let schedule = KeySchedule::new(dhe.as_ref(), &th1);
        response.verify_data = crypto::hmac(schedule.response_finished_key().as_ref(), &th1);
        message_k.extend_from_slice(&response.verify_data);
        let keys = schedule.handshake_keys();
        self.session = Some(Session {
            id: (u32::from(RSP_SESSION_ID) << 16) | u32::from(request.req_session_id),
            th1,
            phase: SessionPhase::Handshake {
                schedule: Box::new(schedule),
                keys,
                message_k,
            },
        });
        Ok(response.encode())
    }

    /// Answers one secured record (the payload of a DOE type 2 object): the sealed response,
    /// or a plain ERROR (`Err`) when the record is refused.
    pub fn handle_secured(&mut self, payload: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let Some(session) = self.session.as_mut() else {
            return Err(error(SpdmErrorCode::SESSION_REQUIRED, 0));
        };
        let session_id = session.id;
        let opened = match &mut session.phase {
            SessionPhase::Handshake { keys, .. } | SessionPhase::Established { keys } => {
                secured::open(&mut keys.request, session_id, payload)
            }
        };
        let request = match opened {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, session_id, "secured record refused; session ended");
                self.session = None;
                return Err(error(SpdmErrorCode::DECRYPT_ERROR, 0));
            }
        };
        let (response, end) = self.in_session(&request);
        let Some(session) = self.session.as_mut() else {
            return Err(error(SpdmErrorCode::UNSPECIFIED, 0));
        };
        let keys = match &mut session.phase {
            SessionPhase::Handshake { keys, .. } | SessionPhase::Established { keys } => keys,
        };
        let sealed = secured::seal(&mut keys.response, session_id, &response);
        if let Some(next) = end {
            match next {
                AfterResponse::End => self.session = None,
                AfterResponse::Establish(keys) => {
                    session.phase = SessionPhase::Established { keys }
                }
            }
        }
        sealed.map_err(|_| error(SpdmErrorCode::UNSPECIFIED, 0))
    }

    /// Answers a request that arrived inside the session; says what changes once the
    /// response is sealed.
    fn in_session(&mut self, request: &[u8]) -> (Vec<u8>, Option<AfterResponse>) {
        let Ok(header) = Header::peek(request) else {
            return (error(SpdmErrorCode::INVALID_REQUEST, 0), None);
        };
        let handshake = matches!(
            self.session.as_ref().map(|s| &s.phase),
            Some(SessionPhase::Handshake { .. })
        );
        match (handshake, header.code) {
            (true, SpdmCode::FINISH) => self.finish(request),
            (true, _) => (error(SpdmErrorCode::UNEXPECTED_REQUEST, 0), None),
            (false, SpdmCode::VENDOR_DEFINED_REQUEST) => {
                (self.handler.handle_vendor(request), None)
            }
            (false, SpdmCode::GET_MEASUREMENTS) => {
                let th1 = self.session.as_ref().map(|s| s.th1);
                (
                    self.measurements(request, th1)
                        .unwrap_or_else(|code| error(code, 0)),
                    None,
                )
            }
            (false, SpdmCode::END_SESSION) => {
                match decode_header_only(request, SPDM_VERSION_1_2, SpdmCode::END_SESSION) {
                    Ok(_) => (
                        Header::new(SPDM_VERSION_1_2, SpdmCode::END_SESSION_ACK)
                            .as_bytes()
                            .to_vec(),
                        Some(AfterResponse::End),
                    ),
                    Err(_) => (error(SpdmErrorCode::INVALID_REQUEST, 0), None),
                }
            }
            (false, SpdmCode::FINISH | SpdmCode::KEY_EXCHANGE) => {
                (error(SpdmErrorCode::UNEXPECTED_REQUEST, 0), None)
            }
            (false, _) => (error(SpdmErrorCode::UNSUPPORTED_REQUEST, 0), None),
        }
    }

    fn finish(&mut self, request: &[u8]) -> (Vec<u8>, Option<AfterResponse>) {
        let Some(Session {
            phase:
                SessionPhase::Handshake {
                    schedule,
                    message_k,
                    ..
                },
            ..
        }) = self.session.as_mut()
        else {
            return (error(SpdmErrorCode::UNEXPECTED_REQUEST, 0), None);
        };
        let Ok(finish) = Finish::decode(request) else {
            return (error(SpdmErrorCode::INVALID_REQUEST, 0), None);
        };
        let mut transcript = message_k.clone();
        transcript.extend_from_slice(finish_header().as_bytes());
        if crypto::check_hmac(
            schedule.request_finished_key().as_ref(),
            &crypto::hash(&transcript),
            &finish.verify_data,
        )
        .is_err()
        {
            tracing::warn!("FINISH verify data refused; session ended");
            return (
                error(SpdmErrorCode::DECRYPT_ERROR, 0),
                Some(AfterResponse::End),
            );
        }
        transcript.extend_from_slice(&finish.verify_data);
        let response = Header::new(SPDM_VERSION_1_2, SpdmCode::FINISH_RSP)
            .as_bytes()
            .to_vec();
        transcript.extend_from_slice(&response);
        let keys = schedule.application_keys(&crypto::hash(&transcript));
        (response, Some(AfterResponse::Establish(keys)))
    }

    fn discovery(&self, payload: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let (request, _) = DiscoveryRequestWire::read_from_prefix(payload)
            .map_err(|_| MailboxError::DeviceError("short discovery request"))?;
        let (object_type, next_index) = match request.index {
            0 => (DoeObjectType::DISCOVERY, 1),
            1 => (DoeObjectType::SPDM, 2),
            2 => (DoeObjectType::SECURED_SPDM, 0),
            _ => return Err(MailboxError::DeviceError("discovery index out of range")),
        };
        let response = DiscoveryResponseWire {
            vendor_id: PCI_SIG_VENDOR_ID.into(),
            object_type: object_type.0,
            next_index,
        };
        encode_object(DoeObjectType::DISCOVERY, response.as_bytes())
    }
}

/// What happens to the session once a response is sealed.
enum AfterResponse {
    /// The session ends (END_SESSION, or a refused FINISH).
    End,
    /// FINISH succeeded: switch to the application keys.
    Establish(PhaseKeys),
}

impl<H: VendorHandler> DoeMailbox for SpdmResponder<H> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let (object_type, payload) =
            decode_object(request).map_err(|_| MailboxError::DeviceError("invalid DOE object"))?;
        match object_type {
            DoeObjectType::DISCOVERY => self.discovery(payload),
            DoeObjectType::SPDM => encode_object(DoeObjectType::SPDM, &self.handle_plain(payload)),
            DoeObjectType::SECURED_SPDM => match self.handle_secured(payload) {
                Ok(record) => encode_object(DoeObjectType::SECURED_SPDM, &record),
                Err(plain) => encode_object(DoeObjectType::SPDM, &plain),
            },
            _ => Err(MailboxError::DeviceError("unsupported DOE object type")),
        }
    }
}
