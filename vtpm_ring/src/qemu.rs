//! A guest's vTPM served to QEMU as if it were swtpm: QEMU's `-tpmdev emulator` talks to a
//! [`QemuSocket`], and every TPM command and power operation of the guest travels through the
//! ring (frontend -> shared pages -> backend -> manager -> the instance's swtpm).
//!
//! The peer is QEMU's tpm-emulator backend (checked against QEMU 7.2 and 10.0; facts in the
//! project's `qemu_tpm.md` reference), which connects to a unix socket and speaks swtpm's
//! control channel ([`crate::engine::ctrl`]): fixed-size big-endian requests, each answered
//! with one reply. QEMU creates a socketpair and passes one end with `SET_DATAFD`
//! (`SCM_RIGHTS`, in the same message as the command); raw TPM commands and responses then
//! travel on it, each response written in one write (QEMU's version probe reads it in one
//! read).
//!
//! What each control command does here:
//! - `INIT`, `STOP`, `SHUTDOWN`, `GET_TPMESTABLISHED`, `RESET_TPMESTABLISHED`: carried over the
//!   ring to the instance's engine (needs `feature-vtpm-control`, see
//!   [`FrontendConfig::control`](crate::frontend::FrontendConfig)); the engine's own result
//!   code comes back. After `SHUTDOWN` the connection ends, as swtpm exits.
//! - `SET_LOCALITY`: the frontend's locality ([`Frontend::set_locality`]).
//! - `CANCEL_TPM_CMD`: the ring's cancel; advertised only on v2 (v1 cannot cancel).
//! - `SET_BUFFERSIZE`: answered here like swtpm (0 queries; a size is clamped to the range;
//!   refused with `TPM_BAD_ORDINAL` while the TPM runs). The range's top is what the shared
//!   pages hold, at most 4096; its bottom is libtpms' minimum, 0xAF8.
//! - `SET_DATAFD`: the data socket (refused with `TPM_BAD_PARAMETER` unless the message
//!   carries a unix stream socket; `TPM_IOERROR` if one is already set, as swtpm does).
//! - `GET_CAPABILITY`: exactly the above (what the backend carries, asked over the ring).
//! - Anything else, `GET/SET_STATEBLOB` included, is `TPM_BAD_ORDINAL` and not advertised:
//!   the ring does not carry state blobs (a guest-side frontend must never be able to load a
//!   TPM state), so QEMU refuses to migrate such a guest.
//!
//! A malformed request gets swtpm's code (`TPM_BAD_PARAMETER` for a wrong size, after waiting
//! at most 500 ms for the rest, as swtpm waits); a command the ring fails to deliver gets
//! `TPM_RC_FAILURE` on the data channel, a control operation `TPM_FAIL`. One QEMU is served
//! at a time: a connection made while another is served is closed at once (it sees end of
//! stream, never a silent wait); the next may connect when the first has gone.

use crate::engine::Capabilities;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::CtrlCmd;
use crate::engine::CtrlResult;
use crate::engine::EngineError;
use crate::engine::ctrl;
use crate::engine::ctrl::BufferSizes;
use crate::frontend::Frontend;
use crate::protocol::ProtocolVersion;
use crate::socket::ACCEPT_BACKOFF;
use crate::socket::CTRL_BUFFER;
use crate::socket::CtrlSource;
use crate::socket::read_ctrl_request;
use crate::socket::serve_commands;
use rustix::fs::FileType;
use rustix::net::AddressFamily;
use rustix::net::RecvAncillaryBuffer;
use rustix::net::RecvAncillaryMessage;
use rustix::net::RecvFlags;
use rustix::net::SocketType;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// libtpms' smallest TPM 2.0 I/O buffer (what swtpm reports as the minimum).
pub const MIN_BUFFER_SIZE: u32 = 0xAF8;
/// swtpm's largest (and default) TPM 2.0 I/O buffer.
pub const MAX_BUFFER_SIZE: u32 = 4096;

/// A running control socket in front of one frontend. Dropping it stops serving.
#[derive(Debug)]
pub struct QemuSocket {
    path: PathBuf,
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for QemuSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QemuSocket {
    /// Binds the unix socket QEMU's `-chardev socket,path=PATH` connects to. An existing file
    /// at `path` is an error (never silently replaced).
    pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
        UnixListener::bind(path)
    }

    /// Serves `frontend` on `listener` on the current tokio runtime.
    pub fn serve(frontend: Arc<Frontend>, listener: UnixListener) -> std::io::Result<Self> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept(frontend, listener, stopped));
        Ok(Self { path, task, stop })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving (the current connection ends, its data channel closed before this
    /// returns) and removes the socket file.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Err(e) = (&mut self.task).await {
            tracing::debug!(error = %e, "QEMU socket task ended abnormally");
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "socket file not removed");
        }
    }
}

async fn accept(
    frontend: Arc<Frontend>,
    listener: UnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            stream = next_connection(&listener) => stream,
        };
        tracing::info!("QEMU connected to the vTPM control socket");
        let mut session = Session::new(frontend.clone());
        let stopping = {
            let serving = session.serve(stream);
            tokio::pin!(serving);
            loop {
                tokio::select! {
                    () = &mut serving => break false,
                    _ = stop.changed() => break true,
                    // One VMM at a time, like swtpm: a second connection is closed at once
                    // rather than left waiting.
                    extra = next_connection(&listener) => {
                        tracing::warn!("a second control connection refused while one is served");
                        drop(extra);
                    }
                }
            }
        };
        session.close().await;
        tracing::info!("QEMU control connection ended");
        if stopping {
            return;
        }
    }
}

/// The next connection on `listener`. A failed accept (out of descriptors, say) is logged
/// and retried after [`ACCEPT_BACKOFF`]: giving up would leave the guest without its QEMU
/// socket for the rest of the run, retrying at once would spin. The pause is part of this
/// future, so a session served meanwhile is not held up by it.
async fn next_connection(listener: &UnixListener) -> UnixStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "QEMU socket accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One QEMU's connection: the TPM's run state as swtpm would track it, and the data channel.
struct Session {
    frontend: Arc<Frontend>,
    /// The backend powered the TPM on when the frontend connected.
    running: bool,
    buffer_size: Arc<AtomicU32>,
    data: Option<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            data.abort();
        }
    }
}

/// What to do after answering.
enum After {
    Continue,
    /// swtpm exits after SHUTDOWN: the connection ends.
    Close,
}

impl Session {
    fn new(frontend: Arc<Frontend>) -> Self {
        let max = max_buffer(&frontend);
        Self {
            frontend,
            running: true,
            buffer_size: Arc::new(AtomicU32::new(max)),
            data: None,
        }
    }

    async fn serve(&mut self, mut stream: UnixStream) {
        let mut buf = vec![0u8; CTRL_BUFFER];
        loop {
            let mut fds = Vec::new();
            let mut source = FdSource {
                stream: &stream,
                fds: &mut fds,
            };
            let request = match read_ctrl_request(&mut source, &mut buf).await {
                Ok(r) if r.len == 0 => return,
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "control socket read failed");
                    return;
                }
            };
            let (reply, after) = self.answer(&buf[..request.len], fds).await;
            if let Err(e) = stream.write_all(&reply).await {
                tracing::debug!(error = %e, "control socket write failed");
                return;
            }
            if matches!(after, After::Close) || request.cut {
                return;
            }
        }
    }

    /// Answers one request; `fds` are the descriptors that came with it (closed unless it is
    /// SET_DATAFD and they are what it needs).
    async fn answer(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> (Vec<u8>, After) {
        // Shorter than a command number: decoding refuses it with TPM_BAD_PARAMETER.
        let cmd = ctrl::request_cmd(bytes);
        let (reply, after) = if cmd == CtrlCmd::SET_DATAFD {
            (self.set_datafd(fds), After::Continue)
        } else {
            match ctrl::decode_request(bytes) {
                Ok(op) => self.control(op).await,
                Err(e) => {
                    tracing::debug!(error = %e, "bad control request from QEMU");
                    (Err(EngineError::Refused(e.result_code())), After::Continue)
                }
            }
        };
        (ctrl::encode_reply(cmd, &reply), after)
    }

    async fn control(&mut self, op: ControlOp) -> (Result<ControlReply, EngineError>, After) {
        let reply = match op {
            ControlOp::GetCapability => Ok(ControlReply::Capabilities(self.capabilities().await)),
            ControlOp::Init { .. } => {
                let r = self.through_ring(&op).await;
                if r.is_ok() {
                    self.running = true;
                }
                r
            }
            ControlOp::Stop => {
                let r = self.through_ring(&op).await;
                if r.is_ok() {
                    self.running = false;
                }
                r
            }
            ControlOp::Shutdown => {
                let r = self.through_ring(&op).await;
                self.running = false;
                return (r, After::Close);
            }
            ControlOp::GetTpmEstablished | ControlOp::ResetTpmEstablished(_) => {
                self.through_ring(&op).await
            }
            ControlOp::SetLocality(l) => match self.frontend.set_locality(l) {
                Ok(()) => Ok(ControlReply::Done),
                Err(_) => Err(EngineError::Refused(CtrlResult::BAD_LOCALITY)),
            },
            ControlOp::CancelCommand if self.frontend.carries_cancel() => self
                .frontend
                .cancel()
                .map(|()| ControlReply::Done)
                .map_err(|e| EngineError::Failed(e.to_string())),
            ControlOp::SetBufferSize(size) => self.set_buffer_size(size),
            other => Err(EngineError::Unsupported(other.cmd())),
        };
        (reply, After::Continue)
    }

    /// Ends the data channel and waits until it has let go of the frontend.
    async fn close(&mut self) {
        if let Some(data) = self.data.take() {
            data.abort();
            let _ = data.await;
        }
    }

    /// What this socket carries: the backend's share asked over the ring, plus what it does
    /// itself.
    async fn capabilities(&self) -> Capabilities {
        let carried = match self.frontend.control(&ControlOp::GetCapability).await {
            Ok(Ok(ControlReply::Capabilities(c))) => c,
            other => {
                tracing::warn!(?other, "backend capabilities unavailable");
                Capabilities::new()
            }
        };
        Capabilities::new()
            .with_init(carried.init())
            .with_shutdown(carried.shutdown())
            .with_stop(carried.stop())
            .with_get_tpm_established(carried.get_tpm_established())
            .with_reset_tpm_established(carried.reset_tpm_established())
            // v2: the page's locality; v1: SET_LOCALITY over the ring.
            .with_set_locality(
                self.frontend.protocol() == ProtocolVersion::V2 || carried.set_locality(),
            )
            .with_cancel_tpm_cmd(self.frontend.carries_cancel())
            .with_set_datafd(true)
            .with_set_buffersize(true)
    }

    async fn through_ring(&self, op: &ControlOp) -> Result<ControlReply, EngineError> {
        match self.frontend.control(op).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(rc)) => Err(EngineError::Refused(rc)),
            Err(e) => {
                tracing::warn!(error = %e, ?op, "control operation through the ring failed");
                Err(EngineError::Failed(e.to_string()))
            }
        }
    }

    fn set_buffer_size(&self, wanted: u32) -> Result<ControlReply, EngineError> {
        if wanted > 0 && self.running {
            return Err(EngineError::Refused(CtrlResult::BAD_ORDINAL));
        }
        let max = max_buffer(&self.frontend);
        let size = match wanted {
            0 => self.buffer_size.load(Ordering::Relaxed),
            n => n.clamp(MIN_BUFFER_SIZE.min(max), max),
        };
        self.buffer_size.store(size, Ordering::Relaxed);
        Ok(ControlReply::BufferSize(BufferSizes {
            size,
            min: MIN_BUFFER_SIZE.min(max),
            max,
        }))
    }

    fn set_datafd(&mut self, fds: Vec<OwnedFd>) -> Result<ControlReply, EngineError> {
        if self.data.as_ref().is_some_and(|d| !d.is_finished()) {
            return Err(EngineError::Refused(CtrlResult::IOERROR));
        }
        let mut fds = fds.into_iter();
        let (Some(fd), None) = (fds.next(), fds.next()) else {
            tracing::debug!("SET_DATAFD without exactly one descriptor");
            return Err(EngineError::Refused(CtrlResult::BAD_PARAMETER));
        };
        let stream = match data_socket(fd) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(why, "SET_DATAFD descriptor refused");
                return Err(EngineError::Refused(CtrlResult::BAD_PARAMETER));
            }
        };
        let frontend = self.frontend.clone();
        let buffer = self.buffer_size.clone();
        self.data = Some(tokio::spawn(serve_data(frontend, stream, buffer)));
        Ok(ControlReply::Done)
    }
}

/// The largest buffer the shared pages hold, capped at swtpm's.
fn max_buffer(frontend: &Frontend) -> u32 {
    u32::try_from(frontend.max_packet())
        .unwrap_or(u32::MAX)
        .min(MAX_BUFFER_SIZE)
}

/// Checks that `fd` is a unix stream socket and makes it a tokio stream.
fn data_socket(fd: OwnedFd) -> Result<UnixStream, &'static str> {
    let stat = rustix::fs::fstat(&fd).map_err(|_| "fstat failed")?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err("not a socket");
    }
    if rustix::net::sockopt::socket_domain(&fd).ok() != Some(AddressFamily::UNIX) {
        return Err("not a unix socket");
    }
    if rustix::net::sockopt::socket_type(&fd).ok() != Some(SocketType::STREAM) {
        return Err("not a stream socket");
    }
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .map_err(|_| "cannot make it non-blocking")?;
    UnixStream::from_std(std_stream).map_err(|_| "cannot register it")
}

/// The control socket, keeping the descriptors that come with each request.
struct FdSource<'a> {
    stream: &'a UnixStream,
    fds: &'a mut Vec<OwnedFd>,
}

impl CtrlSource for FdSource<'_> {
    fn recv<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        recv(self.stream, buf, self.fds)
    }
}

/// Receives once, keeping any descriptors that came along.
async fn recv(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut ancillary = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(buf)],
                &mut ancillary,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in ancillary.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = message {
                    fds.extend(rights);
                }
            }
            Ok(msg.bytes)
        });
        match received {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The data channel: one TPM command at a time through the frontend, at most the buffer size
/// QEMU set, each response in one write.
async fn serve_data(frontend: Arc<Frontend>, stream: UnixStream, buffer: Arc<AtomicU32>) {
    let max = || {
        usize::try_from(buffer.load(Ordering::Relaxed))
            .unwrap_or(usize::MAX)
            .min(frontend.max_packet())
    };
    serve_commands(&frontend, stream, max).await;
}
