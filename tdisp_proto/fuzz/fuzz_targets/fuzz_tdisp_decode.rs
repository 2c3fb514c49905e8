//! Every TDISP decoder on the same bytes: none may panic, and whatever decodes must re-encode
//! to exactly the input (the codecs are bijective on valid input); the protobuf guest<->host messages must re-decode
//! to the same value.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SpdmVendorMessage;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::ResponsePacket;

fn spdm_round_trip(data: &[u8], direction: Direction) {
    if let Ok(vendor) = SpdmVendorMessage::decode(data, direction) {
        let mut out = Vec::new();
        vendor.encode(&mut out).unwrap();
        assert_eq!(out, data);
    }
    if let Ok((version, message)) = spdm::decode_tdisp::<TdispRequest>(data, direction) {
        let mut out = Vec::new();
        spdm::encode_tdisp(version, direction, &message, &mut out).unwrap();
        assert_eq!(out, data);
    }
    if let Ok((version, message)) = spdm::decode_tdisp::<TdispResponse>(data, direction) {
        let mut out = Vec::new();
        spdm::encode_tdisp(version, direction, &message, &mut out).unwrap();
        assert_eq!(out, data);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = TdispMessage::<TdispRequest>::decode(data) {
        assert_eq!(message.to_bytes(), data);
    }
    if let Ok(message) = TdispMessage::<TdispResponse>::decode(data) {
        assert_eq!(message.to_bytes(), data);
    }
    if let Ok(report) = DeviceInterfaceReport::decode(data) {
        assert_eq!(report.to_bytes(), data);
    }
    // Protobuf allows several encodings of one value (unknown fields, field order), so the
    // guest<->host messages must decode back to the same value rather than the same bytes.
    if let Ok(packet) = CommandPacket::decode(data) {
        assert_eq!(CommandPacket::decode(&packet.encode()), Ok(packet));
    }
    if let Ok(packet) = ResponsePacket::decode(data) {
        let encoded = packet.encode().unwrap();
        assert_eq!(ResponsePacket::decode(&encoded), Ok(packet));
    }
    spdm_round_trip(data, Direction::Request);
    spdm_round_trip(data, Direction::Response);
    // The full transport stack: DOE object -> SPDM vendor message -> TDISP.
    if let Ok(object) = DoeObject::decode(data) {
        if let Ok(message) = spdm::strip_doe_padding(object.payload) {
            assert!(object.payload.starts_with(message));
            assert!(object.payload.len() - message.len() < 4);
            spdm_round_trip(message, Direction::Request);
            spdm_round_trip(message, Direction::Response);
        }
    }
});
