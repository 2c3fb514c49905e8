//! A hostile host answering over the TDISP channel: each answer is raw bytes, a frame around
//! raw bytes, or a `GuestToHostResponse` with fuzzed field values (so most answers get past
//! protobuf parsing into validation). Decoding never panics and re-decodes to the same value;
//! the client never panics, never returns `Err(Success)`, and whatever it accepts agrees with
//! the state rules; a flow that accepts a device has verified its report, and never accepts
//! one whose binding it requires but cannot verify.

#![forbid(unsafe_code)]
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::VecDeque;
use tdisp_guest::GuestTransport;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_guest::accept_device;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::proto;
use tdisp_proto::wire::proto::guest_to_host_response::Response;
use tdisp_proto::wire::unframe;

#[derive(Arbitrary, Debug)]
enum Reply {
    Raw(Vec<u8>),
    Framed(Vec<u8>),
    Structured {
        result: u8,
        before: u8,
        after: u8,
        variant: u8,
        value: u8,
        features: u64,
        device: u64,
        report: Vec<u8>,
        unknown_field: Option<u8>,
    },
}

/// Values around the schema's range: mostly valid, sometimes one past, sometimes negative.
fn near(value: u8, valid: u8) -> i32 {
    i32::from(value % (valid + 2)) - i32::from(value >= 0xf0)
}

impl Reply {
    /// The message the transport hands the client, or a transport failure.
    fn message(&self) -> Result<Vec<u8>, TransportError> {
        match self {
            Self::Raw(bytes) => Ok(bytes.clone()),
            Self::Framed(bytes) => unframe(bytes)
                .map(<[u8]>::to_vec)
                .map_err(|e| TransportError::Failed(e.to_string())),
            Self::Structured {
                result,
                before,
                after,
                variant,
                value,
                features,
                device,
                report,
                unknown_field,
            } => {
                let response = match variant % 7 {
                    0 => Some(Response::GetDeviceInterfaceInfo(
                        proto::TdispCommandResponseGetDeviceInterfaceInfo {
                            interface_info: (value & 0x80 == 0).then_some(
                                proto::TdispDeviceInterfaceInfo {
                                    guest_protocol_type: near(*value, 3),
                                    supported_features: *features,
                                    tdisp_device_id: *device,
                                },
                            ),
                        },
                    )),
                    1 => Some(Response::Bind(proto::TdispCommandResponseBind {})),
                    2 => Some(Response::GetTdiReport(
                        proto::TdispCommandResponseGetTdiReport {
                            report_type: near(*value, 6),
                            report_buffer: report.clone(),
                        },
                    )),
                    3 => Some(Response::StartTdi(proto::TdispCommandResponseStartTdi {})),
                    4 => Some(Response::Unbind(proto::TdispCommandResponseUnbind {})),
                    _ => None,
                };
                let mut bytes = proto::GuestToHostResponse {
                    result: near(*result, 10),
                    tdi_state_before: near(*before, 4),
                    tdi_state_after: near(*after, 4),
                    response,
                }
                .encode_to_vec();
                if let Some(extra) = unknown_field {
                    // Field 15, varint: not in the schema, must be skipped.
                    bytes.extend_from_slice(&[0x78, extra & 0x7f]);
                }
                Ok(bytes)
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    calls: Vec<u8>,
    replies: Vec<Reply>,
    flow: bool,
}

struct Scripted(VecDeque<Reply>);

impl GuestTransport for Scripted {
    fn exchange(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let reply = self.0.pop_front().ok_or(TransportError::Closed)?;
        let message = reply.message()?;
        // The decoder alone: never panics, and what decodes re-decodes to itself.
        if let Ok(packet) = ResponsePacket::decode(&message) {
            if let Ok(bytes) = packet.encode() {
                assert_eq!(ResponsePacket::decode(&bytes), Ok(packet));
            }
        }
        Ok(message)
    }
}

fn call(client: &mut TdispGuestClient<Scripted>, which: u8) {
    let outcome = match which % 6 {
        0 => client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .map(|info| {
                assert_ne!(client.state(), TdispTdiState::Error);
                assert_ne!(
                    info.guest_protocol_type,
                    TdispGuestProtocolType::IntelTdxConnectV1
                );
            }),
        1 => client
            .request_lock_device_resources()
            .map(|()| assert_eq!(client.state(), TdispTdiState::Locked)),
        2 => client
            .request_start_tdi()
            .map(|()| assert_eq!(client.state(), TdispTdiState::Run)),
        3 => client
            .request_attestation_report(TdispReportType::InterfaceReport)
            .map(|report| {
                assert!(!report.is_empty());
                assert!(matches!(
                    client.state(),
                    TdispTdiState::Locked | TdispTdiState::Run
                ));
            }),
        4 => client
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .map(|()| assert_eq!(client.state(), TdispTdiState::Unlocked)),
        _ => client
            .request_attestation_report(TdispReportType::Invalid)
            .map(drop),
    };
    assert_ne!(outcome, Err(TdispGuestOperationError::Success));
}

fuzz_target!(|input: Input| {
    let mut client = TdispGuestClient::new(Scripted(input.replies.into()), 3);
    if input.flow {
        let policy = InterfacePolicy::default();
        if let Ok(accepted) =
            accept_device(&mut client, TdispGuestProtocolType::AmdSevTioV1, &policy)
        {
            assert_eq!(client.state(), TdispTdiState::Run);
            assert!(policy.check(&accepted.report).is_ok());
            // The default policy trusts no root: a host advertising session evidence, whose
            // binding is then required, is never accepted.
            assert_eq!(accepted.binding, None);
            assert_eq!(
                accepted.info.supported_features & tdisp_proto::FEATURE_SESSION_EVIDENCE,
                0
            );
        }
    }
    for which in input.calls.into_iter().take(32) {
        call(&mut client, which);
    }
});
