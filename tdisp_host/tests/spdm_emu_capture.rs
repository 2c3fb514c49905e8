//! Known answers from a real peer: a session our requester held with DMTF's
//! `spdm_responder_emu` (libspdm), captured by `tests/spdm_interop.rs` with a fixed ECDHE key
//! (`tests/data/spdm_emu_capture.txt`: every DOE object both ways, in order).
//!
//! Replaying the bytes checks our transcript assembly and cryptography against libspdm's: its
//! KEY_EXCHANGE_RSP signature (signing prefix and context), its ResponderVerifyData (ECDHE,
//! TH1, handshake secret, finished key), its FINISH_RSP record (handshake AEAD keys, IVs and
//! nonces), and its application records (TH2 and the application keys).

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "a capture that does not parse fails the test"
)]

use tdisp_host::spdm::cert;
use tdisp_host::spdm::codes::SPDM_VERSION_1_0;
use tdisp_host::spdm::codes::SPDM_VERSION_1_2;
use tdisp_host::spdm::codes::SpdmCode;
use tdisp_host::spdm::crypto;
use tdisp_host::spdm::crypto::EphemeralKey;
use tdisp_host::spdm::crypto::KeySchedule;
use tdisp_host::spdm::messages::*;
use tdisp_host::spdm::secured;
use tdisp_host::spdm::transport::decode_object;
use tdisp_host::spdm::transport::decode_padded;
use tdisp_proto::framing::doe::DoeObjectType;
use zerocopy::IntoBytes;

const CAPTURE: &str = include_str!("data/spdm_emu_capture.txt");

struct Capture {
    ephemeral: [u8; 48],
    /// (request, response) DOE payloads of SPDM objects (type 1).
    plain: Vec<(Vec<u8>, Vec<u8>)>,
    /// (request, response) DOE payloads of secured objects (type 2).
    secured: Vec<(Vec<u8>, Vec<u8>)>,
}

fn payload(object: &[u8]) -> (DoeObjectType, Vec<u8>) {
    let (object_type, payload) = decode_object(object).unwrap();
    (object_type, payload.to_vec())
}

fn capture() -> Capture {
    let mut ephemeral = None;
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for line in CAPTURE.lines() {
        match line.split_once(' ') {
            Some(("ephemeral", key)) => {
                ephemeral = Some(hex::decode(key).unwrap().try_into().unwrap());
            }
            Some((">", object)) => requests.push(hex::decode(object).unwrap()),
            Some(("<", object)) => responses.push(hex::decode(object).unwrap()),
            _ => {}
        }
    }
    assert_eq!(requests.len(), responses.len());
    let mut plain = Vec::new();
    let mut secured = Vec::new();
    for (request, response) in requests.iter().zip(&responses) {
        let (request_type, request) = payload(request);
        let (response_type, response) = payload(response);
        assert_eq!(request_type, response_type);
        match request_type {
            DoeObjectType::SPDM => plain.push((request, response)),
            DoeObjectType::SECURED_SPDM => secured.push((request, response)),
            _ => {} // DOE discovery
        }
    }
    Capture {
        ephemeral: ephemeral.unwrap(),
        plain,
        secured,
    }
}

fn exact<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, CodecError>) -> (T, Vec<u8>) {
    let (message, exact) = decode_padded(bytes, decode).unwrap();
    (message, exact.to_vec())
}

/// What the handshake's plain part yields.
struct Handshake {
    chain: cert::ValidatedChain,
    /// VCA, Hash(chain), KEY_EXCHANGE and KEY_EXCHANGE_RSP up to the signature.
    signed: Vec<u8>,
    key_exchange: KeyExchange,
    rsp: KeyExchangeRsp,
}

fn handshake(capture: &Capture) -> Handshake {
    let plain = &capture.plain;
    let mut vca = Vec::new();
    vca.extend(
        exact(&plain[0].0, |b| {
            decode_header_only(b, SPDM_VERSION_1_0, SpdmCode::GET_VERSION)
        })
        .1,
    );
    vca.extend(exact(&plain[0].1, Version::decode).1);
    vca.extend(
        exact(&plain[1].0, |b| {
            Capabilities::decode(b, SPDM_VERSION_1_2, SpdmCode::GET_CAPABILITIES)
        })
        .1,
    );
    vca.extend(
        exact(&plain[1].1, |b| {
            Capabilities::decode(b, SPDM_VERSION_1_2, SpdmCode::CAPABILITIES)
        })
        .1,
    );
    vca.extend(exact(&plain[2].0, NegotiateAlgorithms::decode).1);
    vca.extend(exact(&plain[2].1, Algorithms::decode).1);
    exact(&plain[3].1, Digests::decode);

    let mut slot = Vec::new();
    let mut next = 4;
    loop {
        let (portion, _) = exact(&plain[next].1, Certificate::decode);
        next += 1;
        slot.extend_from_slice(&portion.portion);
        if portion.remainder_length == 0 {
            break;
        }
    }
    // spdm-emu's chain starts with its root CA; the slot's RootHash must name it.
    let root = cert::load_certificates(&slot[4 + 48..]).unwrap().remove(0);
    let chain = cert::validate_slot(&slot, &root).unwrap();

    let (key_exchange, key_exchange_bytes) = exact(&plain[next].0, KeyExchange::decode);
    let ((rsp, split), rsp_bytes) = exact(&plain[next].1, |b| KeyExchangeRsp::decode(b, false));
    assert_eq!(
        next + 1,
        plain.len(),
        "the handshake ends with KEY_EXCHANGE"
    );
    let mut signed = vca;
    signed.extend_from_slice(&crypto::hash(&chain.slot));
    signed.extend_from_slice(&key_exchange_bytes);
    signed.extend_from_slice(&rsp_bytes[..split.before_signature]);
    Handshake {
        chain,
        signed,
        key_exchange,
        rsp,
    }
}

#[test]
fn libspdm_key_exchange_rsp_signature_verifies_over_our_transcript() {
    let handshake = handshake(&capture());
    crypto::verify(
        &handshake.chain.leaf_key,
        crypto::context::KEY_EXCHANGE_RSP,
        &crypto::hash(&handshake.signed),
        &handshake.rsp.signature,
    )
    .unwrap();
}

#[test]
fn a_changed_transcript_byte_or_context_fails_the_libspdm_signature() {
    let handshake = handshake(&capture());
    let mut tampered = handshake.signed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        crypto::verify(
            &handshake.chain.leaf_key,
            crypto::context::KEY_EXCHANGE_RSP,
            &crypto::hash(&tampered),
            &handshake.rsp.signature,
        )
        .is_err()
    );
    assert!(
        crypto::verify(
            &handshake.chain.leaf_key,
            crypto::context::MEASUREMENTS,
            &crypto::hash(&handshake.signed),
            &handshake.rsp.signature,
        )
        .is_err()
    );
}

#[test]
fn key_schedule_reproduces_libspdm_verify_data_and_opens_every_record() {
    let capture = capture();
    let handshake = handshake(&capture);
    let ephemeral = EphemeralKey::from_bytes(&capture.ephemeral).unwrap();
    assert_eq!(
        ephemeral.exchange_data(),
        handshake.key_exchange.exchange_data
    );

    let mut transcript = handshake.signed.clone();
    transcript.extend_from_slice(&handshake.rsp.signature);
    let th1 = crypto::hash(&transcript);
    let dhe = ephemeral
        .diffie_hellman(&handshake.rsp.exchange_data)
        .unwrap();
    let schedule = KeySchedule::new(dhe.as_ref(), &th1);
    // libspdm's ResponderVerifyData: ECDHE, TH1, handshake secret and finished key agree.
    crypto::check_hmac(
        schedule.response_finished_key().as_ref(),
        &th1,
        &handshake.rsp.verify_data,
    )
    .unwrap();
    transcript.extend_from_slice(&handshake.rsp.verify_data);

    let session_id = (u32::from(handshake.rsp.rsp_session_id) << 16)
        | u32::from(handshake.key_exchange.req_session_id);
    let mut keys = schedule.handshake_keys();
    let (finish_record, finish_rsp_record) = &capture.secured[0];
    let finish = secured::open(&mut keys.request, session_id, finish_record).unwrap();
    transcript.extend_from_slice(finish_header().as_bytes());
    let expected = crypto::hmac(
        schedule.request_finished_key().as_ref(),
        &crypto::hash(&transcript),
    );
    assert_eq!(Finish::decode(&finish).unwrap().verify_data, expected);
    transcript.extend_from_slice(&expected);
    // libspdm sealed FINISH_RSP under the handshake keys we derive.
    let finish_rsp = secured::open(&mut keys.response, session_id, finish_rsp_record).unwrap();
    decode_header_only(&finish_rsp, SPDM_VERSION_1_2, SpdmCode::FINISH_RSP).unwrap();
    transcript.extend_from_slice(&finish_rsp);

    // Every application record opens under the keys from TH2, in sequence.
    let mut keys = schedule.application_keys(&crypto::hash(&transcript));
    let records = &capture.secured[1..];
    assert!(
        records.len() >= 5,
        "lock, report, start, stop and END_SESSION"
    );
    for (index, (request, response)) in records.iter().enumerate() {
        let request = secured::open(&mut keys.request, session_id, request).unwrap();
        let response = secured::open(&mut keys.response, session_id, response).unwrap();
        let expected = if index + 1 == records.len() {
            (SpdmCode::END_SESSION, SpdmCode::END_SESSION_ACK)
        } else {
            (
                SpdmCode::VENDOR_DEFINED_REQUEST,
                SpdmCode::VENDOR_DEFINED_RESPONSE,
            )
        };
        assert_eq!((request[1], response[1]), (expected.0.0, expected.1.0));
    }
}

#[test]
fn a_record_replayed_under_the_next_sequence_number_is_refused() {
    let capture = capture();
    let handshake = handshake(&capture);
    let ephemeral = EphemeralKey::from_bytes(&capture.ephemeral).unwrap();
    let mut transcript = handshake.signed.clone();
    transcript.extend_from_slice(&handshake.rsp.signature);
    let dhe = ephemeral
        .diffie_hellman(&handshake.rsp.exchange_data)
        .unwrap();
    let schedule = KeySchedule::new(dhe.as_ref(), &crypto::hash(&transcript));
    let session_id = (u32::from(handshake.rsp.rsp_session_id) << 16)
        | u32::from(handshake.key_exchange.req_session_id);
    let mut keys = schedule.handshake_keys();
    let (_, finish_rsp_record) = &capture.secured[0];
    secured::open(&mut keys.response, session_id, finish_rsp_record).unwrap();
    assert_eq!(
        secured::open(&mut keys.response, session_id, finish_rsp_record),
        Err(secured::SecuredError::Authentication)
    );
}
