//! TPM engines: what finally executes a vTPM instance's commands.
//!
//! A [`TpmEngine`] takes [`TpmRequest`]s: TPM commands (with the locality they were sent at)
//! and control operations (the swtpm control-channel operations QEMU also uses: init, stop,
//! shutdown, set locality, cancel, state blobs, ...). Methods take `&self` so a cancel can
//! arrive while a command is executing. Engines:
//! - [`SwtpmEngine`] ([`swtpm`]): one `swtpm socket --tpm2` process per instance, its state in
//!   a directory of its own, driven over its data and control sockets as QEMU drives it. Every
//!   binary and every integration test uses it (fault injection wraps it), the ring's own
//!   tests (doorbells, the store handshake, hostile frontends) included: they poll the backend
//!   and the manager on the test's thread and wait for swtpm's answers in explicit steps.
//! - [`SimTpm`]: an in-process subset of TPM 2.0 (fast, no processes, no runtime), only for
//!   unit tests, the executor-free doc example and fuzzing.
//!
//! [`ctrl`] is swtpm's control-channel wire format, shared by the swtpm engine and the manager
//! stream's control frames.

pub mod ctrl;
mod sim;
pub mod swtpm;

pub use ctrl::BlobType;
pub use ctrl::BufferSizes;
pub use ctrl::Capabilities;
pub use ctrl::ConfigFlags;
pub use ctrl::CtrlCmd;
pub use ctrl::CtrlResult;
pub use ctrl::StateBlob;
pub use ctrl::StateFlags;
pub use sim::SimTpm;
pub use swtpm::SwtpmEngine;

use async_trait::async_trait;
use thiserror::Error;

/// A control operation on a TPM engine: every swtpm control-channel operation QEMU's
/// tpm-emulator uses, with its data. [`ctrl`] encodes them byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Capability bits (`CMD_GET_CAPABILITY`); the reply is [`ControlReply::Capabilities`].
    GetCapability,
    /// Power on / reset (`CMD_INIT`); `delete_volatile` drops saved volatile state.
    Init {
        /// Delete the volatile state first.
        delete_volatile: bool,
    },
    /// Orderly power off (`CMD_SHUTDOWN`): unusable until the next `Init`.
    Shutdown,
    /// Query the TPM-established flag (`CMD_GET_TPMESTABLISHED`).
    GetTpmEstablished,
    /// Locality for the following commands (`CMD_SET_LOCALITY`).
    SetLocality(u8),
    /// Cancel the command in progress (`CMD_CANCEL_TPM_CMD`).
    CancelCommand,
    /// Write the volatile state to the state directory (`CMD_STORE_VOLATILE`), before a
    /// planned stop.
    StoreVolatile,
    /// Reset the TPM-established flag from a locality (`CMD_RESET_TPMESTABLISHED`).
    ResetTpmEstablished(u8),
    /// Read a state blob (`CMD_GET_STATEBLOB`); the reply is [`ControlReply::StateBlob`].
    GetStateBlob {
        /// Which blob.
        blob: BlobType,
        /// Request flags (decrypted).
        flags: StateFlags,
        /// Offset into the blob.
        offset: u32,
    },
    /// Write a state blob (`CMD_SET_STATEBLOB`); the TPM must be stopped.
    SetStateBlob {
        /// Which blob.
        blob: BlobType,
        /// Blob flags (encrypted).
        flags: StateFlags,
        /// The blob.
        data: Vec<u8>,
    },
    /// Stop (`CMD_STOP`), e.g. before changing the buffer size or state blobs.
    Stop,
    /// Configuration flags (`CMD_GET_CONFIG`); the reply is [`ControlReply::Config`].
    GetConfig,
    /// Query (0) or set the I/O buffer size (`CMD_SET_BUFFERSIZE`); the reply is
    /// [`ControlReply::BufferSize`].
    SetBufferSize(u32),
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

/// The answer to a control operation (a failure is an [`EngineError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// Done; the operation has no reply data.
    Done,
    /// `GetCapability`: the capability bits (on the wire a bare `u64`).
    Capabilities(Capabilities),
    /// `GetTpmEstablished`: the flag.
    TpmEstablished(bool),
    /// `GetStateBlob`: the blob and its header fields.
    StateBlob(StateBlob),
    /// `GetConfig`: the flags.
    Config(ConfigFlags),
    /// `SetBufferSize`: the size in effect and the accepted range.
    BufferSize(BufferSizes),
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
    Unsupported(CtrlCmd),
    /// The engine is stopped or shut down and needs `Init`.
    #[error("engine is not running")]
    NotRunning,
    /// The engine refused a control operation with this swtpm result code.
    #[error("control operation refused with result {0:?}")]
    Refused(CtrlResult),
    /// The engine (process, connection) failed.
    #[error("engine failed: {0}")]
    Failed(String),
}

impl EngineError {
    /// The swtpm result code that reports this failure on the control channel.
    pub fn result_code(&self) -> CtrlResult {
        match self {
            // swtpm answers an unknown command, and one the TPM's state does not allow, with
            // TPM_BAD_ORDINAL.
            EngineError::Unsupported(_) | EngineError::NotRunning => CtrlResult::BAD_ORDINAL,
            EngineError::Refused(rc) => *rc,
            EngineError::Failed(_) => CtrlResult::FAIL,
        }
    }
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
