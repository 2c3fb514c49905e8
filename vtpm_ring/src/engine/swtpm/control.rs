//! The control connection and the TPM's power: control operations as QEMU sends them, the
//! state a power operation leaves, SHUTDOWN's end of swtpm and the INIT after it.

use super::*;

impl SwtpmEngine {
    pub(super) async fn control_op(&self, op: ControlOp) -> Result<ControlReply, EngineError> {
        match op {
            ControlOp::Init { .. } => {
                // INIT after SHUTDOWN powers on a new swtpm on the same state.
                let mut slot = self.slot.lock().await;
                if self.current().state == EngineState::ShutDown {
                    let live = self
                        .launch(&mut slot.hold)
                        .await
                        .map_err(|e| EngineError::Failed(e.to_string()))?;
                    let mut current = self.current();
                    current.live = Some(live);
                    current.state = EngineState::Running;
                }
                drop(slot);
                let live = self.live().await?;
                self.control_on(&live, op).await
            }
            ControlOp::Shutdown => {
                let live = self.live().await?;
                let reply = self.control_on(&live, op).await?;
                // swtpm exits after answering; reap it (or kill a straggler).
                live.process
                    .lock()
                    .await
                    .finish(self.config.io_timeout)
                    .await;
                // Now that swtpm is gone the state is let go, so that another engine (the next
                // manager on this root) may run it; unless an INIT came meanwhile.
                let mut slot = self.slot.lock().await;
                if self.current().state == EngineState::ShutDown {
                    slot.hold = None;
                }
                drop(slot);
                tracing::info!(instance = self.instance, "swtpm shut down");
                Ok(reply)
            }
            op => {
                let live = self.live().await?;
                self.control_on(&live, op).await
            }
        }
    }

    pub(super) async fn control_on(
        &self,
        live: &Arc<Live>,
        op: ControlOp,
    ) -> Result<ControlReply, EngineError> {
        if let ControlOp::SetLocality(_) = op {
            // Unknown until swtpm confirms the new one: if this is dropped once swtpm has it,
            // the next command sets its own again instead of trusting the old value.
            live.locality.store(UNKNOWN_LOCALITY, Ordering::Release);
        }
        // Likewise the power state: from before the operation goes out until its answer is
        // read, swtpm may be in the state before it or after it, and a caller that goes away
        // in between must not leave the state before it reported.
        let before = match op {
            ControlOp::Stop | ControlOp::Init { .. } | ControlOp::Shutdown => Some(
                std::mem::replace(&mut self.current().state, EngineState::Unsettled),
            ),
            _ => None,
        };
        match self.send_control(live, &op).await {
            Ok(Ok(reply)) => {
                match op {
                    ControlOp::SetLocality(l) => {
                        live.locality.store(u16::from(l), Ordering::Release);
                    }
                    ControlOp::Stop => self.current().state = EngineState::Stopped,
                    ControlOp::Init { .. } => {
                        self.current().state = EngineState::Running;
                        self.startup(live).await;
                    }
                    ControlOp::Shutdown => {
                        let mut current = self.current();
                        current.state = EngineState::ShutDown;
                        current.live = None;
                    }
                    _ => {}
                }
                Ok(reply)
            }
            Ok(Err(rc)) => {
                // Refused: swtpm stays as it was.
                if let Some(before) = before {
                    let mut current = self.current();
                    if current.state == EngineState::Unsettled {
                        current.state = before;
                    }
                }
                Err(EngineError::Refused(rc))
            }
            Err(e) => {
                self.retire(live, &e).await;
                Err(EngineError::Failed(e.to_string()))
            }
        }
    }

    pub(super) async fn send_control(
        &self,
        live: &Live,
        op: &ControlOp,
    ) -> Result<Result<ControlReply, CtrlResult>, SwtpmError> {
        let mut ctrl = live.ctrl.lock().await;
        // The connection is taken out for the round trip and put back only once its reply
        // was read whole. So a round trip dropped half-way (its caller went away) leaves no
        // connection whose next read would be its reply: the next operation connects
        // afresh. swtpm serves one control connection at a time: it answers what the old
        // one carried, sees it closed, and only then accepts the new one, so the replies
        // cannot mix. (Unlike the data connection's, this one's end does not end
        // swtpm, and control operations are rare: a new connection is cheap enough.)
        let mut stream = match ctrl.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(("127.0.0.1", live.ctrl_port)).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        let result = self.timed(ctrl_round_trip(&mut stream, op)).await;
        // After a refusal swtpm may or may not send more; the next one starts afresh.
        if matches!(result, Ok(Ok(_))) {
            *ctrl = Some(stream);
        }
        result
    }

    pub(super) async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, SwtpmError>>,
    ) -> Result<T, SwtpmError> {
        tokio::time::timeout(self.config.io_timeout, f)
            .await
            .map_err(|_| SwtpmError::Timeout(self.config.io_timeout))?
    }

    pub(super) async fn startup(&self, live: &Live) {
        if self.config.startup != Startup::Clear {
            return;
        }
        match self.send_command(live, &STARTUP_CLEAR).await {
            Ok(r) => tracing::debug!(
                instance = self.instance,
                rc = ?crate::tpm_header::response_code(&r),
                "TPM2_Startup(CLEAR) after INIT"
            ),
            Err(e) => tracing::warn!(instance = self.instance, error = %e, "TPM2_Startup failed"),
        }
    }
}
