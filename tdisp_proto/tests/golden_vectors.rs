//! Golden byte vectors written by hand from the PCIe 6.1 section 11 layouts (see
//! `shared/reference/tdisp.md`), one or more per TDISP message code, plus SPDM/DOE framing
//! (the guest<->host protobuf vectors are in `wire_vectors.rs`). None of these bytes come from this crate's encoder: each test
//! decodes the bytes, checks the typed fields, and checks that encoding gives the bytes back.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::PciProtocolId;
use tdisp_proto::framing::spdm::SpdmVendorMessage;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::DecodeError;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispMessageType;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::capabilities::DsmCaps;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::pcie::vdm::VendorDefinedBody;

/// Parses hex digits, ignoring whitespace and `|` separators.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The header for message `code` about requester id 0x0100 (bus 1, device 0, function 0):
/// version 0x10, code, two reserved bytes, function id 0x00000100 LE, eight reserved bytes.
fn header(code: &str) -> String {
    format!("10 {code} 00 00 | 00 01 00 00 | 00 00 00 00 00 00 00 00 |")
}

fn tdi() -> InterfaceId {
    InterfaceId::from_requester_id(0x0100)
}

/// Decodes `bytes` as a request, compares with `expected`, and re-encodes to the same bytes.
fn check_request(bytes: &[u8], expected: TdispRequest) {
    let decoded = TdispMessage::<TdispRequest>::decode(bytes).unwrap();
    assert_eq!(decoded, TdispMessage::new(tdi(), expected));
    assert_eq!(decoded.to_bytes(), bytes);
}

fn check_response(bytes: &[u8], expected: TdispResponse) {
    let decoded = TdispMessage::<TdispResponse>::decode(bytes).unwrap();
    assert_eq!(decoded, TdispMessage::new(tdi(), expected));
    assert_eq!(decoded.to_bytes(), bytes);
}

fn nonce(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

mod header {
    use super::*;

    #[test]
    fn function_id_bitfield_matches_spec_bits() {
        // Requester id 0x1234 in bits 15:0, segment 0x56 in 23:16, segment valid at bit 24.
        let bytes = hex("10 81 00 00 | 34 12 56 01 | 00 00 00 00 00 00 00 00");
        let (id, body) = TdispRequest::decode(&bytes).unwrap();
        assert_eq!(body, TdispRequest::GetVersion);
        assert_eq!(id.function_id.requester_id(), 0x1234);
        assert_eq!(id.function_id.segment(), 0x56);
        assert!(id.function_id.segment_valid());
        let mut out = Vec::new();
        body.encode(id, &mut out);
        assert_eq!(out, bytes);
    }
}

mod requests {
    use super::*;

    #[test]
    fn get_tdisp_version_0x81() {
        check_request(&hex(&header("81")), TdispRequest::GetVersion);
    }

    #[test]
    fn get_tdisp_capabilities_0x82() {
        let bytes = hex(&(header("82") + "78 56 34 12"));
        check_request(
            &bytes,
            TdispRequest::GetCapabilities {
                tsm_caps: 0x1234_5678,
            },
        );
    }

    #[test]
    fn lock_interface_request_0x83() {
        // flags NO_FW_UPDATE | LOCK_MSIX = 0x0005, stream 2, reserved, offset 1 << 32, mask 0.
        let bytes =
            hex(&(header("83")
                + "05 00 | 02 | 00 | 00 00 00 00 01 00 00 00 | 00 00 00 00 00 00 00 00"));
        check_request(
            &bytes,
            TdispRequest::LockInterface(LockInterfaceParams {
                flags: LockInterfaceFlags::new()
                    .with_no_fw_update(true)
                    .with_lock_msix(true),
                default_stream_id: 2,
                mmio_reporting_offset: 1 << 32,
                bind_p2p_address_mask: 0,
            }),
        );
    }

    #[test]
    fn get_device_interface_report_0x84() {
        let bytes = hex(&(header("84") + "00 00 | 00 04"));
        check_request(
            &bytes,
            TdispRequest::GetDeviceInterfaceReport {
                offset: 0,
                length: 0x400,
            },
        );
    }

    #[test]
    fn get_device_interface_state_0x85() {
        check_request(&hex(&header("85")), TdispRequest::GetDeviceInterfaceState);
    }

    #[test]
    fn start_interface_request_0x86() {
        let bytes = hex(&(header("86")
            + "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
            + "10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f"));
        check_request(&bytes, TdispRequest::StartInterface { nonce: nonce(0) });
    }

    #[test]
    fn stop_interface_request_0x87() {
        check_request(&hex(&header("87")), TdispRequest::StopInterface);
    }

    #[test]
    fn bind_p2p_stream_request_0x88_both_revisions() {
        check_request(
            &hex(&(header("88") + "03 01")),
            TdispRequest::BindP2pStream {
                p2p_stream_id: 3,
                stream_config: Some(1),
            },
        );
        check_request(
            &hex(&(header("88") + "03")),
            TdispRequest::BindP2pStream {
                p2p_stream_id: 3,
                stream_config: None,
            },
        );
    }

    #[test]
    fn unbind_p2p_stream_request_0x89() {
        check_request(
            &hex(&(header("89") + "03")),
            TdispRequest::UnbindP2pStream { p2p_stream_id: 3 },
        );
    }

    #[test]
    fn set_mmio_attribute_request_0x8a() {
        // first_page 0xfe000000, 16 pages, attributes NON_TEE_MEM (0x4), range id 0.
        let bytes = hex(&(header("8a") + "00 00 00 fe 00 00 00 00 | 10 00 00 00 | 04 00 | 00 00"));
        check_request(
            &bytes,
            TdispRequest::SetMmioAttribute(MmioRange {
                first_page: 0xfe00_0000,
                number_of_pages: 16,
                attributes: MmioRangeAttributes::new().with_non_tee_memory(true),
                range_id: 0,
            }),
        );
    }

    #[test]
    fn vdm_request_0x8b() {
        // registry PCI-SIG (0), vendor id length 2, vendor id 0x8086 LE, data de ad.
        let bytes = hex(&(header("8b") + "00 02 86 80 de ad"));
        check_request(
            &bytes,
            TdispRequest::Vdm(VendorDefinedBody {
                registry_id: 0,
                vendor_id: vec![0x86, 0x80],
                data: vec![0xde, 0xad],
            }),
        );
    }

    #[test]
    fn set_tdisp_config_request_0x8c() {
        check_request(
            &hex(&(header("8c") + "01 00 00 00")),
            TdispRequest::SetTdispConfig { dsm_config: 1 },
        );
    }
}

mod responses {
    use super::*;

    #[test]
    fn tdisp_version_0x01() {
        check_response(
            &hex(&(header("01") + "01 10")),
            TdispResponse::Version {
                versions: vec![0x10],
            },
        );
    }

    #[test]
    fn tdisp_capabilities_0x02() {
        // dsm_caps XT (1); requests 0x81..=0x87 are bits 1..=7 of byte 0 (0xfe); lock flags
        // 0x1f; 3 reserved; address width 52; 1 request for this TDI; 4 for all.
        let bytes = hex(&(header("02")
            + "01 00 00 00 | fe 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 | 1f 00 | 00 00 00 | 34 | 01 | 04"));
        let requests = (0x81..=0x87).map(TdispMessageType);
        let caps = Capabilities {
            dsm_caps: DsmCaps::new().with_xt_mode_supported(true),
            req_msg_supported: tdisp_proto::pcie::RequestBitmap::from_requests(requests),
            lock_interface_flags_supported: LockInterfaceFlags::from_bits(0x1f),
            dev_addr_width: 52,
            num_req_this: 1,
            num_req_all: 4,
        };
        check_response(&bytes, TdispResponse::Capabilities(caps));
        assert!(
            caps.req_msg_supported
                .supports(TdispMessageType::STOP_INTERFACE_REQUEST)
        );
        assert!(
            !caps
                .req_msg_supported
                .supports(TdispMessageType::BIND_P2P_STREAM_REQUEST)
        );
    }

    #[test]
    fn lock_interface_response_0x03() {
        let bytes = hex(&(header("03")
            + "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af"
            + "b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf"));
        check_response(&bytes, TdispResponse::LockInterface { nonce: nonce(0xa0) });
    }

    #[test]
    fn device_interface_report_0x04() {
        // portion_length 4, remainder_length 0x10, then the 4 portion bytes.
        check_response(
            &hex(&(header("04") + "04 00 | 10 00 | 01 02 03 04")),
            TdispResponse::DeviceInterfaceReport {
                remainder_length: 0x10,
                portion: vec![1, 2, 3, 4],
            },
        );
    }

    #[test]
    fn device_interface_state_0x05() {
        check_response(
            &hex(&(header("05") + "01")),
            TdispResponse::DeviceInterfaceState {
                state: TdiState::ConfigLocked,
            },
        );
    }

    #[test]
    fn bodiless_responses_0x06_to_0x0a_and_0x0c() {
        for (code, body) in [
            ("06", TdispResponse::StartInterface),
            ("07", TdispResponse::StopInterface),
            ("08", TdispResponse::BindP2pStream),
            ("09", TdispResponse::UnbindP2pStream),
            ("0a", TdispResponse::SetMmioAttribute),
            ("0c", TdispResponse::SetTdispConfig),
        ] {
            check_response(&hex(&header(code)), body);
        }
    }

    #[test]
    fn vdm_response_0x0b() {
        check_response(
            &hex(&(header("0b") + "00 02 86 80 be ef")),
            TdispResponse::Vdm(VendorDefinedBody {
                registry_id: 0,
                vendor_id: vec![0x86, 0x80],
                data: vec![0xbe, 0xef],
            }),
        );
    }

    #[test]
    fn tdisp_error_0x7f() {
        check_response(
            &hex(&(header("7f") + "04 00 00 00 | 00 00 00 00")),
            TdispResponse::Error(TdispErrorResponse::new(
                TdispErrorCode::INVALID_INTERFACE_STATE,
            )),
        );
        check_response(
            &hex(&(header("7f") + "02 01 00 00 | 00 00 00 00")),
            TdispResponse::Error(TdispErrorResponse::new(TdispErrorCode::INVALID_NONCE)),
        );
        // Vendor-specific error with extended data: registry 0, vendor id 0x8086, data 01.
        check_response(
            &hex(&(header("7f") + "ff 00 00 00 | 07 00 00 00 | 00 02 86 80 01")),
            TdispResponse::Error(TdispErrorResponse {
                code: TdispErrorCode::VENDOR_SPECIFIC_ERROR,
                data: 7,
                extended: vec![0x00, 0x02, 0x86, 0x80, 0x01],
            }),
        );
    }
}

mod report {
    use super::*;

    /// The reference report shape: interface_info NO_FW_UPDATE | DMA_WITHOUT_PASID, four MMIO
    /// ranges (BAR0, MSI-X table, MSI-X PBA, a non-TEE BAR4), 4 bytes of device info.
    fn golden_report_bytes() -> Vec<u8> {
        hex("03 00 | 00 00 | 07 80 | 00 00 | 00 00 00 00 | 04 00 00 00
             00 00 00 fe 00 00 00 00 | 10 00 00 00 | 00 00 | 00 00
             00 00 01 fe 00 00 00 00 | 01 00 00 00 | 01 00 | 02 00
             00 10 01 fe 00 00 00 00 | 01 00 00 00 | 02 00 | 02 00
             00 00 00 00 01 00 00 00 | 00 01 00 00 | 0c 00 | 04 00
             04 00 00 00 | de ad be ef")
    }

    fn golden_report() -> DeviceInterfaceReport {
        let range = |first_page, number_of_pages, attributes: u16, range_id| MmioRange {
            first_page,
            number_of_pages,
            attributes: MmioRangeAttributes::from_bits(attributes),
            range_id,
        };
        DeviceInterfaceReport {
            interface_info: InterfaceInfo::new()
                .with_no_fw_update(true)
                .with_dma_without_pasid(true),
            msi_x_message_control: 0x8007,
            lnr_control: 0,
            tph_control: 0,
            mmio_ranges: vec![
                range(0xfe00_0000, 16, 0, 0),
                range(0xfe01_0000, 1, 0x1, 2),
                range(0xfe01_1000, 1, 0x2, 2),
                range(0x1_0000_0000, 256, 0xc, 4),
            ],
            device_specific_info: vec![0xde, 0xad, 0xbe, 0xef],
        }
    }

    #[test]
    fn four_range_report_decodes_field_by_field() {
        let bytes = golden_report_bytes();
        assert_eq!(bytes.len(), 16 + 4 * 16 + 4 + 4);
        let report = DeviceInterfaceReport::decode(&bytes).unwrap();
        assert_eq!(report, golden_report());
        assert!(report.mmio_ranges[1].attributes.msix_table());
        assert!(report.mmio_ranges[2].attributes.msix_pba());
        assert!(report.mmio_ranges[3].attributes.non_tee_memory());
        assert!(report.mmio_ranges[3].attributes.attributes_updatable());
        assert_eq!(report.to_bytes(), bytes);
    }

    #[test]
    fn report_rejects_counts_that_disagree_with_bytes() {
        let mut bytes = golden_report_bytes();
        bytes[12] = 5; // five ranges claimed, four present
        assert!(matches!(
            DeviceInterfaceReport::decode(&bytes),
            Err(DecodeError::CountMismatch { .. })
        ));
        let mut bytes = golden_report_bytes();
        bytes.push(0); // one byte more than device_specific_info_len
        assert!(matches!(
            DeviceInterfaceReport::decode(&bytes),
            Err(DecodeError::CountMismatch { .. })
        ));
        let mut bytes = golden_report_bytes();
        bytes[2] = 1; // reserved u16
        assert_eq!(
            DeviceInterfaceReport::decode(&bytes),
            Err(DecodeError::ReservedBits("report reserved"))
        );
    }

    #[test]
    fn report_read_in_portions_reassembles() {
        use tdisp_proto::pcie::report::ReportAssembler;
        use tdisp_proto::pcie::report::report_portion;
        let report = golden_report_bytes();
        let mut assembler = ReportAssembler::new();
        let mut exchanges = 0;
        while let Some(offset) = assembler.next_offset() {
            // The requester asks for 64 bytes, the responder sends at most 40.
            let (portion, remainder) = report_portion(&report, offset, 64, 40).unwrap();
            let response = TdispResponse::DeviceInterfaceReport {
                remainder_length: remainder,
                portion: portion.to_vec(),
            };
            let wire = TdispMessage::new(tdi(), response).to_bytes();
            let TdispResponse::DeviceInterfaceReport {
                remainder_length,
                portion,
            } = TdispMessage::<TdispResponse>::decode(&wire).unwrap().body
            else {
                panic!("wrong response");
            };
            assembler.push(&portion, remainder_length).unwrap();
            exchanges += 1;
        }
        assert_eq!(exchanges, 3); // 40 + 40 + 8 bytes
        assert_eq!(assembler.finish().unwrap(), report);
    }
}

mod framing {
    use super::*;

    /// GET_TDISP_VERSION inside an SPDM 1.2 VENDOR_DEFINED_REQUEST: version 0x12, code 0xfe,
    /// param1/2 0, standard id 3 (PCI-SIG) LE, vendor id length 2, vendor id 0x0001 LE,
    /// payload length 17 LE (protocol id + 16-byte header), protocol id 1 (TDISP).
    fn spdm_get_version() -> Vec<u8> {
        hex(&(String::from("12 fe 00 00 | 03 00 | 02 | 01 00 | 11 00 | 01 |") + &header("81")))
    }

    #[test]
    fn spdm_vendor_request_carries_tdisp() {
        let bytes = spdm_get_version();
        let vendor = SpdmVendorMessage::decode(&bytes, Direction::Request).unwrap();
        assert_eq!(vendor.spdm_version, 0x12);
        assert_eq!(vendor.protocol_id, PciProtocolId::TDISP);
        let (version, message) =
            spdm::decode_tdisp::<TdispRequest>(&bytes, Direction::Request).unwrap();
        assert_eq!(version, 0x12);
        assert_eq!(message, TdispMessage::new(tdi(), TdispRequest::GetVersion));
        let mut out = Vec::new();
        spdm::encode_tdisp(0x12, Direction::Request, &message, &mut out).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn spdm_vendor_response_code_is_0x7e() {
        let bytes = hex(
            &(String::from("12 7e 00 00 | 03 00 | 02 | 01 00 | 13 00 | 01 |")
                + &header("01")
                + "01 10"),
        );
        let (_, message) =
            spdm::decode_tdisp::<TdispResponse>(&bytes, Direction::Response).unwrap();
        assert_eq!(
            message.body,
            TdispResponse::Version {
                versions: vec![0x10]
            }
        );
        // The same bytes are not a request.
        assert!(SpdmVendorMessage::decode(&bytes, Direction::Request).is_err());
    }

    #[test]
    fn doe_object_wraps_spdm_vendor_message() {
        // 8-byte DOE header (vendor 0x0001, type 1 CMA/SPDM, length 9 dwords) + the 28-byte
        // SPDM message, which is already dword aligned.
        let bytes = hex(&(String::from("01 00 | 01 | 00 | 09 00 00 00 |")
            + "12 fe 00 00 | 03 00 | 02 | 01 00 | 11 00 | 01 |"
            + &header("81")));
        let object = DoeObject::decode(&bytes).unwrap();
        assert_eq!(object.object_type, DoeObjectType::SPDM);
        assert_eq!(object.payload, &spdm_get_version()[..]);
        let mut out = Vec::new();
        DoeObject::new(DoeObjectType::SPDM, &spdm_get_version()).encode(&mut out);
        assert_eq!(out, bytes);
    }
}
