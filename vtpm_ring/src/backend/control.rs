//! Control requests on the ring: which swtpm control operations a frontend may send, and what
//! the backend does with each.
//!
//! With `feature-vtpm-control` negotiated, a request marked
//! [`PacketKind::CONTROL`](crate::protocol::PacketKind) carries one swtpm control-channel
//! request, byte for byte as QEMU writes it ([`ctrl`]), and is answered with swtpm's reply
//! bytes. A frontend that stands in for swtpm toward a VMM (QEMU's `-tpmdev emulator`) needs
//! the TPM's power and its established flag, so exactly these reach the instance's engine:
//! INIT, STOP, SHUTDOWN, GET_TPMESTABLISHED and RESET_TPMESTABLISHED. The others are refused
//! with `TPM_BAD_ORDINAL`, as swtpm refuses a command it does not know, because a frontend is
//! on the guest's side of the boundary:
//! - GET/SET_STATEBLOB would let it read or forge the TPM's whole state (PCRs included);
//!   migrating an instance's state is the toolstack's business, through the engine;
//! - STORE_VOLATILE, GET_CONFIG, SET_BUFFERSIZE, GET_INFO and the D-RTM hash commands
//!   concern the host's swtpm process, not the guest's TPM;
//! - CANCEL_TPM_CMD is the ring's own cancel (v2's CANCEL state), and the ring holds one
//!   request at a time, so a control request could never overtake a command.
//!
//! Locality: v2 carries it in the shared page with every command; v1 has no field for it, so
//! a v1 frontend sets it with SET_LOCALITY, which the backend keeps for the connection (and
//! which v2 refuses: its locality is the page's). GET_CAPABILITY answers with what this
//! module carries for the connection's protocol.

use crate::engine::Capabilities;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::CtrlCmd;
use crate::engine::CtrlResult;
use crate::engine::EngineError;
use crate::engine::ctrl;
use crate::protocol::ProtocolVersion;

/// What the backend does with one control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Send it to the instance's engine; its reply goes back.
    Forward(ControlOp),
    /// v1: the connection's locality for the following commands.
    SetLocality(u8),
    /// Answered by the backend itself.
    Reply(Result<ControlReply, EngineError>),
}

/// The control operations carried for a connection speaking `version`.
pub(super) fn capabilities(version: ProtocolVersion) -> Capabilities {
    let carried = Capabilities::new()
        .with_init(true)
        .with_shutdown(true)
        .with_stop(true)
        .with_get_tpm_established(true)
        .with_reset_tpm_established(true);
    match version {
        ProtocolVersion::V1 => carried.with_set_locality(true),
        ProtocolVersion::V2 => carried,
    }
}

/// Parses and validates one control request (as swtpm does: exact body sizes), then decides.
/// Returns the command number the reply is encoded for.
pub(super) fn decide(packet: &[u8], version: ProtocolVersion) -> (CtrlCmd, Decision) {
    let cmd = ctrl::request_cmd(packet);
    let op = match ctrl::decode_request(packet) {
        Ok(op) => op,
        Err(e) => {
            tracing::debug!(error = %e, "malformed control request on the ring");
            return (
                cmd,
                Decision::Reply(Err(EngineError::Refused(e.result_code()))),
            );
        }
    };
    let decision = match (op, version) {
        (
            op @ (ControlOp::Init { .. }
            | ControlOp::Stop
            | ControlOp::Shutdown
            | ControlOp::GetTpmEstablished
            | ControlOp::ResetTpmEstablished(_)),
            _,
        ) => Decision::Forward(op),
        (ControlOp::GetCapability, v) => {
            Decision::Reply(Ok(ControlReply::Capabilities(capabilities(v))))
        }
        (ControlOp::SetLocality(l), ProtocolVersion::V1) if l <= 4 => Decision::SetLocality(l),
        (ControlOp::SetLocality(_), ProtocolVersion::V1) => {
            Decision::Reply(Err(EngineError::Refused(CtrlResult::BAD_LOCALITY)))
        }
        (
            op @ (ControlOp::SetLocality(_)
            | ControlOp::CancelCommand
            | ControlOp::StoreVolatile
            | ControlOp::GetStateBlob { .. }
            | ControlOp::SetStateBlob { .. }
            | ControlOp::GetConfig
            | ControlOp::SetBufferSize(_)),
            _,
        ) => {
            tracing::debug!(cmd = ?op.cmd(), "control operation not carried on the ring");
            Decision::Reply(Err(EngineError::Unsupported(op.cmd())))
        }
    };
    (cmd, decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide_op(op: &ControlOp, v: ProtocolVersion) -> Decision {
        decide(&ctrl::encode_request(op), v).1
    }

    #[test]
    fn power_and_established_flag_reach_the_engine() {
        for op in [
            ControlOp::Init {
                delete_volatile: false,
            },
            ControlOp::Stop,
            ControlOp::Shutdown,
            ControlOp::GetTpmEstablished,
            ControlOp::ResetTpmEstablished(3),
        ] {
            for v in [ProtocolVersion::V1, ProtocolVersion::V2] {
                assert_eq!(decide_op(&op, v), Decision::Forward(op.clone()));
            }
        }
    }

    #[test]
    fn state_blobs_never_come_from_a_frontend() {
        let set = ControlOp::SetStateBlob {
            blob: crate::engine::BlobType::VOLATILE,
            flags: crate::engine::StateFlags::new(),
            data: vec![1, 2, 3],
        };
        let (cmd, d) = decide(&ctrl::encode_request(&set), ProtocolVersion::V2);
        assert_eq!(cmd, CtrlCmd::SET_STATEBLOB);
        let Decision::Reply(r) = d else {
            panic!("forwarded: {d:?}")
        };
        assert_eq!(ctrl::encode_reply(cmd, &r), vec![0, 0, 0, 0x0a]);
        for op in [
            ControlOp::GetStateBlob {
                blob: crate::engine::BlobType::PERMANENT,
                flags: crate::engine::StateFlags::new(),
                offset: 0,
            },
            ControlOp::StoreVolatile,
            ControlOp::SetBufferSize(4096),
            ControlOp::GetConfig,
            ControlOp::CancelCommand,
        ] {
            assert!(matches!(
                decide_op(&op, ProtocolVersion::V1),
                Decision::Reply(Err(EngineError::Unsupported(_)))
            ));
        }
    }

    #[test]
    fn locality_is_a_v1_control_and_v2_page_field() {
        assert_eq!(
            decide_op(&ControlOp::SetLocality(4), ProtocolVersion::V1),
            Decision::SetLocality(4)
        );
        assert_eq!(
            decide_op(&ControlOp::SetLocality(5), ProtocolVersion::V1),
            Decision::Reply(Err(EngineError::Refused(CtrlResult::BAD_LOCALITY)))
        );
        assert!(matches!(
            decide_op(&ControlOp::SetLocality(1), ProtocolVersion::V2),
            Decision::Reply(Err(EngineError::Unsupported(CtrlCmd::SET_LOCALITY)))
        ));
        let Decision::Reply(Ok(ControlReply::Capabilities(c1))) =
            decide_op(&ControlOp::GetCapability, ProtocolVersion::V1)
        else {
            panic!()
        };
        assert!(c1.set_locality() && c1.init() && !c1.cancel_tpm_cmd());
        let Decision::Reply(Ok(ControlReply::Capabilities(c2))) =
            decide_op(&ControlOp::GetCapability, ProtocolVersion::V2)
        else {
            panic!()
        };
        assert!(!c2.set_locality() && !c2.get_stateblob() && c2.stop());
    }

    #[test]
    fn malformed_requests_get_swtpm_codes() {
        // INIT with a 2-byte body: swtpm's TPM_BAD_PARAMETER.
        let (cmd, d) = decide(&[0, 0, 0, 2, 0, 0], ProtocolVersion::V2);
        let Decision::Reply(r) = d else { panic!() };
        assert_eq!(ctrl::encode_reply(cmd, &r), vec![0, 0, 0, 3]);
        // Unknown command: TPM_BAD_ORDINAL.
        let (cmd, d) = decide(&[0, 0, 0, 0x77], ProtocolVersion::V2);
        let Decision::Reply(r) = d else { panic!() };
        assert_eq!(ctrl::encode_reply(cmd, &r), vec![0, 0, 0, 0x0a]);
        // Shorter than a command number.
        let (cmd, d) = decide(&[0, 1], ProtocolVersion::V1);
        let Decision::Reply(r) = d else { panic!() };
        assert_eq!(ctrl::encode_reply(cmd, &r)[..4], [0, 0, 0, 3]);
    }
}
