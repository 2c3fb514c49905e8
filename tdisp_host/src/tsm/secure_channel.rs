//! The seam between the TSM and the DOE mailbox: a [`SecureChannel`] carries whole SPDM
//! messages to the device and back.
//!
//! TDISP requires its messages to travel inside a secured SPDM session (the TSM authenticates
//! the device and encrypts the exchange). The channel is where that session lives: it is set
//! up by [`SecureChannel::establish`] when the TSM connects to the device, holds its keys and
//! sequence numbers between exchanges, and wraps every SPDM message it is given. The secure
//! implementation is [`crate::spdm::channel::SpdmChannel`] (an SPDM 1.2 session). The one
//! here, [`PlainChannel`], is **not secure**: it sends SPDM messages in the clear (DOE object
//! type 1), and by policy refuses to establish without an explicit opt-in (tests only).

use super::doe::DoeMailbox;
use super::doe::MAX_DOE_OBJECT_SIZE;
use super::doe::MailboxError;
use tdisp_proto::framing::doe::DoeError;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use thiserror::Error;

/// Why a channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    /// The mailbox failed.
    #[error("DOE mailbox failed")]
    Mailbox(#[from] MailboxError),
    /// The device's answer is not a valid DOE data object.
    #[error("invalid DOE object from the device")]
    Doe(#[from] DoeError),
    /// The device answered with a data object of another type.
    #[error("device answered DOE object type {0}, expected {1}")]
    UnexpectedObjectType(u8, u8),
    /// The message does not fit in a DOE object.
    #[error("SPDM message of {0} bytes does not fit in a DOE object")]
    TooLarge(usize),
    /// The channel has not been established, or was closed.
    #[error("the channel is not established")]
    NotEstablished,
    /// Session setup or message protection failed (secured channels only).
    #[error("secure session failure: {0}")]
    Session(String),
}

/// Carries whole SPDM messages between the TSM and one device over its DOE mailbox.
///
/// The channel owns the session state; the mailbox stays with the TSM's device context and is
/// lent for each operation, so a channel can run as many exchanges as its protocol needs.
pub trait SecureChannel: Send {
    /// Sets the channel up (for a secured channel: the SPDM handshake). Called when the TSM
    /// connects to the device; may exchange any number of DOE objects.
    fn establish(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError>;

    /// Sends one whole SPDM request message and returns the device's whole SPDM response
    /// message. The response is untrusted.
    ///
    /// A plain DOE object cannot say where an SPDM message ends inside its last dword, so a
    /// response may carry up to three zero bytes of padding; decoders trim them (see
    /// [`super::doe::trim_vendor_defined_padding`]).
    fn exchange(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        spdm_request: &[u8],
    ) -> Result<Vec<u8>, ChannelError>;

    /// Tears the channel down (for a secured channel: END_SESSION). Called on disconnect.
    fn close(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError>;

    /// Whether messages are protected (authenticated and encrypted). The TSM records this so
    /// nobody mistakes a plain channel for a secure one.
    fn is_secure(&self) -> bool;

    /// The SPDM session id, when a session is established.
    fn session_id(&self) -> Option<u32>;

    /// The device's certificate chain (SPDM slot format) that the channel authenticated when
    /// it was established; `None` for a channel that authenticates nothing.
    fn certificate_chain(&self) -> Option<Vec<u8>> {
        None
    }

    /// Session evidence (the container of [`tdisp_proto::evidence::bundle`]): the session's
    /// signed key exchange and fresh measurements signed by the device's leaf key inside the
    /// session; `Ok(None)` for a channel that cannot produce it (a plain channel). `nonce` is
    /// the GET_MEASUREMENTS requester nonce to use; `None` draws a fresh random one.
    fn signed_measurements(
        &mut self,
        _mailbox: &mut dyn DoeMailbox,
        _nonce: Option<[u8; 32]>,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        Ok(None)
    }
}

/// A channel with **no security at all**: SPDM messages travel in the clear as DOE object
/// type 1 (CMA/SPDM), unauthenticated and unencrypted, and anyone on the path can read and
/// change them. The secure channel is [`crate::spdm::channel::SpdmChannel`]; this one exists
/// for tests, and by policy refuses to establish unless created with
/// [`PlainChannel::insecure_opt_in`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainChannel {
    established: bool,
    opted_in: bool,
}

impl PlainChannel {
    /// A plain channel under the default policy: [`SecureChannel::establish`] refuses it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A plain channel its user explicitly accepts as insecure (tests only).
    pub fn insecure_opt_in() -> Self {
        Self {
            established: false,
            opted_in: true,
        }
    }
}

impl SecureChannel for PlainChannel {
    fn establish(&mut self, _mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError> {
        if !self.opted_in {
            tracing::warn!("plain SPDM channel refused: TDISP travels only inside a session");
            return Err(ChannelError::Session(
                "plain channel refused by policy (no explicit opt-in)".into(),
            ));
        }
        tracing::warn!("plain SPDM channel established: TDISP messages are NOT protected");
        self.established = true;
        Ok(())
    }

    fn exchange(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        spdm_request: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        if !self.established {
            return Err(ChannelError::NotEstablished);
        }
        let object = DoeObject::new(DoeObjectType::SPDM, spdm_request);
        if object.encoded_len() > MAX_DOE_OBJECT_SIZE {
            return Err(ChannelError::TooLarge(spdm_request.len()));
        }
        let mut request = Vec::with_capacity(object.encoded_len());
        object.encode(&mut request);
        let response = mailbox.exchange(&request)?;
        if response.len() > MAX_DOE_OBJECT_SIZE {
            return Err(MailboxError::TooLarge(response.len()).into());
        }
        let object = DoeObject::decode(&response)?;
        if object.object_type != DoeObjectType::SPDM {
            return Err(ChannelError::UnexpectedObjectType(
                object.object_type.0,
                DoeObjectType::SPDM.0,
            ));
        }
        Ok(object.payload.to_vec())
    }

    fn close(&mut self, _mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError> {
        self.established = false;
        Ok(())
    }

    fn is_secure(&self) -> bool {
        false
    }

    fn session_id(&self) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every object with a fixed reply.
    struct Fixed(Vec<u8>);

    impl DoeMailbox for Fixed {
        fn exchange(&mut self, _request: &[u8]) -> Result<Vec<u8>, MailboxError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn plain_channel_refuses_to_exchange_before_establish_and_after_close() {
        let mut mailbox = Fixed(Vec::new());
        assert!(matches!(
            PlainChannel::new().establish(&mut mailbox),
            Err(ChannelError::Session(_))
        ));
        let mut channel = PlainChannel::insecure_opt_in();
        assert_eq!(
            channel.exchange(&mut mailbox, &[0x12, 0xfe]),
            Err(ChannelError::NotEstablished)
        );
        channel.establish(&mut mailbox).unwrap();
        channel.close(&mut mailbox).unwrap();
        assert_eq!(
            channel.exchange(&mut mailbox, &[0x12, 0xfe]),
            Err(ChannelError::NotEstablished)
        );
        assert!(!channel.is_secure());
        assert_eq!(channel.session_id(), None);
    }

    #[test]
    fn plain_channel_rejects_answers_that_are_not_spdm_objects() {
        let mut discovery = Vec::new();
        DoeObject::new(DoeObjectType::DISCOVERY, &[0; 4]).encode(&mut discovery);
        let mut channel = PlainChannel::insecure_opt_in();
        let mut mailbox = Fixed(discovery);
        channel.establish(&mut mailbox).unwrap();
        assert_eq!(
            channel.exchange(&mut mailbox, &[0x12, 0xfe]),
            Err(ChannelError::UnexpectedObjectType(0, 1))
        );
        let mut garbage = Fixed(vec![1, 2, 3]);
        assert!(matches!(
            channel.exchange(&mut garbage, &[0x12, 0xfe]),
            Err(ChannelError::Doe(_))
        ));
    }
}
