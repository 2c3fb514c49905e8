//! Every SPDM 1.2 message decoder facing arbitrary bytes: the first byte picks the decoder.
//! Nothing may panic, and a message that decodes must encode back to a message that decodes
//! to the same value.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_host::spdm::codes::*;
use tdisp_host::spdm::messages::*;

fn round_trip<T: PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    if let Ok(message) = decode(bytes) {
        let again = decode(&encode(&message)).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 16 {
        0 => round_trip(bytes, Version::decode, Version::encode),
        1 => round_trip(
            bytes,
            |b| Capabilities::decode(b, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES),
            |m| m.encode(SpdmCode::CAPABILITIES),
        ),
        2 => round_trip(
            bytes,
            NegotiateAlgorithms::decode,
            NegotiateAlgorithms::encode,
        ),
        3 => round_trip(bytes, Algorithms::decode, Algorithms::encode),
        4 => round_trip(bytes, Digests::decode, Digests::encode),
        5 => round_trip(bytes, GetCertificate::decode, GetCertificate::encode),
        6 => round_trip(bytes, Certificate::decode, Certificate::encode),
        7 => round_trip(bytes, GetMeasurements::decode, GetMeasurements::encode),
        8 => round_trip(
            bytes,
            |b| Measurements::decode(b, selector & 0x80 != 0).map(|(m, _)| m),
            Measurements::encode,
        ),
        9 => round_trip(bytes, KeyExchange::decode, KeyExchange::encode),
        10 => round_trip(
            bytes,
            |b| KeyExchangeRsp::decode(b, selector & 0x80 != 0).map(|(m, _)| m),
            KeyExchangeRsp::encode,
        ),
        11 => round_trip(bytes, Finish::decode, Finish::encode),
        12 => {
            let _ = ErrorResponse::decode(bytes).map(|e| e.not_ready());
        }
        13 => round_trip(
            bytes,
            |b| VendorDefined::decode(b, SpdmCode::VENDOR_DEFINED_REQUEST),
            |m| {
                m.encode()
                    .expect("a decoded message fits its length fields")
            },
        ),
        14 => {
            let _ = MeasurementBlock::parse_record(bytes);
        }
        _ => {
            let _ = Header::peek(bytes);
            for code in [
                SpdmCode::GET_VERSION,
                SpdmCode::END_SESSION,
                SpdmCode::FINISH_RSP,
            ] {
                let _ = decode_header_only(bytes, SPDM_VERSION_1_2, code);
            }
        }
    }
});
