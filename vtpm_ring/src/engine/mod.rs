//! TPM engines: what finally executes a vTPM instance's commands.
//!
//! A [`TpmEngine`] takes [`TpmRequest`]s: TPM commands (with the locality they were sent at)
//! and control operations (the swtpm control-channel operations QEMU also uses: init, stop,
//! shutdown, set locality, cancel, ...). Methods take `&self` so a cancel can arrive while a
//! command is executing. This crate ships [`SimTpm`], an in-process engine; swtpm goes behind
//! the same trait.

mod sim;

pub use sim::SimTpm;

use async_trait::async_trait;
use thiserror::Error;

/// A control operation on a TPM engine (numbered like swtpm's control channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    /// Power on / reset (`CMD_INIT`); `delete_volatile` drops saved volatile state.
    Init {
        /// Delete the volatile state first.
        delete_volatile: bool,
    },
    /// Orderly power off (`CMD_SHUTDOWN`): unusable until the next `Init`.
    Shutdown,
    /// Stop (`CMD_STOP`), e.g. before changing the buffer size or state blobs.
    Stop,
    /// Locality for the following commands (`CMD_SET_LOCALITY`).
    SetLocality(u8),
    /// Cancel the command in progress (`CMD_CANCEL_TPM_CMD`).
    CancelCommand,
    /// Query the TPM-established flag (`CMD_GET_TPMESTABLISHED`).
    GetTpmEstablished,
    /// Reset the TPM-established flag from a locality (`CMD_RESET_TPMESTABLISHED`).
    ResetTpmEstablished(u8),
}

impl ControlOp {
    /// The swtpm control command number.
    pub fn code(self) -> u32 {
        match self {
            ControlOp::Init { .. } => 2,
            ControlOp::Shutdown => 3,
            ControlOp::GetTpmEstablished => 4,
            ControlOp::SetLocality(_) => 5,
            ControlOp::CancelCommand => 9,
            ControlOp::ResetTpmEstablished(_) => 0xb,
            ControlOp::Stop => 0xe,
        }
    }
}

/// One request to an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmRequest {
    /// A TPM command packet sent at `locality`.
    Command {
        /// The command bytes (header included).
        command: Vec<u8>,
        /// Locality the frontend sent it at.
        locality: u8,
    },
    /// A control operation.
    Control(ControlOp),
}

/// The answer to a control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlReply {
    /// Done.
    Done,
    /// The TPM-established flag.
    TpmEstablished(bool),
}

/// The answer to a [`TpmRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmReply {
    /// A TPM response packet (success or TPM error alike).
    Response(Vec<u8>),
    /// A control operation's reply.
    Control(ControlReply),
}

/// Engine failures (not TPM error responses: those are ordinary responses).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// The engine does not implement this control operation.
    #[error("control operation {0:?} is not supported by this engine")]
    Unsupported(ControlOp),
    /// The engine is stopped or shut down and needs `Init`.
    #[error("engine is not running")]
    NotRunning,
    /// The engine (process, connection) failed.
    #[error("engine failed: {0}")]
    Failed(String),
}

/// Something that executes TPM commands and control operations for one vTPM instance.
#[async_trait]
pub trait TpmEngine: Send + Sync {
    /// Executes one request.
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError>;

    /// Executes a command and returns its response.
    async fn command(&self, command: Vec<u8>, locality: u8) -> Result<Vec<u8>, EngineError> {
        match self
            .execute(TpmRequest::Command { command, locality })
            .await?
        {
            TpmReply::Response(r) => Ok(r),
            TpmReply::Control(c) => Err(EngineError::Failed(format!(
                "control reply {c:?} to a command"
            ))),
        }
    }

    /// Executes a control operation.
    async fn control(&self, op: ControlOp) -> Result<ControlReply, EngineError> {
        match self.execute(TpmRequest::Control(op)).await? {
            TpmReply::Control(c) => Ok(c),
            TpmReply::Response(_) => Err(EngineError::Failed(
                "command response to a control operation".into(),
            )),
        }
    }
}
