use super::*;
use crate::testing::reference::ReferenceModel;

fn lock() -> CommandPacket {
    CommandPacket {
        device_id: 3,
        command: GuestCommand::LockDeviceResources,
    }
}

fn command_bytes(command: Option<Command>) -> Vec<u8> {
    proto::GuestToHostCommand {
        device_id: 3,
        command,
    }
    .encode_to_vec()
}

#[test]
fn crate_codes_are_the_schema_codes() {
    for code in 0..=9 {
        let ours = TdispGuestOperationError::from_code(code as u32);
        assert_eq!(error_to_wire(ours), code);
        assert!(proto::TdispGuestOperationErrorCode::try_from(code).is_ok());
    }
    for code in 0..=5 {
        assert_eq!(
            report_type_to_wire(report_type_from_wire(code).unwrap()),
            code
        );
        assert!(proto::TdispReportType::try_from(code).is_ok());
    }
    for code in 0..=2 {
        assert_eq!(protocol_to_wire(protocol_from_wire(code).unwrap()), code);
        assert!(proto::TdispGuestProtocolType::try_from(code).is_ok());
    }
    assert_eq!(
        proto::TdispGuestUnbindReason::Graceful as i32,
        i32::from(true)
    );
}

#[test]
fn command_without_variant_is_an_invalid_command_id() {
    let error = CommandPacket::decode(&command_bytes(None)).unwrap_err();
    assert_eq!(error, WireError::MissingOneof("GuestToHostCommand.command"));
    assert_eq!(
        error.operation_error(),
        TdispGuestOperationError::InvalidGuestCommandId
    );
}

#[test]
fn unknown_enum_values_are_typed_errors_with_their_operation_error() {
    let cases = [
        (
            Command::GetDeviceInterfaceInfo(proto::TdispCommandRequestGetDeviceInterfaceInfo {
                guest_protocol_type: 3,
            }),
            TdispGuestOperationError::InvalidGuestProtocolRequest,
        ),
        (
            Command::GetTdiReport(proto::TdispCommandRequestGetTdiReport {
                report_type: 6,
                nonce: Vec::new(),
            }),
            TdispGuestOperationError::InvalidGuestAttestationReportType,
        ),
        (
            Command::Unbind(proto::TdispCommandRequestUnbind { unbind_reason: -1 }),
            TdispGuestOperationError::InvalidGuestUnbindReason,
        ),
    ];
    for (command, expected) in cases {
        let error = CommandPacket::decode(&command_bytes(Some(command))).unwrap_err();
        assert!(
            matches!(error, WireError::UnknownEnumValue { .. }),
            "{error}"
        );
        assert_eq!(error.operation_error(), expected);
    }
}

#[test]
fn unknown_fields_are_skipped() {
    let mut bytes = lock().encode();
    // Field 15, varint 42; then field 16, length-delimited "hi".
    bytes.extend_from_slice(&[0x78, 42, 0x82, 0x01, 2, b'h', b'i']);
    assert_eq!(CommandPacket::decode(&bytes), Ok(lock()));
}

#[test]
fn unknown_fields_inside_nested_messages_are_skipped() {
    // GuestToHostCommand { device_id: 3, bind (field 3) { field 9: varint 1 } }: a newer peer's
    // field inside the command's own message.
    let command = [0x08, 3, 0x1a, 2, 0x48, 1];
    assert_eq!(CommandPacket::decode(&command), Ok(lock()));
    // GuestToHostResponse { result: SUCCESS, before: UNLOCKED, after: UNLOCKED,
    // get_device_interface_info (field 4) { interface_info (field 1) { protocol 1, field 7:
    // "zz" }, field 5: fixed32 } }.
    let response = [
        0x08, 1, 0x10, 1, 0x18, 1, // result, states
        0x22, 13, // field 4, 13 bytes
        0x0a, 6, 0x08, 1, 0x3a, 2, b'z', b'z', // interface_info with an unknown field 7
        0x2d, 1, 2, 3, 4, // unknown field 5, fixed32
    ];
    let decoded = ResponsePacket::decode(&response).unwrap();
    assert_eq!(
        decoded.result,
        Ok(GuestReply::NegotiateProtocol(TdispDeviceInterfaceInfo {
            guest_protocol_type: TdispGuestProtocolType::AmdSevTioV1,
            supported_features: 0,
            tdisp_device_id: 0,
        }))
    );
}

#[test]
fn a_known_field_with_the_wrong_wire_type_is_a_protobuf_error() {
    // device_id (field 1) sent length-delimited.
    assert!(matches!(
        CommandPacket::decode(&[0x0a, 1, 7, 0x1a, 0]),
        Err(WireError::Protobuf(_))
    ));
}

#[test]
fn garbage_is_a_protobuf_error_not_a_panic() {
    for garbage in [&[0xff; 7][..], &[0x0a][..], &[0x00][..]] {
        assert!(matches!(
            CommandPacket::decode(garbage),
            Err(WireError::Protobuf(_))
        ));
        assert!(matches!(
            ResponsePacket::decode(garbage),
            Err(WireError::Protobuf(_))
        ));
    }
}

fn report_response(len: usize) -> ResponsePacket {
    ResponsePacket {
        state_before: TdispTdiState::Locked,
        state_after: TdispTdiState::Locked,
        result: Ok(GuestReply::GetAttestationReport {
            report_type: TdispReportType::InterfaceReport,
            report: vec![0xaa; len],
        }),
    }
}

#[test]
fn oversize_report_buffer_is_refused_both_ways() {
    assert_eq!(
        report_response(MAX_REPORT_BUFFER + 1).encode(),
        Err(WireError::OversizeReport {
            len: MAX_REPORT_BUFFER + 1,
            max: MAX_REPORT_BUFFER
        })
    );
    let raw = proto::GuestToHostResponse {
        result: 1,
        tdi_state_before: 2,
        tdi_state_after: 2,
        response: Some(Response::GetTdiReport(
            proto::TdispCommandResponseGetTdiReport {
                report_type: 2,
                report_buffer: vec![0; MAX_REPORT_BUFFER + 1],
            },
        )),
    }
    .encode_to_vec();
    assert!(matches!(
        ResponsePacket::decode(&raw),
        Err(WireError::OversizeReport { .. })
    ));
    assert!(report_response(MAX_REPORT_BUFFER).encode().is_ok());
    assert_eq!(
        ResponsePacket::decode(&vec![0; MAX_MESSAGE_SIZE + 1]),
        Err(WireError::OversizeMessage {
            len: MAX_MESSAGE_SIZE + 1,
            max: MAX_MESSAGE_SIZE
        })
    );
}

#[test]
fn success_response_needs_its_variant_and_payload() {
    let missing = proto::GuestToHostResponse {
        result: 1,
        tdi_state_before: 1,
        tdi_state_after: 2,
        response: None,
    };
    assert_eq!(
        ResponsePacket::decode(&missing.encode_to_vec()),
        Err(WireError::MissingOneof("GuestToHostResponse.response"))
    );
    let no_info = proto::GuestToHostResponse {
        response: Some(Response::GetDeviceInterfaceInfo(
            proto::TdispCommandResponseGetDeviceInterfaceInfo {
                interface_info: None,
            },
        )),
        ..missing
    };
    assert_eq!(
        ResponsePacket::decode(&no_info.encode_to_vec()),
        Err(WireError::MissingField("interface_info"))
    );
    assert_eq!(report_response(0).encode(), Err(WireError::EmptyReport));
}

#[test]
fn error_response_may_carry_a_variant_and_it_is_ignored() {
    let raw = proto::GuestToHostResponse {
        result: 7,
        tdi_state_before: 3,
        tdi_state_after: 0,
        response: Some(Response::Unbind(proto::TdispCommandResponseUnbind {})),
    };
    let decoded = ResponsePacket::decode(&raw.encode_to_vec()).unwrap();
    assert_eq!(
        decoded.result,
        Err(TdispGuestOperationError::HostFailedToProcessCommand)
    );
    assert_eq!(decoded.state_after, TdispTdiState::Uninitialized);
}

#[test]
fn unknown_result_and_state_values_are_refused() {
    for (result, state) in [(10, 1), (-1, 1), (1, 4), (1, -7)] {
        let raw = proto::GuestToHostResponse {
            result,
            tdi_state_before: state,
            tdi_state_after: 1,
            response: Some(Response::Bind(proto::TdispCommandResponseBind {})),
        };
        assert!(matches!(
            ResponsePacket::decode(&raw.encode_to_vec()),
            Err(WireError::UnknownEnumValue { .. })
        ));
    }
}

#[test]
fn host_error_state_is_sent_as_indeterminate_and_read_back_as_error() {
    let reply = ResponsePacket {
        state_before: TdispTdiState::Run,
        state_after: TdispTdiState::Error,
        result: Err(TdispGuestOperationError::HostFailedToProcessCommand),
    };
    let back = ResponsePacket::decode(&reply.encode().unwrap()).unwrap();
    assert_eq!(back.state_after, TdispTdiState::Uninitialized);
    assert_eq!(
        state_seen_by_guest(back.state_after, true),
        TdispTdiState::Error
    );
    assert_eq!(
        state_seen_by_guest(back.state_after, false),
        TdispTdiState::Uninitialized
    );
}

#[test]
fn success_as_error_is_not_encoded() {
    let reply = ResponsePacket {
        state_before: TdispTdiState::Unlocked,
        state_after: TdispTdiState::Unlocked,
        result: Err(TdispGuestOperationError::Success),
    };
    assert_eq!(reply.encode(), Err(WireError::SuccessAsError));
}

#[test]
fn response_for_another_command_or_report_type_is_detected() {
    let locked = ResponsePacket {
        state_before: TdispTdiState::Unlocked,
        state_after: TdispTdiState::Locked,
        result: Ok(GuestReply::LockDeviceResources),
    };
    assert!(
        locked
            .check_answers(&GuestCommand::LockDeviceResources)
            .is_ok()
    );
    assert_eq!(
        locked.check_answers(&GuestCommand::StartTdi),
        Err(WireError::Mismatch {
            sent: "start_tdi",
            got: "bind"
        })
    );
    assert!(matches!(
        report_response(4).check_answers(&GuestCommand::GetAttestationReport(
            TdispReportType::CertificateChain
        )),
        Err(WireError::ReportTypeMismatch { .. })
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
        GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport).dispatch(&mut model),
        Ok(GuestReply::GetAttestationReport { .. })
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
}
