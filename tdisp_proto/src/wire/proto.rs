//! The messages of OpenVMM's `tdisp.proto` (package `tdisp`, proto3), written as `prost`
//! derives so that no protoc runs at build time.
//!
//! Names, field numbers and enum values follow `vm/devices/tdisp_proto/src/tdisp.proto` in
//! microsoft/openvmm; `tests/vectors/tdisp.proto` in this crate describes the same schema for
//! protoc. Enum fields are `i32` on the wire, as protobuf requires: a peer may send any value,
//! and [`super`] turns each into a typed value or a typed error. Unknown fields are skipped by
//! `prost`, as protobuf requires.

/// `tdisp.TdispTdiState`: the TDI state as the guest<->host protocol reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TdispTdiState {
    /// `TDISP_TDI_STATE_UNINITIALIZED`: not initialized or indeterminate.
    Uninitialized = 0,
    /// `TDISP_TDI_STATE_UNLOCKED`.
    Unlocked = 1,
    /// `TDISP_TDI_STATE_LOCKED`.
    Locked = 2,
    /// `TDISP_TDI_STATE_RUN`.
    Run = 3,
}

/// `tdisp.TdispGuestOperationErrorCode`: the result of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TdispGuestOperationErrorCode {
    /// `..._UNKNOWN`.
    Unknown = 0,
    /// `..._SUCCESS`.
    Success = 1,
    /// `..._INVALID_GUEST_PROTOCOL_REQUEST`.
    InvalidGuestProtocolRequest = 2,
    /// `..._INVALID_DEVICE_STATE`.
    InvalidDeviceState = 3,
    /// `..._INVALID_GUEST_UNBIND_REASON`.
    InvalidGuestUnbindReason = 4,
    /// `..._INVALID_GUEST_COMMAND_ID`.
    InvalidGuestCommandId = 5,
    /// `..._NOT_IMPLEMENTED`.
    NotImplemented = 6,
    /// `..._HOST_FAILED_TO_PROCESS_COMMAND`.
    HostFailedToProcessCommand = 7,
    /// `..._INVALID_GUEST_ATTESTATION_REPORT_STATE`.
    InvalidGuestAttestationReportState = 8,
    /// `..._INVALID_GUEST_ATTESTATION_REPORT_TYPE`.
    InvalidGuestAttestationReportType = 9,
}

/// `tdisp.TdispGuestUnbindReason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TdispGuestUnbindReason {
    /// `TDISP_GUEST_UNBIND_REASON_UNKNOWN`.
    Unknown = 0,
    /// `TDISP_GUEST_UNBIND_REASON_GRACEFUL`.
    Graceful = 1,
}

/// `tdisp.TdispReportType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TdispReportType {
    /// `TDISP_REPORT_TYPE_INVALID`.
    Invalid = 0,
    /// `TDISP_REPORT_TYPE_GUEST_DEVICE_ID`.
    GuestDeviceId = 1,
    /// `TDISP_REPORT_TYPE_INTERFACE_REPORT`.
    InterfaceReport = 2,
    /// `TDISP_REPORT_TYPE_CERTIFICATE_CHAIN`.
    CertificateChain = 3,
    /// `TDISP_REPORT_TYPE_MEASUREMENTS`.
    Measurements = 4,
    /// `TDISP_REPORT_TYPE_IS_REGISTERED`.
    IsRegistered = 5,
}

/// `tdisp.TdispGuestProtocolType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TdispGuestProtocolType {
    /// `TDISP_GUEST_PROTOCOL_TYPE_INVALID`.
    Invalid = 0,
    /// `TDISP_GUEST_PROTOCOL_TYPE_AMD_SEV_TIO_V1`.
    AmdSevTioV1 = 1,
    /// `TDISP_GUEST_PROTOCOL_TYPE_INTEL_TDX_CONNECT_V1`.
    IntelTdxConnectV1 = 2,
}

/// `tdisp.GuestToHostCommand`: one command for one device.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GuestToHostCommand {
    /// Field 1: the host's id of the target device.
    #[prost(uint64, tag = "1")]
    pub device_id: u64,
    /// Fields 2..=6: the command; exactly one must be set.
    #[prost(oneof = "guest_to_host_command::Command", tags = "2, 3, 4, 5, 6")]
    pub command: Option<guest_to_host_command::Command>,
}

/// The `command` oneof of [`GuestToHostCommand`].
pub mod guest_to_host_command {
    /// One variant per command.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Command {
        /// Field 2: negotiate the protocol, get the device interface information.
        #[prost(message, tag = "2")]
        GetDeviceInterfaceInfo(super::TdispCommandRequestGetDeviceInterfaceInfo),
        /// Field 3: lock the device resources (Unlocked -> Locked).
        #[prost(message, tag = "3")]
        Bind(super::TdispCommandRequestBind),
        /// Field 4: get an attestation report.
        #[prost(message, tag = "4")]
        GetTdiReport(super::TdispCommandRequestGetTdiReport),
        /// Field 5: start the TDI (Locked -> Run).
        #[prost(message, tag = "5")]
        StartTdi(super::TdispCommandRequestStartTdi),
        /// Field 6: unbind (back to Unlocked).
        #[prost(message, tag = "6")]
        Unbind(super::TdispCommandRequestUnbind),
    }
}

/// `tdisp.GuestToHostResponse`: the answer to one command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GuestToHostResponse {
    /// Field 1: [`TdispGuestOperationErrorCode`].
    #[prost(enumeration = "TdispGuestOperationErrorCode", tag = "1")]
    pub result: i32,
    /// Field 2: [`TdispTdiState`] before the command.
    #[prost(enumeration = "TdispTdiState", tag = "2")]
    pub tdi_state_before: i32,
    /// Field 3: [`TdispTdiState`] after the command.
    #[prost(enumeration = "TdispTdiState", tag = "3")]
    pub tdi_state_after: i32,
    /// Fields 4..=8: the command's payload; set on success.
    #[prost(oneof = "guest_to_host_response::Response", tags = "4, 5, 6, 7, 8")]
    pub response: Option<guest_to_host_response::Response>,
}

/// The `response` oneof of [`GuestToHostResponse`].
pub mod guest_to_host_response {
    /// One variant per command.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        /// Field 4.
        #[prost(message, tag = "4")]
        GetDeviceInterfaceInfo(super::TdispCommandResponseGetDeviceInterfaceInfo),
        /// Field 5.
        #[prost(message, tag = "5")]
        Bind(super::TdispCommandResponseBind),
        /// Field 6.
        #[prost(message, tag = "6")]
        GetTdiReport(super::TdispCommandResponseGetTdiReport),
        /// Field 7.
        #[prost(message, tag = "7")]
        StartTdi(super::TdispCommandResponseStartTdi),
        /// Field 8.
        #[prost(message, tag = "8")]
        Unbind(super::TdispCommandResponseUnbind),
    }
}

/// `tdisp.TdispCommandRequestGetDeviceInterfaceInfo`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandRequestGetDeviceInterfaceInfo {
    /// Field 1: [`TdispGuestProtocolType`] the guest asks for.
    #[prost(enumeration = "TdispGuestProtocolType", tag = "1")]
    pub guest_protocol_type: i32,
}

/// `tdisp.TdispCommandRequestBind` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandRequestBind {}

/// `tdisp.TdispCommandRequestGetTdiReport`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TdispCommandRequestGetTdiReport {
    /// Field 1: [`TdispReportType`].
    #[prost(enumeration = "TdispReportType", tag = "1")]
    pub report_type: i32,
    /// Field 2: the guest's nonce for fresh evidence, empty or 32 bytes. This project's
    /// extension: not in OpenVMM's schema, whose hosts skip it as an unknown field.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
}

/// `tdisp.TdispCommandRequestStartTdi` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandRequestStartTdi {}

/// `tdisp.TdispCommandRequestUnbind`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandRequestUnbind {
    /// Field 1: [`TdispGuestUnbindReason`].
    #[prost(enumeration = "TdispGuestUnbindReason", tag = "1")]
    pub unbind_reason: i32,
}

/// `tdisp.TdispCommandResponseGetDeviceInterfaceInfo`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandResponseGetDeviceInterfaceInfo {
    /// Field 1: the information; required on success.
    #[prost(message, optional, tag = "1")]
    pub interface_info: Option<TdispDeviceInterfaceInfo>,
}

/// `tdisp.TdispCommandResponseBind` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandResponseBind {}

/// `tdisp.TdispCommandResponseGetTdiReport`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TdispCommandResponseGetTdiReport {
    /// Field 1: [`TdispReportType`] of the report returned.
    #[prost(enumeration = "TdispReportType", tag = "1")]
    pub report_type: i32,
    /// Field 2: the report.
    #[prost(bytes = "vec", tag = "2")]
    pub report_buffer: Vec<u8>,
}

/// `tdisp.TdispCommandResponseStartTdi` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandResponseStartTdi {}

/// `tdisp.TdispCommandResponseUnbind` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispCommandResponseUnbind {}

/// `tdisp.TdispDeviceInterfaceInfo`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispDeviceInterfaceInfo {
    /// Field 1: [`TdispGuestProtocolType`] the host chose.
    #[prost(enumeration = "TdispGuestProtocolType", tag = "1")]
    pub guest_protocol_type: i32,
    /// Field 2: feature bits.
    #[prost(uint64, tag = "2")]
    pub supported_features: u64,
    /// Field 3: the device id used with firmware.
    #[prost(uint64, tag = "3")]
    pub tdisp_device_id: u64,
}
