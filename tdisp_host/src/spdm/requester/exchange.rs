//! One request and its response, plain or inside a session, following ResponseNotReady with
//! RESPOND_IF_READY up to the configured number of times.

use super::SpdmError;
use super::SpdmRequester;
use super::codec;
use crate::spdm::codes::*;
use crate::spdm::crypto::PhaseKeys;
use crate::spdm::messages::*;
use crate::spdm::secured;
use crate::spdm::secured::SecuredError;
use crate::spdm::transport::decode_object;
use crate::spdm::transport::decode_padded;
use crate::spdm::transport::encode_object;
use crate::tsm::doe::DoeMailbox;
use tdisp_proto::framing::doe::DoeObjectType;

impl SpdmRequester {
    /// Sends a plain request and returns the response payload (padding included), following
    /// ResponseNotReady with RESPOND_IF_READY.
    pub(super) fn plain(
        &self,
        mailbox: &mut dyn DoeMailbox,
        request: &[u8],
    ) -> Result<Vec<u8>, SpdmError> {
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
pub(super) fn secured_exchange(
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
