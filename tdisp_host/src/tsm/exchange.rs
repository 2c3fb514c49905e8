//! One TDISP request and its validated response over a device's channel, repeated with bounded
//! backoff while the device cannot take it yet.
//!
//! A device says "not yet" two ways: TDISP_ERROR BUSY (the TSM sends the same request again)
//! and SPDM ERROR ResponseNotReady (the TSM sends RESPOND_IF_READY with the device's token, as
//! SPDM 1.2 section 10.6 prescribes, and the device then answers the original request). Both
//! are retried at most [`RetryPolicy::max_retries`] times; anything else ends the exchange.

use super::TsmError;
use super::clock::Clock;
use super::clock::RetryPolicy;
use super::device::TsmDevice;
use super::doe::trim_vendor_defined_padding;
use super::engine::mismatch;
use std::time::Duration;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VENDOR_DEFINED_REQUEST;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;

/// SPDM ERROR response code.
pub const SPDM_ERROR: u8 = 0x7f;
/// SPDM error code ResponseNotReady.
pub const SPDM_ERROR_RESPONSE_NOT_READY: u8 = 0x42;
/// SPDM RESPOND_IF_READY request code.
pub const SPDM_RESPOND_IF_READY: u8 = 0xff;

/// The clock and patience an exchange may use.
pub(super) struct Timing<'a> {
    pub(super) clock: &'a mut dyn Clock,
    pub(super) retry: RetryPolicy,
}

/// What one answer from the device means.
enum Answer {
    Response(TdispResponse),
    /// TDISP BUSY: send the same request again later.
    Busy,
    /// SPDM ResponseNotReady: ask again later with RESPOND_IF_READY.
    NotReady {
        token: u8,
        hint: Duration,
    },
}

impl TsmDevice {
    /// One TDISP request/response over the channel, validated: the response must be about the
    /// same TDI and carry the request's response code; TDISP_ERROR becomes an error. BUSY and
    /// ResponseNotReady are retried with backoff on `timing`'s clock.
    pub(super) fn tdisp(
        &mut self,
        timing: &mut Timing<'_>,
        interface: InterfaceId,
        request: &TdispRequest,
    ) -> Result<TdispResponse, TsmError> {
        let mut spdm_request = Vec::new();
        spdm::encode_tdisp(
            SPDM_VERSION_1_2,
            Direction::Request,
            &TdispMessage::new(interface, request.clone()),
            &mut spdm_request,
        )?;
        let mut next = spdm_request.clone();
        let mut retry = 0;
        loop {
            let raw = self.channel.exchange(self.mailbox.as_mut(), &next)?;
            let hint = match classify(&raw, interface, request)? {
                Answer::Response(response) => return Ok(response),
                Answer::Busy => {
                    next.clone_from(&spdm_request);
                    Duration::ZERO
                }
                Answer::NotReady { token, hint } => {
                    next = vec![
                        SPDM_VERSION_1_2,
                        SPDM_RESPOND_IF_READY,
                        SPDM_VENDOR_DEFINED_REQUEST,
                        token,
                    ];
                    hint
                }
            };
            if retry >= timing.retry.max_retries {
                return Err(TsmError::NotReady {
                    attempts: retry + 1,
                });
            }
            // The device's own estimate counts, within the policy's bound on one wait.
            let delay = timing
                .retry
                .delay(retry)
                .max(hint.min(timing.retry.max_delay));
            tracing::debug!(
                address = self.info.address,
                retry,
                ?delay,
                "device not ready; retrying"
            );
            timing.clock.sleep(delay);
            retry += 1;
        }
    }
}

/// Parses one SPDM answer to a TDISP request.
fn classify(
    raw: &[u8],
    interface: InterfaceId,
    request: &TdispRequest,
) -> Result<Answer, TsmError> {
    let raw = trim_vendor_defined_padding(raw);
    if let [_, SPDM_ERROR, code, rest @ ..] = raw {
        if *code != SPDM_ERROR_RESPONSE_NOT_READY {
            return Err(TsmError::SpdmError(*code));
        }
        // param2, then RDTExponent, RequestCode, Token, RDTM.
        let [_, exponent, request_code, token, multiplier, ..] = rest else {
            return Err(TsmError::InvalidResponse("short ResponseNotReady".into()));
        };
        if *request_code != SPDM_VENDOR_DEFINED_REQUEST {
            return Err(TsmError::InvalidResponse(format!(
                "ResponseNotReady for request code {request_code:#04x}"
            )));
        }
        let micros = 1u64
            .checked_shl(u32::from(*exponent))
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(*multiplier).max(1));
        return Ok(Answer::NotReady {
            token: *token,
            hint: Duration::from_micros(micros),
        });
    }
    let (_, message) = spdm::decode_tdisp::<TdispResponse>(raw, Direction::Response)?;
    if message.interface_id != interface {
        return Err(TsmError::InvalidResponse(format!(
            "response about {:?}, asked about {interface:?}",
            message.interface_id
        )));
    }
    match message.body {
        TdispResponse::Error(e) if e.code == TdispErrorCode::BUSY => Ok(Answer::Busy),
        TdispResponse::Error(e) => Err(TsmError::Device {
            code: e.code,
            data: e.data,
        }),
        body if request.message_type().response_code() == Some(body.message_type()) => {
            Ok(Answer::Response(body))
        }
        body => Err(mismatch(&body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface() -> InterfaceId {
        InterfaceId::from_requester_id(0x0101)
    }

    fn classify_raw(raw: &[u8]) -> Result<Answer, TsmError> {
        classify(raw, interface(), &TdispRequest::StopInterface)
    }

    #[test]
    fn response_not_ready_hint_is_read_and_bounded_by_its_fields() {
        let raw = [SPDM_VERSION_1_2, SPDM_ERROR, 0x42, 0, 3, 0xfe, 9, 2];
        match classify_raw(&raw) {
            Ok(Answer::NotReady { token, hint }) => {
                assert_eq!(token, 9);
                assert_eq!(hint, Duration::from_micros(16));
            }
            _ => panic!("not classified as ResponseNotReady"),
        }
        // A huge exponent saturates instead of overflowing.
        let raw = [SPDM_VERSION_1_2, SPDM_ERROR, 0x42, 0, 255, 0xfe, 9, 255];
        assert!(matches!(classify_raw(&raw), Ok(Answer::NotReady { .. })));
    }

    #[test]
    fn malformed_response_not_ready_is_an_invalid_response() {
        let short = [SPDM_VERSION_1_2, SPDM_ERROR, 0x42, 0, 3];
        assert!(matches!(
            classify_raw(&short),
            Err(TsmError::InvalidResponse(_))
        ));
        let other_request = [SPDM_VERSION_1_2, SPDM_ERROR, 0x42, 0, 3, 0x84, 9, 1];
        assert!(matches!(
            classify_raw(&other_request),
            Err(TsmError::InvalidResponse(_))
        ));
    }

    #[test]
    fn other_spdm_errors_end_the_exchange() {
        let raw = [SPDM_VERSION_1_2, SPDM_ERROR, 0x01, 0];
        assert!(matches!(classify_raw(&raw), Err(TsmError::SpdmError(0x01))));
    }
}
