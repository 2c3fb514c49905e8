//! Replies: what swtpm answers each request with, encoded and decoded.

use super::*;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;
use zerocopy::big_endian::U64;

/// Length of a successful reply to `cmd` before any blob bytes (GET_STATEBLOB: the header).
/// Every reply but GET_CAPABILITY's starts with the 4-byte result; after a non-zero result a
/// reader must stop (swtpm may send nothing more).
pub fn reply_fixed_len(cmd: CtrlCmd) -> usize {
    match cmd {
        CtrlCmd::GET_CAPABILITY => size_of::<U64>(),
        CtrlCmd::GET_TPMESTABLISHED => size_of::<EstablishedReply>(),
        CtrlCmd::GET_STATEBLOB => size_of::<GetStateHeader>(),
        CtrlCmd::SET_BUFFERSIZE => size_of::<BufferSizeReply>(),
        CtrlCmd::GET_CONFIG => size_of::<ConfigReply>(),
        _ => size_of::<ResultReply>(),
    }
}

/// Encodes the reply to a request with command number `cmd`, as swtpm would send it. A
/// failure is the 4-byte result alone (GET_CAPABILITY cannot fail in swtpm; here a failure is
/// the 4-byte result too, which [`decode_reply`] tells apart by length). A success whose kind
/// does not fit `cmd` is an engine bug and is encoded as `TPM_FAIL`.
pub fn encode_reply(cmd: CtrlCmd, reply: &Result<ControlReply, EngineError>) -> Vec<u8> {
    let fail = |rc: CtrlResult| rc.0.to_be_bytes().to_vec();
    let ok = 0u32.into();
    match (cmd, reply) {
        (_, Err(e)) => fail(e.result_code()),
        (CtrlCmd::GET_CAPABILITY, Ok(ControlReply::Capabilities(caps))) => {
            caps.into_bits().to_be_bytes().to_vec()
        }
        (CtrlCmd::GET_TPMESTABLISHED, Ok(ControlReply::TpmEstablished(bit))) => EstablishedReply {
            result: ok,
            bit: u8::from(*bit),
            pad: [0; 3],
        }
        .as_bytes()
        .to_vec(),
        (CtrlCmd::GET_STATEBLOB, Ok(ControlReply::StateBlob(blob))) => {
            let length = u32::try_from(blob.data.len()).unwrap_or(u32::MAX);
            let mut out = GetStateHeader {
                result: ok,
                flags: blob.flags.into_bits().into(),
                total_length: blob.total_length.into(),
                length: length.into(),
            }
            .as_bytes()
            .to_vec();
            out.extend_from_slice(&blob.data);
            out
        }
        (CtrlCmd::SET_BUFFERSIZE, Ok(ControlReply::BufferSize(s))) => BufferSizeReply {
            result: ok,
            size: s.size.into(),
            min: s.min.into(),
            max: s.max.into(),
        }
        .as_bytes()
        .to_vec(),
        (CtrlCmd::GET_CONFIG, Ok(ControlReply::Config(flags))) => ConfigReply {
            result: ok,
            flags: flags.into_bits().into(),
        }
        .as_bytes()
        .to_vec(),
        (
            CtrlCmd::INIT
            | CtrlCmd::SHUTDOWN
            | CtrlCmd::SET_LOCALITY
            | CtrlCmd::CANCEL_TPM_CMD
            | CtrlCmd::STORE_VOLATILE
            | CtrlCmd::RESET_TPMESTABLISHED
            | CtrlCmd::SET_STATEBLOB
            | CtrlCmd::STOP
            | CtrlCmd::SET_DATAFD,
            Ok(ControlReply::Done),
        ) => ResultReply { result: ok }.as_bytes().to_vec(),
        (_, Ok(other)) => {
            tracing::error!(?cmd, reply = ?other, "engine reply does not match the control command");
            fail(CtrlResult::FAIL)
        }
    }
}

/// Decodes the whole reply to a request with command number `cmd`: `Ok(Err(rc))` is the
/// peer's own failure code, `Err` a reply that does not parse.
pub fn decode_reply(
    cmd: CtrlCmd,
    bytes: &[u8],
) -> Result<Result<ControlReply, CtrlResult>, CtrlError> {
    let fixed = reply_fixed_len(cmd);
    let truncated = || CtrlError::Truncated {
        needed: fixed,
        got: bytes.len(),
    };
    if cmd == CtrlCmd::GET_CAPABILITY {
        return match bytes.len() {
            8 => {
                let caps = U64::read_from_bytes(bytes).map_err(|_| truncated())?;
                Ok(Ok(ControlReply::Capabilities(Capabilities::from_bits(
                    caps.get(),
                ))))
            }
            // Our failure form (swtpm itself never fails this command).
            4 => {
                let r = ResultReply::read_from_bytes(bytes).map_err(|_| truncated())?;
                match CtrlResult(r.result.get()) {
                    CtrlResult::SUCCESS => Err(CtrlError::Mismatch(cmd)),
                    rc => Ok(Err(rc)),
                }
            }
            n if n < 8 => Err(truncated()),
            n => Err(CtrlError::Trailing {
                expected: 8,
                got: n,
            }),
        };
    }
    let (result, _) = ResultReply::read_from_prefix(bytes).map_err(|_| truncated())?;
    let rc = CtrlResult(result.result.get());
    if rc != CtrlResult::SUCCESS {
        // swtpm sends the bare result on most failures and the full header on some.
        return if bytes.len() == 4 || bytes.len() == fixed {
            Ok(Err(rc))
        } else {
            Err(CtrlError::Trailing {
                expected: 4,
                got: bytes.len(),
            })
        };
    }
    if bytes.len() < fixed {
        return Err(truncated());
    }
    let trailing = |expected: usize| {
        if bytes.len() == expected {
            Ok(())
        } else {
            Err(CtrlError::Trailing {
                expected,
                got: bytes.len(),
            })
        }
    };
    let reply = match cmd {
        CtrlCmd::GET_TPMESTABLISHED => {
            trailing(fixed)?;
            let r = EstablishedReply::read_from_bytes(bytes).map_err(|_| truncated())?;
            ControlReply::TpmEstablished(r.bit & 1 != 0)
        }
        CtrlCmd::GET_STATEBLOB => {
            let (h, data) = GetStateHeader::read_from_prefix(bytes).map_err(|_| truncated())?;
            let length = h.length.get() as usize;
            if length > MAX_STATE_BLOB {
                return Err(CtrlError::BlobTooLarge(length));
            }
            trailing(fixed + length)?;
            ControlReply::StateBlob(StateBlob {
                flags: StateFlags::from_bits(h.flags.get()),
                total_length: h.total_length.get(),
                data: data.to_vec(),
            })
        }
        CtrlCmd::SET_BUFFERSIZE => {
            trailing(fixed)?;
            let r = BufferSizeReply::read_from_bytes(bytes).map_err(|_| truncated())?;
            ControlReply::BufferSize(BufferSizes {
                size: r.size.get(),
                min: r.min.get(),
                max: r.max.get(),
            })
        }
        CtrlCmd::GET_CONFIG => {
            trailing(fixed)?;
            let r = ConfigReply::read_from_bytes(bytes).map_err(|_| truncated())?;
            ControlReply::Config(ConfigFlags::from_bits(r.flags.get()))
        }
        CtrlCmd::INIT
        | CtrlCmd::SHUTDOWN
        | CtrlCmd::SET_LOCALITY
        | CtrlCmd::CANCEL_TPM_CMD
        | CtrlCmd::STORE_VOLATILE
        | CtrlCmd::RESET_TPMESTABLISHED
        | CtrlCmd::SET_STATEBLOB
        | CtrlCmd::STOP => {
            trailing(fixed)?;
            ControlReply::Done
        }
        other => return Err(CtrlError::not_decoded(other)),
    };
    Ok(Ok(reply))
}
