//! Session setup: KEY_EXCHANGE (the responder's signature and verify data checked against the
//! transcript) and FINISH under the handshake keys, leaving the application keys.

use super::Session;
use super::SpdmError;
use super::SpdmRequester;
use super::codec;
use super::exchange::secured_exchange;
use crate::spdm::cert::ValidatedChain;
use crate::spdm::codes::*;
use crate::spdm::crypto;
use crate::spdm::crypto::EphemeralKey;
use crate::spdm::crypto::KeySchedule;
use crate::spdm::messages::*;
use crate::spdm::transport::decode_padded;
use crate::tsm::doe::DoeMailbox;
use zerocopy::IntoBytes;

/// Opaque data of KEY_EXCHANGE in format 1 (DSP0277 general opaque data): one DMTF element
/// listing the secured-message versions supported (1.1).
pub fn supported_versions_opaque() -> Vec<u8> {
    // TotalElements, reserved[3]; element: id 0 (DMTF), vendor len 0, data len 5,
    // SMDataVersion 1, SMDataID 1 (supported versions), count 1, version 1.1; pad to 4.
    vec![1, 0, 0, 0, 0, 0, 5, 0, 1, 1, 1, 0x00, 0x11, 0, 0, 0]
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

impl SpdmRequester {
    pub(super) fn key_exchange(
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
}
