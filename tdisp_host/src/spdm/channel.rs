//! [`SpdmChannel`]: the TSM's [`SecureChannel`] backed by an SPDM 1.2 secured session, so
//! every TDISP message travels encrypted and authenticated (DOE object type 2), with the
//! device authenticated by its certificate chain against a configured root.

use super::codes::SIGNATURE_SIZE;
use super::requester::RequesterConfig;
use super::requester::SpdmError;
use super::requester::SpdmRequester;
use crate::tsm::ChannelError;
use crate::tsm::DoeMailbox;
use crate::tsm::SecureChannel;
use crate::tsm::doe::trim_vendor_defined_padding;
use tdisp_proto::evidence::bundle::SessionEvidence;

/// A secure channel: an SPDM session with the device.
#[derive(Debug)]
pub struct SpdmChannel {
    requester: SpdmRequester,
}

impl SpdmChannel {
    /// A channel that will trust devices whose chain leads to `config.root_der`.
    pub fn new(config: RequesterConfig) -> Self {
        Self {
            requester: SpdmRequester::new(config),
        }
    }

    /// The requester (state, transcript, chain).
    pub fn requester(&self) -> &SpdmRequester {
        &self.requester
    }
}

fn channel_error(error: SpdmError) -> ChannelError {
    match error {
        SpdmError::Mailbox(e) => ChannelError::Mailbox(e),
        SpdmError::Doe(e) => ChannelError::Doe(e),
        SpdmError::NoSession => ChannelError::NotEstablished,
        other => ChannelError::Session(other.to_string()),
    }
}

impl SecureChannel for SpdmChannel {
    fn establish(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError> {
        self.requester
            .connect(mailbox)
            .map(drop)
            .map_err(channel_error)
    }

    fn exchange(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        spdm_request: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        let request = trim_vendor_defined_padding(spdm_request);
        self.requester
            .send_in_session(mailbox, request)
            .map_err(channel_error)
    }

    fn close(&mut self, mailbox: &mut dyn DoeMailbox) -> Result<(), ChannelError> {
        if self.requester.session_id().is_none() {
            return Ok(());
        }
        self.requester.end_session(mailbox).map_err(channel_error)
    }

    fn is_secure(&self) -> bool {
        true
    }

    fn session_id(&self) -> Option<u32> {
        self.requester.session_id()
    }

    fn certificate_chain(&self) -> Option<Vec<u8>> {
        self.requester.certificate_chain().map(<[u8]>::to_vec)
    }

    /// The session evidence container ([`tdisp_proto::evidence::bundle`]): this session's
    /// signed key exchange and fresh measurements signed inside it over a fresh nonce, both
    /// verified here against the chain first.
    fn signed_measurements(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
        nonce: Option<[u8; 32]>,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let signed = self
            .requester
            .get_signed_measurements_with_nonce(mailbox, nonce)
            .map_err(channel_error)?;
        let key_exchange = self
            .requester
            .key_exchange_record()
            .ok_or(ChannelError::NotEstablished)?;
        let (measurements, signature) = signed
            .response
            .split_at_checked(signed.signed_length)
            .ok_or_else(|| {
                ChannelError::Session("MEASUREMENTS shorter than its signed part".into())
            })?;
        let measurements_signature = <[u8; SIGNATURE_SIZE]>::try_from(signature)
            .map_err(|_| ChannelError::Session("MEASUREMENTS signature size".into()))?;
        let evidence = SessionEvidence {
            vca: self.requester.vca().to_vec(),
            key_exchange: key_exchange.request.clone(),
            key_exchange_rsp: key_exchange.response_unsigned.clone(),
            key_exchange_signature: key_exchange.signature,
            get_measurements: signed.request,
            measurements: measurements.to_vec(),
            measurements_signature,
        };
        Ok(Some(evidence.encode()))
    }
}
