//! The SPDM 1.2 requester (the TSM's end): negotiates version, capabilities and algorithms,
//! reads and validates the device's certificate chain against a configured root, opens a
//! secured session with KEY_EXCHANGE and FINISH, then carries application messages (TDISP
//! VENDOR_DEFINED requests) and signed GET_MEASUREMENTS inside it, and ends it.
//!
//! States and transitions: [`SpdmRequester::connect`] takes any state to `Established` or,
//! on any failure, to `Failed` (no keys kept); a failed or ended session is recovered only by
//! connecting again, which starts over from GET_VERSION. Inside a session, a record that does
//! not authenticate ends it (the two sides' sequence numbers no longer agree).

mod certificate;
mod exchange;
mod key_exchange;
mod negotiation;
mod session;

pub use key_exchange::KeyExchangeRecord;
pub use key_exchange::supported_versions_opaque;
pub use negotiation::CT_EXPONENT;
pub use negotiation::REQUESTER_DATA_TRANSFER_SIZE;
pub use negotiation::check_selection;
pub use negotiation::offered_algorithms;
pub use negotiation::requested_capabilities;
pub use negotiation::requester_capabilities;
pub use session::SignedMeasurements;

use super::cert::CertError;
use super::cert::ValidatedChain;
use super::crypto::CryptoError;
use super::crypto::PhaseKeys;
use super::messages::CodecError;
use super::messages::ErrorResponse;
use super::secured::SecuredError;
use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::MailboxError;
use tdisp_proto::framing::doe::DoeError;
use thiserror::Error;
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

/// Keys and counters of an established session, and the key-exchange messages that name it.
struct Session {
    id: u32,
    keys: PhaseKeys,
    key_exchange: KeyExchangeRecord,
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
}
