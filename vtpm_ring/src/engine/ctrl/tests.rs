use super::*;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use proptest::prelude::*;

fn all_ops() -> Vec<ControlOp> {
    vec![
        ControlOp::GetCapability,
        ControlOp::Init {
            delete_volatile: true,
        },
        ControlOp::Init {
            delete_volatile: false,
        },
        ControlOp::Shutdown,
        ControlOp::GetTpmEstablished,
        ControlOp::SetLocality(3),
        ControlOp::CancelCommand,
        ControlOp::StoreVolatile,
        ControlOp::ResetTpmEstablished(4),
        ControlOp::GetStateBlob {
            blob: BlobType::VOLATILE,
            flags: StateFlags::new().with_decrypted(true),
            offset: 7,
        },
        ControlOp::SetStateBlob {
            blob: BlobType::PERMANENT,
            flags: StateFlags::new(),
            data: vec![1, 2, 3],
        },
        ControlOp::Stop,
        ControlOp::GetConfig,
        ControlOp::SetBufferSize(4096),
    ]
}

/// A stream reader needs the whole request, except QEMU's locality padding.
fn expected_len(op: &ControlOp, bytes: &[u8]) -> usize {
    match op {
        ControlOp::SetLocality(_) | ControlOp::ResetTpmEstablished(_) => 5,
        _ => bytes.len(),
    }
}

/// Requests as QEMU's tpm_emulator.c writes them (command, then the C body).
#[test]
fn requests_match_qemu_bytes() {
    let golden: [(ControlOp, &[u8]); 8] = [
        (ControlOp::GetCapability, &[0, 0, 0, 1]),
        (
            ControlOp::Init {
                delete_volatile: true,
            },
            &[0, 0, 0, 2, 0, 0, 0, 1],
        ),
        (ControlOp::Stop, &[0, 0, 0, 0x0e]),
        (ControlOp::SetLocality(2), &[0, 0, 0, 5, 2, 0, 0, 0]),
        (
            ControlOp::ResetTpmEstablished(3),
            &[0, 0, 0, 0x0b, 3, 0, 0, 0],
        ),
        (
            ControlOp::SetBufferSize(4096),
            &[0, 0, 0, 0x11, 0, 0, 0x10, 0],
        ),
        (
            ControlOp::GetStateBlob {
                blob: BlobType::SAVESTATE,
                flags: StateFlags::new().with_decrypted(true),
                offset: 0,
            },
            &[0, 0, 0, 0x0c, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0],
        ),
        (
            ControlOp::SetStateBlob {
                blob: BlobType::PERMANENT,
                flags: StateFlags::new().with_encrypted(true),
                data: vec![0xaa, 0xbb],
            },
            &[
                0, 0, 0, 0x0d, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0xaa, 0xbb,
            ],
        ),
    ];
    for (op, bytes) in golden {
        assert_eq!(encode_request(&op), bytes, "{op:?}");
        assert_eq!(decode_request(bytes).unwrap(), op);
        assert_eq!(request_len(bytes), expected_len(&op, bytes));
    }
}

/// Replies as swtpm 0.7.1 sent them in a recorded session (see the module docs).
#[test]
fn replies_match_swtpm_bytes() {
    let caps = decode_reply(CtrlCmd::GET_CAPABILITY, &[0, 0, 0, 0, 0, 0, 0xff, 0xff])
        .unwrap()
        .unwrap();
    let ControlReply::Capabilities(c) = caps else {
        panic!("{caps:?}")
    };
    assert!(c.init() && c.set_buffersize() && c.send_command_header());
    // QEMU's required set for TPM 2.0 is 0x348f.
    let qemu = Capabilities::new()
        .with_init(true)
        .with_shutdown(true)
        .with_get_tpm_established(true)
        .with_set_locality(true)
        .with_reset_tpm_established(true)
        .with_set_datafd(true)
        .with_stop(true)
        .with_set_buffersize(true);
    assert_eq!(qemu.into_bits(), 0x348f);
    assert_eq!(
        decode_reply(
            CtrlCmd::SET_BUFFERSIZE,
            &[0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x0a, 0xf8, 0, 0, 0x10, 0]
        )
        .unwrap(),
        Ok(ControlReply::BufferSize(BufferSizes {
            size: 4096,
            min: 0xaf8,
            max: 4096
        }))
    );
    assert_eq!(
        decode_reply(CtrlCmd::GET_TPMESTABLISHED, &[0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
        Ok(ControlReply::TpmEstablished(false))
    );
    // Stopped TPM: the bare TPM_BAD_ORDINAL.
    assert_eq!(
        decode_reply(CtrlCmd::GET_TPMESTABLISHED, &[0, 0, 0, 0x0a]).unwrap(),
        Err(CtrlResult::BAD_ORDINAL)
    );
    let blob = decode_reply(
        CtrlCmd::GET_STATEBLOB,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0x02, 0x01],
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        blob,
        ControlReply::StateBlob(StateBlob {
            flags: StateFlags::new(),
            total_length: 2,
            data: vec![2, 1]
        })
    );
    assert_eq!(
        decode_reply(CtrlCmd::INIT, &[0, 0, 0, 0]).unwrap(),
        Ok(ControlReply::Done)
    );
    assert_eq!(
        decode_reply(CtrlCmd::INIT, &[0, 0, 0, 0, 0]).unwrap_err(),
        CtrlError::Trailing {
            expected: 4,
            got: 5
        }
    );
}

#[test]
fn every_reply_round_trips() {
    let replies = [
        (
            CtrlCmd::GET_CAPABILITY,
            ControlReply::Capabilities(Capabilities::from_bits(0x348f)),
        ),
        (
            CtrlCmd::GET_TPMESTABLISHED,
            ControlReply::TpmEstablished(true),
        ),
        (
            CtrlCmd::GET_STATEBLOB,
            ControlReply::StateBlob(StateBlob {
                flags: StateFlags::new().with_encrypted(true),
                total_length: 3,
                data: vec![9, 8, 7],
            }),
        ),
        (
            CtrlCmd::SET_BUFFERSIZE,
            ControlReply::BufferSize(BufferSizes {
                size: 1,
                min: 2,
                max: 3,
            }),
        ),
        (
            CtrlCmd::GET_CONFIG,
            ControlReply::Config(ConfigFlags::new().with_file_key(true)),
        ),
        (CtrlCmd::STOP, ControlReply::Done),
    ];
    for (cmd, reply) in replies {
        let bytes = encode_reply(cmd, &Ok(reply.clone()));
        assert_eq!(decode_reply(cmd, &bytes).unwrap(), Ok(reply));
    }
    for cmd in [
        CtrlCmd::GET_CAPABILITY,
        CtrlCmd::GET_STATEBLOB,
        CtrlCmd::INIT,
    ] {
        let bytes = encode_reply(cmd, &Err(EngineError::Refused(CtrlResult::BAD_LOCALITY)));
        assert_eq!(bytes, [0, 0, 0, 0x3d]);
        assert_eq!(
            decode_reply(cmd, &bytes).unwrap(),
            Err(CtrlResult::BAD_LOCALITY)
        );
    }
    // A reply of the wrong kind is an engine bug, reported as TPM_FAIL.
    assert_eq!(
        encode_reply(CtrlCmd::INIT, &Ok(ControlReply::TpmEstablished(true))),
        [0, 0, 0, 9]
    );
}

#[test]
fn malformed_requests_get_swtpm_result_codes() {
    let cases: [(&[u8], CtrlResult); 6] = [
        (&[0, 0, 0, 2, 0, 0], CtrlResult::BAD_PARAMETER),
        (&[0, 0, 0, 0x0e, 1], CtrlResult::BAD_PARAMETER),
        (&[0, 0, 0, 5], CtrlResult::BAD_PARAMETER),
        (&[0, 0, 0, 0x77], CtrlResult::BAD_ORDINAL),
        (&[0, 0, 0, 0x10], CtrlResult::BAD_ORDINAL),
        (
            &[0, 0, 0, 0x0d, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0],
            CtrlResult::SIZE,
        ),
    ];
    for (bytes, rc) in cases {
        assert_eq!(
            decode_request(bytes).unwrap_err().result_code(),
            rc,
            "{bytes:?}"
        );
    }
    // tpm2-tss sends the locality alone.
    assert_eq!(
        decode_request(&[0, 0, 0, 5, 1]).unwrap(),
        ControlOp::SetLocality(1)
    );
}

#[test]
fn request_len_tells_a_stream_reader_when_to_stop() {
    assert_eq!(request_len(&[]), 4);
    assert_eq!(request_len(&[0, 0, 0, 1]), 4);
    assert_eq!(request_len(&[0, 0, 0, 2]), 8);
    assert_eq!(request_len(&[0, 0, 0, 0x0d]), 16);
    assert_eq!(
        request_len(&[0, 0, 0, 0x0d, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5]),
        21
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), cmd in 0u32..0x14) {
        let _ = decode_request(&bytes);
        let _ = request_len(&bytes);
        let _ = decode_reply(CtrlCmd(cmd), &bytes);
    }

    #[test]
    fn requests_round_trip(i in 0usize..14, data in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut op = all_ops().swap_remove(i);
        if let ControlOp::SetStateBlob { data: d, .. } = &mut op {
            *d = data;
        }
        let bytes = encode_request(&op);
        prop_assert_eq!(request_len(&bytes), expected_len(&op, &bytes));
        prop_assert_eq!(decode_request(&bytes).unwrap(), op);
    }
}

#[test]
fn both_decoders_tell_a_command_not_carried_from_an_unknown_one() {
    let success = 0u32.to_be_bytes();
    for cmd in [
        CtrlCmd::HASH_START,
        CtrlCmd::HASH_DATA,
        CtrlCmd::HASH_END,
        CtrlCmd::SET_DATAFD,
        CtrlCmd::GET_INFO,
    ] {
        assert_eq!(
            decode_request(&cmd.0.to_be_bytes()),
            Err(CtrlError::NotCarried(cmd))
        );
        assert_eq!(decode_reply(cmd, &success), Err(CtrlError::NotCarried(cmd)));
    }
    let unknown = CtrlCmd(0x99);
    assert_eq!(
        decode_request(&unknown.0.to_be_bytes()),
        Err(CtrlError::Unknown(unknown))
    );
    assert_eq!(
        decode_reply(unknown, &success),
        Err(CtrlError::Unknown(unknown))
    );
}
