//! The vTPM manager: owns one engine per instance and serves the multiplexed stream.

use super::StreamEnd;
use super::codec::Frame;
use super::codec::encode_control_reply;
use crate::engine::EngineError;
use crate::engine::TpmEngine;
use crate::engine::TpmReply;
use crate::engine::TpmRequest;
use crate::engine::ctrl;
use crate::engine::ctrl::CtrlCmd;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The vTPM manager: owns one engine per instance and serves the multiplexed stream.
#[derive(Default)]
pub struct VtpmManager {
    engines: BTreeMap<u32, Arc<dyn TpmEngine>>,
}

impl VtpmManager {
    /// A manager without instances.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the engine of `instance`.
    pub fn add_instance(&mut self, instance: u32, engine: Arc<dyn TpmEngine>) {
        self.engines.insert(instance, engine);
    }

    /// Serves frames until the backend closes the stream.
    ///
    /// Requests run concurrently and may finish in any order (so a cancel for an instance is
    /// not stuck behind that instance's command); each reply carries its request's tag, which
    /// is all the backend matches on. Per-device order is the backend's to keep: it has at
    /// most one command of a device outstanding and awaits each control operation before the
    /// next request, except the cancel it posts for the command under way.
    pub async fn serve(self, end: StreamEnd) {
        let StreamEnd { tx, mut rx } = end;
        // Shared, not copied, by every request in flight.
        let engines = Arc::new(self.engines);
        let mut running = FuturesUnordered::new();
        loop {
            // Biased: replies first, so a finished request's answer is never held up.
            futures::select_biased! {
                reply = running.select_next_some() => {
                    if let Some(reply) = reply
                        && tx.unbounded_send(reply).is_err()
                    {
                        break;
                    }
                }
                frame = rx.next() => {
                    let Some(bytes) = frame else { break };
                    let engines = engines.clone();
                    running.push(async move { handle_frame(&engines, bytes).await });
                }
            }
        }
        // Finish what was accepted; replies to a closed stream are dropped.
        while let Some(reply) = running.next().await {
            if let Some(reply) = reply {
                let _ = tx.unbounded_send(reply);
            }
        }
    }
}

async fn handle_frame(
    engines: &BTreeMap<u32, Arc<dyn TpmEngine>>,
    bytes: Vec<u8>,
) -> Option<Vec<u8>> {
    let frame = match Frame::into_request(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "malformed frame from the backend");
            return None;
        }
    };
    let reply = match frame {
        Frame::Command {
            instance,
            tag,
            locality,
            command,
        } => {
            let response = match engines.get(&instance) {
                Some(engine) => match engine
                    .execute(TpmRequest::Command { command, locality })
                    .await
                {
                    Ok(TpmReply::Response(r)) => r,
                    Ok(TpmReply::Control(_)) | Err(_) => error_response(TpmRc::FAILURE),
                },
                None => {
                    tracing::warn!(instance, "command for unknown vTPM instance");
                    error_response(TpmRc::FAILURE)
                }
            };
            Frame::Response {
                instance,
                tag,
                response,
            }
        }
        Frame::Control {
            instance,
            tag,
            payload,
        } => {
            // The reply's layout depends on the command, even for a request that failed to
            // decode: swtpm answers an unknown or short request with its result code.
            let cmd = payload
                .first_chunk::<4>()
                .map_or(CtrlCmd(0), |c| CtrlCmd(u32::from_be_bytes(*c)));
            let reply = match (ctrl::decode_request(&payload), engines.get(&instance)) {
                (Ok(op), Some(engine)) => encode_control_reply(cmd, engine.control(op).await),
                (Err(e), _) => {
                    tracing::warn!(instance, error = %e, "bad control frame");
                    encode_control_reply(cmd, Err(EngineError::Refused(e.result_code())))
                }
                (_, None) => encode_control_reply(cmd, Err(EngineError::NotRunning)),
            };
            Frame::Control {
                instance,
                tag,
                payload: reply,
            }
        }
        // Only the manager sends responses.
        Frame::Response { instance, .. } => {
            tracing::warn!(instance, "response frame from the backend");
            return None;
        }
    };
    Some(reply.encode())
}

#[cfg(test)]
mod tests {
    use super::super::mux;
    use super::super::stream_pair;
    use super::*;
    use crate::engine::ControlOp;
    use crate::engine::ControlReply;
    use crate::engine::SimTpm;

    const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

    #[tokio::test]
    async fn manager_routes_by_instance_and_locality_travels_with_the_command() {
        let (back, man) = stream_pair();
        let mut manager = VtpmManager::new();
        let a = Arc::new(SimTpm::started());
        let b = Arc::new(SimTpm::new());
        manager.add_instance(1, a.clone());
        manager.add_instance(2, b);
        let server = tokio::spawn(manager.serve(man));
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        let ra = client.command(1, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        let rb = client.command(2, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&ra), Some(TpmRc::SUCCESS));
        assert_eq!(
            crate::tpm_header::response_code(&rb),
            Some(TpmRc::INITIALIZE)
        );
        let rc = client.command(9, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&rc), Some(TpmRc::FAILURE));
        client.command(1, GET_RANDOM_8.to_vec(), 2).await.unwrap();
        assert_eq!(a.last_locality(), 2);
        assert!(client.control(1, ControlOp::SetLocality(9)).await.is_err());
        assert_eq!(
            client
                .control(1, ControlOp::GetTpmEstablished)
                .await
                .unwrap(),
            ControlReply::TpmEstablished(false)
        );
        drop(client);
        server.abort();
        routing.abort();
    }
}
