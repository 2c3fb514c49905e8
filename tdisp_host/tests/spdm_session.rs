//! Our SPDM requester against our SPDM responder (around the emulated DSM): the session is
//! established and TDISP runs inside it; tampering, replay, a wrong root, a wrong signature,
//! truncation and an algorithm we did not offer are each refused, and both ends recover.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test setup failures fail the test")]

use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::dsm::config::DsmConfig;
use tdisp_host::spdm::cert::CertError;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::codes::SpdmErrorCode;
use tdisp_host::spdm::crypto::CryptoError;
use tdisp_host::spdm::messages::ErrorResponse;
use tdisp_host::spdm::messages::MeasurementBlock;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::spdm::requester::RequesterState;
use tdisp_host::spdm::requester::SpdmError;
use tdisp_host::spdm::requester::SpdmRequester;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;
use tdisp_host::spdm::secured::SecuredError;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;
use tdisp_host::tsm::doe::trim_vendor_defined_padding;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::framing::spdm::decode_tdisp;
use tdisp_proto::framing::spdm::encode_tdisp;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;

const REQUESTER_ID: u16 = 0x0100;

type Responder = SpdmResponder<EmulatedDsm>;
type Edit<'a> = Box<dyn FnMut(&mut Vec<u8>) + Send + 'a>;

fn measurements() -> Vec<MeasurementBlock> {
    vec![MeasurementBlock {
        index: 1,
        value_type: 0x01,
        value: vec![0x5a; 48],
    }]
}

fn responder_with(identity: DeviceIdentity) -> Responder {
    let dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap();
    SpdmResponder::new(ResponderConfig::new(identity, measurements()), dsm)
}

fn pair() -> (SpdmRequester, Responder) {
    let identity = DeviceIdentity::generate("test device").unwrap();
    let requester = SpdmRequester::new(RequesterConfig::new(identity.root_der.clone()));
    (requester, responder_with(identity))
}

fn tdisp(request: TdispRequest) -> Vec<u8> {
    let mut out = Vec::new();
    encode_tdisp(
        SPDM_VERSION_1_2,
        Direction::Request,
        &TdispMessage {
            interface_id: InterfaceId::from_requester_id(REQUESTER_ID),
            body: request,
        },
        &mut out,
    )
    .unwrap();
    out
}

fn tdisp_response(bytes: &[u8]) -> TdispResponse {
    decode_tdisp::<TdispResponse>(bytes, Direction::Response)
        .unwrap()
        .1
        .body
}

/// Sits between requester and responder and may rewrite either direction.
struct Tap<'a> {
    inner: &'a mut Responder,
    on_request: Edit<'a>,
    on_response: Edit<'a>,
}

impl<'a> Tap<'a> {
    fn new(inner: &'a mut Responder) -> Self {
        Self {
            inner,
            on_request: Box::new(|_| {}),
            on_response: Box::new(|_| {}),
        }
    }
}

impl DoeMailbox for Tap<'_> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let mut request = request.to_vec();
        (self.on_request)(&mut request);
        let mut response = self.inner.exchange(&request)?;
        (self.on_response)(&mut response);
        Ok(response)
    }
}

fn parts(object: &[u8]) -> (DoeObjectType, Vec<u8>) {
    let object = DoeObject::decode(object).unwrap();
    (object.object_type, object.payload.to_vec())
}

fn object(object_type: DoeObjectType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    DoeObject::new(object_type, payload).encode(&mut out);
    out
}

#[test]
fn session_is_established_and_tdisp_runs_inside_it() {
    let (mut requester, mut responder) = pair();
    let id = requester.connect(&mut responder).unwrap();
    assert_eq!(requester.state(), RequesterState::Established);
    assert_eq!(responder.session_id(), Some(id));
    assert!(responder.is_established());

    let response = requester
        .send_in_session(&mut responder, &tdisp(TdispRequest::GetVersion))
        .unwrap();
    assert!(
        matches!(tdisp_response(&response), TdispResponse::Version { versions } if versions == vec![0x10])
    );
    let response = requester
        .send_in_session(
            &mut responder,
            &tdisp(TdispRequest::GetDeviceInterfaceState),
        )
        .unwrap();
    assert!(matches!(
        tdisp_response(&response),
        TdispResponse::DeviceInterfaceState { .. }
    ));

    let signed = requester.get_signed_measurements(&mut responder).unwrap();
    assert_eq!(signed.blocks, measurements());

    requester.end_session(&mut responder).unwrap();
    assert_eq!(requester.state(), RequesterState::Ended);
    assert_eq!(responder.session_id(), None);
    assert!(matches!(
        requester.send_in_session(&mut responder, &tdisp(TdispRequest::GetVersion)),
        Err(SpdmError::NoSession)
    ));
}

#[test]
fn secured_records_on_the_wire_are_type_2_and_do_not_carry_the_plaintext() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tap = Tap::new(&mut responder);
    let log = seen.clone();
    tap.on_request = Box::new(move |request| log.lock().unwrap().push(request.clone()));
    let request = tdisp(TdispRequest::GetVersion);
    requester.send_in_session(&mut tap, &request).unwrap();
    let seen = seen.lock().unwrap();
    let (object_type, payload) = parts(&seen[0]);
    assert_eq!(object_type, DoeObjectType::SECURED_SPDM);
    assert_eq!(
        &payload[..4],
        &requester.session_id().unwrap().to_le_bytes()
    );
    assert!(
        !payload
            .windows(request.len())
            .any(|w| w == request.as_slice())
    );
}

#[test]
fn tampered_request_ciphertext_is_refused_and_both_ends_recover_by_reconnecting() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    {
        let mut tap = Tap::new(&mut responder);
        tap.on_request = Box::new(|request| {
            let last = request.len() - 20;
            request[last] ^= 1;
        });
        assert_eq!(
            requester.send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion)),
            Err(SpdmError::Secured(SecuredError::Authentication))
        );
    }
    assert_eq!(requester.state(), RequesterState::Failed);
    assert_eq!(responder.session_id(), None);
    requester.connect(&mut responder).unwrap();
    requester
        .send_in_session(&mut responder, &tdisp(TdispRequest::GetVersion))
        .unwrap();
}

#[test]
fn tampered_response_ciphertext_is_refused() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let mut tap = Tap::new(&mut responder);
    tap.on_response = Box::new(|response| {
        let (object_type, mut payload) = parts(response);
        payload[8] ^= 0x80;
        *response = object(object_type, &payload);
    });
    assert_eq!(
        requester.send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion)),
        Err(SpdmError::Secured(SecuredError::Authentication))
    );
    assert_eq!(requester.state(), RequesterState::Failed);
}

#[test]
fn a_replayed_request_record_is_refused_by_the_responder() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    {
        let mut tap = Tap::new(&mut responder);
        let log = captured.clone();
        tap.on_request = Box::new(move |request| *log.lock().unwrap() = request.clone());
        requester
            .send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion))
            .unwrap();
    }
    let replay = captured.lock().unwrap().clone();
    let (object_type, payload) = parts(&responder.exchange(&replay).unwrap());
    assert_eq!(object_type, DoeObjectType::SPDM);
    assert_eq!(
        ErrorResponse::decode(&payload).unwrap().code,
        SpdmErrorCode::DECRYPT_ERROR
    );
    assert_eq!(responder.session_id(), None);
}

#[test]
fn a_replayed_response_record_is_refused_by_the_requester() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let previous: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let mut tap = Tap::new(&mut responder);
    let store = previous.clone();
    tap.on_response = Box::new(move |response| {
        let mut previous = store.lock().unwrap();
        match previous.as_ref() {
            Some(old) => *response = old.clone(),
            None => *previous = Some(response.clone()),
        }
    });
    requester
        .send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion))
        .unwrap();
    assert_eq!(
        requester.send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion)),
        Err(SpdmError::Secured(SecuredError::Authentication))
    );
}

#[test]
fn a_truncated_record_is_refused_in_both_directions() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    {
        let mut tap = Tap::new(&mut responder);
        tap.on_response = Box::new(|response| {
            let (object_type, payload) = parts(response);
            *response = object(object_type, &payload[..payload.len() - 8]);
        });
        assert!(matches!(
            requester.send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion)),
            Err(SpdmError::Secured(SecuredError::Truncated))
        ));
    }
    requester.connect(&mut responder).unwrap();
    let mut tap = Tap::new(&mut responder);
    tap.on_request = Box::new(|request| {
        let (object_type, payload) = parts(request);
        *request = object(object_type, &payload[..payload.len() - 8]);
    });
    assert_eq!(
        requester.send_in_session(&mut tap, &tdisp(TdispRequest::GetVersion)),
        Err(SpdmError::Secured(SecuredError::Authentication))
    );
}

#[test]
fn a_chain_under_another_root_is_refused() {
    let identity = DeviceIdentity::generate("device").unwrap();
    let other = DeviceIdentity::generate("impostor root").unwrap();
    let mut requester = SpdmRequester::new(RequesterConfig::new(other.root_der));
    let mut responder = responder_with(identity);
    assert_eq!(
        requester.connect(&mut responder),
        Err(SpdmError::Certificate(CertError::RootMismatch))
    );
    assert_eq!(requester.state(), RequesterState::Failed);
    assert_eq!(requester.session_id(), None);
}

#[test]
fn a_key_exchange_signed_by_a_key_other_than_the_leaf_is_refused() {
    let mut identity = DeviceIdentity::generate("device").unwrap();
    identity.leaf_key = DeviceIdentity::generate("other").unwrap().leaf_key;
    let mut requester = SpdmRequester::new(RequesterConfig::new(identity.root_der.clone()));
    let mut responder = responder_with(identity);
    assert_eq!(
        requester.connect(&mut responder),
        Err(SpdmError::Crypto(CryptoError::BadSignature))
    );
}

#[test]
fn a_tampered_key_exchange_response_is_refused() {
    let (mut requester, mut responder) = pair();
    let mut tap = Tap::new(&mut responder);
    tap.on_response = Box::new(|response| {
        let (object_type, mut payload) = parts(response);
        if payload[1] == 0x64 {
            // A byte of the responder's random data, covered by the signature.
            payload[10] ^= 1;
            *response = object(object_type, &payload);
        }
    });
    assert_eq!(
        requester.connect(&mut tap),
        Err(SpdmError::Crypto(CryptoError::BadSignature))
    );
}

#[test]
fn an_algorithm_we_did_not_offer_is_refused() {
    let (mut requester, mut responder) = pair();
    let mut tap = Tap::new(&mut responder);
    tap.on_response = Box::new(|response| {
        let (object_type, mut payload) = parts(response);
        if payload[1] == 0x63 {
            // The AEAD structure (after the 36-byte fixed part and the DHE structure) now
            // selects AES-128-GCM.
            assert_eq!(payload[40], 3);
            payload[42] = 0x01;
            *response = object(object_type, &payload);
        }
    });
    assert_eq!(
        requester.connect(&mut tap),
        Err(SpdmError::Negotiation("AEAD is not AES-256-GCM"))
    );
}

#[test]
fn response_not_ready_is_followed_by_respond_if_ready() {
    let (mut requester, mut responder) = pair();
    let held: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    struct NotReadyOnce<'a> {
        inner: &'a mut Responder,
        held: Arc<Mutex<Option<Vec<u8>>>>,
    }
    impl DoeMailbox for NotReadyOnce<'_> {
        fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
            let (object_type, payload) = parts(request);
            let mut held = self.held.lock().unwrap();
            if object_type == DoeObjectType::SPDM && payload[1] == 0xe4 && held.is_none() {
                *held = Some(request.to_vec());
                // ResponseNotReady for KEY_EXCHANGE, token 9.
                return Ok(object(
                    DoeObjectType::SPDM,
                    &[0x12, 0x7f, 0x42, 0, 1, 0xe4, 9, 1],
                ));
            }
            if object_type == DoeObjectType::SPDM && payload[1] == 0xff {
                assert_eq!((payload[2], payload[3]), (0xe4, 9));
                let original = held.clone().unwrap();
                return self.inner.exchange(&original);
            }
            self.inner.exchange(request)
        }
    }
    let mut mailbox = NotReadyOnce {
        inner: &mut responder,
        held: held.clone(),
    };
    requester.connect(&mut mailbox).unwrap();
    assert!(held.lock().unwrap().is_some());
}

#[test]
fn tdisp_in_the_clear_is_refused_by_the_responder() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let (_, payload) = parts(
        &responder
            .exchange(&object(
                DoeObjectType::SPDM,
                &tdisp(TdispRequest::GetVersion),
            ))
            .unwrap(),
    );
    assert_eq!(
        ErrorResponse::decode(&payload).unwrap().code,
        SpdmErrorCode::SESSION_REQUIRED
    );
}

#[test]
fn requests_out_of_order_are_refused_without_changing_state() {
    let (_, mut responder) = pair();
    let (_, payload) = parts(
        &responder
            .exchange(&object(DoeObjectType::SPDM, &[0x12, 0x81, 0, 0]))
            .unwrap(),
    );
    assert_eq!(
        ErrorResponse::decode(&payload).unwrap().code,
        SpdmErrorCode::UNEXPECTED_REQUEST
    );
    assert_eq!(
        responder.state(),
        tdisp_host::spdm::responder::ConnectionState::NotStarted
    );
}

/// PCI-SIG VENDOR_DEFINED_REQUEST (SPDM 1.2) carrying IDE_KM KEY_PROG (K0, RX, PR, stream 0,
/// port 1) with a 32-byte key and an 8-byte IFV.
fn ide_km_key_prog() -> Vec<u8> {
    let mut out = vec![
        0x12, 0xfe, 0, 0, 0x03, 0x00, 0x02, 0x01, 0x00, 48, 0x00, 0x00,
    ];
    out.extend([0x02, 0, 0, 0, 0, 0x00, 1]);
    out.extend([0xa5; 32]);
    out.extend([0, 0, 0, 0, 1, 0, 0, 0]);
    out
}

#[test]
fn ide_km_keys_are_programmed_inside_a_session() {
    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    let response = requester
        .send_in_session(&mut responder, &ide_km_key_prog())
        .unwrap();
    // VENDOR_DEFINED_RESPONSE, RespLength 8: protocol 0, KP_ACK(SUCCESS) echoing the header.
    assert_eq!(
        response,
        [
            0x12, 0x7e, 0, 0, 0x03, 0x00, 0x02, 0x01, 0x00, 8, 0, 0x00, 0x03, 0, 0, 0, 0, 0, 1
        ]
    );
    assert_eq!(responder.handler_mut().ide_km().programmed(), 1);
}

#[test]
fn ide_km_in_the_clear_is_refused_even_when_vendor_requests_are_allowed_there() {
    let identity = DeviceIdentity::generate("test device").unwrap();
    let mut requester = SpdmRequester::new(RequesterConfig::new(identity.root_der.clone()));
    let dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap();
    let mut config = ResponderConfig::new(identity, measurements());
    config.allow_vendor_in_clear = true;
    let mut responder = SpdmResponder::new(config, dsm);
    requester.connect(&mut responder).unwrap();
    let response = responder
        .exchange(&object(DoeObjectType::SPDM, &ide_km_key_prog()))
        .unwrap();
    let (object_type, payload) = parts(&response);
    assert_eq!(object_type, DoeObjectType::SPDM);
    let error = ErrorResponse::decode(&payload).unwrap();
    assert_eq!(error.code, SpdmErrorCode::SESSION_REQUIRED);
    assert_eq!(responder.handler_mut().ide_km().programmed(), 0);
    // TDISP is still served in the clear, as configured.
    let response = responder
        .exchange(&object(
            DoeObjectType::SPDM,
            &tdisp(TdispRequest::GetVersion),
        ))
        .unwrap();
    assert!(matches!(
        tdisp_response(trim_vendor_defined_padding(&parts(&response).1)),
        TdispResponse::Version { .. }
    ));
}

#[test]
fn binding_blocks_are_reported_inside_the_session_only_and_name_its_th1() {
    use tdisp_host::spdm::messages::GetMeasurements;
    use tdisp_host::spdm::messages::MEASUREMENT_OPERATION_ALL;
    use tdisp_host::spdm::messages::Measurements;
    use tdisp_proto::evidence::binding::BINDING_INDEX_FIRST;
    use tdisp_proto::evidence::binding::TdiBinding;
    use tdisp_proto::pcie::LockInterfaceParams;
    use tdisp_proto::pcie::TdiState;

    let (mut requester, mut responder) = pair();
    requester.connect(&mut responder).unwrap();
    // Unlocked: nothing to bind.
    let signed = requester.get_signed_measurements(&mut responder).unwrap();
    assert_eq!(signed.blocks, measurements());

    let locked = requester
        .send_in_session(
            &mut responder,
            &tdisp(TdispRequest::LockInterface(LockInterfaceParams::default())),
        )
        .unwrap();
    assert!(matches!(
        tdisp_response(&locked),
        TdispResponse::LockInterface { .. }
    ));
    let signed = requester.get_signed_measurements(&mut responder).unwrap();
    let [firmware, binding] = signed.blocks.as_slice() else {
        panic!(
            "expected the firmware block and one binding block: {:?}",
            signed.blocks
        );
    };
    assert_eq!(*firmware, measurements()[0]);
    assert_eq!(binding.index, BINDING_INDEX_FIRST);
    let binding = TdiBinding::decode(&binding.value).unwrap();
    assert_eq!(
        binding.session_th1,
        requester.key_exchange_record().unwrap().th1
    );
    assert_eq!(binding.state, TdiState::ConfigLocked);
    assert_eq!(
        binding.interface,
        InterfaceId::from_requester_id(REQUESTER_ID)
    );

    // The same request in the clear gets the configured blocks only.
    let request = GetMeasurements {
        operation: MEASUREMENT_OPERATION_ALL,
        signed: None,
    }
    .encode();
    let answer = responder
        .exchange(&object(DoeObjectType::SPDM, &request))
        .unwrap();
    let (object_type, payload) = parts(&answer);
    assert_eq!(object_type, DoeObjectType::SPDM);
    let ((clear, _), _) =
        tdisp_host::spdm::transport::decode_padded(&payload, |m| Measurements::decode(m, false))
            .unwrap();
    assert_eq!(
        MeasurementBlock::parse_record(&clear.record).unwrap(),
        measurements()
    );
}
