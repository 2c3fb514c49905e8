//! The QEMU control socket against a hostile peer on QEMU's side: truncated and unknown
//! commands, descriptors that are not a data socket, buffer sizes out of range. Each gets
//! swtpm's result code within bounded time, and the session stays usable afterwards. The
//! vTPM behind it is a real swtpm through the whole ring.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

use rustix::net::SendAncillaryBuffer;
use rustix::net::SendAncillaryMessage;
use rustix::net::SendFlags;
use std::io::IoSlice;
use std::io::Read;
use std::io::Write;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;

const GET_CAPABILITY: u32 = 1;
const INIT: u32 = 2;
const GET_TPMESTABLISHED: u32 = 4;
const SET_LOCALITY: u32 = 5;
const HASH_START: u32 = 6;
const GET_STATEBLOB: u32 = 0xc;
const STOP: u32 = 0xe;
const SET_DATAFD: u32 = 0x10;
const SET_BUFFERSIZE: u32 = 0x11;

const SUCCESS: u32 = 0;
const BAD_PARAMETER: u32 = 3;
const BAD_ORDINAL: u32 = 0xa;
const IOERROR: u32 = 0x1f;
const BAD_LOCALITY: u32 = 0x3d;

/// TPM2_Startup(CLEAR) and TPM2_GetRandom(8).
const STARTUP: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

fn have_swtpm() -> bool {
    let found = std::process::Command::new("swtpm")
        .arg("--version")
        .output()
        .is_ok();
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("swtpm is missing under CI");
    }
    found
}

/// A directory of this test's own under the target's temporary directory (short enough for
/// unix socket paths), removed when dropped.
fn workdir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("qsock-{test}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

async fn stack(dir: &Path) -> VtpmStack {
    let mut config = StackConfig::new(dir.join("state"), 0);
    config.qemu_sockets = vec![dir.join("tpm.sock")];
    VtpmStack::start(config).await.unwrap()
}

/// QEMU's side of the control channel, blocking, every read bounded.
struct Peer(UnixStream);

impl Peer {
    fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self(s)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    fn request(&mut self, cmd: u32, body: &[u8]) {
        let mut b = cmd.to_be_bytes().to_vec();
        b.extend_from_slice(body);
        self.send(&b);
    }

    /// Sends `cmd` with `fd` attached (SCM_RIGHTS), in one message as QEMU does.
    fn request_with_fd(&mut self, cmd: u32, fd: BorrowedFd<'_>) {
        let fds = [fd];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        assert!(ancillary.push(SendAncillaryMessage::ScmRights(&fds)));
        let bytes = cmd.to_be_bytes();
        let sent = rustix::net::sendmsg(
            &self.0,
            &[IoSlice::new(&bytes)],
            &mut ancillary,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, 4);
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).unwrap();
        b
    }

    fn result(&mut self) -> u32 {
        u32::from_be_bytes(self.read(4).try_into().unwrap())
    }
}

fn data_channel(peer: &mut Peer) -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    peer.request_with_fd(SET_DATAFD, theirs.as_fd());
    assert_eq!(peer.result(), SUCCESS);
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ours
}

fn tpm(data: &mut UnixStream, command: &[u8]) -> Vec<u8> {
    data.write_all(command).unwrap();
    let mut header = [0u8; 10];
    data.read_exact(&mut header).unwrap();
    let size = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size - 10];
    data.read_exact(&mut rest).unwrap();
    [header.to_vec(), rest].concat()
}

fn rc(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[6..10].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemus_start_up_sequence_is_answered_like_swtpm() {
    if !have_swtpm() {
        return;
    }
    let dir = workdir("startup");
    let stack = stack(dir.path()).await;
    let path = stack.qemu_guests()[0].path().to_path_buf();
    let mut peer = Peer::connect(&path);
    let mut data = data_channel(&mut peer);
    // The version probe before INIT: a TPM 2.0 answer (TPM_RC_INITIALIZE is tagged 0x8001).
    let probe = tpm(&mut data, &GET_RANDOM_8);
    assert_eq!(&probe[..2], &[0x80, 0x01]);
    peer.request(GET_CAPABILITY, &[]);
    // Exactly what is carried: QEMU's required 0x348F plus CANCEL_TPM_CMD (v2); no state
    // blobs, no STORE_VOLATILE, no hashing.
    assert_eq!(
        u64::from_be_bytes(peer.read(8).try_into().unwrap()),
        0x348F | 0x20
    );
    peer.request(STOP, &[]);
    assert_eq!(peer.result(), SUCCESS);
    peer.request(SET_BUFFERSIZE, &0u32.to_be_bytes());
    let sizes = peer.read(16);
    assert_eq!(sizes[..4], SUCCESS.to_be_bytes());
    assert_eq!(sizes[4..], [0, 0, 0x10, 0, 0, 0, 0x0a, 0xf8, 0, 0, 0x10, 0]);
    peer.request(INIT, &0u32.to_be_bytes());
    assert_eq!(peer.result(), SUCCESS);
    peer.request(GET_TPMESTABLISHED, &[]);
    let est = peer.read(8);
    assert_eq!(est[..4], SUCCESS.to_be_bytes());
    peer.request(SET_LOCALITY, &[0, 0, 0, 0]);
    assert_eq!(peer.result(), SUCCESS);
    assert_eq!(rc(&tpm(&mut data, &STARTUP)), 0);
    let random = tpm(&mut data, &GET_RANDOM_8);
    assert_eq!((rc(&random), random.len()), (0, 20));
    drop(peer);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_gets_swtpm_codes_and_never_a_hang() {
    if !have_swtpm() {
        return;
    }
    let dir = workdir("hostile");
    let stack = stack(dir.path()).await;
    let path = stack.qemu_guests()[0].path().to_path_buf();
    let mut peer = Peer::connect(&path);

    // A second connection while this one is served is closed at once.
    let mut second = Peer::connect(&path);
    // The write may already find the connection closed.
    let _ = second.0.write_all(&GET_CAPABILITY.to_be_bytes());
    let mut byte = [0u8; 1];
    let refused = match second.0.read(&mut byte) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(refused, "second control connection was served");

    // Unknown, not carried, and not advertised commands: TPM_BAD_ORDINAL.
    for cmd in [0x77, HASH_START, 0x12] {
        peer.request(cmd, &[]);
        assert_eq!(peer.result(), BAD_ORDINAL, "command {cmd:#x}");
    }
    peer.request(GET_STATEBLOB, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(peer.result(), BAD_ORDINAL);

    // Truncated: INIT with half its body, then silence. swtpm waits 500 ms for the rest and
    // then judges what it has.
    let started = Instant::now();
    peer.send(&[0, 0, 0, INIT as u8, 0, 0]);
    assert_eq!(peer.result(), BAD_PARAMETER);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Shorter than a command number.
    peer.send(&[0, 0]);
    assert_eq!(peer.result(), BAD_PARAMETER);
    // Locality out of range.
    peer.request(SET_LOCALITY, &[5, 0, 0, 0]);
    assert_eq!(peer.result(), BAD_LOCALITY);

    // Buffer sizes: refused while the TPM runs, clamped to the range once stopped.
    peer.request(SET_BUFFERSIZE, &100u32.to_be_bytes());
    assert_eq!(peer.result(), BAD_ORDINAL);
    peer.request(STOP, &[]);
    assert_eq!(peer.result(), SUCCESS);
    peer.request(SET_BUFFERSIZE, &100u32.to_be_bytes());
    let sizes = peer.read(16);
    assert_eq!(sizes[..4], SUCCESS.to_be_bytes());
    assert_eq!(u32::from_be_bytes(sizes[4..8].try_into().unwrap()), 0xaf8);
    peer.request(SET_BUFFERSIZE, &[0, 0]);
    assert_eq!(peer.result(), BAD_PARAMETER);

    // SET_DATAFD without a descriptor, with a pipe, a file and a TCP socket: none is a unix
    // stream socket.
    peer.request(SET_DATAFD, &[]);
    assert_eq!(peer.result(), BAD_PARAMETER);
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    peer.request_with_fd(SET_DATAFD, pipe_r.as_fd());
    assert_eq!(peer.result(), BAD_PARAMETER);
    let file = std::fs::File::open(dir.path().join("state")).unwrap();
    peer.request_with_fd(SET_DATAFD, file.as_fd());
    assert_eq!(peer.result(), BAD_PARAMETER);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    peer.request_with_fd(SET_DATAFD, tcp.as_fd());
    assert_eq!(peer.result(), BAD_PARAMETER);

    // Still usable: a data socket, a second one refused as swtpm does, INIT, commands.
    let mut data = data_channel(&mut peer);
    let (_a, b) = UnixStream::pair().unwrap();
    peer.request_with_fd(SET_DATAFD, b.as_fd());
    assert_eq!(peer.result(), IOERROR);
    peer.request(INIT, &0u32.to_be_bytes());
    assert_eq!(peer.result(), SUCCESS);
    assert_eq!(rc(&tpm(&mut data, &STARTUP)), 0);
    assert_eq!(rc(&tpm(&mut data, &GET_RANDOM_8)), 0);

    // A command larger than the buffer: TPM_RC_COMMAND_SIZE, and the data channel closes
    // (it can no longer be framed).
    let mut huge = vec![0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 0x01, 0x7b];
    huge.resize(64, 0);
    let response = tpm(&mut data, &huge);
    assert_eq!(rc(&response), 0x142, "TPM_RC_COMMAND_SIZE");
    let mut rest = [0u8; 1];
    let closed = match data.read(&mut rest) {
        Ok(n) => n == 0,
        // The unread rest of the command makes the close a reset.
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "data channel closed");

    drop(peer);
    stack.shutdown().await.unwrap();
}

#[test]
fn vtpmctl_serves_qemu_sockets() {
    if !have_swtpm() {
        return;
    }
    let dir = workdir("vtpmctl");
    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vtpmctl"))
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--qemu-socket")
        .arg(&sockets[0])
        .arg("--qemu-socket")
        .arg(&sockets[1])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "vtpmctl ended early: {lines:?}");
        if line.starts_with("ready") {
            break;
        }
        lines.push(line);
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, socket) in lines.iter().zip(&sockets) {
        assert!(line.contains("qemu"), "{line}");
        assert!(line.contains(&socket.display().to_string()), "{line}");
        let mut peer = Peer::connect(socket);
        peer.request(GET_CAPABILITY, &[]);
        assert_eq!(
            u64::from_be_bytes(peer.read(8).try_into().unwrap()) & 0x348F,
            0x348F
        );
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    assert!(!sockets[0].exists(), "socket removed at exit");
}
