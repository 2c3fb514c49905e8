//! DOE over TCP in the socket framing of DMTF's spdm-emu (`spdm_responder_emu` and
//! `spdm_requester_emu`, transport `PCI_DOE`), so our requester can talk to their responder and
//! our responder can serve their requester.
//!
//! Every message, both ways: `command u32 BE | transport type u32 BE (2 = PCI_DOE) | payload
//! size u32 BE | payload`, the payload of a NORMAL message being one whole DOE data object.
//! The other commands: TEST (0xDEAD; the responder answers "Server Hello!"), CONTINUE
//! (0xFFFD; the responder acknowledges and the client reconnects), SHUTDOWN (0xFFFE; the
//! responder acknowledges and stops); anything else gets UNKNOWN (0xFFFF).

use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::MAX_DOE_OBJECT_SIZE;
use crate::tsm::doe::MailboxError;
use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use thiserror::Error;

/// A DOE object to deliver.
pub const COMMAND_NORMAL: u32 = 0x0001;
/// End this connection; the responder keeps listening.
pub const COMMAND_CONTINUE: u32 = 0xfffd;
/// Stop the responder.
pub const COMMAND_SHUTDOWN: u32 = 0xfffe;
/// The answer to a command the responder does not know.
pub const COMMAND_UNKNOWN: u32 = 0xffff;
/// Connectivity test.
pub const COMMAND_TEST: u32 = 0xdead;
/// Transport type of PCI DOE.
pub const TRANSPORT_PCI_DOE: u32 = 2;
/// spdm-emu's default TCP port.
pub const DEFAULT_PORT: u16 = 2323;
/// The answer to TEST (with its terminating NUL, as spdm-emu sends it).
pub const SERVER_HELLO: &[u8] = b"Server Hello!\0";

/// Why a socket exchange failed.
#[derive(Debug, Error)]
pub enum EmuSocketError {
    /// The socket failed.
    #[error("socket I/O failed")]
    Io(#[from] std::io::Error),
    /// The peer announced a payload larger than any DOE object.
    #[error("payload of {0} bytes is too large")]
    TooLarge(u32),
    /// The peer uses another transport.
    #[error("transport type {0}, expected PCI_DOE (2)")]
    Transport(u32),
    /// The peer answered another command.
    #[error("command {found:#x}, expected {expected:#x}")]
    Command {
        /// Command found.
        found: u32,
        /// Command expected.
        expected: u32,
    },
}

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: u32,
    /// The transport type.
    pub transport: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A PCI_DOE frame.
    pub fn new(command: u32, payload: Vec<u8>) -> Self {
        Self {
            command,
            transport: TRANSPORT_PCI_DOE,
            payload,
        }
    }

    /// Writes the frame.
    pub fn write_to(&self, mut out: impl Write) -> Result<(), EmuSocketError> {
        let size =
            u32::try_from(self.payload.len()).map_err(|_| EmuSocketError::TooLarge(u32::MAX))?;
        let mut bytes = Vec::with_capacity(12 + self.payload.len());
        bytes.extend_from_slice(&self.command.to_be_bytes());
        bytes.extend_from_slice(&self.transport.to_be_bytes());
        bytes.extend_from_slice(&size.to_be_bytes());
        bytes.extend_from_slice(&self.payload);
        out.write_all(&bytes)?;
        out.flush()?;
        Ok(())
    }

    /// Reads one frame; refuses payloads larger than a DOE object and other transports.
    pub fn read_from(mut input: impl Read) -> Result<Self, EmuSocketError> {
        let mut header = [0u8; 12];
        input.read_exact(&mut header)?;
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (command, transport, size) = (word(0), word(4), word(8));
        if transport != TRANSPORT_PCI_DOE {
            return Err(EmuSocketError::Transport(transport));
        }
        if size as usize > MAX_DOE_OBJECT_SIZE {
            return Err(EmuSocketError::TooLarge(size));
        }
        let mut payload = vec![0; size as usize];
        input.read_exact(&mut payload)?;
        Ok(Self {
            command,
            transport,
            payload,
        })
    }
}

/// A DOE mailbox reached through spdm-emu's socket framing (our requester's side).
#[derive(Debug)]
pub struct EmuSocketMailbox<S> {
    stream: S,
}

impl<S: Read + Write + Send> EmuSocketMailbox<S> {
    /// A mailbox over a connected stream.
    pub fn new(stream: S) -> Self {
        Self { stream }
    }

    /// Sends TEST and checks the responder's hello.
    pub fn test(&mut self) -> Result<(), EmuSocketError> {
        self.call(COMMAND_TEST, b"Client Hello!\0".to_vec())
            .map(drop)
    }

    /// Ends this connection with CONTINUE; the responder keeps listening for the next.
    pub fn end_connection(&mut self) -> Result<(), EmuSocketError> {
        self.call(COMMAND_CONTINUE, Vec::new()).map(drop)
    }

    /// Asks the responder to stop.
    pub fn shutdown(&mut self) -> Result<(), EmuSocketError> {
        self.call(COMMAND_SHUTDOWN, Vec::new()).map(drop)
    }

    fn call(&mut self, command: u32, payload: Vec<u8>) -> Result<Vec<u8>, EmuSocketError> {
        Frame::new(command, payload).write_to(&mut self.stream)?;
        let answer = Frame::read_from(&mut self.stream)?;
        if answer.command != command {
            return Err(EmuSocketError::Command {
                found: answer.command,
                expected: command,
            });
        }
        Ok(answer.payload)
    }
}

impl<S: Read + Write + Send> DoeMailbox for EmuSocketMailbox<S> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        self.call(COMMAND_NORMAL, request.to_vec()).map_err(|e| {
            tracing::warn!(error = %e, "spdm-emu socket exchange failed");
            MailboxError::Unavailable
        })
    }
}

/// How a served connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The client sent CONTINUE: accept the next connection.
    Continue,
    /// The client sent SHUTDOWN: stop serving.
    Shutdown,
}

/// Serves one connection of spdm-emu's requester with `device` (our responder's side), until
/// CONTINUE or SHUTDOWN. A DOE object the device cannot answer gets an empty NORMAL answer.
pub fn serve_connection<S: Read + Write>(
    mut stream: S,
    device: &mut dyn DoeMailbox,
) -> Result<ServeOutcome, EmuSocketError> {
    loop {
        let frame = Frame::read_from(&mut stream)?;
        let (command, payload, outcome) = match frame.command {
            COMMAND_NORMAL => {
                let answer = device.exchange(&frame.payload).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "DOE object not answered");
                    Vec::new()
                });
                (COMMAND_NORMAL, answer, None)
            }
            COMMAND_TEST => (COMMAND_TEST, SERVER_HELLO.to_vec(), None),
            COMMAND_CONTINUE => (COMMAND_CONTINUE, Vec::new(), Some(ServeOutcome::Continue)),
            COMMAND_SHUTDOWN => (COMMAND_SHUTDOWN, Vec::new(), Some(ServeOutcome::Shutdown)),
            other => {
                tracing::debug!(command = other, "unknown spdm-emu socket command");
                (COMMAND_UNKNOWN, Vec::new(), None)
            }
        };
        Frame::new(command, payload).write_to(&mut stream)?;
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

/// Serves spdm-emu's requester (`spdm_requester_emu`, which connects to port
/// [`DEFAULT_PORT`]) on `listener` with `device`, one connection after another, until a client
/// sends SHUTDOWN. A connection that breaks (the client vanished mid-message) is logged and
/// the next one accepted; the device keeps its state across connections, as a real device
/// would, and answers a client that starts over with GET_VERSION.
pub fn serve(listener: &TcpListener, device: &mut dyn DoeMailbox) -> Result<(), EmuSocketError> {
    loop {
        let (stream, peer) = listener.accept()?;
        tracing::debug!(%peer, "spdm-emu requester connected");
        match serve_connection(stream, device) {
            Ok(ServeOutcome::Shutdown) => return Ok(()),
            Ok(ServeOutcome::Continue) => {}
            Err(e) => tracing::warn!(error = %e, %peer, "spdm-emu connection ended"),
        }
    }
}
