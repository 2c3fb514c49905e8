//! Unit tests of the emulated DSM: each TDISP_ERROR code, configuration changes, portions and
//! the SPDM and DOE layers.

use super::*;
use crate::dsm::entropy::EntropyError;
use tdisp_proto::framing::spdm;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::report::ReportAssembler;
use zerocopy::IntoBytes;

const RID: u16 = 0x0010;

fn tdi() -> InterfaceId {
    InterfaceId::from_requester_id(RID)
}

fn dsm() -> EmulatedDsm {
    EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap()
}

fn code(response: &TdispResponse) -> Option<TdispErrorCode> {
    match response {
        TdispResponse::Error(e) => Some(e.code),
        _ => None,
    }
}

fn lock(dsm: &mut EmulatedDsm, flags: LockInterfaceFlags) -> [u8; 32] {
    let params = LockInterfaceParams {
        flags,
        ..Default::default()
    };
    match dsm.respond(tdi(), &TdispRequest::LockInterface(params)) {
        TdispResponse::LockInterface { nonce } => nonce,
        other => panic!("lock failed: {other:?}"),
    }
}

struct FailingEntropy;

impl EntropySource for FailingEntropy {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError("no entropy".into()))
    }
}

mod errors {
    use super::*;

    #[test]
    fn start_with_a_wrong_nonce_is_invalid_nonce_and_stays_locked() {
        let mut dsm = dsm();
        let mut nonce = lock(&mut dsm, LockInterfaceFlags::new());
        nonce[31] ^= 1;
        let response = dsm.respond(tdi(), &TdispRequest::StartInterface { nonce });
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_NONCE));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigLocked));
        nonce[31] ^= 1;
        let response = dsm.respond(tdi(), &TdispRequest::StartInterface { nonce });
        assert_eq!(response, TdispResponse::StartInterface);
    }

    #[test]
    fn nonce_of_an_earlier_lock_is_refused() {
        let mut dsm = dsm();
        let old = lock(&mut dsm, LockInterfaceFlags::new());
        dsm.respond(tdi(), &TdispRequest::StopInterface);
        let new = lock(&mut dsm, LockInterfaceFlags::new());
        assert_ne!(old, new, "every lock draws a fresh nonce");
        let response = dsm.respond(tdi(), &TdispRequest::StartInterface { nonce: old });
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_NONCE));
    }

    #[test]
    fn lock_without_entropy_is_insufficient_entropy_and_stays_unlocked() {
        let mut dsm =
            EmulatedDsm::with_entropy(DsmConfig::single_function(RID), Box::new(FailingEntropy))
                .unwrap();
        let response = dsm.respond(tdi(), &TdispRequest::LockInterface(Default::default()));
        assert_eq!(code(&response), Some(TdispErrorCode::INSUFFICIENT_ENTROPY));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigUnlocked));
    }

    #[test]
    fn lock_with_memory_space_disabled_is_invalid_device_configuration() {
        let mut config = DsmConfig::single_function(RID);
        config.functions[0].memory_space_enabled = false;
        let mut dsm = EmulatedDsm::new(config).unwrap();
        let response = dsm.respond(tdi(), &TdispRequest::LockInterface(Default::default()));
        assert_eq!(
            code(&response),
            Some(TdispErrorCode::INVALID_DEVICE_CONFIGURATION)
        );
    }

    #[test]
    fn lock_with_unsupported_flags_or_overflowing_offset_is_invalid_request() {
        let mut config = DsmConfig::single_function(RID);
        config.capabilities.lock_flags_supported =
            LockInterfaceFlags::new().with_no_fw_update(true);
        let mut dsm = EmulatedDsm::new(config).unwrap();
        let params = LockInterfaceParams {
            flags: LockInterfaceFlags::new().with_bind_p2p(true),
            ..Default::default()
        };
        let response = dsm.respond(tdi(), &TdispRequest::LockInterface(params));
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_REQUEST));
        let params = LockInterfaceParams {
            mmio_reporting_offset: u64::MAX,
            ..Default::default()
        };
        let response = dsm.respond(tdi(), &TdispRequest::LockInterface(params));
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_REQUEST));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigUnlocked));
    }

    #[test]
    fn unknown_interface_is_invalid_interface() {
        let mut dsm = dsm();
        let other = InterfaceId::from_requester_id(RID + 1);
        let response = dsm.respond(other, &TdispRequest::GetVersion);
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_INTERFACE));
        let segment = InterfaceId {
            function_id: tdi().function_id.with_segment(1).with_segment_valid(true),
        };
        let response = dsm.respond(segment, &TdispRequest::GetVersion);
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_INTERFACE));
    }

    #[test]
    fn report_offset_past_the_end_is_invalid_request() {
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        let response = dsm.respond(
            tdi(),
            &TdispRequest::GetDeviceInterfaceReport {
                offset: 60_000,
                length: 4,
            },
        );
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_REQUEST));
        let response = dsm.respond(
            tdi(),
            &TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 0,
            },
        );
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_REQUEST));
    }

    #[test]
    fn p2p_without_the_lock_flag_or_twice_is_invalid_request() {
        let mut dsm = dsm();
        let nonce = lock(&mut dsm, LockInterfaceFlags::new());
        dsm.respond(tdi(), &TdispRequest::StartInterface { nonce });
        let bind = TdispRequest::BindP2pStream {
            p2p_stream_id: 1,
            stream_config: None,
        };
        assert_eq!(
            code(&dsm.respond(tdi(), &bind)),
            Some(TdispErrorCode::INVALID_REQUEST)
        );

        let mut dsm = super::dsm();
        let nonce = lock(&mut dsm, LockInterfaceFlags::new().with_bind_p2p(true));
        dsm.respond(tdi(), &TdispRequest::StartInterface { nonce });
        assert_eq!(dsm.respond(tdi(), &bind), TdispResponse::BindP2pStream);
        assert_eq!(
            code(&dsm.respond(tdi(), &bind)),
            Some(TdispErrorCode::INVALID_REQUEST)
        );
        let xt = TdispRequest::BindP2pStream {
            p2p_stream_id: 2,
            stream_config: Some(1),
        };
        assert_eq!(
            code(&dsm.respond(tdi(), &xt)),
            Some(TdispErrorCode::INVALID_REQUEST),
            "XT stream without XT mode"
        );
    }

    #[test]
    fn set_mmio_attribute_on_a_fixed_range_is_invalid_request() {
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        // The MSI-X table page of BAR 0, which is not updatable.
        let range = MmioRange {
            first_page: 0xf000_0000,
            number_of_pages: 1,
            attributes: MmioRangeAttributesExt::table_non_tee(),
            range_id: 0,
        };
        let response = dsm.respond(tdi(), &TdispRequest::SetMmioAttribute(range));
        assert_eq!(code(&response), Some(TdispErrorCode::INVALID_REQUEST));
    }

    struct MmioRangeAttributesExt;
    impl MmioRangeAttributesExt {
        fn table_non_tee() -> tdisp_proto::pcie::report::MmioRangeAttributes {
            tdisp_proto::pcie::report::MmioRangeAttributes::new()
                .with_msix_table(true)
                .with_non_tee_memory(true)
        }
    }

    #[test]
    fn set_tdisp_config_needs_xt_support_and_defined_bits() {
        let mut dsm = dsm();
        let xt = TdispRequest::SetTdispConfig { dsm_config: 1 };
        assert_eq!(
            code(&dsm.respond(tdi(), &xt)),
            Some(TdispErrorCode::INVALID_REQUEST)
        );
        let mut config = DsmConfig::single_function(RID);
        config.capabilities.xt_mode_supported = true;
        let mut dsm = EmulatedDsm::new(config).unwrap();
        assert_eq!(dsm.respond(tdi(), &xt), TdispResponse::SetTdispConfig);
        let reserved = TdispRequest::SetTdispConfig { dsm_config: 4 };
        assert_eq!(
            code(&dsm.respond(tdi(), &reserved)),
            Some(TdispErrorCode::INVALID_REQUEST)
        );
        lock(&mut dsm, LockInterfaceFlags::new());
        let report = match dsm.respond(
            tdi(),
            &TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 1024,
            },
        ) {
            TdispResponse::DeviceInterfaceReport { portion, .. } => portion,
            other => panic!("{other:?}"),
        };
        let report = DeviceInterfaceReport::decode(&report).unwrap();
        assert!(report.interface_info.xt_mode());
    }
}

mod wire {
    use super::*;

    fn raw_request(request: &TdispRequest) -> Vec<u8> {
        TdispMessage::new(tdi(), request.clone()).to_bytes()
    }

    fn error_code_of(response: &[u8]) -> Option<TdispErrorCode> {
        let (_, response) = TdispResponse::decode(response).unwrap();
        code(&response)
    }

    #[test]
    fn other_tdisp_version_is_version_mismatch() {
        let mut dsm = dsm();
        let mut bytes = raw_request(&TdispRequest::GetVersion);
        bytes[0] = 0x20;
        let response = dsm.handle_tdisp(&bytes);
        assert_eq!(
            error_code_of(&response),
            Some(TdispErrorCode::VERSION_MISMATCH)
        );
        let (interface, _) = TdispResponse::decode(&response).unwrap();
        assert_eq!(interface, tdi());
    }

    #[test]
    fn unknown_or_response_codes_are_unsupported_request() {
        let mut dsm = dsm();
        for message_type in [0x8d, 0x01, 0x7f] {
            let mut bytes = raw_request(&TdispRequest::GetVersion);
            bytes[1] = message_type;
            assert_eq!(
                error_code_of(&dsm.handle_tdisp(&bytes)),
                Some(TdispErrorCode::UNSUPPORTED_REQUEST),
                "{message_type:#x}"
            );
        }
    }

    #[test]
    fn malformed_bodies_and_short_headers_are_invalid_request() {
        let mut dsm = dsm();
        let mut long = raw_request(&TdispRequest::GetVersion);
        long.push(0);
        let short = raw_request(&TdispRequest::StartInterface { nonce: [0; 32] });
        for bytes in [long, short[..20].to_vec(), vec![0x10; 5], Vec::new()] {
            assert_eq!(
                error_code_of(&dsm.handle_tdisp(&bytes)),
                Some(TdispErrorCode::INVALID_REQUEST)
            );
        }
    }

    #[test]
    fn malformed_request_for_unknown_interface_is_invalid_interface() {
        let mut dsm = dsm();
        let mut bytes = TdispMessage::new(
            InterfaceId::from_requester_id(RID + 1),
            TdispRequest::GetVersion,
        )
        .to_bytes();
        bytes.push(0);
        assert_eq!(
            error_code_of(&dsm.handle_tdisp(&bytes)),
            Some(TdispErrorCode::INVALID_INTERFACE)
        );
    }

    /// A PCI-SIG VENDOR_DEFINED_REQUEST (SPDM 1.2) carrying IDE_KM QUERY for port 1.
    const IDE_KM_QUERY: [u8; 15] = [
        0x12, 0xfe, 0, 0, 0x03, 0x00, 0x02, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];

    #[test]
    fn ide_km_is_refused_outside_a_session() {
        let mut dsm = dsm();
        assert_eq!(
            dsm.handle_spdm(&IDE_KM_QUERY),
            [0x12, 0x7f, SPDM_ERROR_UNSUPPORTED_REQUEST, 0]
        );
    }

    #[test]
    fn ide_km_in_a_session_gets_a_vendor_response() {
        let mut dsm = dsm();
        let response = dsm.handle_session_vendor(&IDE_KM_QUERY);
        // Header, StandardID 3, Len 2, VendorID 1, RespLength 36, protocol 0, QUERY_RESP.
        assert_eq!(
            response[..19],
            [
                0x12, 0x7e, 0, 0, 0x03, 0x00, 0x02, 0x01, 0x00, 36, 0x00, 0x00, 0x01, 0x00, 0x01,
                0, 0, 0, 0x01
            ]
        );
        assert_eq!(response.len(), 11 + 36);
        // A malformed IDE_KM object gets SPDM ERROR(InvalidRequest) and changes nothing.
        let mut bad = IDE_KM_QUERY;
        bad[14] = 9;
        assert_eq!(
            dsm.handle_session_vendor(&bad),
            [0x12, 0x7f, SPDM_ERROR_INVALID_REQUEST, 0]
        );
        assert_eq!(dsm.ide_km().programmed(), 0);
    }

    #[test]
    fn spdm_vendor_request_gets_a_vendor_response_even_when_padded() {
        let mut dsm = dsm();
        let mut request = Vec::new();
        spdm::encode_tdisp(
            SPDM_VERSION_1_2,
            Direction::Request,
            &TdispMessage::new(tdi(), TdispRequest::GetDeviceInterfaceState),
            &mut request,
        )
        .unwrap();
        request.extend([0, 0, 0]);
        let response = dsm.handle_spdm(&request);
        let (version, message) =
            spdm::decode_tdisp::<TdispResponse>(&response, Direction::Response).unwrap();
        assert_eq!(version, SPDM_VERSION_1_2);
        assert_eq!(
            message.body,
            TdispResponse::DeviceInterfaceState {
                state: TdiState::ConfigUnlocked
            }
        );
    }

    #[test]
    fn other_spdm_requests_get_an_spdm_error() {
        let mut dsm = dsm();
        // SPDM GET_VERSION.
        assert_eq!(
            dsm.handle_spdm(&[0x10, 0x84, 0, 0]),
            vec![0x10, SPDM_ERROR, SPDM_ERROR_UNSUPPORTED_REQUEST, 0x84]
        );
        assert_eq!(
            dsm.handle_spdm(&[0x20, 0xfe, 0, 0]),
            vec![0x12, SPDM_ERROR, SPDM_ERROR_VERSION_MISMATCH, 0]
        );
        assert_eq!(
            dsm.handle_spdm(&[0x12]),
            vec![0x12, SPDM_ERROR, SPDM_ERROR_INVALID_REQUEST, 0]
        );
    }

    #[test]
    fn doe_discovery_lists_discovery_and_spdm() {
        let mut dsm = dsm();
        let mut found = Vec::new();
        let mut index = 0u8;
        loop {
            let request = DiscoveryRequestWire {
                index,
                version: 0,
                reserved: [0; 2],
            };
            let mut object = Vec::new();
            DoeObject::new(DoeObjectType::DISCOVERY, request.as_bytes()).encode(&mut object);
            let response = dsm.exchange(&object).unwrap();
            let response = DoeObject::decode(&response).unwrap();
            let (entry, _) = DiscoveryResponseWire::read_from_prefix(response.payload).unwrap();
            found.push((entry.vendor_id.get(), entry.object_type));
            if entry.next_index == 0 {
                break;
            }
            index = entry.next_index;
        }
        assert_eq!(found, vec![(1, 0), (1, 1)]);
    }

    #[test]
    fn malformed_or_unsupported_doe_objects_set_the_error_bit() {
        let mut dsm = dsm();
        assert!(matches!(
            dsm.exchange(&[1, 2, 3]),
            Err(MailboxError::DeviceError(_))
        ));
        let mut secured = Vec::new();
        DoeObject::new(DoeObjectType::SECURED_SPDM, &[0; 8]).encode(&mut secured);
        assert!(matches!(
            dsm.exchange(&secured),
            Err(MailboxError::DeviceError(_))
        ));
        assert!(matches!(
            dsm.exchange(&vec![0; MAX_DOE_OBJECT_SIZE + 1]),
            Err(MailboxError::TooLarge(_))
        ));
    }
}

mod config_changes {
    use super::*;

    fn move_bar() -> ConfigChange {
        ConfigChange::MoveBar {
            requester_id: RID,
            bar: 0,
            new_address: 0xc000_0000,
        }
    }

    #[test]
    fn bar_move_while_run_moves_the_tdi_to_error_and_only_stop_leaves_it() {
        let mut dsm = dsm();
        let nonce = lock(&mut dsm, LockInterfaceFlags::new());
        dsm.respond(tdi(), &TdispRequest::StartInterface { nonce });
        assert_eq!(dsm.apply_config_change(move_bar()), Ok(vec![RID]));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::Error));
        let report = dsm.respond(
            tdi(),
            &TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 16,
            },
        );
        assert_eq!(code(&report), Some(TdispErrorCode::INVALID_INTERFACE_STATE));
        dsm.respond(tdi(), &TdispRequest::StopInterface);
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigUnlocked));
    }

    #[test]
    fn bar_move_while_unlocked_is_harmless_and_shows_in_the_next_report() {
        let mut dsm = dsm();
        assert_eq!(dsm.apply_config_change(move_bar()), Ok(vec![]));
        lock(&mut dsm, LockInterfaceFlags::new());
        let TdispResponse::DeviceInterfaceReport { portion, .. } = dsm.respond(
            tdi(),
            &TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 1024,
            },
        ) else {
            panic!("no report");
        };
        let report = DeviceInterfaceReport::decode(&portion).unwrap();
        assert_eq!(report.mmio_ranges[0].first_page, 0xc000_0000);
    }

    #[test]
    fn firmware_update_breaks_only_a_no_fw_update_lock() {
        let update = ConfigChange::FirmwareUpdate { new_version: 9 };
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        assert_eq!(dsm.apply_config_change(update), Ok(vec![]));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigLocked));

        let mut dsm = super::dsm();
        lock(&mut dsm, LockInterfaceFlags::new().with_no_fw_update(true));
        assert_eq!(dsm.apply_config_change(update), Ok(vec![RID]));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::Error));
    }

    #[test]
    fn msix_change_breaks_only_a_locked_msix() {
        let change = ConfigChange::SetMsixControl {
            requester_id: RID,
            message_control: 0x8000,
        };
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        assert_eq!(dsm.apply_config_change(change), Ok(vec![]));

        let mut dsm = super::dsm();
        lock(&mut dsm, LockInterfaceFlags::new().with_lock_msix(true));
        assert_eq!(dsm.apply_config_change(change), Ok(vec![RID]));
    }

    #[test]
    fn memory_space_disable_while_locked_moves_to_error() {
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        let change = ConfigChange::SetMemorySpaceEnable {
            requester_id: RID,
            enabled: false,
        };
        assert_eq!(dsm.apply_config_change(change), Ok(vec![RID]));
    }

    #[test]
    fn refused_change_keeps_the_tdi_state() {
        let mut dsm = dsm();
        lock(&mut dsm, LockInterfaceFlags::new());
        let bad = ConfigChange::MoveBar {
            requester_id: RID,
            bar: 5,
            new_address: 0,
        };
        assert_eq!(
            dsm.apply_config_change(bad),
            Err(ConfigError::UnknownBar(5))
        );
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigLocked));
    }
}

mod functions {
    use super::*;
    use crate::dsm::config::FunctionConfig;

    #[test]
    fn each_function_is_its_own_tdi_and_changes_hit_only_their_targets() {
        let mut config = DsmConfig::single_function(RID);
        config
            .functions
            .push(FunctionConfig::simple(RID + 1, 0xe000_0000));
        let mut dsm = EmulatedDsm::new(config).unwrap();
        let other = InterfaceId::from_requester_id(RID + 1);
        let flags = LockInterfaceFlags::new().with_no_fw_update(true);
        lock(&mut dsm, flags);
        let params = LockInterfaceParams {
            flags,
            ..Default::default()
        };
        assert!(matches!(
            dsm.respond(other, &TdispRequest::LockInterface(params)),
            TdispResponse::LockInterface { .. }
        ));
        let moved = ConfigChange::MoveBar {
            requester_id: RID + 1,
            bar: 0,
            new_address: 0xa000_0000,
        };
        assert_eq!(dsm.apply_config_change(moved), Ok(vec![RID + 1]));
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigLocked));
        // A firmware update reaches every function locked without updates.
        dsm.respond(other, &TdispRequest::StopInterface);
        lock_other(&mut dsm, other, flags);
        let update = ConfigChange::FirmwareUpdate { new_version: 2 };
        assert_eq!(dsm.apply_config_change(update), Ok(vec![RID, RID + 1]));
    }

    fn lock_other(dsm: &mut EmulatedDsm, interface: InterfaceId, flags: LockInterfaceFlags) {
        let params = LockInterfaceParams {
            flags,
            ..Default::default()
        };
        assert!(matches!(
            dsm.respond(interface, &TdispRequest::LockInterface(params)),
            TdispResponse::LockInterface { .. }
        ));
    }
}

mod portions {
    use super::*;

    #[test]
    fn report_larger_than_a_portion_reassembles_byte_exact() {
        let mut config = DsmConfig::single_function(RID);
        config.max_report_portion = 13;
        config.functions[0].device_specific_info = (0..=255u8).cycle().take(700).collect();
        let expected = config.functions[0]
            .build_report(LockInterfaceFlags::new(), 0x1000, false)
            .unwrap()
            .to_bytes();
        let mut dsm = EmulatedDsm::new(config).unwrap();
        let params = LockInterfaceParams {
            mmio_reporting_offset: 0x1000,
            ..Default::default()
        };
        dsm.respond(tdi(), &TdispRequest::LockInterface(params));
        let mut assembler = ReportAssembler::new();
        let mut requests = 0;
        while let Some(offset) = assembler.next_offset() {
            let response = dsm.respond(
                tdi(),
                &TdispRequest::GetDeviceInterfaceReport {
                    offset,
                    length: u16::MAX,
                },
            );
            let TdispResponse::DeviceInterfaceReport {
                remainder_length,
                portion,
            } = response
            else {
                panic!("{response:?}");
            };
            assert!(portion.len() <= 13);
            assembler.push(&portion, remainder_length).unwrap();
            requests += 1;
        }
        assert_eq!(requests, expected.len().div_ceil(13));
        assert_eq!(assembler.finish().unwrap(), expected);
    }
}

mod spdm_emu_quirks {
    use super::*;

    fn quirky() -> EmulatedDsm {
        let mut config = DsmConfig::single_function(RID);
        config.spdm_emu_quirks = true;
        EmulatedDsm::new(config).unwrap()
    }

    #[test]
    fn stop_in_config_unlocked_is_invalid_interface_state_and_works_elsewhere() {
        let mut dsm = quirky();
        let response = dsm.respond(tdi(), &TdispRequest::StopInterface);
        assert_eq!(
            code(&response),
            Some(TdispErrorCode::INVALID_INTERFACE_STATE)
        );
        lock(&mut dsm, LockInterfaceFlags::new());
        let response = dsm.respond(tdi(), &TdispRequest::StopInterface);
        assert_eq!(response, TdispResponse::StopInterface);
        assert_eq!(dsm.tdi_state(RID), Some(TdiState::ConfigUnlocked));
        // Without the quirks STOP is accepted in CONFIG_UNLOCKED.
        assert_eq!(
            super::dsm().respond(tdi(), &TdispRequest::StopInterface),
            TdispResponse::StopInterface
        );
    }

    #[test]
    fn capabilities_advertise_spdm_emus_bitmap() {
        let caps = quirky().capabilities();
        assert_eq!(caps.req_msg_supported.0[0], 0x7f);
        assert!(caps.req_msg_supported.0[1..].iter().all(|&b| b == 0));
        assert!(
            !caps
                .req_msg_supported
                .supports(TdispMessageType::STOP_INTERFACE_REQUEST)
        );
        assert!(
            dsm()
                .capabilities()
                .req_msg_supported
                .supports(TdispMessageType::STOP_INTERFACE_REQUEST)
        );
    }
}
