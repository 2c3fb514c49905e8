//! Golden vectors for the session evidence container and the TDI binding block
//! (`tdisp_proto::evidence`), written by hand from the layouts in their module docs: each test
//! decodes the bytes, checks the typed fields, and checks that encoding gives the bytes back.
//! Then every way the bytes can be wrong is refused with its typed error, and arbitrary bytes
//! never panic the decoder.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use proptest::prelude::*;
use tdisp_proto::evidence::binding::BindingBlockError;
use tdisp_proto::evidence::binding::TdiBinding;
use tdisp_proto::evidence::bundle::EvidenceError;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::evidence::signature::hash;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;

/// Parses hex digits, ignoring whitespace and `|` separators.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The binding block for function 0x0501 in CONFIG_LOCKED, digest 0xaa.., TH1 0xbb...
fn binding_vector() -> Vec<u8> {
    let mut bytes =
        hex("54 44 49 53 50 42 4e 44 | 01 | 01 | 00 00 | 01 05 00 00 | 00 00 00 00 00 00 00 00");
    bytes.extend([0xaa; 48]);
    bytes.extend([0xbb; 48]);
    bytes
}

#[test]
fn binding_block_golden_vector() {
    let bytes = binding_vector();
    assert_eq!(bytes.len(), 120);
    let binding = TdiBinding::decode(&bytes).unwrap();
    assert_eq!(binding.interface, InterfaceId::from_requester_id(0x0501));
    assert_eq!(binding.state, TdiState::ConfigLocked);
    assert_eq!(binding.report_digest, [0xaa; 48]);
    assert_eq!(binding.session_th1, [0xbb; 48]);
    assert_eq!(binding.encode(), bytes);
}

#[test]
fn binding_block_refusals() {
    let with = |at: usize, value: u8| {
        let mut b = binding_vector();
        b[at] = value;
        TdiBinding::decode(&b)
    };
    assert_eq!(with(0, b'X'), Err(BindingBlockError::Magic));
    assert_eq!(with(8, 2), Err(BindingBlockError::Version(2)));
    assert_eq!(with(9, 0), Err(BindingBlockError::State(0)));
    assert_eq!(with(9, 3), Err(BindingBlockError::State(3)));
    assert_eq!(with(9, 4), Err(BindingBlockError::State(4)));
    assert_eq!(with(11, 1), Err(BindingBlockError::Reserved("reserved")));
    assert_eq!(
        with(15, 0x02),
        Err(BindingBlockError::Reserved("function id"))
    );
    assert_eq!(
        with(23, 1),
        Err(BindingBlockError::Reserved("interface id"))
    );
    assert_eq!(with(9, 2).unwrap().state, TdiState::Run);
    let bytes = binding_vector();
    assert_eq!(
        TdiBinding::decode(&bytes[..119]),
        Err(BindingBlockError::Length(119))
    );
    let mut long = bytes;
    long.push(0);
    assert_eq!(
        TdiBinding::decode(&long),
        Err(BindingBlockError::Length(121))
    );
}

/// A container whose measurements hold one firmware block and the binding vector.
fn evidence_vector() -> Vec<u8> {
    let mut bytes = hex("54 44 45 56 | 01 00 | 00 00");
    // VCA: 4 bytes (a stand-in; the container does not parse it).
    bytes.extend(hex("04 00 00 00 | 10 84 00 00"));
    // KEY_EXCHANGE: header and ReqSessionID 0x1234.
    bytes.extend(hex("06 00 00 00 | 12 e4 00 00 34 12"));
    // KEY_EXCHANGE_RSP (unsigned part): header and RspSessionID 0xffff.
    bytes.extend(hex("06 00 00 00 | 12 64 00 00 ff ff"));
    bytes.extend([0x11; 96]);
    // GET_MEASUREMENTS: signed, all blocks, nonce 0x22.., slot 0.
    bytes.extend(hex("25 00 00 00 | 12 e0 01 ff"));
    bytes.extend([0x22; 32]);
    bytes.push(0);
    // MEASUREMENTS: 2 blocks; record = 4+3+48 (firmware digest) + 4+3+120 (binding) = 182.
    let mut measurements = hex("12 60 00 00 | 02 | b6 00 00");
    measurements.extend(hex("01 01 33 00 | 01 30 00"));
    measurements.extend([0xcc; 48]);
    measurements.extend(hex("e0 01 7b 00 | 84 78 00"));
    measurements.extend(binding_vector());
    measurements.extend([0x33; 32]);
    measurements.extend(hex("00 00"));
    bytes.extend(u32::try_from(measurements.len()).unwrap().to_le_bytes());
    bytes.extend(measurements);
    bytes.extend([0x44; 96]);
    bytes
}

#[test]
fn session_evidence_golden_vector() {
    let bytes = evidence_vector();
    let evidence = SessionEvidence::decode(&bytes).unwrap();
    assert_eq!(evidence.vca, hex("10 84 00 00"));
    assert_eq!(evidence.session_id(), 0xffff_1234);
    assert_eq!(evidence.key_exchange_signature, [0x11; 96]);
    assert_eq!(evidence.measurements_signature, [0x44; 96]);
    assert_eq!(evidence.requester_nonce().unwrap(), [0x22; 32]);
    let blocks = evidence.blocks().unwrap();
    assert_eq!(
        blocks
            .iter()
            .map(|b| (b.index, b.value_type, b.value.len()))
            .collect::<Vec<_>>(),
        vec![(1, 0x01, 48), (0xe0, 0x84, 120)]
    );
    let bindings = evidence.bindings().unwrap();
    assert_eq!(
        bindings,
        vec![TdiBinding::decode(&binding_vector()).unwrap()]
    );
    assert_eq!(evidence.encode(), bytes);

    // The transcripts are the DSP0274 concatenations.
    let chain = b"chain".as_slice();
    let mut expected = hex("10 84 00 00");
    expected.extend(hash(chain));
    expected.extend(hex("12 e4 00 00 34 12 | 12 64 00 00 ff ff"));
    assert_eq!(evidence.key_exchange_transcript(chain), expected);
    expected.extend([0x11; 96]);
    assert_eq!(evidence.th1(chain), hash(&expected));
    let l1 = evidence.measurements_transcript();
    assert_eq!(&l1[..4], &hex("10 84 00 00")[..]);
    assert_eq!(&l1[4..41], &evidence.get_measurements[..]);
    assert_eq!(&l1[41..], &evidence.measurements[..]);
}

#[test]
fn session_evidence_refusals() {
    let bytes = evidence_vector();
    let with = |at: usize, value: u8| {
        let mut b = bytes.clone();
        b[at] = value;
        SessionEvidence::decode(&b)
    };
    assert_eq!(with(0, b'X'), Err(EvidenceError::Magic));
    assert_eq!(with(4, 2), Err(EvidenceError::Version(2)));
    assert_eq!(with(6, 1), Err(EvidenceError::Reserved));
    // The KEY_EXCHANGE's code (container offset 8 + 8 + 4 + 1).
    assert!(matches!(
        with(21, 0x64),
        Err(EvidenceError::NotMessage {
            field: "KEY_EXCHANGE",
            ..
        })
    ));
    // A length past the end.
    assert_eq!(with(11, 0xff), Err(EvidenceError::Truncated("VCA")));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        SessionEvidence::decode(&trailing),
        Err(EvidenceError::Trailing(1))
    );
    for cut in 0..bytes.len() {
        assert!(
            SessionEvidence::decode(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes"
        );
    }
    assert!(matches!(
        SessionEvidence::decode(&vec![0; 64 * 1024 + 1]),
        Err(EvidenceError::Oversize(_))
    ));
}

#[test]
fn malformed_measurements_and_bindings_are_refused_by_name() {
    let base = SessionEvidence::decode(&evidence_vector()).unwrap();
    let edit = |f: &dyn Fn(&mut SessionEvidence)| {
        let mut e = base.clone();
        f(&mut e);
        e
    };
    // NumberOfBlocks disagrees with the record.
    let e = edit(&|e| e.measurements[4] = 3);
    assert!(matches!(e.blocks(), Err(EvidenceError::Measurements(_))));
    // The record runs past the message.
    let e = edit(&|e| e.measurements[5] = 0xff);
    assert!(matches!(e.blocks(), Err(EvidenceError::Measurements(_))));
    // A block in another measurement specification.
    let e = edit(&|e| e.measurements[9] = 0x02);
    assert!(matches!(e.blocks(), Err(EvidenceError::Measurements(_))));
    // Bytes after the opaque data.
    let e = edit(&|e| e.measurements.push(0));
    assert!(matches!(e.blocks(), Err(EvidenceError::Measurements(_))));
    // A binding block with a bad magic is refused with its index, not skipped.
    let at = 8 + 4 + 3 + 48 + 4 + 3;
    let e = edit(&|e| e.measurements[at] = b'X');
    assert_eq!(
        e.bindings(),
        Err(EvidenceError::Binding {
            index: 0xe0,
            error: BindingBlockError::Magic
        })
    );
    // An unsigned or single-block GET_MEASUREMENTS carries no nonce to report.
    let e = edit(&|e| e.get_measurements[2] = 0);
    assert!(e.requester_nonce().is_err());
    let e = edit(&|e| e.get_measurements[3] = 1);
    assert!(e.requester_nonce().is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(evidence) = SessionEvidence::decode(&bytes) {
            prop_assert_eq!(evidence.encode(), bytes);
            let _ = evidence.blocks();
            let _ = evidence.bindings();
            let _ = evidence.requester_nonce();
            let _ = evidence.th1(&[]);
        }
    }

    #[test]
    fn a_changed_byte_of_the_vector_decodes_to_something_else_or_is_refused(at in 0..1000usize, flip in 1..=255u8) {
        let mut bytes = evidence_vector();
        let at = at % bytes.len();
        bytes[at] ^= flip;
        if let Ok(evidence) = SessionEvidence::decode(&bytes) {
            prop_assert_eq!(evidence.encode(), bytes);
            prop_assert_ne!(evidence, SessionEvidence::decode(&evidence_vector()).unwrap());
        }
    }
}
