//! SPDM 1.2 message codecs against golden vectors assembled by hand from DSP0274 1.2's tables
//! (field by field, as DMTF's libspdm `spdm.h` lays them out), plus hostile-input properties.

#![forbid(unsafe_code)]

use proptest::prelude::*;
use tdisp_host::spdm::codes::*;
use tdisp_host::spdm::messages::*;
use tdisp_host::spdm::secured::Record;

#[test]
fn version_golden() {
    // 1.0 header, reserved, count 2, entries 1.1 and 1.2.
    let bytes = [0x10, 0x04, 0, 0, 0, 2, 0x00, 0x11, 0x00, 0x12];
    let version = Version::decode(&bytes).unwrap();
    assert_eq!(version.entries, vec![0x1100, 0x1200]);
    assert_eq!(version.encode(), bytes);
    // A VERSION that claims more entries than it carries is truncated.
    assert!(matches!(
        Version::decode(&bytes[..8]),
        Err(CodecError::Truncated { .. })
    ));
}

#[test]
fn capabilities_golden() {
    let bytes = [
        0x12, 0x61, 0, 0, // header
        0, 12, 0, 0, // reserved, CTExponent 12, reserved
        0xc2, 0x02, 0, 0, // flags: CERT | ENCRYPT | MAC | KEY_EX
        0x00, 0x10, 0, 0, // DataTransferSize 4096
        0x00, 0x10, 0, 0, // MaxSPDMmsgSize 4096
    ];
    let caps = Capabilities::decode(&bytes, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES).unwrap();
    assert!(caps.flags.cert() && caps.flags.encrypt() && caps.flags.mac() && caps.flags.key_ex());
    assert!(!caps.flags.chal());
    assert_eq!(caps.ct_exponent, 12);
    assert_eq!(caps.data_transfer_size, 4096);
    assert_eq!(caps.encode(SpdmCode::CAPABILITIES), bytes);
    let mut small = bytes;
    small[12] = 41;
    small[13] = 0;
    assert!(matches!(
        Capabilities::decode(&small, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES),
        Err(CodecError::InvalidField {
            field: "DataTransferSize",
            ..
        })
    ));
}

fn algorithms_golden() -> Vec<u8> {
    let mut bytes = vec![0x12, 0x63, 4, 0, 52, 0, 0x01, 0x02];
    bytes.extend_from_slice(&[0x04, 0, 0, 0]); // MeasurementHashAlgo SHA-384
    bytes.extend_from_slice(&[0x80, 0, 0, 0]); // BaseAsymSel ECDSA P-384
    bytes.extend_from_slice(&[0x02, 0, 0, 0]); // BaseHashSel SHA-384
    bytes.extend_from_slice(&[0; 12]);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&[2, 0x20, 0x10, 0x00]); // DHE secp384r1
    bytes.extend_from_slice(&[3, 0x20, 0x02, 0x00]); // AEAD AES-256-GCM
    bytes.extend_from_slice(&[4, 0x20, 0x80, 0x00]); // ReqBaseAsymAlg ECDSA P-384
    bytes.extend_from_slice(&[5, 0x20, 0x01, 0x00]); // KeySchedule SPDM
    bytes
}

#[test]
fn algorithms_golden_and_one_bit_per_selection() {
    let bytes = algorithms_golden();
    let algorithms = Algorithms::decode(&bytes).unwrap();
    assert_eq!(algorithms.base_asym, BASE_ASYM_ECDSA_P384);
    assert_eq!(algorithms.base_hash, BASE_HASH_SHA_384);
    assert_eq!(algorithms.algs.dhe, DHE_SECP384R1);
    assert_eq!(algorithms.algs.aead, AEAD_AES_256_GCM);
    assert_eq!(algorithms.algs.key_schedule, KEY_SCHEDULE_SPDM);
    assert_eq!(algorithms.encode(), bytes);
    let mut two = bytes.clone();
    two[36 + 4 + 2] = 0x03; // AEAD selects two suites
    assert!(matches!(
        Algorithms::decode(&two),
        Err(CodecError::InvalidField { field: "AEAD", .. })
    ));
    let mut short_length = bytes.clone();
    short_length[4] = 48;
    assert!(Algorithms::decode(&short_length).is_err());
}

#[test]
fn negotiate_algorithms_golden() {
    let mut bytes = vec![0x12, 0xe3, 4, 0, 48, 0, 0x01, 0x02];
    bytes.extend_from_slice(&[0x80, 0, 0, 0, 0x02, 0, 0, 0]);
    bytes.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(&[
        2, 0x20, 0x10, 0, 3, 0x20, 0x02, 0, 4, 0x20, 0x80, 0, 5, 0x20, 1, 0,
    ]);
    let request = NegotiateAlgorithms::decode(&bytes).unwrap();
    assert_eq!(request.other_params, OPAQUE_DATA_FMT1);
    assert_eq!(request.encode(), bytes);
    // Structures out of order are refused.
    let mut swapped = bytes.clone();
    swapped[32..36].copy_from_slice(&[3, 0x20, 0x02, 0]);
    swapped[36..40].copy_from_slice(&[2, 0x20, 0x10, 0]);
    assert!(NegotiateAlgorithms::decode(&swapped).is_err());
}

#[test]
fn certificate_golden() {
    let request = [0x12, 0x82, 0, 0, 0x00, 0x01, 0x00, 0x04];
    assert_eq!(
        GetCertificate::decode(&request).unwrap(),
        GetCertificate {
            slot: 0,
            offset: 0x100,
            length: 0x400
        }
    );
    let response = [0x12, 0x02, 0, 0, 3, 0, 0x10, 0, 0xaa, 0xbb, 0xcc];
    let certificate = Certificate::decode(&response).unwrap();
    assert_eq!(certificate.portion, vec![0xaa, 0xbb, 0xcc]);
    assert_eq!(certificate.remainder_length, 0x10);
    assert_eq!(certificate.encode(), response);
    assert!(Certificate::decode(&response[..10]).is_err());
    assert!(matches!(
        Certificate::decode(&[&response[..], &[0]].concat()),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn digests_golden() {
    let mut bytes = vec![0x12, 0x01, 0, 0b0000_0001];
    bytes.extend_from_slice(&[0x5a; 48]);
    let digests = Digests::decode(&bytes).unwrap();
    assert_eq!(digests.digests, vec![[0x5a; 48]]);
    assert_eq!(digests.encode(), bytes);
    // Two slots announced, one digest present.
    bytes[3] = 0b11;
    assert!(Digests::decode(&bytes).is_err());
}

#[test]
fn get_measurements_and_measurements_golden() {
    let mut request = vec![0x12, 0xe0, 0x01, 0xff];
    request.extend_from_slice(&[0x11; 32]);
    request.push(0);
    let decoded = GetMeasurements::decode(&request).unwrap();
    assert_eq!(decoded.signed, Some(([0x11; 32], 0)));
    assert_eq!(decoded.encode(), request);

    // One DMTF block: index 1, spec 1, size 7, type 0x01 (firmware), value size 4.
    let block = [1, 1, 7, 0, 0x01, 4, 0, 0xde, 0xad, 0xbe, 0xef];
    let mut response = vec![0x12, 0x60, 0, 0, 1, block.len() as u8, 0, 0];
    response.extend_from_slice(&block);
    response.extend_from_slice(&[0x22; 32]);
    response.extend_from_slice(&[0, 0]);
    let signed_part = response.len();
    response.extend_from_slice(&[0x33; 96]);
    let (measurements, split) = Measurements::decode(&response, true).unwrap();
    assert_eq!(split, signed_part);
    assert_eq!(measurements.encode(), response);
    let blocks = MeasurementBlock::parse_record(&measurements.record).unwrap();
    assert_eq!(blocks[0].value, vec![0xde, 0xad, 0xbe, 0xef]);
    // NumberOfBlocks that disagrees with the record is refused.
    response[4] = 2;
    assert!(Measurements::decode(&response, true).is_err());
}

#[test]
fn key_exchange_golden() {
    let mut bytes = vec![0x12, 0xe4, 0, 0, 0xfe, 0xff, 0, 0];
    bytes.extend_from_slice(&[0x44; 32]);
    bytes.extend_from_slice(&[0x55; 96]);
    bytes.extend_from_slice(&[2, 0, 0xaa, 0xbb]);
    let request = KeyExchange::decode(&bytes).unwrap();
    assert_eq!(request.req_session_id, 0xfffe);
    assert_eq!(request.opaque, vec![0xaa, 0xbb]);
    assert_eq!(request.encode(), bytes);
    // Opaque length beyond the message.
    let last = bytes.len() - 4;
    bytes[last] = 3;
    assert!(KeyExchange::decode(&bytes).is_err());
}

#[test]
fn key_exchange_rsp_golden_splits_signature_and_verify_data() {
    let mut bytes = vec![0x12, 0x64, 0, 0, 0x01, 0xff, 0, 0];
    bytes.extend_from_slice(&[0x44; 32]);
    bytes.extend_from_slice(&[0x55; 96]);
    bytes.extend_from_slice(&[0, 0]);
    let before_signature = bytes.len();
    bytes.extend_from_slice(&[0x66; 96]);
    bytes.extend_from_slice(&[0x77; 48]);
    let (rsp, split) = KeyExchangeRsp::decode(&bytes, false).unwrap();
    assert_eq!(rsp.rsp_session_id, 0xff01);
    assert_eq!(split.before_signature, before_signature);
    assert_eq!(split.before_verify_data, before_signature + 96);
    assert_eq!(rsp.encode(), bytes);
    assert!(KeyExchangeRsp::decode(&bytes[..bytes.len() - 1], false).is_err());
}

#[test]
fn finish_end_session_and_error_golden() {
    let mut finish = vec![0x12, 0xe5, 0, 0];
    finish.extend_from_slice(&[0x99; 48]);
    assert_eq!(Finish::decode(&finish).unwrap().encode(), finish);
    finish[2] = 1; // a signature (mutual authentication) is not supported
    assert!(Finish::decode(&finish).is_err());
    decode_header_only(&[0x12, 0x65, 0, 0], SPDM_VERSION_1_2, SpdmCode::FINISH_RSP).unwrap();
    decode_header_only(
        &[0x12, 0x6c, 0, 0],
        SPDM_VERSION_1_2,
        SpdmCode::END_SESSION_ACK,
    )
    .unwrap();
    assert!(
        decode_header_only(
            &[0x12, 0x6c, 0, 0, 0],
            SPDM_VERSION_1_2,
            SpdmCode::END_SESSION_ACK
        )
        .is_err()
    );

    let not_ready = [0x12, 0x7f, 0x42, 0, 10, 0xe4, 7, 2];
    let error = ErrorResponse::decode(&not_ready).unwrap();
    let data = error.not_ready().unwrap();
    assert_eq!((data.request_code, data.token), (0xe4, 7));
    assert_eq!(error.encode(), not_ready);
    assert!(ErrorResponse::decode(&not_ready[..6]).is_err());
    assert_eq!(respond_if_ready(0xe4, 7), vec![0x12, 0xff, 0xe4, 7]);
}

#[test]
fn vendor_defined_golden() {
    // PCI-SIG (standard id 3), vendor id 0x0001, payload: TDISP protocol id then a header.
    let bytes = [0x12, 0xfe, 0, 0, 3, 0, 2, 1, 0, 3, 0, 0x01, 0x10, 0x81];
    let message = VendorDefined::decode(&bytes, SpdmCode::VENDOR_DEFINED_REQUEST).unwrap();
    assert_eq!(message.standard_id, 3);
    assert_eq!(message.vendor_id, vec![1, 0]);
    assert_eq!(message.payload, vec![0x01, 0x10, 0x81]);
    assert_eq!(message.encode().unwrap(), bytes);
}

#[test]
fn secured_record_golden_layout() {
    // Session 0xff01fffe, length 18 (2 + 0 + 16), ciphertext and tag.
    let mut bytes = vec![0xfe, 0xff, 0x01, 0xff, 18, 0];
    bytes.extend_from_slice(&[0xab; 18]);
    let record = Record::parse(&bytes).unwrap();
    assert_eq!(record.header.session_id.get(), 0xff01_fffe);
    assert_eq!(record.sealed.len(), 18);
    bytes.extend_from_slice(&[0, 0]); // DOE padding
    Record::parse(&bytes).unwrap();
    bytes.push(1);
    assert!(Record::parse(&bytes).is_err());
    assert!(Record::parse(&bytes[..10]).is_err());
}

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Version::decode(&bytes);
        let _ = Capabilities::decode(&bytes, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES);
        let _ = NegotiateAlgorithms::decode(&bytes);
        let _ = Algorithms::decode(&bytes);
        let _ = Digests::decode(&bytes);
        let _ = GetCertificate::decode(&bytes);
        let _ = Certificate::decode(&bytes);
        let _ = GetMeasurements::decode(&bytes);
        let _ = Measurements::decode(&bytes, true);
        let _ = KeyExchange::decode(&bytes);
        let _ = KeyExchangeRsp::decode(&bytes, true);
        let _ = Finish::decode(&bytes);
        let _ = ErrorResponse::decode(&bytes);
        let _ = VendorDefined::decode(&bytes, SpdmCode::VENDOR_DEFINED_RESPONSE);
        let _ = Record::parse(&bytes);
    }

    #[test]
    fn a_sealed_record_opens_once_and_any_flipped_bit_is_refused(
        message in proptest::collection::vec(any::<u8>(), 0..300),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        use tdisp_host::spdm::crypto::KeySchedule;
        use tdisp_host::spdm::secured;
        let schedule = KeySchedule::new(&[3; 48], &[4; 48]);
        let (mut tx, mut rx) = (schedule.application_keys(&[5; 48]), schedule.application_keys(&[5; 48]));
        let record = secured::seal(&mut tx.response, 0x1234_5678, &message).unwrap();
        let mut tampered = record.clone();
        tampered[flip.index(record.len())] ^= 1 << bit;
        prop_assert!(secured::open(&mut rx.response, 0x1234_5678, &tampered).is_err());
        prop_assert_eq!(secured::open(&mut rx.response, 0x1234_5678, &record).unwrap(), message);
        prop_assert!(secured::open(&mut rx.response, 0x1234_5678, &record).is_err());
    }

    #[test]
    fn key_exchange_round_trips(session in any::<u16>(), random in any::<[u8; 32]>(), opaque in proptest::collection::vec(any::<u8>(), 0..64)) {
        let message = KeyExchange {
            measurement_summary_hash_type: 0,
            slot: 0,
            req_session_id: session,
            session_policy: 0,
            random,
            exchange_data: [7; 96],
            opaque,
        };
        prop_assert_eq!(KeyExchange::decode(&message.encode()).unwrap(), message);
    }
}
