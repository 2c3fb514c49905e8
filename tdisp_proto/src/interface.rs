//! The guest request trait [`TdispGuestRequestInterface`] and the types its calls carry.
//!
//! Every type here has a stable numeric code, the same as OpenVMM's `tdisp.proto` uses on the wire ([`crate::wire`]).

use serde::Deserialize;
use serde::Serialize;
use thiserror::Error;

/// A numeric code on the guest<->host wire did not name any variant of the enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown {kind} code {code}")]
pub struct UnknownCode {
    /// Which enum the code was meant for.
    pub kind: &'static str,
    /// The code.
    pub code: u32,
}

/// Defines `From<Enum> for u32` and `TryFrom<u32> for Enum` from the variant list, so the code
/// table is written once.
macro_rules! wire_codes {
    ($ty:ident, $kind:literal, { $($variant:ident = $code:literal,)* }) => {
        impl From<$ty> for u32 {
            fn from(value: $ty) -> u32 {
                match value {
                    $($ty::$variant => $code,)*
                }
            }
        }

        impl TryFrom<u32> for $ty {
            type Error = UnknownCode;

            fn try_from(code: u32) -> Result<Self, UnknownCode> {
                match code {
                    $($code => Ok($ty::$variant),)*
                    _ => Err(UnknownCode { kind: $kind, code }),
                }
            }
        }
    };
}

/// The guest<->host protocol a guest asks for (and the host answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TdispGuestProtocolType {
    /// No protocol: as a request it is invalid; as an answer it means the device is not TDISP
    /// capable.
    Invalid,
    /// AMD SEV-TIO, version 1.
    AmdSevTioV1,
    /// Intel TDX Connect, version 1.
    IntelTdxConnectV1,
}
wire_codes!(TdispGuestProtocolType, "guest protocol type", {
    Invalid = 0,
    AmdSevTioV1 = 1,
    IntelTdxConnectV1 = 2,
});

/// What the host tells the guest about a device after protocol negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TdispDeviceInterfaceInfo {
    /// The protocol the host will use; [`TdispGuestProtocolType::Invalid`] if the device is not
    /// TDISP capable.
    pub guest_protocol_type: TdispGuestProtocolType,
    /// Feature bits supported by the host for this device (host-defined; zero if none).
    pub supported_features: u64,
    /// The host's identifier for the TDISP device.
    pub tdisp_device_id: u64,
}

/// Bit of [`TdispDeviceInterfaceInfo::supported_features`] by which this stack's host says
/// that its TSM reaches the device through an SPDM secured session and serves session evidence
/// (the `Measurements` report, see [`crate::evidence::bundle`]). The schema leaves feature bits
/// to the host; this one is this project's. It is the host's claim, not proof: a guest that
/// needs the evidence requires it by policy whatever the host says.
pub const FEATURE_SESSION_EVIDENCE: u64 = 1 << 0;

/// Size of the nonce a guest may send with a report request
/// ([`TdispGuestRequestInterface::request_attestation_report_with_nonce`]).
pub const REPORT_NONCE_SIZE: usize = 32;

/// Which attestation report the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TdispReportType {
    /// Not a report type; asking for it is an error.
    Invalid,
    /// The guest device id.
    GuestDeviceId,
    /// The TDISP DEVICE_INTERFACE_REPORT.
    InterfaceReport,
    /// The device certificate chain.
    CertificateChain,
    /// The device measurements.
    Measurements,
    /// Whether the device is registered with the platform security processor.
    IsRegistered,
}
wire_codes!(TdispReportType, "report type", {
    Invalid = 0,
    GuestDeviceId = 1,
    InterfaceReport = 2,
    CertificateChain = 3,
    Measurements = 4,
    IsRegistered = 5,
});

/// Why the guest unbinds a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TdispGuestUnbindReason {
    /// No reason given.
    Unknown,
    /// The guest is done with the device (detach, power down, reset).
    Graceful,
}
wire_codes!(TdispGuestUnbindReason, "unbind reason", {
    Unknown = 0,
    Graceful = 1,
});

/// The TDI state as the guest<->host protocol sees it.
///
/// This is the host's view, one step wider than the device's [`crate::pcie::TdiState`]: a
/// device starts `Uninitialized` until the guest negotiates a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TdispTdiState {
    /// No protocol negotiated yet.
    Uninitialized,
    /// CONFIG_UNLOCKED: the guest may configure the device.
    Unlocked,
    /// CONFIG_LOCKED: configuration frozen, reports readable.
    Locked,
    /// RUN: the device may access guest-private memory once accepted.
    Run,
    /// ERROR: the device left a locked state because its configuration changed. The host's
    /// own state: OpenVMM's schema has no value for it, so it goes on the wire as
    /// `UNINITIALIZED` ("indeterminate"), see [`crate::wire`]. Its code 4 here is internal.
    Error,
}
wire_codes!(TdispTdiState, "TDI state", {
    Uninitialized = 0,
    Unlocked = 1,
    Locked = 2,
    Run = 3,
    Error = 4,
});

impl From<crate::pcie::TdiState> for TdispTdiState {
    /// The guest-protocol view of a device's TDI state.
    fn from(state: crate::pcie::TdiState) -> Self {
        use crate::pcie::TdiState;
        match state {
            TdiState::ConfigUnlocked => Self::Unlocked,
            TdiState::ConfigLocked => Self::Locked,
            TdiState::Run => Self::Run,
            TdiState::Error => Self::Error,
        }
    }
}

/// Why a guest request failed. The numeric codes (0..=9) are stable and carried on the wire
/// as the reply status; code 1 ([`Self::Success`]) means the call succeeded and never appears
/// as an `Err` from a well-behaved implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error, Serialize, Deserialize)]
pub enum TdispGuestOperationError {
    /// The cause is unknown.
    #[error("unknown error")]
    Unknown,
    /// Success (a wire status, not an error).
    #[error("success")]
    Success,
    /// The requested guest protocol is invalid or not supported.
    #[error("invalid guest protocol request")]
    InvalidGuestProtocolRequest,
    /// The device is not in a state that allows the request; the device was unbound.
    #[error("invalid device state")]
    InvalidDeviceState,
    /// The unbind reason is not valid.
    #[error("invalid guest unbind reason")]
    InvalidGuestUnbindReason,
    /// The command id is not known.
    #[error("invalid guest command id")]
    InvalidGuestCommandId,
    /// The request is not implemented by this host.
    #[error("not implemented")]
    NotImplemented,
    /// The host failed while processing the command.
    #[error("host failed to process the command")]
    HostFailedToProcessCommand,
    /// An attestation report was asked for in a state where none is available.
    #[error("invalid state for an attestation report")]
    InvalidGuestAttestationReportState,
    /// The attestation report type is not valid.
    #[error("invalid attestation report type")]
    InvalidGuestAttestationReportType,
}
wire_codes!(TdispGuestOperationError, "operation error", {
    Unknown = 0,
    Success = 1,
    InvalidGuestProtocolRequest = 2,
    InvalidDeviceState = 3,
    InvalidGuestUnbindReason = 4,
    InvalidGuestCommandId = 5,
    NotImplemented = 6,
    HostFailedToProcessCommand = 7,
    InvalidGuestAttestationReportState = 8,
    InvalidGuestAttestationReportType = 9,
});

impl TdispGuestOperationError {
    /// The stable wire code.
    pub fn code(self) -> u32 {
        self.into()
    }

    /// The error for a wire code; codes this crate does not know become [`Self::Unknown`], so
    /// a hostile peer cannot turn an error into anything but an error.
    pub fn from_code(code: u32) -> Self {
        Self::try_from(code).unwrap_or(Self::Unknown)
    }
}

/// Represents an interface by which guest commands are dispatched to a backing TDISP state
/// handler in the host: an emulated TDISP device, or an assigned TDISP device connected to the
/// guest. Implemented by the host state machine (called directly) and by the guest client
/// (which carries each call over the guest<->host channel as a [`crate::wire`] message).
///
/// State rules every implementation follows (checked by the conformance suite in
/// `testing`, feature `test-suite`):
///
/// | call | allowed from | on success | in any other state |
/// |---|---|---|---|
/// | [`tdisp_negotiate_protocol`](Self::tdisp_negotiate_protocol) | any | `Uninitialized` becomes `Unlocked` | another protocol than the negotiated one: `InvalidGuestProtocolRequest`, nothing changes |
/// | [`request_lock_device_resources`](Self::request_lock_device_resources) | `Unlocked` | `Locked` | error, device unbound |
/// | [`request_start_tdi`](Self::request_start_tdi) | `Locked` | `Run` | error, device unbound |
/// | [`request_attestation_report`](Self::request_attestation_report) | `Locked`, `Run` | unchanged | `InvalidGuestAttestationReportState`, device unbound |
/// | [`request_attestation_report_with_nonce`](Self::request_attestation_report_with_nonce) | as above (by default `NotImplemented`, nothing changes) | unchanged | as above |
/// | [`request_unbind`](Self::request_unbind) | any negotiated state | `Unlocked` | - |
///
/// Before negotiation every other call fails. "Unbound" means the device is back in
/// `Unlocked`: a following start fails and a following lock succeeds. A report of type
/// [`TdispReportType::Invalid`] fails with `InvalidGuestAttestationReportType` and unbinds.
/// An unbind fails only when the host cannot stop the device: the host then reports `Error`
/// (never `Unlocked` for a device still locked) and a later unbind tries again.
pub trait TdispGuestRequestInterface {
    /// Before a guest can communicate with the host it must negotiate a protocol, by calling
    /// this with its desired protocol type. The host answers with the protocol it will use
    /// and information about the TDISP capabilities of the device.
    ///
    /// If the host reports that this device is not TDISP capable,
    /// [`TdispDeviceInterfaceInfo::guest_protocol_type`] is
    /// [`TdispGuestProtocolType::Invalid`]. Asking for
    /// [`TdispGuestProtocolType::Invalid`] fails with
    /// [`TdispGuestOperationError::InvalidGuestProtocolRequest`], and so does asking for
    /// another protocol once one is negotiated (nothing changes: switching after lock would
    /// break the attestation chain).
    fn tdisp_negotiate_protocol(
        &mut self,
        requested_guest_protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError>;

    /// Transitions the device from `Unlocked` to `Locked`. This happens after the device has
    /// been assigned to the guest partition and the guest has configured its resources, which
    /// are not yet validated. In `Locked` the device may still perform unencrypted operations
    /// until it moves to `Run`.
    ///
    /// Calling this while the device is not `Unlocked` fails and unbinds the device.
    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError>;

    /// Transitions the device from `Locked` to `Run`. The device stays non-functional until
    /// the guest has attested it and accepted its resources into the guest context.
    ///
    /// Calling this while the device is not `Locked` fails and unbinds the device.
    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError>;

    /// Retrieves an attestation report of `report_type` while the device is `Locked` or
    /// `Run`. The state does not change.
    ///
    /// Calling this while the device is neither `Locked` nor `Run` fails and unbinds the
    /// device with [`TdispGuestOperationError::InvalidGuestAttestationReportState`].
    /// [`TdispReportType::Invalid`] fails with
    /// [`TdispGuestOperationError::InvalidGuestAttestationReportType`] and unbinds too.
    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError>;

    /// As [`Self::request_attestation_report`] (same states, same effects), with a nonce the
    /// guest chose: a host that supports it has the device sign it into the evidence it serves
    /// as [`TdispReportType::Measurements`] (the GET_MEASUREMENTS requester nonce), so the
    /// guest can tell the evidence is fresh. Other report types carry no nonce and ignore it.
    ///
    /// This project's extension of OpenVMM's protocol (field 2 of
    /// `TdispCommandRequestGetTdiReport`, which an OpenVMM host skips as unknown). The default
    /// refuses with [`TdispGuestOperationError::NotImplemented`] and changes nothing.
    fn request_attestation_report_with_nonce(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        let _ = (report_type, nonce);
        Err(TdispGuestOperationError::NotImplemented)
    }

    /// Gracefully unbinds the device, for example because it is detached, deactivated,
    /// powering down or being reset. The device returns to `Unlocked`. The guest may call this
    /// at any time after negotiation, in any state.
    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError>;
}

/// Forwards every trait method through a pointer type, so that a borrowed or boxed
/// implementation is one too; one body keeps the forwarders from drifting apart (a missed
/// method would silently fall back to the trait's default).
macro_rules! forward_guest_request_interface {
    ($($pointer:ty),+) => {$(
        impl<T: TdispGuestRequestInterface + ?Sized> TdispGuestRequestInterface for $pointer {
            fn tdisp_negotiate_protocol(
                &mut self,
                requested_guest_protocol: TdispGuestProtocolType,
            ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
                (**self).tdisp_negotiate_protocol(requested_guest_protocol)
            }

            fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
                (**self).request_lock_device_resources()
            }

            fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
                (**self).request_start_tdi()
            }

            fn request_attestation_report(
                &mut self,
                report_type: TdispReportType,
            ) -> Result<Vec<u8>, TdispGuestOperationError> {
                (**self).request_attestation_report(report_type)
            }

            fn request_attestation_report_with_nonce(
                &mut self,
                report_type: TdispReportType,
                nonce: [u8; REPORT_NONCE_SIZE],
            ) -> Result<Vec<u8>, TdispGuestOperationError> {
                (**self).request_attestation_report_with_nonce(report_type, nonce)
            }

            fn request_unbind(
                &mut self,
                reason: TdispGuestUnbindReason,
            ) -> Result<(), TdispGuestOperationError> {
                (**self).request_unbind(reason)
            }
        }
    )+};
}

forward_guest_request_interface!(&mut T, Box<T>);
