//! One request, from the doorbell to the answer: what the protocol module copied out is
//! validated here (a TPM command's header, a control request's decision), answered here when
//! malformed, or sent to the manager; and the answer is written back to the shared pages.

use super::*;

/// A validated request on its way to the engine.
pub(super) enum Forward {
    Command { command: Vec<u8>, locality: u8 },
    Control { cmd: CtrlCmd, op: ControlOp },
}

/// Sends a validated command to the manager; any failure becomes TPM_RC_FAILURE, so the
/// frontend always gets an answer (the caller bounds the wait: the processing timeout).
pub(super) fn forward(
    client: &MuxClient,
    instance: u32,
    command: Vec<u8>,
    locality: u8,
) -> BoxFuture<'_, Vec<u8>> {
    Box::pin(async move {
        match client.command(instance, command, locality).await {
            Ok(r) if validate_response(&r) => r,
            Ok(_) => {
                tracing::warn!(instance, "malformed response from the manager");
                error_response(TpmRc::FAILURE)
            }
            Err(e) => {
                tracing::warn!(instance, error = %e, "manager request failed");
                error_response(TpmRc::FAILURE)
            }
        }
    })
}

/// Sends a control operation to the manager; the reply (a failure included) goes back as
/// swtpm's reply bytes (the caller bounds the wait, as for commands).
pub(super) fn forward_control(
    client: &MuxClient,
    instance: u32,
    cmd: CtrlCmd,
    op: ControlOp,
) -> BoxFuture<'_, Vec<u8>> {
    Box::pin(async move {
        let reply = client.control(instance, op).await.map_err(|e| {
            tracing::debug!(instance, error = %e, "control operation failed");
            match e {
                FrameError::ControlFailed(rc) => EngineError::Refused(CtrlResult(rc)),
                other => EngineError::Failed(other.to_string()),
            }
        });
        ctrl::encode_reply(cmd, &reply)
    })
}

pub(super) fn validate_response(r: &[u8]) -> bool {
    crate::tpm_header::TpmHeader::read_from_prefix_checked(r)
}

/// Handles a notification; returns a validated command to forward.
pub(super) fn on_event(
    shared: &Shared,
    config: &DeviceConfig,
    conn: &mut Connection,
    busy: bool,
    cancel_sent: &mut bool,
) -> Option<Forward> {
    let stats = &shared.stats;
    match conn.transport.doorbell(busy) {
        Doorbell::Nothing => None,
        Doorbell::Request {
            packet,
            locality,
            kind,
        } => {
            let locality = locality.unwrap_or(conn.locality);
            match (conn.control, kind) {
                (false, _) | (true, PacketKind::TPM_COMMAND) => {
                    check_request(shared, conn, packet, locality)
                }
                (true, PacketKind::CONTROL) => check_control(shared, conn, &packet),
                (true, kind) => {
                    tracing::debug!(?kind, "request of unknown kind");
                    BackendStats::bump(&stats.malformed);
                    respond(shared, conn, &error_response(TpmRc::BAD_TAG));
                    None
                }
            }
        }
        Doorbell::Malformed(e) => {
            tracing::debug!(error = %e, "request does not fit the shared pages");
            BackendStats::bump(&stats.malformed);
            respond(shared, conn, &error_response(TpmRc::COMMAND_SIZE));
            None
        }
        Doorbell::Cancel => {
            if !*cancel_sent {
                *cancel_sent = true;
                BackendStats::bump(&stats.cancels);
                if let Err(e) = shared
                    .client
                    .post_control(config.instance, ControlOp::CancelCommand)
                {
                    tracing::warn!(error = %e, "cancel not forwarded");
                }
            }
            None
        }
        Doorbell::CancelIdle => {
            BackendStats::bump(&stats.cancel_acks);
            if let Transport::V2(t) = &mut conn.transport
                && t.ack_cancel().is_ok()
            {
                let _ = conn.event.notify();
            }
            None
        }
    }
}

/// Decides a control request copied out of shared memory; answers it here unless it goes to
/// the engine.
pub(super) fn check_control(
    shared: &Shared,
    conn: &mut Connection,
    packet: &[u8],
) -> Option<Forward> {
    BackendStats::bump(&shared.stats.controls);
    let (cmd, decision) = control::decide(packet, conn.version);
    let reply = match decision {
        control::Decision::Forward(op) => return Some(Forward::Control { cmd, op }),
        control::Decision::SetLocality(l) => {
            conn.locality = l;
            Ok(ControlReply::Done)
        }
        control::Decision::Reply(r) => r,
    };
    respond(shared, conn, &ctrl::encode_reply(cmd, &reply));
    None
}

/// Validates a request copied out of shared memory; answers it here if malformed.
pub(super) fn check_request(
    shared: &Shared,
    conn: &mut Connection,
    packet: Vec<u8>,
    locality: u8,
) -> Option<Forward> {
    let rc = if locality > 4 {
        Some(TpmRc::LOCALITY)
    } else {
        validate_command(&packet)
            .err()
            .map(crate::tpm_header::HeaderError::response_code)
    };
    match rc {
        None => Some(Forward::Command {
            command: packet,
            locality,
        }),
        Some(rc) => {
            tracing::debug!(
                ?rc,
                len = packet.len(),
                "malformed request answered by the backend"
            );
            BackendStats::bump(&shared.stats.malformed);
            respond(shared, conn, &error_response(rc));
            None
        }
    }
}

/// Writes a response into the shared pages and notifies; one that does not fit becomes
/// TPM_RC_FAILURE (never truncated).
pub(super) fn respond(shared: &Shared, conn: &mut Connection, response: &[u8]) {
    let written = conn.transport.write_response(response).or_else(|e| {
        tracing::warn!(error = %e, "response does not fit the shared pages");
        conn.transport
            .write_response(&error_response(TpmRc::FAILURE))
    });
    conn.transport.answered();
    match written {
        Ok(()) => {
            let _ = conn.event.notify();
        }
        Err(e) => {
            BackendStats::bump(&shared.stats.dropped);
            tracing::warn!(error = %e, "response could not be written; dropped");
        }
    }
}
