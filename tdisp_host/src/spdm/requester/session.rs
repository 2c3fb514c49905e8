//! Inside the session: requests under the application keys, signed measurements verified
//! against the leaf key, and END_SESSION.

use super::RequesterState;
use super::SpdmError;
use super::SpdmRequester;
use super::codec;
use super::exchange::secured_exchange;
use crate::spdm::codes::*;
use crate::spdm::crypto;
use crate::spdm::messages::*;
use crate::tsm::doe::DoeMailbox;
use zerocopy::IntoBytes;

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

impl SpdmRequester {
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
