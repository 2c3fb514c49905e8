//! DOE data object decoding: never panics, and whatever decodes re-encodes to the same bytes.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_proto::framing::doe::DoeObject;

fuzz_target!(|data: &[u8]| {
    if let Ok(obj) = DoeObject::decode(data) {
        let mut out = Vec::new();
        obj.encode(&mut out);
        assert_eq!(out, data);
    }
});
