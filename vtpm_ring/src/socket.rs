//! A guest's vTPM served as a TPM socket: what swtpm's `socket` interface offers, in front of
//! a [`Frontend`], so stock TPM clients reach the guest's vTPM through the whole ring
//! (frontend -> shared pages -> backend -> manager -> swtpm).
//!
//! The peer is tpm2-tss's `swtpm` TCTI (`TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=P`):
//! - the **data port** `P` takes raw TPM commands and returns raw responses, each response in
//!   one write. A client may send any number of commands per connection (tpm2-tss opens one
//!   per command); up to [`MAX_CONNECTIONS`] connections per port are served concurrently
//!   (more are closed at once) and the frontend runs their commands one at a time. A header whose size is below 10 or above what the shared pages hold gets
//!   `TPM_RC_COMMAND_SIZE` and the stream ends, since it can no longer be framed (what the
//!   client still sends is read and dropped for a while first, see [`DRAIN_TIME`]); a
//!   command the ring fails to deliver gets `TPM_RC_FAILURE`.
//! - the **control port** `P + 1` speaks swtpm's control channel ([`crate::engine::ctrl`]).
//!   It carries what the frontend itself can do: GET_CAPABILITY (advertising exactly what
//!   the ring carries, see [`capabilities`]), SET_LOCALITY and CANCEL_TPM_CMD. A v1 ring
//!   without `feature-vtpm-control` carries no locality: SET_LOCALITY is then refused with
//!   `TPM_BAD_LOCALITY` for any locality but 0. v1 carries no cancel at all: CANCEL_TPM_CMD is
//!   then answered with success and does nothing (swtpm's cancel is best effort too), so the
//!   command, which runs to completion anyway, gets its real response. Every other command is
//!   answered with `TPM_BAD_ORDINAL`, as swtpm answers one it does not know: INIT, STOP and the
//!   others would have to travel over the ring to the instance's swtpm, which the ring does
//!   not carry yet.
//!
//! Not implemented: the MS simulator framing some swtpm versions also accept on the data port
//! (clients use `swtpm:`, not `mssim:`).

use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use crate::engine::ctrl;
use crate::engine::ctrl::Capabilities;
use crate::engine::ctrl::CtrlResult;
use crate::frontend::Frontend;
use crate::frontend::FrontendError;
use crate::tpm_header::TPM_HEADER_SIZE;
use crate::tpm_header::TpmHeader;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use zerocopy::FromBytes;

/// How long a control request may take to arrive in full (swtpm allows 500 ms too).
const CTRL_ASSEMBLY: Duration = Duration::from_millis(500);
/// Largest control request read (a SET_STATEBLOB header and blob are refused anyway).
pub(crate) const CTRL_BUFFER: usize = 4096;
/// Tries to find two consecutive free ports.
const PORT_ATTEMPTS: usize = 64;

/// Binds the data port and the control port right after it on 127.0.0.1: at `base` and
/// `base + 1`, or, with `None`, at a free pair the system picks (retrying when the port after
/// a free one is taken).
pub async fn bind_pair(base: Option<u16>) -> std::io::Result<(TcpListener, TcpListener)> {
    if let Some(port) = base {
        let next = port.checked_add(1).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no port after 65535")
        })?;
        let data = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let ctrl = TcpListener::bind((Ipv4Addr::LOCALHOST, next)).await?;
        return Ok((data, ctrl));
    }
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let data = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let Some(next) = data.local_addr()?.port().checked_add(1) else {
            continue;
        };
        match TcpListener::bind((Ipv4Addr::LOCALHOST, next)).await {
            Ok(ctrl) => return Ok((data, ctrl)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no consecutive free ports")))
}

/// A running TPM socket in front of one frontend. Dropping it stops serving.
#[derive(Debug)]
pub struct TpmSocket {
    data_addr: SocketAddr,
    ctrl_addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl TpmSocket {
    /// Serves `frontend` on the two listeners (see [`bind_pair`]) on the current tokio
    /// runtime.
    pub fn serve(
        frontend: Arc<Frontend>,
        data: TcpListener,
        ctrl: TcpListener,
    ) -> std::io::Result<Self> {
        let data_addr = data.local_addr()?;
        let ctrl_addr = ctrl.local_addr()?;
        let mut tasks = JoinSet::new();
        let front = frontend.clone();
        tasks.spawn(accept(data, move |s| serve_data(front.clone(), s)));
        tasks.spawn(accept(ctrl, move |s| serve_ctrl(frontend.clone(), s)));
        Ok(Self {
            data_addr,
            ctrl_addr,
            tasks,
        })
    }

    /// The data port's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The control port's address.
    pub fn ctrl_addr(&self) -> SocketAddr {
        self.ctrl_addr
    }

    /// Stops accepting and ends every connection.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Most connections one port serves at a time. swtpm serves one; tpm2-tss opens one per
/// tool. The bound keeps a client that opens connections and leaves them idle from using up
/// the host process's descriptors, which every other guest's socket and swtpm link need.
pub const MAX_CONNECTIONS: usize = 8;
/// Pause after a failed accept (out of descriptors, say), so an accept loop does not spin on
/// it; every listening socket of the crate and of `vtpmctl` pauses this long.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

async fn accept<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Connections end with the accept loop: aborting it drops the set.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Closed at once: the client sees the end of the stream instead of waiting
                // in the backlog, and the descriptor is back.
                Ok((_, peer)) if connections.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(%peer, max = MAX_CONNECTIONS, "TPM socket busy; connection refused");
                }
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "TPM socket connection");
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handler(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Longest a stream whose framing is lost is drained after its last answer, before it closes.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Most bytes drained from such a stream (a TPM command is a few KiB; this is room for a
/// client that sent one far larger, whole, before it read the refusal).
pub const DRAIN_BYTES: usize = 1 << 20;

/// What one read from a TPM socket client asks for: any command a v2 ring with one extra
/// page carries.
const COMMAND_READ: usize = 4096;

/// Reads one command framed by its TPM header. `Ok(None)` at a clean end of stream;
/// `Ok(Some(Err(rc)))` for a header whose size is out of range (the stream can no longer be
/// framed).
async fn read_command(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Result<Vec<u8>, TpmRc>>> {
    let mut command = vec![0u8; TPM_HEADER_SIZE];
    let first = stream.read(&mut command).await?;
    if first == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut command[first..]).await?;
    let Ok(header) = TpmHeader::read_from_bytes(&command) else {
        return Ok(Some(Err(TpmRc::COMMAND_SIZE)));
    };
    let size = header.size.get() as usize;
    if !(TPM_HEADER_SIZE..=max).contains(&size) {
        tracing::debug!(size, max, "TPM socket command size out of range");
        return Ok(Some(Err(TpmRc::COMMAND_SIZE)));
    }
    command.resize(size, 0);
    stream.read_exact(&mut command[TPM_HEADER_SIZE..]).await?;
    Ok(Some(Ok(command)))
}

async fn serve_data(frontend: Arc<Frontend>, stream: TcpStream) {
    serve_commands(&frontend, stream, || frontend.max_packet()).await;
}

/// Serves raw TPM commands on `stream` through `frontend` until the peer leaves: each
/// command framed by its header (at most `max()` bytes), each response in one write. A
/// command the ring fails to deliver gets `TPM_RC_FAILURE`; an unframeable one
/// `TPM_RC_COMMAND_SIZE`, and the stream ends (see [`drain_and_end`]).
pub(crate) async fn serve_commands(
    frontend: &Frontend,
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    max: impl Fn() -> usize,
) {
    // Buffered: a command that is all there is read with one system call, not header then
    // body; what a client sends ahead stays buffered for the next command.
    let mut stream = tokio::io::BufReader::with_capacity(COMMAND_READ, stream);
    loop {
        let command = match read_command(&mut stream, max()).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "TPM socket read failed");
                return;
            }
        };
        let (response, keep) = match command {
            Ok(c) => match frontend.transmit(&c).await {
                Ok(r) => (r, true),
                Err(e) => {
                    tracing::warn!(error = %e, "vTPM command through the ring failed");
                    (error_response(TpmRc::FAILURE), true)
                }
            },
            Err(rc) => (error_response(rc), false),
        };
        if let Err(e) = stream.write_all(&response).await {
            tracing::debug!(error = %e, "TPM socket write failed");
            return;
        }
        if !keep {
            drain_and_end(&mut stream).await;
            return;
        }
        // Let the other connections in before the next command. A client that pipelines
        // has that command in the buffer already, and the frontend's lock, just let go,
        // would be free again when this task asks for it: without a suspension here this
        // task takes it back before the connection it woke gets to run, and keeps it as
        // long as the client keeps sending.
        tokio::task::yield_now().await;
    }
}

/// Ends a stream whose framing is lost, after its last answer: shuts its write side (the
/// peer reads the answer, then the end of the stream), then reads and drops what the peer
/// still sends, until it closes, for at most [`DRAIN_TIME`] and [`DRAIN_BYTES`]. Closed with
/// input unread (the rest of an oversized command, typically), a TCP socket is reset
/// instead, and the peer's kernel drops what it had not yet read, the answer included.
async fn drain_and_end(stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin)) {
    if let Err(e) = stream.shutdown().await {
        tracing::debug!(error = %e, "TPM socket shutdown failed");
        return;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut scratch = vec![0u8; COMMAND_READ];
    let mut left = DRAIN_BYTES;
    while left > 0 {
        let n = left.min(scratch.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch[..n])).await {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => left = left.saturating_sub(n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TPM socket read failed while draining");
                return;
            }
            Err(_) => break,
        }
    }
    tracing::debug!(
        drained = DRAIN_BYTES - left,
        "TPM socket peer still sending; closed without draining further"
    );
}

/// What the control port in front of `frontend` advertises: exactly what reaches the TPM.
/// SET_LOCALITY unless the ring carries no locality (v1 without `feature-vtpm-control`);
/// CANCEL_TPM_CMD only over v2, the one protocol with a cancel on the wire.
pub fn capabilities(frontend: &Frontend) -> Capabilities {
    Capabilities::new()
        .with_set_locality(frontend.carries_locality())
        .with_cancel_tpm_cmd(frontend.carries_cancel())
}

/// Carries out one control operation on the frontend.
fn control(frontend: &Frontend, op: &ControlOp) -> Result<ControlReply, EngineError> {
    match op {
        ControlOp::GetCapability => Ok(ControlReply::Capabilities(capabilities(frontend))),
        // swtpm answers a locality it cannot set with TPM_BAD_LOCALITY; the frontend refuses
        // one out of range, and any but 0 where the ring carries none (v1 without control).
        ControlOp::SetLocality(l) => match frontend.set_locality(*l) {
            Ok(()) => Ok(ControlReply::Done),
            Err(e @ (FrontendError::BadLocality(_) | FrontendError::NoControl)) => {
                tracing::debug!(locality = l, error = %e, "locality refused");
                Err(EngineError::Refused(CtrlResult::BAD_LOCALITY))
            }
            Err(e) => Err(EngineError::Failed(e.to_string())),
        },
        // Best effort, as swtpm's own cancel: nothing to do where no cancel reaches the TPM.
        // Passed on, it would end the client's wait with a failure while the command runs on.
        ControlOp::CancelCommand if !frontend.carries_cancel() => {
            tracing::debug!("cancel ignored: the v1 ring carries none");
            Ok(ControlReply::Done)
        }
        ControlOp::CancelCommand => frontend
            .cancel()
            .map(|()| ControlReply::Done)
            .map_err(|e| EngineError::Failed(e.to_string())),
        other => Err(EngineError::Unsupported(other.cmd())),
    }
}

/// Answers one control request received as `bytes`.
fn answer(frontend: &Frontend, bytes: &[u8]) -> Vec<u8> {
    let cmd = ctrl::request_cmd(bytes);
    let reply = match ctrl::decode_request(bytes) {
        Ok(op) => control(frontend, &op),
        Err(e) => {
            tracing::debug!(error = %e, "bad control request");
            Err(EngineError::Refused(e.result_code()))
        }
    };
    ctrl::encode_reply(cmd, &reply)
}

/// Where control requests are read from: a TCP stream here, a unix socket that may carry
/// descriptors for QEMU.
pub(crate) trait CtrlSource {
    /// One receive into `buf`; 0 at end of stream.
    fn recv<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a;
}

impl CtrlSource for TcpStream {
    fn recv<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        self.read(buf)
    }
}

/// One control request as [`read_ctrl_request`] read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CtrlRequest {
    /// Bytes of it in the buffer; 0 when the peer has gone.
    pub(crate) len: usize,
    /// It announced more than the buffer holds: the rest was read and thrown away (as far as
    /// it came within the assembly time), so nothing of it is taken for a next request. The
    /// caller answers what it has (decoding the cut request fails) and closes the stream,
    /// whose framing it can no longer vouch for.
    pub(crate) cut: bool,
}

/// Reads one control request into `buf` as swtpm does: what the first receive brings is the
/// request, topped up until it is complete or the assembly time is over (then the short
/// request is judged as it is).
pub(crate) async fn read_ctrl_request(
    source: &mut impl CtrlSource,
    buf: &mut [u8],
) -> std::io::Result<CtrlRequest> {
    let gone = CtrlRequest { len: 0, cut: false };
    let mut got = source.recv(buf).await?;
    if got == 0 {
        return Ok(gone);
    }
    let deadline = tokio::time::Instant::now() + CTRL_ASSEMBLY;
    while got < ctrl::request_len(&buf[..got]).min(buf.len()) {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match tokio::time::timeout_at(deadline, source.recv(rest)).await {
            Ok(Ok(0)) => return Ok(gone),
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    let announced = ctrl::request_len(&buf[..got]);
    if announced <= buf.len() {
        return Ok(CtrlRequest {
            len: got,
            cut: false,
        });
    }
    tracing::debug!(
        announced,
        max = buf.len(),
        "control request larger than the buffer"
    );
    let mut left = announced - got;
    let mut scratch = [0u8; 512];
    while left > 0 {
        let n = left.min(scratch.len());
        match tokio::time::timeout_at(deadline, source.recv(&mut scratch[..n])).await {
            Ok(Ok(0)) => return Ok(gone),
            Ok(Ok(n)) => left -= n,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(CtrlRequest {
        len: got,
        cut: true,
    })
}

async fn serve_ctrl(frontend: Arc<Frontend>, mut stream: TcpStream) {
    let mut buf = vec![0u8; CTRL_BUFFER];
    loop {
        let request = match read_ctrl_request(&mut stream, &mut buf).await {
            Ok(r) if r.len > 0 => r,
            Ok(_) | Err(_) => return,
        };
        let reply = answer(&frontend, &buf[..request.len]);
        if stream.write_all(&reply).await.is_err() || request.cut {
            return;
        }
    }
}
