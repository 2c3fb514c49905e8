//! The guest<->host wire protocol: OpenVMM's `tdisp.proto` (package `tdisp`).
//!
//! Every [`TdispGuestRequestInterface`] call travels as a `tdisp.GuestToHostCommand` and comes
//! back as a `tdisp.GuestToHostResponse`, protobuf-encoded with the `prost` derives of
//! [`proto`] (no protoc at build time). This module is the one place that parses them:
//! [`CommandPacket`] and [`ResponsePacket`] decode (parse with `prost`, then validate into
//! typed values) and encode, and [`frame()`] wraps each message for a VMBus channel.
//! [`report`] holds the schema's report structures (a protobuf view of an interface report).
//!
//! | trait call | command oneof (field) | success response oneof (field) |
//! |---|---|---|
//! | negotiate protocol | `get_device_interface_info` (2) | `get_device_interface_info` (4) |
//! | lock device resources | `bind` (3) | `bind` (5) |
//! | attestation report (optionally with a nonce) | `get_tdi_report` (4) | `get_tdi_report` (6) |
//! | start TDI | `start_tdi` (5) | `start_tdi` (7) |
//! | unbind | `unbind` (6) | `unbind` (8) |
//!
//! One extension of OpenVMM's schema: `TdispCommandRequestGetTdiReport` field 2, `bytes nonce`,
//! empty or 32 bytes ([`GuestCommand::GetFreshAttestationReport`]); an OpenVMM host skips it as
//! an unknown field, and a nonce of another length is refused ([`WireError::NonceLength`]).
//!
//! Validation, as OpenVMM's own validator does it: a command must carry a oneof variant and
//! valid enum values; a response must carry valid `result` and state values, and on success the
//! variant of its command (with `interface_info`, or a non-empty report buffer of at most
//! [`MAX_REPORT_BUFFER`] bytes). An error response may carry a variant or none (OpenVMM's host
//! sends `unbind` even when an unbind fails); it is ignored. Unknown fields are skipped.
//!
//! # TDI states on the wire
//!
//! The schema's `TdispTdiState` has four values, 0..=3: `UNINITIALIZED` ("not initialized or
//! indeterminate"), `UNLOCKED`, `LOCKED`, `RUN`. The host's internal
//! [`TdispTdiState::Error`] (the device left a locked state on its own and only an unbind
//! recovers it) is sent as `UNINITIALIZED`, the schema's "indeterminate". A guest that has
//! negotiated a protocol therefore reads `UNINITIALIZED` as [`TdispTdiState::Error`]:
//! [`TdispTdiState`] values decoded here are never `Error`, and the guest client applies
//! [`state_seen_by_guest`].
//!
//! ```
//! use tdisp_proto::wire::{CommandPacket, GuestCommand, GuestReply, ResponsePacket};
//! use tdisp_proto::{TdispReportType, TdispTdiState};
//!
//! let command = CommandPacket { device_id: 7, command: GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport) };
//! let received = CommandPacket::decode(&command.encode())?;
//! let reply = ResponsePacket {
//!     state_before: TdispTdiState::Locked,
//!     state_after: TdispTdiState::Locked,
//!     result: Ok(GuestReply::GetAttestationReport { report_type: TdispReportType::InterfaceReport, report: vec![1, 2, 3] }),
//! };
//! let back = ResponsePacket::decode(&reply.encode()?)?;
//! back.check_answers(&received.command)?;
//! assert_eq!(back, reply);
//! # Ok::<(), tdisp_proto::wire::WireError>(())
//! ```

pub mod frame;
pub mod proto;
pub mod report;

use crate::interface::REPORT_NONCE_SIZE;
use crate::interface::TdispDeviceInterfaceInfo;
use crate::interface::TdispGuestOperationError;
use crate::interface::TdispGuestProtocolType;
use crate::interface::TdispGuestRequestInterface;
use crate::interface::TdispGuestUnbindReason;
use crate::interface::TdispReportType;
use crate::interface::TdispTdiState;
use prost::Message;
use proto::guest_to_host_command::Command;
use proto::guest_to_host_response::Response;
use thiserror::Error;

pub use frame::frame;
pub use frame::unframe;

/// Largest report buffer accepted or sent: room for a certificate chain or a full interface
/// report (the TDISP report's portions are addressed with u16 offsets).
pub const MAX_REPORT_BUFFER: usize = 64 * 1024;
/// Largest encoded message accepted: a maximal report plus the response around it.
pub const MAX_MESSAGE_SIZE: usize = MAX_REPORT_BUFFER + 256;

/// The enum-typed fields of the schema, for [`WireError::UnknownEnumValue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnumField {
    /// `guest_protocol_type` (command or device interface info).
    GuestProtocolType,
    /// `report_type` (command or response).
    ReportType,
    /// `unbind_reason`.
    UnbindReason,
    /// `GuestToHostResponse.result`.
    Result,
    /// `GuestToHostResponse.tdi_state_before` or `tdi_state_after`.
    TdiState,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The bytes are not a protobuf message of the expected type.
    #[error("malformed protobuf")]
    Protobuf(#[from] prost::DecodeError),
    /// A oneof that must be set carries no variant.
    #[error("{0} carries no variant")]
    MissingOneof(&'static str),
    /// A required sub-message is absent.
    #[error("{0} is missing")]
    MissingField(&'static str),
    /// An enum field holds a value the schema does not define.
    #[error("{field:?} has unknown value {value}")]
    UnknownEnumValue {
        /// The field.
        field: EnumField,
        /// The value received.
        value: i32,
    },
    /// A report buffer is larger than [`MAX_REPORT_BUFFER`].
    #[error("report buffer of {len} bytes exceeds {max}")]
    OversizeReport {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A successful report response carries no bytes.
    #[error("successful report response with an empty report buffer")]
    EmptyReport,
    /// A message is larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes exceeds {max}")]
    OversizeMessage {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A response answers another command than the one sent.
    #[error("response `{got}` does not answer command `{sent}`")]
    Mismatch {
        /// The command's oneof variant.
        sent: &'static str,
        /// The response's oneof variant.
        got: &'static str,
    },
    /// A report response names another report type than the one asked for.
    #[error("report of type {got:?} answers a request for {sent:?}")]
    ReportTypeMismatch {
        /// Requested.
        sent: TdispReportType,
        /// Returned.
        got: TdispReportType,
    },
    /// A response to encode is an error carrying `Success`.
    #[error("an error response cannot carry Success")]
    SuccessAsError,
    /// Fewer bytes than a frame header.
    #[error("frame truncated: {have} bytes, the header needs 8")]
    FrameTruncated {
        /// Bytes present.
        have: usize,
    },
    /// The frame header's reserved word is not zero.
    #[error("frame reserved word is {0:#x}")]
    FrameReserved(u32),
    /// The frame claims more bytes than follow it.
    #[error("frame claims {claimed} bytes, {available} follow")]
    FrameLength {
        /// The header's length.
        claimed: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// A report request's nonce is neither empty nor [`REPORT_NONCE_SIZE`] bytes.
    #[error("report nonce of {0} bytes, expected none or 32")]
    NonceLength(usize),
    /// More bytes follow the message than ring padding explains.
    #[error("{0} bytes follow the message, more than ring padding")]
    FrameTrailing(usize),
}

impl WireError {
    /// The result a host answers a command that failed to decode with: the one place that
    /// decides it (as OpenVMM does: no variant is an invalid command id, an unknown enum value
    /// is the error of its field).
    pub fn operation_error(&self) -> TdispGuestOperationError {
        match self {
            Self::MissingOneof(_) => TdispGuestOperationError::InvalidGuestCommandId,
            Self::UnknownEnumValue { field, .. } => match field {
                EnumField::GuestProtocolType => {
                    TdispGuestOperationError::InvalidGuestProtocolRequest
                }
                EnumField::ReportType => {
                    TdispGuestOperationError::InvalidGuestAttestationReportType
                }
                EnumField::UnbindReason => TdispGuestOperationError::InvalidGuestUnbindReason,
                EnumField::Result | EnumField::TdiState => {
                    TdispGuestOperationError::HostFailedToProcessCommand
                }
            },
            _ => TdispGuestOperationError::HostFailedToProcessCommand,
        }
    }
}

/// One trait call with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestCommand {
    /// `get_device_interface_info`: [`TdispGuestRequestInterface::tdisp_negotiate_protocol`].
    NegotiateProtocol(TdispGuestProtocolType),
    /// `bind`: [`TdispGuestRequestInterface::request_lock_device_resources`].
    LockDeviceResources,
    /// `start_tdi`: [`TdispGuestRequestInterface::request_start_tdi`].
    StartTdi,
    /// `get_tdi_report`: [`TdispGuestRequestInterface::request_attestation_report`].
    GetAttestationReport(TdispReportType),
    /// `get_tdi_report` with a nonce (this project's field 2):
    /// [`TdispGuestRequestInterface::request_attestation_report_with_nonce`].
    GetFreshAttestationReport {
        /// The report asked for.
        report_type: TdispReportType,
        /// The guest's nonce.
        nonce: [u8; REPORT_NONCE_SIZE],
    },
    /// `unbind`: [`TdispGuestRequestInterface::request_unbind`].
    Unbind(TdispGuestUnbindReason),
}

impl GuestCommand {
    /// The schema's name of the oneof variant.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NegotiateProtocol(_) => "get_device_interface_info",
            Self::LockDeviceResources => "bind",
            Self::StartTdi => "start_tdi",
            Self::GetAttestationReport(_) | Self::GetFreshAttestationReport { .. } => {
                "get_tdi_report"
            }
            Self::Unbind(_) => "unbind",
        }
    }

    /// Performs this call on `target`: the host's single entry into the trait.
    pub fn dispatch<T: TdispGuestRequestInterface + ?Sized>(
        self,
        target: &mut T,
    ) -> Result<GuestReply, TdispGuestOperationError> {
        Ok(match self {
            Self::NegotiateProtocol(protocol) => {
                GuestReply::NegotiateProtocol(target.tdisp_negotiate_protocol(protocol)?)
            }
            Self::LockDeviceResources => {
                target.request_lock_device_resources()?;
                GuestReply::LockDeviceResources
            }
            Self::StartTdi => {
                target.request_start_tdi()?;
                GuestReply::StartTdi
            }
            Self::GetAttestationReport(report_type) => GuestReply::GetAttestationReport {
                report_type,
                report: target.request_attestation_report(report_type)?,
            },
            Self::GetFreshAttestationReport { report_type, nonce } => {
                GuestReply::GetAttestationReport {
                    report_type,
                    report: target.request_attestation_report_with_nonce(report_type, nonce)?,
                }
            }
            Self::Unbind(reason) => {
                target.request_unbind(reason)?;
                GuestReply::Unbind
            }
        })
    }
}

/// The successful result of one trait call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestReply {
    /// `get_device_interface_info`: the negotiation result.
    NegotiateProtocol(TdispDeviceInterfaceInfo),
    /// `bind`: the lock succeeded.
    LockDeviceResources,
    /// `start_tdi`: the start succeeded.
    StartTdi,
    /// `get_tdi_report`: the report.
    GetAttestationReport {
        /// The type the host says it returned.
        report_type: TdispReportType,
        /// The report bytes.
        report: Vec<u8>,
    },
    /// `unbind`: the unbind succeeded.
    Unbind,
}

impl GuestReply {
    /// The schema's name of the oneof variant.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NegotiateProtocol(_) => "get_device_interface_info",
            Self::LockDeviceResources => "bind",
            Self::StartTdi => "start_tdi",
            Self::GetAttestationReport { .. } => "get_tdi_report",
            Self::Unbind => "unbind",
        }
    }
}

/// A `tdisp.GuestToHostCommand`: a command for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandPacket {
    /// The host's id of the device.
    pub device_id: u64,
    /// The call.
    pub command: GuestCommand,
}

impl CommandPacket {
    /// The protobuf message.
    pub fn to_proto(&self) -> proto::GuestToHostCommand {
        let command = match self.command {
            GuestCommand::NegotiateProtocol(protocol) => {
                Command::GetDeviceInterfaceInfo(proto::TdispCommandRequestGetDeviceInterfaceInfo {
                    guest_protocol_type: protocol_to_wire(protocol),
                })
            }
            GuestCommand::LockDeviceResources => Command::Bind(proto::TdispCommandRequestBind {}),
            GuestCommand::StartTdi => Command::StartTdi(proto::TdispCommandRequestStartTdi {}),
            GuestCommand::GetAttestationReport(report_type) => {
                Command::GetTdiReport(proto::TdispCommandRequestGetTdiReport {
                    report_type: report_type_to_wire(report_type),
                    nonce: Vec::new(),
                })
            }
            GuestCommand::GetFreshAttestationReport { report_type, nonce } => {
                Command::GetTdiReport(proto::TdispCommandRequestGetTdiReport {
                    report_type: report_type_to_wire(report_type),
                    nonce: nonce.to_vec(),
                })
            }
            GuestCommand::Unbind(reason) => Command::Unbind(proto::TdispCommandRequestUnbind {
                unbind_reason: i32::from(reason == TdispGuestUnbindReason::Graceful),
            }),
        };
        proto::GuestToHostCommand {
            device_id: self.device_id,
            command: Some(command),
        }
    }

    /// Validates a decoded protobuf message.
    pub fn from_proto(message: &proto::GuestToHostCommand) -> Result<Self, WireError> {
        let command = match message
            .command
            .as_ref()
            .ok_or(WireError::MissingOneof("GuestToHostCommand.command"))?
        {
            Command::GetDeviceInterfaceInfo(request) => {
                GuestCommand::NegotiateProtocol(protocol_from_wire(request.guest_protocol_type)?)
            }
            Command::Bind(_) => GuestCommand::LockDeviceResources,
            Command::GetTdiReport(request) => {
                let report_type = report_type_from_wire(request.report_type)?;
                match request.nonce.as_slice() {
                    [] => GuestCommand::GetAttestationReport(report_type),
                    nonce => GuestCommand::GetFreshAttestationReport {
                        report_type,
                        nonce: nonce
                            .try_into()
                            .map_err(|_| WireError::NonceLength(nonce.len()))?,
                    },
                }
            }
            Command::StartTdi(_) => GuestCommand::StartTdi,
            Command::Unbind(request) => GuestCommand::Unbind(match request.unbind_reason {
                0 => TdispGuestUnbindReason::Unknown,
                1 => TdispGuestUnbindReason::Graceful,
                value => {
                    return Err(WireError::UnknownEnumValue {
                        field: EnumField::UnbindReason,
                        value,
                    });
                }
            }),
        };
        Ok(Self {
            device_id: message.device_id,
            command,
        })
    }

    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Decodes and validates one message occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_size(bytes)?;
        Self::from_proto(&proto::GuestToHostCommand::decode(bytes)?)
    }
}

/// A `tdisp.GuestToHostResponse`: the answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponsePacket {
    /// The TDI state before the command (see the module docs for `Error`).
    pub state_before: TdispTdiState,
    /// The TDI state after the command.
    pub state_after: TdispTdiState,
    /// The result; an error is carried as the `result` code with no payload.
    pub result: Result<GuestReply, TdispGuestOperationError>,
}

impl ResponsePacket {
    /// The protobuf message; refuses `Err(Success)` and an oversize report.
    pub fn to_proto(&self) -> Result<proto::GuestToHostResponse, WireError> {
        let (result, response) = match &self.result {
            Err(TdispGuestOperationError::Success) => return Err(WireError::SuccessAsError),
            Err(error) => (error_to_wire(*error), None),
            Ok(reply) => {
                let response = match reply {
                    GuestReply::NegotiateProtocol(info) => Response::GetDeviceInterfaceInfo(
                        proto::TdispCommandResponseGetDeviceInterfaceInfo {
                            interface_info: Some(proto::TdispDeviceInterfaceInfo {
                                guest_protocol_type: protocol_to_wire(info.guest_protocol_type),
                                supported_features: info.supported_features,
                                tdisp_device_id: info.tdisp_device_id,
                            }),
                        },
                    ),
                    GuestReply::LockDeviceResources => {
                        Response::Bind(proto::TdispCommandResponseBind {})
                    }
                    GuestReply::StartTdi => {
                        Response::StartTdi(proto::TdispCommandResponseStartTdi {})
                    }
                    GuestReply::GetAttestationReport {
                        report_type,
                        report,
                    } => {
                        check_report(report)?;
                        Response::GetTdiReport(proto::TdispCommandResponseGetTdiReport {
                            report_type: report_type_to_wire(*report_type),
                            report_buffer: report.clone(),
                        })
                    }
                    GuestReply::Unbind => Response::Unbind(proto::TdispCommandResponseUnbind {}),
                };
                (
                    error_to_wire(TdispGuestOperationError::Success),
                    Some(response),
                )
            }
        };
        Ok(proto::GuestToHostResponse {
            result,
            tdi_state_before: state_to_wire(self.state_before) as i32,
            tdi_state_after: state_to_wire(self.state_after) as i32,
            response,
        })
    }

    /// Validates a decoded protobuf message.
    pub fn from_proto(message: proto::GuestToHostResponse) -> Result<Self, WireError> {
        let status = error_from_wire(message.result)?;
        let state_before = state_from_wire(message.tdi_state_before)?;
        let state_after = state_from_wire(message.tdi_state_after)?;
        let result = if status == TdispGuestOperationError::Success {
            Ok(
                match message
                    .response
                    .ok_or(WireError::MissingOneof("GuestToHostResponse.response"))?
                {
                    Response::GetDeviceInterfaceInfo(response) => {
                        let info = response
                            .interface_info
                            .ok_or(WireError::MissingField("interface_info"))?;
                        GuestReply::NegotiateProtocol(TdispDeviceInterfaceInfo {
                            guest_protocol_type: protocol_from_wire(info.guest_protocol_type)?,
                            supported_features: info.supported_features,
                            tdisp_device_id: info.tdisp_device_id,
                        })
                    }
                    Response::Bind(_) => GuestReply::LockDeviceResources,
                    Response::GetTdiReport(response) => {
                        let report_type = report_type_from_wire(response.report_type)?;
                        check_report(&response.report_buffer)?;
                        GuestReply::GetAttestationReport {
                            report_type,
                            report: response.report_buffer,
                        }
                    }
                    Response::StartTdi(_) => GuestReply::StartTdi,
                    Response::Unbind(_) => GuestReply::Unbind,
                },
            )
        } else {
            Err(status)
        };
        Ok(Self {
            state_before,
            state_after,
            result,
        })
    }

    /// The encoded message.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(self.to_proto()?.encode_to_vec())
    }

    /// Decodes and validates one message occupying all of `bytes`.
    ///
    /// The response comes from the host, which the guest does not trust: every field is
    /// checked and nothing here can panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_size(bytes)?;
        Self::from_proto(proto::GuestToHostResponse::decode(bytes)?)
    }

    /// Whether a successful response answers `command` (same variant, same report type).
    /// Error responses answer any command.
    pub fn check_answers(&self, command: &GuestCommand) -> Result<(), WireError> {
        let Ok(reply) = &self.result else {
            return Ok(());
        };
        match (command, reply) {
            (
                GuestCommand::GetAttestationReport(sent)
                | GuestCommand::GetFreshAttestationReport {
                    report_type: sent, ..
                },
                GuestReply::GetAttestationReport {
                    report_type: got, ..
                },
            ) if sent != got => Err(WireError::ReportTypeMismatch {
                sent: *sent,
                got: *got,
            }),
            _ if command.name() == reply.name() => Ok(()),
            _ => Err(WireError::Mismatch {
                sent: command.name(),
                got: reply.name(),
            }),
        }
    }
}

fn check_size(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(WireError::OversizeMessage {
            len: bytes.len(),
            max: MAX_MESSAGE_SIZE,
        });
    }
    Ok(())
}

fn check_report(report: &[u8]) -> Result<(), WireError> {
    if report.is_empty() {
        return Err(WireError::EmptyReport);
    }
    if report.len() > MAX_REPORT_BUFFER {
        return Err(WireError::OversizeReport {
            len: report.len(),
            max: MAX_REPORT_BUFFER,
        });
    }
    Ok(())
}

/// The wire value of a state: the host's internal `Error` is sent as `UNINITIALIZED`
/// ("indeterminate"), see the module docs.
pub fn state_to_wire(state: TdispTdiState) -> proto::TdispTdiState {
    match state {
        TdispTdiState::Uninitialized | TdispTdiState::Error => proto::TdispTdiState::Uninitialized,
        TdispTdiState::Unlocked => proto::TdispTdiState::Unlocked,
        TdispTdiState::Locked => proto::TdispTdiState::Locked,
        TdispTdiState::Run => proto::TdispTdiState::Run,
    }
}

/// The state a wire value names (never `Error`; see [`state_seen_by_guest`]).
pub fn state_from_wire(value: i32) -> Result<TdispTdiState, WireError> {
    match proto::TdispTdiState::try_from(value) {
        Ok(proto::TdispTdiState::Uninitialized) => Ok(TdispTdiState::Uninitialized),
        Ok(proto::TdispTdiState::Unlocked) => Ok(TdispTdiState::Unlocked),
        Ok(proto::TdispTdiState::Locked) => Ok(TdispTdiState::Locked),
        Ok(proto::TdispTdiState::Run) => Ok(TdispTdiState::Run),
        Err(_) => Err(WireError::UnknownEnumValue {
            field: EnumField::TdiState,
            value,
        }),
    }
}

/// How a guest reads a decoded state: once a protocol is negotiated, `Uninitialized` can only
/// be the host's "indeterminate", which is [`TdispTdiState::Error`].
pub fn state_seen_by_guest(state: TdispTdiState, negotiated: bool) -> TdispTdiState {
    match state {
        TdispTdiState::Uninitialized if negotiated => TdispTdiState::Error,
        other => other,
    }
}

fn protocol_to_wire(protocol: TdispGuestProtocolType) -> i32 {
    // The crate's codes are the schema's (see `interface`).
    u32::from(protocol).try_into().unwrap_or(i32::MAX)
}

fn protocol_from_wire(value: i32) -> Result<TdispGuestProtocolType, WireError> {
    u32::try_from(value)
        .ok()
        .and_then(|code| TdispGuestProtocolType::try_from(code).ok())
        .ok_or(WireError::UnknownEnumValue {
            field: EnumField::GuestProtocolType,
            value,
        })
}

fn report_type_to_wire(report_type: TdispReportType) -> i32 {
    u32::from(report_type).try_into().unwrap_or(i32::MAX)
}

fn report_type_from_wire(value: i32) -> Result<TdispReportType, WireError> {
    u32::try_from(value)
        .ok()
        .and_then(|code| TdispReportType::try_from(code).ok())
        .ok_or(WireError::UnknownEnumValue {
            field: EnumField::ReportType,
            value,
        })
}

fn error_to_wire(error: TdispGuestOperationError) -> i32 {
    error.code().try_into().unwrap_or(i32::MAX)
}

fn error_from_wire(value: i32) -> Result<TdispGuestOperationError, WireError> {
    u32::try_from(value)
        .ok()
        .and_then(|code| TdispGuestOperationError::try_from(code).ok())
        .ok_or(WireError::UnknownEnumValue {
            field: EnumField::Result,
            value,
        })
}

#[cfg(test)]
mod tests;
