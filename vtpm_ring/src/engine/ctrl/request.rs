//! Requests: what QEMU writes to swtpm, encoded, framed on a stream and decoded.

use super::*;
use crate::engine::ControlOp;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

impl ControlOp {
    /// The swtpm control command number.
    pub fn cmd(&self) -> CtrlCmd {
        match self {
            ControlOp::GetCapability => CtrlCmd::GET_CAPABILITY,
            ControlOp::Init { .. } => CtrlCmd::INIT,
            ControlOp::Shutdown => CtrlCmd::SHUTDOWN,
            ControlOp::GetTpmEstablished => CtrlCmd::GET_TPMESTABLISHED,
            ControlOp::SetLocality(_) => CtrlCmd::SET_LOCALITY,
            ControlOp::CancelCommand => CtrlCmd::CANCEL_TPM_CMD,
            ControlOp::StoreVolatile => CtrlCmd::STORE_VOLATILE,
            ControlOp::ResetTpmEstablished(_) => CtrlCmd::RESET_TPMESTABLISHED,
            ControlOp::GetStateBlob { .. } => CtrlCmd::GET_STATEBLOB,
            ControlOp::SetStateBlob { .. } => CtrlCmd::SET_STATEBLOB,
            ControlOp::Stop => CtrlCmd::STOP,
            ControlOp::GetConfig => CtrlCmd::GET_CONFIG,
            ControlOp::SetBufferSize(_) => CtrlCmd::SET_BUFFERSIZE,
        }
    }

    /// The swtpm control command number as a plain integer.
    pub fn code(&self) -> u32 {
        self.cmd().0
    }
}

/// Encodes a request exactly as QEMU writes it to swtpm.
pub fn encode_request(op: &ControlOp) -> Vec<u8> {
    let mut out = op.cmd().0.to_be_bytes().to_vec();
    match op {
        ControlOp::Init { delete_volatile } => {
            let flags = if *delete_volatile {
                INIT_FLAG_DELETE_VOLATILE
            } else {
                0
            };
            out.extend_from_slice(
                InitRequest {
                    flags: flags.into(),
                }
                .as_bytes(),
            );
        }
        ControlOp::SetLocality(locality) | ControlOp::ResetTpmEstablished(locality) => {
            let body = LocalityRequest {
                locality: *locality,
                pad: [0; 3],
            };
            out.extend_from_slice(body.as_bytes());
        }
        ControlOp::GetStateBlob {
            blob,
            flags,
            offset,
        } => {
            let body = GetStateRequest {
                flags: flags.into_bits().into(),
                blob_type: blob.0.into(),
                offset: (*offset).into(),
            };
            out.extend_from_slice(body.as_bytes());
        }
        ControlOp::SetStateBlob { blob, flags, data } => {
            // Blobs are bounded by MAX_STATE_BLOB where they are decoded; a longer one from a
            // caller is cut to what the length field can say and refused by the peer.
            let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let header = SetStateHeader {
                flags: flags.into_bits().into(),
                blob_type: blob.0.into(),
                length: length.into(),
            };
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
        }
        ControlOp::SetBufferSize(size) => {
            out.extend_from_slice(
                BufferSizeRequest {
                    size: (*size).into(),
                }
                .as_bytes(),
            );
        }
        ControlOp::GetCapability
        | ControlOp::Shutdown
        | ControlOp::GetTpmEstablished
        | ControlOp::CancelCommand
        | ControlOp::StoreVolatile
        | ControlOp::Stop
        | ControlOp::GetConfig => {}
    }
    out
}

/// The command number a request starts with; `CtrlCmd(0)` (no command) when it is shorter
/// than one. A reply to a request is encoded for this number.
pub fn request_cmd(bytes: &[u8]) -> CtrlCmd {
    bytes
        .first_chunk::<4>()
        .map_or(CtrlCmd(0), |c| CtrlCmd(u32::from_be_bytes(*c)))
}

/// Bytes a request needs in total, judged from the bytes received so far (at least the
/// command number, else 4). A stream reader reads until it has this many, then decodes.
pub fn request_len(prefix: &[u8]) -> usize {
    if prefix.len() < 4 {
        return 4;
    }
    4 + match request_cmd(prefix) {
        CtrlCmd::INIT | CtrlCmd::SET_BUFFERSIZE => 4,
        // swtpm needs only the locality byte; QEMU's three padding bytes come in the same write.
        CtrlCmd::SET_LOCALITY | CtrlCmd::RESET_TPMESTABLISHED => 1,
        CtrlCmd::GET_STATEBLOB => size_of::<GetStateRequest>(),
        CtrlCmd::SET_STATEBLOB => {
            let blob = prefix
                .get(4..16)
                .and_then(|h| SetStateHeader::read_from_bytes(h).ok())
                .map_or(0, |h| h.length.get() as usize);
            size_of::<SetStateHeader>() + blob.min(MAX_STATE_BLOB + 1)
        }
        _ => 0,
    }
}

fn exact<T: FromBytes + KnownLayout + Immutable>(body: &[u8]) -> Result<T, CtrlError> {
    let needed = size_of::<T>();
    match body.len().cmp(&needed) {
        std::cmp::Ordering::Less => Err(CtrlError::Truncated {
            needed: 4 + needed,
            got: 4 + body.len(),
        }),
        std::cmp::Ordering::Greater => Err(CtrlError::Trailing {
            expected: 4 + needed,
            got: 4 + body.len(),
        }),
        std::cmp::Ordering::Equal => T::read_from_bytes(body).map_err(|_| CtrlError::Truncated {
            needed: 4 + needed,
            got: 4 + body.len(),
        }),
    }
}

fn empty(body: &[u8]) -> Result<(), CtrlError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(CtrlError::Trailing {
            expected: 4,
            got: 4 + body.len(),
        })
    }
}

/// The locality byte: 1 byte (tpm2-tss) or 4 with padding (QEMU).
fn locality(body: &[u8]) -> Result<u8, CtrlError> {
    match body {
        [l] | [l, _, _, _] => Ok(*l),
        [] => Err(CtrlError::Truncated { needed: 5, got: 4 }),
        _ => Err(CtrlError::Trailing {
            expected: 8,
            got: 4 + body.len(),
        }),
    }
}

/// Decodes one whole request (parse, then validate sizes as swtpm does).
pub fn decode_request(bytes: &[u8]) -> Result<ControlOp, CtrlError> {
    let (cmd, body) = bytes.split_first_chunk::<4>().ok_or(CtrlError::Truncated {
        needed: 4,
        got: bytes.len(),
    })?;
    let cmd = CtrlCmd(u32::from_be_bytes(*cmd));
    Ok(match cmd {
        CtrlCmd::GET_CAPABILITY => empty(body).map(|()| ControlOp::GetCapability)?,
        CtrlCmd::INIT => {
            let req: InitRequest = exact(body)?;
            ControlOp::Init {
                delete_volatile: req.flags.get() & INIT_FLAG_DELETE_VOLATILE != 0,
            }
        }
        CtrlCmd::SHUTDOWN => empty(body).map(|()| ControlOp::Shutdown)?,
        CtrlCmd::GET_TPMESTABLISHED => empty(body).map(|()| ControlOp::GetTpmEstablished)?,
        CtrlCmd::SET_LOCALITY => ControlOp::SetLocality(locality(body)?),
        CtrlCmd::CANCEL_TPM_CMD => empty(body).map(|()| ControlOp::CancelCommand)?,
        CtrlCmd::STORE_VOLATILE => empty(body).map(|()| ControlOp::StoreVolatile)?,
        CtrlCmd::RESET_TPMESTABLISHED => ControlOp::ResetTpmEstablished(locality(body)?),
        CtrlCmd::GET_STATEBLOB => {
            let req: GetStateRequest = exact(body)?;
            ControlOp::GetStateBlob {
                blob: BlobType(req.blob_type.get()),
                flags: StateFlags::from_bits(req.flags.get()),
                offset: req.offset.get(),
            }
        }
        CtrlCmd::SET_STATEBLOB => {
            let (header, data) =
                body.split_at_checked(size_of::<SetStateHeader>())
                    .ok_or(CtrlError::Truncated {
                        needed: 16,
                        got: bytes.len(),
                    })?;
            let header =
                SetStateHeader::read_from_bytes(header).map_err(|_| CtrlError::Truncated {
                    needed: 16,
                    got: bytes.len(),
                })?;
            let length = header.length.get() as usize;
            if length > MAX_STATE_BLOB {
                return Err(CtrlError::BlobTooLarge(length));
            }
            match data.len().cmp(&length) {
                std::cmp::Ordering::Less => {
                    return Err(CtrlError::Truncated {
                        needed: 16 + length,
                        got: bytes.len(),
                    });
                }
                std::cmp::Ordering::Greater => {
                    return Err(CtrlError::Trailing {
                        expected: 16 + length,
                        got: bytes.len(),
                    });
                }
                std::cmp::Ordering::Equal => {}
            }
            ControlOp::SetStateBlob {
                blob: BlobType(header.blob_type.get()),
                flags: StateFlags::from_bits(header.flags.get()),
                data: data.to_vec(),
            }
        }
        CtrlCmd::STOP => empty(body).map(|()| ControlOp::Stop)?,
        CtrlCmd::GET_CONFIG => empty(body).map(|()| ControlOp::GetConfig)?,
        CtrlCmd::SET_BUFFERSIZE => {
            let req: BufferSizeRequest = exact(body)?;
            ControlOp::SetBufferSize(req.size.get())
        }
        other => return Err(CtrlError::not_decoded(other)),
    })
}
