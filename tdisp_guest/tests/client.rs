//! The guest client against an honest host (the reference model behind the real tdisp.proto codec)
//! and against hosts that lie, garble or mismatch their replies.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns unwrap setup steps"
)]

use proptest::prelude::*;
use tdisp_guest::GuestTransport;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::testing::ConformanceConfig;
use tdisp_proto::testing::reference::ReferenceModel;
use tdisp_proto::testing::run_conformance;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::ResponsePacket;

type Tamper = Box<dyn FnMut(&mut ResponsePacket)>;

/// A host made of the reference model and the real packet codec, with an optional hook that
/// rewrites replies before they are encoded.
struct Loopback {
    model: ReferenceModel,
    tamper: Option<Tamper>,
}

impl Loopback {
    fn honest() -> Self {
        Self {
            model: ReferenceModel::default(),
            tamper: None,
        }
    }

    fn tampering(tamper: impl FnMut(&mut ResponsePacket) + 'static) -> Self {
        Self {
            model: ReferenceModel::default(),
            tamper: Some(Box::new(tamper)),
        }
    }
}

impl GuestTransport for Loopback {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let packet =
            CommandPacket::decode(command).map_err(|e| TransportError::Failed(e.to_string()))?;
        let before = self.model.state;
        let result = packet.command.dispatch(&mut self.model);
        let mut reply = ResponsePacket {
            state_before: before,
            state_after: self.model.state,
            result,
        };
        if let Some(tamper) = &mut self.tamper {
            tamper(&mut reply);
        }
        reply
            .encode()
            .map_err(|e| TransportError::Failed(e.to_string()))
    }
}

/// A host that answers every command with fixed bytes.
struct Canned(Vec<u8>);

impl GuestTransport for Canned {
    fn exchange(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.clone())
    }
}

mod honest_host {
    use super::*;

    #[test]
    fn conformance_suite_passes_through_the_client() {
        let report = run_conformance(&ConformanceConfig::default(), || {
            TdispGuestClient::new(Loopback::honest(), 1)
        });
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn client_view_starts_uninitialized_and_follows_the_host() {
        let mut client = TdispGuestClient::new(Loopback::honest(), 1);
        assert_eq!(client.state(), TdispTdiState::Uninitialized);
        client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        assert_eq!(client.state(), TdispTdiState::Unlocked);
        client.request_lock_device_resources().unwrap();
        assert_eq!(client.state(), TdispTdiState::Locked);
        client.request_start_tdi().unwrap();
        assert_eq!(client.state(), TdispTdiState::Run);
        client
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        assert_eq!(client.state(), TdispTdiState::Unlocked);
        assert_eq!(client.faults(), 0);
    }

    #[test]
    fn wrong_state_error_is_passed_through_and_view_follows_the_unbind() {
        let mut client = TdispGuestClient::new(Loopback::honest(), 1);
        client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::IntelTdxConnectV1)
            .unwrap();
        client.request_lock_device_resources().unwrap();
        assert_eq!(
            client.request_lock_device_resources(),
            Err(TdispGuestOperationError::InvalidDeviceState)
        );
        assert_eq!(client.state(), TdispTdiState::Unlocked);
        assert_eq!(client.faults(), 0, "an honest refusal is not a fault");
    }
}

mod malicious_host {
    use super::*;

    const HOST_FAILED: Result<(), TdispGuestOperationError> =
        Err(TdispGuestOperationError::HostFailedToProcessCommand);

    fn negotiated(transport: Loopback) -> TdispGuestClient<Loopback> {
        let mut client = TdispGuestClient::new(transport, 1);
        client
            .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
            .unwrap();
        client
    }

    #[test]
    fn garbage_reply_is_a_host_failure() {
        let mut client = TdispGuestClient::new(Canned(vec![0xa5; 40]), 1);
        assert_eq!(client.request_start_tdi(), HOST_FAILED);
        assert_eq!(client.faults(), 1);
        assert_eq!(client.state(), TdispTdiState::Error);
    }

    #[test]
    fn transport_failure_is_a_host_failure() {
        struct Closed;
        impl GuestTransport for Closed {
            fn exchange(&mut self, _: &[u8]) -> Result<Vec<u8>, TransportError> {
                Err(TransportError::Closed)
            }
        }
        let mut client = TdispGuestClient::new(Closed, 1);
        assert_eq!(
            client.request_attestation_report(TdispReportType::InterfaceReport),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
    }

    #[test]
    fn report_of_another_type_is_refused() {
        let mut client = negotiated(Loopback::tampering(|r| {
            if let Ok(tdisp_proto::wire::GuestReply::GetAttestationReport { report_type, .. }) =
                &mut r.result
            {
                *report_type = TdispReportType::CertificateChain;
            }
        }));
        client.request_lock_device_resources().unwrap();
        assert_eq!(
            client.request_attestation_report(TdispReportType::InterfaceReport),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
        assert_eq!(client.faults(), 1);
    }

    #[test]
    fn reply_for_another_command_is_refused() {
        // An honest "start" reply replayed as the answer to a lock.
        let start_reply = {
            ResponsePacket {
                state_before: TdispTdiState::Locked,
                state_after: TdispTdiState::Run,
                result: Ok(tdisp_proto::wire::GuestReply::StartTdi),
            }
            .encode()
            .unwrap()
        };
        let mut client = TdispGuestClient::new(Canned(start_reply), 1);
        assert_eq!(client.request_lock_device_resources(), HOST_FAILED);
    }

    #[test]
    fn successful_lock_that_reports_run_is_refused() {
        let mut client = negotiated(Loopback::tampering(|r| {
            if r.state_after == TdispTdiState::Locked {
                r.state_after = TdispTdiState::Run;
            }
        }));
        assert_eq!(client.request_lock_device_resources(), HOST_FAILED);
        assert_eq!(client.state(), TdispTdiState::Error);
        // Unbinding is still possible and recovers a known state.
        client
            .request_unbind(TdispGuestUnbindReason::Unknown)
            .unwrap();
        assert_eq!(client.state(), TdispTdiState::Unlocked);
    }

    #[test]
    fn report_from_unlocked_claimed_successful_is_refused() {
        let mut client = negotiated(Loopback::tampering(|r| {
            if r.result.is_err() {
                r.state_before = TdispTdiState::Unlocked;
                r.state_after = TdispTdiState::Unlocked;
                r.result = Ok(tdisp_proto::wire::GuestReply::GetAttestationReport {
                    report_type: TdispReportType::InterfaceReport,
                    report: vec![0; 16],
                });
            }
        }));
        assert_eq!(
            client.request_attestation_report(TdispReportType::InterfaceReport),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
    }

    #[test]
    fn negotiation_answered_with_another_protocol_is_refused() {
        let mut client = TdispGuestClient::new(
            Loopback::tampering(|r| {
                if let Ok(tdisp_proto::wire::GuestReply::NegotiateProtocol(info)) = &mut r.result {
                    info.guest_protocol_type = TdispGuestProtocolType::IntelTdxConnectV1;
                }
            }),
            1,
        );
        assert_eq!(
            client.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1),
            Err(TdispGuestOperationError::HostFailedToProcessCommand)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_reply_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96), which in 0u8..5) {
            let mut client = TdispGuestClient::new(Canned(bytes), 1);
            let _ = match which {
                0 => client.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1).map(drop),
                1 => client.request_lock_device_resources(),
                2 => client.request_start_tdi(),
                3 => client.request_attestation_report(TdispReportType::InterfaceReport).map(drop),
                _ => client.request_unbind(TdispGuestUnbindReason::Graceful),
            };
        }

        #[test]
        fn truncated_honest_replies_are_refused(cut in 0usize..32) {
            let mut honest = Loopback::honest();
            let cmd = CommandPacket { device_id: 1, command: tdisp_proto::wire::GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1) };
            let mut bytes = honest.exchange(&cmd.encode()).unwrap();
            bytes.truncate(bytes.len().saturating_sub(cut + 1));
            let mut client = TdispGuestClient::new(Canned(bytes), 1);
            // A cut inside a field is malformed; a cut between fields leaves a success without
            // its payload or, cut to nothing, the all-default message (result UNKNOWN): either
            // way an error, never a negotiated device.
            let result = client.tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1);
            prop_assert!(result.is_err(), "{:?}", result);
            prop_assert_ne!(result, Err(TdispGuestOperationError::Success));
            prop_assert_ne!(client.state(), TdispTdiState::Unlocked);
        }
    }
}
