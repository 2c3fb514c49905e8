//! Session evidence (the `Measurements` report a guest verifies): decoding never panics,
//! whatever decodes re-encodes to the same bytes, and the measurement walker and the binding
//! block decoder never panic on what the container accepted.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_proto::evidence::binding::TdiBinding;
use tdisp_proto::evidence::bundle::SessionEvidence;

fuzz_target!(|data: &[u8]| {
    if let Ok(binding) = TdiBinding::decode(data) {
        assert_eq!(binding.encode(), data);
    }
    if let Ok(evidence) = SessionEvidence::decode(data) {
        assert_eq!(evidence.encode(), data);
        if let Ok(blocks) = evidence.blocks() {
            assert!(blocks.len() <= evidence.measurements.len());
        }
        if let Ok(bindings) = evidence.bindings() {
            for binding in bindings {
                assert!(binding.state.report_readable());
            }
        }
        let _ = evidence.requester_nonce();
        let _ = evidence.session_id();
        let _ = evidence.th1(data);
    }
});
