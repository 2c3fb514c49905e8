//! The seam between the guest client and whatever carries its packets.

use thiserror::Error;

/// Moves one command packet to the host and brings its reply back.
///
/// The protocol is strictly request/response, so one blocking exchange per call is the whole
/// contract. Implementations own framing and timeouts; an exchange that cannot complete is a
/// [`TransportError`], which the client reports as a failed host.
pub trait GuestTransport {
    /// Sends `command` and returns the raw reply packet.
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;
}

impl<T: GuestTransport + ?Sized> GuestTransport for &mut T {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).exchange(command)
    }
}

impl<T: GuestTransport + ?Sized> GuestTransport for Box<T> {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).exchange(command)
    }
}

/// A transport failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransportError {
    /// The channel to the host is gone.
    #[error("transport closed")]
    Closed,
    /// The host did not answer in time.
    #[error("timed out waiting for the host")]
    Timeout,
    /// The command was cancelled while waiting for the host.
    #[error("cancelled")]
    Cancelled,
    /// Any other transport-specific failure.
    #[error("transport failed: {0}")]
    Failed(String),
}
