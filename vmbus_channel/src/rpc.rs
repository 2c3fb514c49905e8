//! Request/response messages over `futures` channels, replacing mesh's `Rpc`.
//!
//! An [`Rpc`] carries an input and the sender half of a one-shot reply channel. The side that
//! handles the request calls [`Rpc::complete`] (or [`Rpc::handle`]); if it drops the `Rpc`
//! instead, the caller sees [`RpcError::Dropped`], so a vanished peer is never a silent hang.

use futures::channel::mpsc;
use futures::channel::oneshot;
use std::fmt;

/// Why a call did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The handler dropped the request without replying.
    #[error("the request was dropped without a reply")]
    Dropped,
    /// The request channel was closed before the request could be sent.
    #[error("the request channel is closed")]
    Closed,
    /// The handler replied with a failure (only for [`FailableRpc`]).
    #[error("remote failure: {0}")]
    Remote(#[from] RemoteError),
}

/// A failure reported by the handler of a [`FailableRpc`], carried as its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

impl RemoteError {
    /// Captures an error and its sources as one message.
    pub fn new(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut msg = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Self(msg)
    }
}

/// A request with input `I` that expects a reply of type `R`.
pub struct Rpc<I, R> {
    input: I,
    reply: oneshot::Sender<R>,
}

/// A request whose handler may fail.
pub type FailableRpc<I, R> = Rpc<I, Result<R, RemoteError>>;

impl<I: fmt::Debug, R> fmt::Debug for Rpc<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc").field("input", &self.input).finish()
    }
}

/// The caller's half of an [`Rpc`]: resolves to the reply.
#[derive(Debug)]
pub struct PendingReply<R>(oneshot::Receiver<R>);

impl<R> PendingReply<R> {
    /// Waits for the reply.
    pub async fn wait(self) -> Result<R, RpcError> {
        self.0.await.map_err(|_| RpcError::Dropped)
    }
}

impl<I, R> Rpc<I, R> {
    /// Creates a request and the handle that receives its reply.
    pub fn new(input: I) -> (Self, PendingReply<R>) {
        let (reply, recv) = oneshot::channel();
        (Self { input, reply }, PendingReply(recv))
    }

    /// The request's input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// Splits the request into its input and the reply sender.
    pub fn split(self) -> (I, ReplySender<R>) {
        (self.input, ReplySender(self.reply))
    }

    /// Sends the reply. A caller that stopped waiting is not an error for the handler.
    pub fn complete(self, reply: R) {
        let _ = self.reply.send(reply);
    }

    /// Computes the reply from the input and sends it.
    pub fn handle(self, f: impl FnOnce(I) -> R) {
        let (input, reply) = self.split();
        reply.send(f(input));
    }
}

/// The reply half of a split [`Rpc`].
#[derive(Debug)]
pub struct ReplySender<R>(oneshot::Sender<R>);

impl<R> ReplySender<R> {
    /// Sends the reply; a caller that stopped waiting is not an error.
    pub fn send(self, reply: R) {
        let _ = self.0.send(reply);
    }
}

/// Calling RPCs through an unbounded request channel, like mesh's `Sender::call`.
pub trait RpcSend<T> {
    /// Sends `make(rpc)` and waits for the reply.
    fn call<I, R>(
        &self,
        make: impl FnOnce(Rpc<I, R>) -> T,
        input: I,
    ) -> impl Future<Output = Result<R, RpcError>> + Send
    where
        R: Send;

    /// Like [`RpcSend::call`] for a [`FailableRpc`], folding the remote failure into the error.
    fn call_failable<I, R>(
        &self,
        make: impl FnOnce(FailableRpc<I, R>) -> T,
        input: I,
    ) -> impl Future<Output = Result<R, RpcError>> + Send
    where
        R: Send;
}

impl<T: Send> RpcSend<T> for mpsc::UnboundedSender<T> {
    fn call<I, R>(
        &self,
        make: impl FnOnce(Rpc<I, R>) -> T,
        input: I,
    ) -> impl Future<Output = Result<R, RpcError>> + Send
    where
        R: Send,
    {
        let (rpc, pending) = Rpc::new(input);
        let sent = self.unbounded_send(make(rpc)).is_ok();
        async move {
            if !sent {
                return Err(RpcError::Closed);
            }
            pending.wait().await
        }
    }

    fn call_failable<I, R>(
        &self,
        make: impl FnOnce(FailableRpc<I, R>) -> T,
        input: I,
    ) -> impl Future<Output = Result<R, RpcError>> + Send
    where
        R: Send,
    {
        let fut = self.call(make, input);
        async move { Ok(fut.await??) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use futures::executor::block_on;

    #[derive(Debug)]
    enum Req {
        Double(Rpc<u32, u32>),
        Check(FailableRpc<u32, u32>),
    }

    #[test]
    fn call_returns_handler_reply() {
        let (tx, mut rx) = mpsc::unbounded();
        let call = tx.call(Req::Double, 21);
        match block_on(rx.next()).unwrap() {
            Req::Double(rpc) => rpc.handle(|x| x * 2),
            Req::Check(_) => unreachable!(),
        }
        assert_eq!(block_on(call), Ok(42));
    }

    #[test]
    fn dropped_request_is_an_error_not_a_hang() {
        let (tx, mut rx) = mpsc::unbounded();
        let call = tx.call(Req::Double, 1);
        drop(block_on(rx.next()));
        assert_eq!(block_on(call), Err(RpcError::Dropped));
    }

    #[test]
    fn closed_channel_is_reported() {
        let (tx, rx) = mpsc::unbounded::<Req>();
        drop(rx);
        assert_eq!(block_on(tx.call(Req::Double, 1)), Err(RpcError::Closed));
    }

    #[test]
    fn failable_rpc_carries_remote_error() {
        let (tx, mut rx) = mpsc::unbounded();
        let call = tx.call_failable(Req::Check, 0);
        match block_on(rx.next()).unwrap() {
            Req::Check(rpc) => rpc.complete(Err(RemoteError("zero".into()))),
            Req::Double(_) => unreachable!(),
        }
        assert_eq!(
            block_on(call),
            Err(RpcError::Remote(RemoteError("zero".into())))
        );
    }
}
