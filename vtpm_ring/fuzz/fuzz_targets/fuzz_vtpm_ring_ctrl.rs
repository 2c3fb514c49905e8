//! swtpm's control channel as a hostile peer writes it (QEMU side, TPM socket clients, a
//! swtpm that lies): decoding requests and replies never panics, a request that decodes
//! encodes back to the same bytes' meaning, and `request_len` is always a safe read target.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtpm_ring::engine::ctrl;
use vtpm_ring::engine::ctrl::CtrlCmd;

fuzz_target!(|input: (u32, &[u8])| {
    let (cmd, bytes) = input;
    let _ = ctrl::request_len(bytes);
    if let Ok(op) = ctrl::decode_request(bytes) {
        let again = ctrl::encode_request(&op);
        assert_eq!(ctrl::decode_request(&again).ok(), Some(op));
    }
    let _ = ctrl::decode_reply(CtrlCmd(cmd % 0x14), bytes);
    let _ = ctrl::decode_reply(CtrlCmd(cmd), bytes);
});
