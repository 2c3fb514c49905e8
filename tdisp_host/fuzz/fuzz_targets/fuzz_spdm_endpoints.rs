//! Both SPDM endpoints facing a hostile peer: the responder gets arbitrary DOE objects (after
//! a genuine session when bit 1 of the first byte is set, after a genuine version,
//! capabilities and algorithms negotiation when bit 0 is, so the fuzzer reaches the
//! negotiated and secured paths), and the requester connects to a "device" that answers with fuzzer
//! bytes. Nothing may panic; the responder always answers a DOE object; a requester that fails
//! to connect holds no session.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::spdm::requester::SpdmRequester;
use tdisp_host::spdm::responder::ResponderConfig;
use tdisp_host::spdm::responder::SpdmResponder;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;
use tdisp_proto::framing::doe::DoeObject;

fn identity() -> DeviceIdentity {
    static ROOT: OnceLock<(Vec<u8>, Vec<u8>, [u8; 48])> = OnceLock::new();
    let (root_der, slot, key) = ROOT.get_or_init(|| {
        let id = DeviceIdentity::generate("fuzz").expect("identity");
        (id.root_der, id.slot, id.leaf_key.to_bytes().into())
    });
    DeviceIdentity {
        root_der: root_der.clone(),
        slot: slot.clone(),
        leaf_key: p384::ecdsa::SigningKey::from_slice(key).expect("key"),
    }
}

/// GET_VERSION, GET_CAPABILITIES and NEGOTIATE_ALGORITHMS as our requester sends them.
fn negotiation() -> Vec<Vec<u8>> {
    use tdisp_host::spdm::codes::*;
    use tdisp_host::spdm::requester::*;
    use tdisp_proto::framing::doe::DoeObjectType;
    let get_version = vec![SPDM_VERSION_1_0, SpdmCode::GET_VERSION.0, 0, 0];
    let get_capabilities = requested_capabilities().encode(SpdmCode::GET_CAPABILITIES);
    [get_version, get_capabilities, offered_algorithms().encode()]
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            DoeObject::new(DoeObjectType::SPDM, m).encode(&mut out);
            out
        })
        .collect()
}

struct Garbage<'a>(std::slice::Chunks<'a, u8>);

impl DoeMailbox for Garbage<'_> {
    fn exchange(&mut self, _request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        self.0
            .next()
            .map(<[u8]>::to_vec)
            .ok_or(MailboxError::Timeout)
    }
}

fuzz_target!(|data: &[u8]| {
    let identity = identity();
    let root = identity.root_der.clone();
    let handler = |request: &[u8]| request.to_vec();
    let mut responder = SpdmResponder::new(ResponderConfig::new(identity, Vec::new()), handler);
    let first = data.first().copied().unwrap_or(0);
    if first & 2 != 0 {
        // A genuine session first (slow), so secured records reach the session code.
        SpdmRequester::new(RequesterConfig::new(root.clone()))
            .connect(&mut responder)
            .expect("genuine handshake");
    } else if first & 1 != 0 {
        for request in negotiation() {
            let answer = responder.exchange(&request).expect("negotiation answered");
            DoeObject::decode(&answer).expect("a DOE object");
        }
    }
    for object in data.split(|&b| b == 0xa5) {
        if let Ok(answer) = responder.exchange(object) {
            DoeObject::decode(&answer).expect("the responder answers a DOE object");
        }
    }

    let mut requester = SpdmRequester::new(RequesterConfig::new(root));
    let size = usize::from(data.first().copied().unwrap_or(1)).max(1);
    if requester.connect(&mut Garbage(data.chunks(size))).is_err() {
        assert_eq!(requester.session_id(), None);
    }
});
