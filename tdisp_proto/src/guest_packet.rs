//! The versioned guest<->host packet format that carries each [`TdispGuestRequestInterface`]
//! call and its reply.
//!
//! A command is a 24-byte [`GuestCommandHeader`] plus a payload of at most
//! [`MAX_COMMAND_PAYLOAD`] bytes; a reply is a 32-byte [`GuestReplyHeader`] (status, TDI state
//! before and after the command) plus at most [`MAX_REPLY_PAYLOAD`] bytes. All fields are
//! little-endian. [`GuestCommandPacket`] and [`GuestReplyPacket`] are the one codec both the
//! host dispatcher and the guest client use.
//!
//! | command | id | command payload | success reply payload |
//! |---|---|---|---|
//! | negotiate protocol | 1 | protocol type u32 | protocol type u32, reserved u32, supported features u64, device id u64 |
//! | lock device resources | 2 | - | - |
//! | start TDI | 3 | - | - |
//! | get attestation report | 4 | report type u32 | report bytes |
//! | unbind | 5 | unbind reason u32 | - |
//!
//! Error replies carry the [`TdispGuestOperationError`] code as status and no payload.

use crate::interface::TdispDeviceInterfaceInfo;
use crate::interface::TdispGuestOperationError;
use crate::interface::TdispGuestProtocolType;
use crate::interface::TdispGuestRequestInterface;
use crate::interface::TdispGuestUnbindReason;
use crate::interface::TdispReportType;
use crate::interface::TdispTdiState;
use open_enum::open_enum;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// The packet format version this crate speaks.
pub const GUEST_PROTOCOL_VERSION: u32 = 1;
/// Size of [`GuestCommandHeader`].
pub const COMMAND_HEADER_SIZE: usize = 24;
/// Size of [`GuestReplyHeader`].
pub const REPLY_HEADER_SIZE: usize = 32;
/// Largest command payload accepted (commands carry at most one u32 today).
pub const MAX_COMMAND_PAYLOAD: usize = 64;
/// Largest reply payload accepted: room for a certificate chain or a full interface report.
pub const MAX_REPLY_PAYLOAD: usize = 64 * 1024;
/// Size of the negotiate-protocol reply payload.
pub const DEVICE_INTERFACE_INFO_SIZE: usize = 24;

/// Command ids on the wire, one per trait method.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GuestCommandId {
    /// [`TdispGuestRequestInterface::tdisp_negotiate_protocol`].
    NEGOTIATE_PROTOCOL = 1,
    /// [`TdispGuestRequestInterface::request_lock_device_resources`].
    LOCK_DEVICE_RESOURCES = 2,
    /// [`TdispGuestRequestInterface::request_start_tdi`].
    START_TDI = 3,
    /// [`TdispGuestRequestInterface::request_attestation_report`].
    GET_ATTESTATION_REPORT = 4,
    /// [`TdispGuestRequestInterface::request_unbind`].
    UNBIND = 5,
}

/// The 24-byte command header as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GuestCommandHeader {
    /// [`GUEST_PROTOCOL_VERSION`].
    pub version: U32,
    /// [`GuestCommandId`] value.
    pub command_id: U32,
    /// The host's TDISP device id the command is for.
    pub device_id: U64,
    /// Bytes of payload after the header.
    pub payload_length: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<GuestCommandHeader>() == COMMAND_HEADER_SIZE);

impl GuestCommandHeader {
    /// The device id and command id of a command packet, read without validating anything
    /// else, so that a host can address the error reply to a command that failed to decode.
    pub fn peek(bytes: &[u8]) -> Option<(u64, GuestCommandId)> {
        let (header, _) = Self::read_from_prefix(bytes).ok()?;
        Some((
            header.device_id.get(),
            GuestCommandId(header.command_id.get()),
        ))
    }
}

/// The 32-byte reply header as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GuestReplyHeader {
    /// [`GUEST_PROTOCOL_VERSION`].
    pub version: U32,
    /// The command id this reply answers.
    pub command_id: U32,
    /// The device id of the command.
    pub device_id: U64,
    /// [`TdispGuestOperationError`] code; 1 (`Success`) for success.
    pub status: U32,
    /// [`TdispTdiState`] code before the command.
    pub tdi_state_before: u8,
    /// [`TdispTdiState`] code after the command.
    pub tdi_state_after: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// Bytes of payload after the header.
    pub payload_length: U32,
    /// Reserved, zero.
    pub reserved2: U32,
}
const _: () = assert!(size_of::<GuestReplyHeader>() == REPLY_HEADER_SIZE);

/// The negotiate-protocol reply payload as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DeviceInterfaceInfoWire {
    /// [`TdispGuestProtocolType`] code.
    pub guest_protocol_type: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// Supported feature bits.
    pub supported_features: U64,
    /// The host's TDISP device id.
    pub tdisp_device_id: U64,
}
const _: () = assert!(size_of::<DeviceInterfaceInfoWire>() == DEVICE_INTERFACE_INFO_SIZE);

/// Why a guest packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GuestPacketError {
    /// The buffer is shorter than the header.
    #[error("packet truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Header size.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The packet version is not [`GUEST_PROTOCOL_VERSION`].
    #[error("unsupported guest packet version {0}")]
    UnsupportedVersion(u32),
    /// A reserved field is not zero.
    #[error("reserved field {0} not zero")]
    ReservedBits(&'static str),
    /// The payload length field disagrees with the bytes after the header.
    #[error("payload length {claimed} but {actual} bytes follow the header")]
    LengthMismatch {
        /// The payload length field.
        claimed: u64,
        /// Bytes present.
        actual: usize,
    },
    /// The payload exceeds the cap for its direction.
    #[error("payload of {len} bytes exceeds the cap of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The command id is not known.
    #[error("unknown command id {0}")]
    UnknownCommand(u32),
    /// The payload size is wrong for the command.
    #[error("command {command:?} needs a {expected}-byte payload, got {actual}")]
    BadPayloadSize {
        /// The command.
        command: GuestCommandId,
        /// Required size.
        expected: usize,
        /// Size present.
        actual: usize,
    },
    /// The requested protocol type is not known.
    #[error("unknown guest protocol type {0}")]
    UnknownProtocolType(u32),
    /// The report type is not known.
    #[error("unknown report type {0}")]
    UnknownReportType(u32),
    /// The unbind reason is not known.
    #[error("unknown unbind reason {0}")]
    UnknownUnbindReason(u32),
    /// A TDI state code is not known.
    #[error("unknown TDI state {0}")]
    UnknownState(u8),
    /// The reply status is not a known [`TdispGuestOperationError`] code.
    #[error("unknown reply status {0}")]
    UnknownStatus(u32),
    /// An error reply carries a payload.
    #[error("error reply with a {0}-byte payload")]
    ErrorWithPayload(usize),
    /// A reply was built with `Err(Success)` or with a result of another command.
    #[error("reply result does not match command {0:?}")]
    InconsistentReply(GuestCommandId),
    /// A reply answers a different command or device than the one sent.
    #[error(
        "reply for command {got_command:?} device {got_device} does not answer command {sent_command:?} device {sent_device}"
    )]
    Mismatch {
        /// Command sent.
        sent_command: GuestCommandId,
        /// Device sent to.
        sent_device: u64,
        /// Command in the reply.
        got_command: GuestCommandId,
        /// Device in the reply.
        got_device: u64,
    },
}

impl GuestPacketError {
    /// The operation error a host reports to the guest for a command it could not decode: the
    /// one place that decides how malformed commands are answered.
    pub fn operation_error(&self) -> TdispGuestOperationError {
        match self {
            Self::UnknownCommand(_) => TdispGuestOperationError::InvalidGuestCommandId,
            Self::UnknownProtocolType(_) => TdispGuestOperationError::InvalidGuestProtocolRequest,
            Self::UnknownReportType(_) => {
                TdispGuestOperationError::InvalidGuestAttestationReportType
            }
            Self::UnknownUnbindReason(_) => TdispGuestOperationError::InvalidGuestUnbindReason,
            _ => TdispGuestOperationError::HostFailedToProcessCommand,
        }
    }
}

/// One trait call with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestCommand {
    /// [`TdispGuestRequestInterface::tdisp_negotiate_protocol`].
    NegotiateProtocol(TdispGuestProtocolType),
    /// [`TdispGuestRequestInterface::request_lock_device_resources`].
    LockDeviceResources,
    /// [`TdispGuestRequestInterface::request_start_tdi`].
    StartTdi,
    /// [`TdispGuestRequestInterface::request_attestation_report`].
    GetAttestationReport(TdispReportType),
    /// [`TdispGuestRequestInterface::request_unbind`].
    Unbind(TdispGuestUnbindReason),
}

impl GuestCommand {
    /// The wire id of this command.
    pub fn id(&self) -> GuestCommandId {
        match self {
            Self::NegotiateProtocol(_) => GuestCommandId::NEGOTIATE_PROTOCOL,
            Self::LockDeviceResources => GuestCommandId::LOCK_DEVICE_RESOURCES,
            Self::StartTdi => GuestCommandId::START_TDI,
            Self::GetAttestationReport(_) => GuestCommandId::GET_ATTESTATION_REPORT,
            Self::Unbind(_) => GuestCommandId::UNBIND,
        }
    }

    /// Performs this call on `target`: the host dispatcher's single entry into the trait.
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
            Self::GetAttestationReport(report_type) => {
                GuestReply::GetAttestationReport(target.request_attestation_report(report_type)?)
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
    /// Result of negotiation.
    NegotiateProtocol(TdispDeviceInterfaceInfo),
    /// Lock succeeded.
    LockDeviceResources,
    /// Start succeeded.
    StartTdi,
    /// The report bytes.
    GetAttestationReport(Vec<u8>),
    /// Unbind succeeded.
    Unbind,
}

impl GuestReply {
    /// The command id this reply answers.
    pub fn id(&self) -> GuestCommandId {
        match self {
            Self::NegotiateProtocol(_) => GuestCommandId::NEGOTIATE_PROTOCOL,
            Self::LockDeviceResources => GuestCommandId::LOCK_DEVICE_RESOURCES,
            Self::StartTdi => GuestCommandId::START_TDI,
            Self::GetAttestationReport(_) => GuestCommandId::GET_ATTESTATION_REPORT,
            Self::Unbind => GuestCommandId::UNBIND,
        }
    }
}

/// A command for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestCommandPacket {
    /// The host's TDISP device id.
    pub device_id: u64,
    /// The call.
    pub command: GuestCommand,
}

impl GuestCommandPacket {
    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let argument: Option<u32> = match self.command {
            GuestCommand::NegotiateProtocol(protocol) => Some(protocol.into()),
            GuestCommand::LockDeviceResources | GuestCommand::StartTdi => None,
            GuestCommand::GetAttestationReport(report_type) => Some(report_type.into()),
            GuestCommand::Unbind(reason) => Some(reason.into()),
        };
        let payload_length: u32 = if argument.is_some() { 4 } else { 0 };
        let header = GuestCommandHeader {
            version: GUEST_PROTOCOL_VERSION.into(),
            command_id: self.command.id().0.into(),
            device_id: self.device_id.into(),
            payload_length: payload_length.into(),
            reserved: 0.into(),
        };
        out.extend_from_slice(header.as_bytes());
        if let Some(argument) = argument {
            out.extend_from_slice(&argument.to_le_bytes());
        }
    }

    /// The encoded packet as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMAND_HEADER_SIZE + 4);
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one command packet occupying all of `bytes`.
    ///
    /// A host answering a command that fails to decode can still read the header with
    /// [`GuestCommandHeader::read_from_prefix`] to address its error reply, and take the
    /// status from [`GuestPacketError::operation_error`].
    pub fn decode(bytes: &[u8]) -> Result<Self, GuestPacketError> {
        let (header, payload) = GuestCommandHeader::read_from_prefix(bytes).map_err(|_| {
            GuestPacketError::Truncated {
                needed: COMMAND_HEADER_SIZE,
                have: bytes.len(),
            }
        })?;
        check_version(header.version.get())?;
        if header.reserved.get() != 0 {
            return Err(GuestPacketError::ReservedBits("command reserved"));
        }
        check_payload_length(
            header.payload_length.get(),
            payload.len(),
            MAX_COMMAND_PAYLOAD,
        )?;
        let id = GuestCommandId(header.command_id.get());
        let command = match id {
            GuestCommandId::NEGOTIATE_PROTOCOL => {
                let code = u32_payload(id, payload)?;
                GuestCommand::NegotiateProtocol(
                    TdispGuestProtocolType::try_from(code)
                        .map_err(|_| GuestPacketError::UnknownProtocolType(code))?,
                )
            }
            GuestCommandId::LOCK_DEVICE_RESOURCES => {
                empty_payload(id, payload)?;
                GuestCommand::LockDeviceResources
            }
            GuestCommandId::START_TDI => {
                empty_payload(id, payload)?;
                GuestCommand::StartTdi
            }
            GuestCommandId::GET_ATTESTATION_REPORT => {
                let code = u32_payload(id, payload)?;
                GuestCommand::GetAttestationReport(
                    TdispReportType::try_from(code)
                        .map_err(|_| GuestPacketError::UnknownReportType(code))?,
                )
            }
            GuestCommandId::UNBIND => {
                let code = u32_payload(id, payload)?;
                GuestCommand::Unbind(
                    TdispGuestUnbindReason::try_from(code)
                        .map_err(|_| GuestPacketError::UnknownUnbindReason(code))?,
                )
            }
            other => return Err(GuestPacketError::UnknownCommand(other.0)),
        };
        Ok(Self {
            device_id: header.device_id.get(),
            command,
        })
    }
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuestReplyPacket {
    /// The device id of the command.
    pub device_id: u64,
    /// The command answered.
    pub command_id: GuestCommandId,
    /// TDI state before the command ran.
    pub state_before: TdispTdiState,
    /// TDI state after the command ran.
    pub state_after: TdispTdiState,
    /// The call's result.
    pub result: Result<GuestReply, TdispGuestOperationError>,
}

impl GuestReplyPacket {
    /// A reply answering `command` with `result`, taking device and command id from it.
    pub fn answer(
        command: &GuestCommandPacket,
        state_before: TdispTdiState,
        state_after: TdispTdiState,
        result: Result<GuestReply, TdispGuestOperationError>,
    ) -> Self {
        Self {
            device_id: command.device_id,
            command_id: command.command.id(),
            state_before,
            state_after,
            result,
        }
    }

    /// Checks that this reply answers `sent` (same command and device). A guest must check
    /// this before trusting a reply.
    pub fn check_answers(&self, sent: &GuestCommandPacket) -> Result<(), GuestPacketError> {
        if self.command_id != sent.command.id() || self.device_id != sent.device_id {
            return Err(GuestPacketError::Mismatch {
                sent_command: sent.command.id(),
                sent_device: sent.device_id,
                got_command: self.command_id,
                got_device: self.device_id,
            });
        }
        Ok(())
    }

    /// Appends the encoded packet to `out`.
    ///
    /// Fails without writing if the result belongs to another command, is `Err(Success)`, or
    /// carries more than [`MAX_REPLY_PAYLOAD`] bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), GuestPacketError> {
        let mut info = [0u8; DEVICE_INTERFACE_INFO_SIZE];
        let (status, payload): (u32, &[u8]) = match &self.result {
            Ok(reply) if reply.id() != self.command_id => {
                return Err(GuestPacketError::InconsistentReply(self.command_id));
            }
            Err(TdispGuestOperationError::Success) => {
                return Err(GuestPacketError::InconsistentReply(self.command_id));
            }
            Err(error) => (error.code(), &[]),
            Ok(reply) => {
                let payload: &[u8] = match reply {
                    GuestReply::NegotiateProtocol(negotiated) => {
                        let wire = DeviceInterfaceInfoWire {
                            guest_protocol_type: u32::from(negotiated.guest_protocol_type).into(),
                            reserved: 0.into(),
                            supported_features: negotiated.supported_features.into(),
                            tdisp_device_id: negotiated.tdisp_device_id.into(),
                        };
                        info.copy_from_slice(wire.as_bytes());
                        &info
                    }
                    GuestReply::GetAttestationReport(report) => report,
                    GuestReply::LockDeviceResources | GuestReply::StartTdi | GuestReply::Unbind => {
                        &[]
                    }
                };
                (TdispGuestOperationError::Success.code(), payload)
            }
        };
        if payload.len() > MAX_REPLY_PAYLOAD {
            return Err(GuestPacketError::PayloadTooLarge {
                len: payload.len() as u64,
                max: MAX_REPLY_PAYLOAD,
            });
        }
        let header = GuestReplyHeader {
            version: GUEST_PROTOCOL_VERSION.into(),
            command_id: self.command_id.0.into(),
            device_id: self.device_id.into(),
            status: status.into(),
            tdi_state_before: state_code(self.state_before),
            tdi_state_after: state_code(self.state_after),
            reserved: [0; 2],
            // Bounded by MAX_REPLY_PAYLOAD above.
            payload_length: u32::try_from(payload.len()).unwrap_or(u32::MAX).into(),
            reserved2: 0.into(),
        };
        out.reserve(REPLY_HEADER_SIZE + payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        Ok(())
    }

    /// The encoded packet as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GuestPacketError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one reply packet occupying all of `bytes`.
    ///
    /// The reply comes from the host, which the guest does not trust: every field is checked
    /// and nothing here can panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, GuestPacketError> {
        let (header, payload) =
            GuestReplyHeader::read_from_prefix(bytes).map_err(|_| GuestPacketError::Truncated {
                needed: REPLY_HEADER_SIZE,
                have: bytes.len(),
            })?;
        check_version(header.version.get())?;
        if header.reserved != [0; 2] || header.reserved2.get() != 0 {
            return Err(GuestPacketError::ReservedBits("reply reserved"));
        }
        check_payload_length(
            header.payload_length.get(),
            payload.len(),
            MAX_REPLY_PAYLOAD,
        )?;
        let command_id = GuestCommandId(header.command_id.get());
        let state_before = decode_state(header.tdi_state_before)?;
        let state_after = decode_state(header.tdi_state_after)?;
        let status = header.status.get();
        let status_error = TdispGuestOperationError::try_from(status)
            .map_err(|_| GuestPacketError::UnknownStatus(status))?;
        let result = if status_error == TdispGuestOperationError::Success {
            Ok(match command_id {
                GuestCommandId::NEGOTIATE_PROTOCOL => {
                    let wire = DeviceInterfaceInfoWire::read_from_bytes(payload).map_err(|_| {
                        GuestPacketError::BadPayloadSize {
                            command: command_id,
                            expected: DEVICE_INTERFACE_INFO_SIZE,
                            actual: payload.len(),
                        }
                    })?;
                    if wire.reserved.get() != 0 {
                        return Err(GuestPacketError::ReservedBits("device interface info"));
                    }
                    let code = wire.guest_protocol_type.get();
                    GuestReply::NegotiateProtocol(TdispDeviceInterfaceInfo {
                        guest_protocol_type: TdispGuestProtocolType::try_from(code)
                            .map_err(|_| GuestPacketError::UnknownProtocolType(code))?,
                        supported_features: wire.supported_features.get(),
                        tdisp_device_id: wire.tdisp_device_id.get(),
                    })
                }
                GuestCommandId::LOCK_DEVICE_RESOURCES => {
                    empty_payload(command_id, payload)?;
                    GuestReply::LockDeviceResources
                }
                GuestCommandId::START_TDI => {
                    empty_payload(command_id, payload)?;
                    GuestReply::StartTdi
                }
                GuestCommandId::GET_ATTESTATION_REPORT => {
                    GuestReply::GetAttestationReport(payload.to_vec())
                }
                GuestCommandId::UNBIND => {
                    empty_payload(command_id, payload)?;
                    GuestReply::Unbind
                }
                other => return Err(GuestPacketError::UnknownCommand(other.0)),
            })
        } else {
            if !payload.is_empty() {
                return Err(GuestPacketError::ErrorWithPayload(payload.len()));
            }
            Err(status_error)
        };
        Ok(Self {
            device_id: header.device_id.get(),
            command_id,
            state_before,
            state_after,
            result,
        })
    }
}

fn check_version(version: u32) -> Result<(), GuestPacketError> {
    if version == GUEST_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(GuestPacketError::UnsupportedVersion(version))
    }
}

fn check_payload_length(claimed: u32, actual: usize, max: usize) -> Result<(), GuestPacketError> {
    if u64::from(claimed) > max as u64 {
        return Err(GuestPacketError::PayloadTooLarge {
            len: claimed.into(),
            max,
        });
    }
    if u64::from(claimed) != actual as u64 {
        return Err(GuestPacketError::LengthMismatch {
            claimed: claimed.into(),
            actual,
        });
    }
    Ok(())
}

fn u32_payload(command: GuestCommandId, payload: &[u8]) -> Result<u32, GuestPacketError> {
    U32::read_from_bytes(payload)
        .map(U32::get)
        .map_err(|_| GuestPacketError::BadPayloadSize {
            command,
            expected: 4,
            actual: payload.len(),
        })
}

fn empty_payload(command: GuestCommandId, payload: &[u8]) -> Result<(), GuestPacketError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(GuestPacketError::BadPayloadSize {
            command,
            expected: 0,
            actual: payload.len(),
        })
    }
}

fn state_code(state: TdispTdiState) -> u8 {
    // State codes are 0..=4, see `TdispTdiState`.
    u8::try_from(u32::from(state)).unwrap_or(u8::MAX)
}

fn decode_state(code: u8) -> Result<TdispTdiState, GuestPacketError> {
    TdispTdiState::try_from(u32::from(code)).map_err(|_| GuestPacketError::UnknownState(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::reference::ReferenceModel;

    fn lock_command() -> GuestCommandPacket {
        GuestCommandPacket {
            device_id: 3,
            command: GuestCommand::LockDeviceResources,
        }
    }

    fn with_u32(mut wire: Vec<u8>, offset: usize, value: u32) -> Vec<u8> {
        wire[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        wire
    }

    #[test]
    fn unknown_codes_map_to_their_operation_errors() {
        let negotiate = GuestCommandPacket {
            device_id: 3,
            command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        }
        .to_bytes();
        let cases = [
            (
                with_u32(lock_command().to_bytes(), 4, 99),
                TdispGuestOperationError::InvalidGuestCommandId,
            ),
            (
                with_u32(negotiate.clone(), 24, 7),
                TdispGuestOperationError::InvalidGuestProtocolRequest,
            ),
            (
                with_u32(with_u32(negotiate.clone(), 4, 4), 24, 6),
                TdispGuestOperationError::InvalidGuestAttestationReportType,
            ),
            (
                with_u32(with_u32(negotiate.clone(), 4, 5), 24, 2),
                TdispGuestOperationError::InvalidGuestUnbindReason,
            ),
            (
                with_u32(negotiate, 0, 2),
                TdispGuestOperationError::HostFailedToProcessCommand,
            ),
        ];
        for (wire, expected) in cases {
            let error = GuestCommandPacket::decode(&wire).unwrap_err();
            assert_eq!(error.operation_error(), expected, "{error}");
        }
    }

    #[test]
    fn undecodable_command_still_gets_an_addressed_error_reply() {
        let wire = with_u32(lock_command().to_bytes(), 4, 42);
        let error = GuestCommandPacket::decode(&wire).unwrap_err();
        let (device_id, command_id) = GuestCommandHeader::peek(&wire).unwrap();
        let reply = GuestReplyPacket {
            device_id,
            command_id,
            state_before: TdispTdiState::Unlocked,
            state_after: TdispTdiState::Unlocked,
            result: Err(error.operation_error()),
        };
        let back = GuestReplyPacket::decode(&reply.to_bytes().unwrap()).unwrap();
        assert_eq!(back.device_id, 3);
        assert_eq!(back.command_id, GuestCommandId(42));
        assert_eq!(
            back.result,
            Err(TdispGuestOperationError::InvalidGuestCommandId)
        );
        assert_eq!(GuestCommandHeader::peek(&wire[..23]), None);
    }

    #[test]
    fn command_payload_length_is_capped_before_it_is_compared() {
        let wire = with_u32(lock_command().to_bytes(), 16, u32::MAX);
        assert!(matches!(
            GuestCommandPacket::decode(&wire),
            Err(GuestPacketError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn command_reserved_field_is_rejected() {
        let wire = with_u32(lock_command().to_bytes(), 20, 1);
        assert!(matches!(
            GuestCommandPacket::decode(&wire),
            Err(GuestPacketError::ReservedBits(_))
        ));
    }

    #[test]
    fn error_reply_with_payload_is_rejected() {
        let reply = GuestReplyPacket::answer(
            &lock_command(),
            TdispTdiState::Locked,
            TdispTdiState::Unlocked,
            Err(TdispGuestOperationError::InvalidDeviceState),
        );
        let mut wire = with_u32(reply.to_bytes().unwrap(), 24, 1);
        wire.push(0);
        assert_eq!(
            GuestReplyPacket::decode(&wire),
            Err(GuestPacketError::ErrorWithPayload(1))
        );
    }

    #[test]
    fn unknown_status_and_state_codes_are_rejected() {
        let reply = GuestReplyPacket::answer(
            &lock_command(),
            TdispTdiState::Unlocked,
            TdispTdiState::Locked,
            Ok(GuestReply::LockDeviceResources),
        );
        let wire = reply.to_bytes().unwrap();
        assert_eq!(
            GuestReplyPacket::decode(&with_u32(wire.clone(), 16, 10)),
            Err(GuestPacketError::UnknownStatus(10))
        );
        let mut state = wire;
        state[20] = 5;
        assert_eq!(
            GuestReplyPacket::decode(&state),
            Err(GuestPacketError::UnknownState(5))
        );
    }

    #[test]
    fn inconsistent_replies_are_not_encoded() {
        let command = lock_command();
        let wrong_result = GuestReplyPacket::answer(
            &command,
            TdispTdiState::Unlocked,
            TdispTdiState::Locked,
            Ok(GuestReply::StartTdi),
        );
        let success_as_error = GuestReplyPacket::answer(
            &command,
            TdispTdiState::Unlocked,
            TdispTdiState::Unlocked,
            Err(TdispGuestOperationError::Success),
        );
        for reply in [wrong_result, success_as_error] {
            let mut out = Vec::new();
            assert!(reply.encode(&mut out).is_err());
            assert!(out.is_empty());
        }
    }

    #[test]
    fn oversized_report_reply_is_refused() {
        let command = GuestCommandPacket {
            device_id: 1,
            command: GuestCommand::GetAttestationReport(TdispReportType::CertificateChain),
        };
        let reply = GuestReplyPacket::answer(
            &command,
            TdispTdiState::Locked,
            TdispTdiState::Locked,
            Ok(GuestReply::GetAttestationReport(vec![
                0;
                MAX_REPLY_PAYLOAD + 1
            ])),
        );
        assert!(matches!(
            reply.to_bytes(),
            Err(GuestPacketError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn reply_for_another_command_or_device_is_detected() {
        let command = lock_command();
        let mut reply = GuestReplyPacket::answer(
            &command,
            TdispTdiState::Unlocked,
            TdispTdiState::Locked,
            Ok(GuestReply::LockDeviceResources),
        );
        assert!(reply.check_answers(&command).is_ok());
        reply.device_id = 4;
        assert!(matches!(
            reply.check_answers(&command),
            Err(GuestPacketError::Mismatch { .. })
        ));
    }

    #[test]
    fn dispatch_runs_the_trait_method_of_each_command() {
        let mut model = ReferenceModel::default();
        let negotiated = GuestCommand::NegotiateProtocol(TdispGuestProtocolType::IntelTdxConnectV1)
            .dispatch(&mut model)
            .unwrap();
        assert!(matches!(negotiated, GuestReply::NegotiateProtocol(info)
            if info.guest_protocol_type == TdispGuestProtocolType::IntelTdxConnectV1));
        assert_eq!(
            GuestCommand::LockDeviceResources.dispatch(&mut model),
            Ok(GuestReply::LockDeviceResources)
        );
        assert!(matches!(
            GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport)
                .dispatch(&mut model),
            Ok(GuestReply::GetAttestationReport(_))
        ));
        assert_eq!(
            GuestCommand::StartTdi.dispatch(&mut model),
            Ok(GuestReply::StartTdi)
        );
        assert_eq!(
            GuestCommand::Unbind(TdispGuestUnbindReason::Graceful).dispatch(&mut model),
            Ok(GuestReply::Unbind)
        );
        assert_eq!(model.state, TdispTdiState::Unlocked);
        assert_eq!(
            GuestCommand::StartTdi.dispatch(&mut model),
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
    }

    #[test]
    fn operation_error_codes_are_stable() {
        for code in 0..=9u32 {
            assert_eq!(TdispGuestOperationError::from_code(code).code(), code);
        }
        assert_eq!(
            TdispGuestOperationError::from_code(10),
            TdispGuestOperationError::Unknown
        );
        assert_eq!(
            TdispGuestOperationError::InvalidGuestAttestationReportType.code(),
            9
        );
    }
}
