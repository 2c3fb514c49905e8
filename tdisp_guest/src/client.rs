//! The guest request client: the seed trait carried over a [`GuestTransport`].

use crate::transport::GuestTransport;
use tdisp_proto::REPORT_NONCE_SIZE;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::state_seen_by_guest;

/// Implements [`TdispGuestRequestInterface`] by sending each call to the host.
///
/// The client keeps its own view of the TDI state, starting at
/// [`TdispTdiState::Uninitialized`], and moves it only on replies it has checked. A successful
/// reply whose reported states contradict the state rules (a "successful" lock that leaves the
/// device in `Run`, say) is refused as [`TdispGuestOperationError::HostFailedToProcessCommand`]
/// and leaves the view at [`TdispTdiState::Error`]: the guest no longer knows the device's
/// state and must unbind before using it. A call that gets no reply at all (timeout,
/// cancellation, closed channel) leaves the view at `Error` too: the host may have carried it
/// out (a lock whose answer was lost leaves the device locked).
///
/// Each call is one `tdisp.GuestToHostCommand` (OpenVMM's `tdisp.proto`); a state the host
/// reports as `UNINITIALIZED` after negotiation is its "indeterminate" (the host's ERROR) and
/// becomes [`TdispTdiState::Error`] here (see [`tdisp_proto::wire`]).
#[derive(Debug)]
pub struct TdispGuestClient<T> {
    transport: T,
    device_id: u64,
    state: TdispTdiState,
    negotiated: bool,
    faults: u64,
}

impl<T: GuestTransport> TdispGuestClient<T> {
    /// A client for the host device `device_id`, reached through `transport`.
    pub fn new(transport: T, device_id: u64) -> Self {
        Self {
            transport,
            device_id,
            state: TdispTdiState::Uninitialized,
            negotiated: false,
            faults: 0,
        }
    }

    /// The host device this client addresses.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The TDI state as of the last checked reply.
    pub fn state(&self) -> TdispTdiState {
        self.state
    }

    /// How many host replies were refused (undecodable, mismatched or inconsistent).
    pub fn faults(&self) -> u64 {
        self.faults
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, e.g. to change its timeout.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The transport, e.g. to close it.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Sends one call and returns its checked result.
    fn call(&mut self, command: GuestCommand) -> Result<GuestReply, TdispGuestOperationError> {
        let packet = CommandPacket {
            device_id: self.device_id,
            command,
        };
        let reply_bytes = self.transport.exchange(&packet.encode()).map_err(|error| {
            // The command may have run on the host: the state is no longer known.
            tracing::warn!(device = self.device_id, ?command, %error, "transport failed; TDI state unknown");
            self.state = TdispTdiState::Error;
            TdispGuestOperationError::HostFailedToProcessCommand
        })?;
        let reply = ResponsePacket::decode(&reply_bytes)
            .and_then(|reply| reply.check_answers(&command).map(|()| reply))
            .map_err(|error| {
                self.fault(command, format_args!("{error}"));
                TdispGuestOperationError::HostFailedToProcessCommand
            })?;
        let negotiates = matches!(
            &reply.result,
            Ok(GuestReply::NegotiateProtocol(info))
                if info.guest_protocol_type != TdispGuestProtocolType::Invalid
        );
        let before = state_seen_by_guest(reply.state_before, self.negotiated);
        let after = state_seen_by_guest(reply.state_after, self.negotiated || negotiates);
        if before != self.state {
            // Legitimate when the device left a locked state on its own (ERROR after a config
            // change); the host's word is the only news the guest has, so take it.
            tracing::warn!(
                device = self.device_id,
                ours = ?self.state,
                host = ?before,
                "host reports a different TDI state than the guest last saw"
            );
        }
        match reply.result {
            Ok(result) => {
                if let Err(why) = check_success(&command, &result, before, after) {
                    self.fault(command, format_args!("{why}"));
                    return Err(TdispGuestOperationError::HostFailedToProcessCommand);
                }
                self.negotiated |= negotiates;
                self.state = after;
                Ok(result)
            }
            Err(error) => {
                tracing::debug!(device = self.device_id, ?command, %error, after = ?after, "host refused");
                self.state = after;
                Err(error)
            }
        }
    }

    fn fault(&mut self, command: GuestCommand, why: std::fmt::Arguments<'_>) {
        self.faults = self.faults.saturating_add(1);
        self.state = TdispTdiState::Error;
        tracing::warn!(device = self.device_id, ?command, %why, "refused host reply");
    }
}

/// Whether a successful reply agrees with the state rules of the trait.
fn check_success(
    command: &GuestCommand,
    result: &GuestReply,
    before: TdispTdiState,
    after: TdispTdiState,
) -> Result<(), &'static str> {
    use TdispTdiState::*;
    let consistent = match (command, result) {
        (GuestCommand::NegotiateProtocol(asked), GuestReply::NegotiateProtocol(info)) => {
            if info.guest_protocol_type != *asked
                && info.guest_protocol_type != TdispGuestProtocolType::Invalid
            {
                return Err("host chose a protocol the guest did not ask for");
            }
            after != Error
                && (info.guest_protocol_type == TdispGuestProtocolType::Invalid
                    || after != Uninitialized)
        }
        (GuestCommand::LockDeviceResources, _) => before == Unlocked && after == Locked,
        (GuestCommand::StartTdi, _) => before == Locked && after == Run,
        (
            GuestCommand::GetAttestationReport(_) | GuestCommand::GetFreshAttestationReport { .. },
            _,
        ) => before == after && matches!(after, Locked | Run),
        (GuestCommand::Unbind(_), _) => after == Unlocked,
        _ => false,
    };
    if consistent {
        Ok(())
    } else {
        Err("reported TDI states contradict a successful call")
    }
}

impl<T: GuestTransport> TdispGuestRequestInterface for TdispGuestClient<T> {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested_guest_protocol: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        match self.call(GuestCommand::NegotiateProtocol(requested_guest_protocol))? {
            GuestReply::NegotiateProtocol(info) => Ok(info),
            _ => Err(TdispGuestOperationError::HostFailedToProcessCommand),
        }
    }

    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::LockDeviceResources).map(drop)
    }

    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::StartTdi).map(drop)
    }

    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        match self.call(GuestCommand::GetAttestationReport(report_type))? {
            GuestReply::GetAttestationReport { report, .. } => Ok(report),
            _ => Err(TdispGuestOperationError::HostFailedToProcessCommand),
        }
    }

    fn request_attestation_report_with_nonce(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        match self.call(GuestCommand::GetFreshAttestationReport { report_type, nonce })? {
            GuestReply::GetAttestationReport { report, .. } => Ok(report),
            _ => Err(TdispGuestOperationError::HostFailedToProcessCommand),
        }
    }

    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        self.call(GuestCommand::Unbind(reason)).map(drop)
    }
}
