//! The emulated DSM facing a hostile host: arbitrary bytes as a DOE object, as an SPDM message
//! and as a TDISP message, then the same input as a sequence of TDISP requests with valid
//! headers (so the fuzzer reaches every state). Nothing may panic, every answer must decode and
//! answer its request, and the TDI state must only change the ways the specification allows.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::tsm::DoeMailbox;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::pcie::MessageBody;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispMessageType;
use tdisp_proto::pcie::TdispResponse;

const RID: u16 = 0x0001;

fn allowed(from: TdiState, to: TdiState, request: u8) -> bool {
    use TdiState::*;
    from == to
        || matches!(
            (from, to, request),
            (ConfigUnlocked, ConfigLocked, 0x83)
                | (ConfigLocked, Run, 0x86)
                | (ConfigLocked | Run | Error, ConfigUnlocked, 0x87)
        )
}

fuzz_target!(|data: &[u8]| {
    let mut dsm = EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap();
    if let Ok(answer) = dsm.exchange(data) {
        let object = DoeObject::decode(&answer).unwrap();
        assert!(matches!(
            object.object_type,
            DoeObjectType::DISCOVERY | DoeObjectType::SPDM
        ));
    }
    assert!(dsm.handle_spdm(data).len() >= 4);
    TdispResponse::decode(&dsm.handle_tdisp(data)).unwrap();

    // [type selector, body length, body...] records with a valid header; a START whose body
    // is empty carries the nonce of the last LOCK.
    let mut nonce = [0u8; 32];
    let mut rest = data;
    while let [selector, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let message_type = if *selector >= 0xf0 {
            *selector
        } else {
            0x81 + selector % 12
        };
        let mut request = vec![0x10, message_type, 0, 0];
        request.extend_from_slice(&u32::from(RID).to_le_bytes());
        request.extend_from_slice(&[0; 8]);
        if message_type == 0x86 && body.is_empty() {
            request.extend_from_slice(&nonce);
        } else {
            request.extend_from_slice(body);
        }
        let before = dsm.tdi_state(RID).unwrap();
        let (_, response) = TdispResponse::decode(&dsm.handle_tdisp(&request)).unwrap();
        let after = dsm.tdi_state(RID).unwrap();
        assert!(
            allowed(before, after, message_type),
            "{before:?} -> {after:?} by {message_type:#x}"
        );
        match &response {
            TdispResponse::Error(_) => assert_eq!(before, after),
            success => assert_eq!(
                TdispMessageType(message_type).response_code(),
                Some(success.message_type())
            ),
        }
        if let TdispResponse::LockInterface { nonce: fresh } = response {
            nonce = fresh;
        }
    }
});
