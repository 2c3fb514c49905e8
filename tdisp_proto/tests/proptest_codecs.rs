//! Property tests for every codec: encode then decode is the identity, decoding random bytes
//! never panics, and no decoder accepts a buffer whose length disagrees with its counts.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "strategies map known-valid codes; a failure is a test bug"
)]

use proptest::prelude::*;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::RequestBitmap;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::capabilities::DsmCaps;
use tdisp_proto::pcie::header::FunctionId;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::pcie::vdm::VendorDefinedBody;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn interface_id() -> impl Strategy<Value = InterfaceId> {
    (any::<u16>(), any::<u8>(), any::<bool>()).prop_map(|(rid, segment, valid)| InterfaceId {
        function_id: FunctionId::new()
            .with_requester_id(rid)
            .with_segment(segment)
            .with_segment_valid(valid),
    })
}

fn mmio_range() -> impl Strategy<Value = MmioRange> {
    (any::<u64>(), any::<u32>(), 0..=0xfu16, any::<u16>()).prop_map(
        |(first_page, number_of_pages, attributes, range_id)| MmioRange {
            first_page,
            number_of_pages,
            attributes: MmioRangeAttributes::from_bits(attributes),
            range_id,
        },
    )
}

fn vdm() -> impl Strategy<Value = VendorDefinedBody> {
    (any::<u8>(), bytes(8), bytes(64)).prop_map(|(registry_id, vendor_id, data)| {
        VendorDefinedBody {
            registry_id,
            vendor_id,
            data,
        }
    })
}

fn request() -> impl Strategy<Value = TdispRequest> {
    prop_oneof![
        Just(TdispRequest::GetVersion),
        any::<u32>().prop_map(|tsm_caps| TdispRequest::GetCapabilities { tsm_caps }),
        (0..=0x1fu16, any::<u8>(), any::<u64>(), any::<u64>()).prop_map(|(f, s, o, m)| {
            TdispRequest::LockInterface(LockInterfaceParams {
                flags: LockInterfaceFlags::from_bits(f),
                default_stream_id: s,
                mmio_reporting_offset: o,
                bind_p2p_address_mask: m,
            })
        }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(offset, length)| TdispRequest::GetDeviceInterfaceReport { offset, length }),
        Just(TdispRequest::GetDeviceInterfaceState),
        any::<[u8; 32]>().prop_map(|nonce| TdispRequest::StartInterface { nonce }),
        Just(TdispRequest::StopInterface),
        (any::<u8>(), any::<Option<u8>>()).prop_map(|(p2p_stream_id, stream_config)| {
            TdispRequest::BindP2pStream {
                p2p_stream_id,
                stream_config,
            }
        }),
        any::<u8>().prop_map(|p2p_stream_id| TdispRequest::UnbindP2pStream { p2p_stream_id }),
        mmio_range().prop_map(TdispRequest::SetMmioAttribute),
        vdm().prop_map(TdispRequest::Vdm),
        any::<u32>().prop_map(|dsm_config| TdispRequest::SetTdispConfig { dsm_config }),
    ]
}

fn tdi_state() -> impl Strategy<Value = TdiState> {
    prop_oneof![
        Just(TdiState::ConfigUnlocked),
        Just(TdiState::ConfigLocked),
        Just(TdiState::Run),
        Just(TdiState::Error),
    ]
}

fn response() -> impl Strategy<Value = TdispResponse> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..=8)
            .prop_map(|versions| TdispResponse::Version { versions }),
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            0..=0x1fu16,
            any::<[u8; 3]>()
        )
            .prop_map(|(dsm, bitmap, flags, [width, this, all])| {
                TdispResponse::Capabilities(Capabilities {
                    dsm_caps: DsmCaps::from_bits(dsm),
                    req_msg_supported: RequestBitmap(bitmap),
                    lock_interface_flags_supported: LockInterfaceFlags::from_bits(flags),
                    dev_addr_width: width,
                    num_req_this: this,
                    num_req_all: all,
                })
            }),
        any::<[u8; 32]>().prop_map(|nonce| TdispResponse::LockInterface { nonce }),
        (bytes(256), 0..=1024u16).prop_map(|(portion, remainder_length)| {
            TdispResponse::DeviceInterfaceReport {
                remainder_length,
                portion,
            }
        }),
        tdi_state().prop_map(|state| TdispResponse::DeviceInterfaceState { state }),
        Just(TdispResponse::StartInterface),
        Just(TdispResponse::StopInterface),
        Just(TdispResponse::BindP2pStream),
        Just(TdispResponse::UnbindP2pStream),
        Just(TdispResponse::SetMmioAttribute),
        vdm().prop_map(TdispResponse::Vdm),
        Just(TdispResponse::SetTdispConfig),
        (any::<u32>(), any::<u32>(), bytes(32)).prop_map(|(code, data, extended)| {
            TdispResponse::Error(TdispErrorResponse {
                code: TdispErrorCode(code),
                data,
                extended,
            })
        }),
    ]
}

fn report() -> impl Strategy<Value = DeviceInterfaceReport> {
    (
        0..=0x3fu16,
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(mmio_range(), 0..=16),
        bytes(64),
    )
        .prop_map(
            |(info, msix, lnr, tph, mmio_ranges, device_specific_info)| DeviceInterfaceReport {
                interface_info: InterfaceInfo::from_bits(info),
                msi_x_message_control: msix,
                lnr_control: lnr,
                tph_control: tph,
                mmio_ranges,
                device_specific_info,
            },
        )
}

/// Bodies whose last field is "the rest of the message": a different length is a different
/// valid message, not a count mismatch.
fn request_has_open_tail(request: &TdispRequest) -> bool {
    matches!(
        request,
        TdispRequest::Vdm(_) | TdispRequest::BindP2pStream { .. }
    )
}

fn response_has_open_tail(response: &TdispResponse) -> bool {
    matches!(response, TdispResponse::Vdm(_) | TdispResponse::Error(_))
}

fn guest_command() -> impl Strategy<Value = CommandPacket> {
    let protocol = prop_oneof![
        Just(TdispGuestProtocolType::Invalid),
        Just(TdispGuestProtocolType::AmdSevTioV1),
        Just(TdispGuestProtocolType::IntelTdxConnectV1),
    ];
    let report_type = (0..=5u32).prop_map(|c| TdispReportType::try_from(c).unwrap());
    let reason = (0..=1u32).prop_map(|c| TdispGuestUnbindReason::try_from(c).unwrap());
    let command = prop_oneof![
        protocol.prop_map(GuestCommand::NegotiateProtocol),
        Just(GuestCommand::LockDeviceResources),
        Just(GuestCommand::StartTdi),
        report_type
            .clone()
            .prop_map(GuestCommand::GetAttestationReport),
        (report_type, any::<[u8; 32]>()).prop_map(|(report_type, nonce)| {
            GuestCommand::GetFreshAttestationReport { report_type, nonce }
        }),
        reason.prop_map(GuestCommand::Unbind),
    ];
    (any::<u64>(), command).prop_map(|(device_id, command)| CommandPacket { device_id, command })
}

/// The states the wire carries (the host's `Error` goes out as `Uninitialized`).
fn guest_state() -> impl Strategy<Value = TdispTdiState> {
    (0..=3u32).prop_map(|c| TdispTdiState::try_from(c).unwrap())
}

fn guest_reply() -> impl Strategy<Value = ResponsePacket> {
    let info =
        (0..=2u32, any::<u64>(), any::<u64>()).prop_map(|(p, f, d)| TdispDeviceInterfaceInfo {
            guest_protocol_type: TdispGuestProtocolType::try_from(p).unwrap(),
            supported_features: f,
            tdisp_device_id: d,
        });
    let reply = prop_oneof![
        info.prop_map(GuestReply::NegotiateProtocol),
        Just(GuestReply::LockDeviceResources),
        Just(GuestReply::StartTdi),
        ((0..=5u32), proptest::collection::vec(any::<u8>(), 1..512)).prop_map(|(t, report)| {
            GuestReply::GetAttestationReport {
                report_type: TdispReportType::try_from(t).unwrap(),
                report,
            }
        }),
        Just(GuestReply::Unbind),
    ];
    let error = (0..=9u32)
        .prop_filter("Success is not an error", |&c| c != 1)
        .prop_map(TdispGuestOperationError::from_code);
    (
        guest_state(),
        guest_state(),
        reply,
        proptest::option::of(error),
    )
        .prop_map(|(before, after, reply, error)| ResponsePacket {
            state_before: before,
            state_after: after,
            result: error.map_or(Ok(reply), Err),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_round_trips(id in interface_id(), body in request()) {
        let message = TdispMessage::new(id, body);
        let wire = message.to_bytes();
        prop_assert_eq!(TdispMessage::<TdispRequest>::decode(&wire), Ok(message));
    }

    #[test]
    fn response_round_trips(id in interface_id(), body in response()) {
        let message = TdispMessage::new(id, body);
        let wire = message.to_bytes();
        prop_assert_eq!(TdispMessage::<TdispResponse>::decode(&wire), Ok(message));
    }

    #[test]
    fn request_with_wrong_length_is_rejected(id in interface_id(), body in request(), cut in 1..8usize, extra in bytes(8)) {
        prop_assume!(!request_has_open_tail(&body));
        let wire = TdispMessage::new(id, body).to_bytes();
        if cut <= wire.len() {
            prop_assert!(TdispMessage::<TdispRequest>::decode(&wire[..wire.len() - cut]).is_err());
        }
        if !extra.is_empty() {
            let mut longer = wire;
            longer.extend_from_slice(&extra);
            prop_assert!(TdispMessage::<TdispRequest>::decode(&longer).is_err());
        }
    }

    #[test]
    fn response_with_wrong_length_is_rejected(id in interface_id(), body in response(), cut in 1..8usize, extra in bytes(8)) {
        prop_assume!(!response_has_open_tail(&body));
        let wire = TdispMessage::new(id, body).to_bytes();
        if cut <= wire.len() {
            prop_assert!(TdispMessage::<TdispResponse>::decode(&wire[..wire.len() - cut]).is_err());
        }
        if !extra.is_empty() {
            let mut longer = wire;
            longer.extend_from_slice(&extra);
            prop_assert!(TdispMessage::<TdispResponse>::decode(&longer).is_err());
        }
    }

    #[test]
    fn decoders_never_panic_on_random_bytes(data in bytes(128)) {
        let _ = TdispMessage::<TdispRequest>::decode(&data);
        let _ = TdispMessage::<TdispResponse>::decode(&data);
        let _ = DeviceInterfaceReport::decode(&data);
        let _ = CommandPacket::decode(&data);
        let _ = ResponsePacket::decode(&data);
        let _ = spdm::decode_tdisp::<TdispRequest>(&data, Direction::Request);
    }

    #[test]
    fn decoders_never_panic_behind_a_valid_header(code in any::<u8>(), body in bytes(96)) {
        // A valid version-1.0 header gets random bytes past the header checks.
        let mut data = vec![0x10, code, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend_from_slice(&body);
        if let Ok(message) = TdispMessage::<TdispRequest>::decode(&data) {
            prop_assert_eq!(message.to_bytes(), data.clone());
        }
        if let Ok(message) = TdispMessage::<TdispResponse>::decode(&data) {
            prop_assert_eq!(message.to_bytes(), data);
        }
    }

    #[test]
    fn report_round_trips(report in report()) {
        let wire = report.to_bytes();
        prop_assert_eq!(wire.len(), report.encoded_len());
        prop_assert_eq!(DeviceInterfaceReport::decode(&wire), Ok(report));
    }

    #[test]
    fn report_with_wrong_length_is_rejected(report in report(), cut in 1..20usize, extra in proptest::collection::vec(any::<u8>(), 1..20)) {
        let wire = report.to_bytes();
        if cut <= wire.len() {
            prop_assert!(DeviceInterfaceReport::decode(&wire[..wire.len() - cut]).is_err());
        }
        let mut longer = wire;
        longer.extend_from_slice(&extra);
        prop_assert!(DeviceInterfaceReport::decode(&longer).is_err());
    }

    #[test]
    fn spdm_framing_round_trips(id in interface_id(), body in response(), minor in 0..=0xfu8) {
        let message = TdispMessage::new(id, body);
        let mut wire = Vec::new();
        spdm::encode_tdisp(0x10 | minor, Direction::Response, &message, &mut wire).unwrap();
        prop_assert_eq!(
            spdm::decode_tdisp::<TdispResponse>(&wire, Direction::Response),
            Ok((0x10 | minor, message))
        );
        prop_assert!(spdm::decode_tdisp::<TdispResponse>(&wire[..wire.len() - 1], Direction::Response).is_err());
    }

    #[test]
    fn guest_command_round_trips_and_skips_unknown_fields(packet in guest_command(), extra in any::<u8>()) {
        let wire = packet.encode();
        prop_assert_eq!(CommandPacket::decode(&wire), Ok(packet));
        // Field 15, varint: unknown to the schema, skipped.
        let mut longer = wire;
        longer.extend_from_slice(&[0x78, extra & 0x7f]);
        prop_assert_eq!(CommandPacket::decode(&longer), Ok(packet));
    }

    #[test]
    fn guest_reply_round_trips_and_skips_unknown_fields(packet in guest_reply(), extra in any::<u8>()) {
        let wire = packet.encode().unwrap();
        prop_assert_eq!(ResponsePacket::decode(&wire), Ok(packet.clone()));
        let mut longer = wire;
        longer.extend_from_slice(&[0x78, extra & 0x7f]);
        prop_assert_eq!(ResponsePacket::decode(&longer), Ok(packet));
    }
}
