//! The TPM socket's wire behaviour, byte for byte, as the `swtpm:` TCTI sees it.

use super::get_random;
use super::rc;
use super::stack;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn ctrl(stream: &mut TcpStream, request: &[u8], reply_len: usize) -> Vec<u8> {
    stream.write_all(request).await.unwrap();
    let mut reply = vec![0u8; reply_len];
    stream.read_exact(&mut reply).await.unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_port_answers_like_swtpm_and_advertises_only_what_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let guest = &stack.guests()[0];
    let mut c = TcpStream::connect(guest.ctrl_addr()).await.unwrap();
    // SET_LOCALITY | CANCEL_TPM_CMD, as a bare u64.
    assert_eq!(
        ctrl(&mut c, &[0, 0, 0, 1], 8).await,
        [0, 0, 0, 0, 0, 0, 0, 0x28]
    );
    // tpm2-tss sends the locality byte alone.
    assert_eq!(ctrl(&mut c, &[0, 0, 0, 5, 1], 4).await, [0, 0, 0, 0]);
    assert_eq!(
        ctrl(&mut c, &[0, 0, 0, 5, 9, 0, 0, 0], 4).await,
        [0, 0, 0, 0x3d]
    );
    // INIT would have to cross the ring, which does not carry it: TPM_BAD_ORDINAL, like an
    // unknown command.
    assert_eq!(
        ctrl(&mut c, &[0, 0, 0, 2, 0, 0, 0, 0], 4).await,
        [0, 0, 0, 0x0a]
    );
    assert_eq!(ctrl(&mut c, &[0, 0, 0, 0x77], 4).await, [0, 0, 0, 0x0a]);
    assert_eq!(ctrl(&mut c, &[0, 0, 0, 9], 4).await, [0, 0, 0, 0]);
    assert_eq!(ctrl(&mut c, &[0, 0, 0, 5, 0], 4).await, [0, 0, 0, 0]);

    let mut d = TcpStream::connect(guest.data_addr()).await.unwrap();
    d.write_all(&get_random(4)).await.unwrap();
    let mut r = vec![0u8; 16];
    d.read_exact(&mut r).await.unwrap();
    assert_eq!(rc(&r), 0);
    stack.shutdown().await.unwrap();
}

/// A control request longer than the port reads (SET_STATEBLOB of 6000 bytes, its blob made
/// of bytes that also read as GET_CAPABILITY requests) gets one reply and the connection is
/// closed: nothing of the blob is taken for further requests, whose replies would then answer
/// the client's next requests. A new connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_port_answers_a_request_longer_than_it_reads_once_and_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let guest = &stack.guests()[0];
    let mut c = TcpStream::connect(guest.ctrl_addr()).await.unwrap();
    let blob_len: u32 = 6000;
    let mut request = vec![0, 0, 0, 0x0d];
    request.extend_from_slice(&0u32.to_be_bytes());
    request.extend_from_slice(&1u32.to_be_bytes());
    request.extend_from_slice(&blob_len.to_be_bytes());
    for _ in 0..blob_len / 4 {
        request.extend_from_slice(&[0, 0, 0, 1]);
    }
    c.write_all(&request).await.unwrap();
    let mut replies = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.read_to_end(&mut replies),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "still open after {} reply bytes: {:02x?}",
        replies.len(),
        &replies[..replies.len().min(32)]
    );
    assert_eq!(
        replies.len(),
        4,
        "{:02x?}",
        &replies[..replies.len().min(32)]
    );
    assert_ne!(replies, [0; 4], "SET_STATEBLOB is refused on the socket");

    let mut c = TcpStream::connect(guest.ctrl_addr()).await.unwrap();
    assert_eq!(
        ctrl(&mut c, &[0, 0, 0, 1], 8).await,
        [0, 0, 0, 0, 0, 0, 0, 0x28]
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_port_answers_an_unframeable_command_with_command_size_and_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let guest = &stack.guests()[0];
    for size in [5u32, 0x10_0000] {
        let mut d = TcpStream::connect(guest.data_addr()).await.unwrap();
        let mut header = vec![0x80, 0x01];
        header.extend_from_slice(&size.to_be_bytes());
        header.extend_from_slice(&[0, 0, 0x01, 0x7b]);
        d.write_all(&header).await.unwrap();
        let mut reply = Vec::new();
        d.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply.len(), 10);
        assert_eq!(rc(&reply), 0x142, "TPM_RC_COMMAND_SIZE for size {size}");
    }
    // The guest's TPM is unaffected.
    let r = guest.frontend().transmit(&get_random(4)).await.unwrap();
    assert_eq!(rc(&r), 0);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_port_frames_commands_sent_ahead_or_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let mut d = TcpStream::connect(stack.guests()[0].data_addr())
        .await
        .unwrap();
    d.set_nodelay(true).unwrap();
    // Three commands in one write: each is answered, in order, with its own byte count.
    let ahead = [get_random(4), get_random(9), get_random(2)].concat();
    d.write_all(&ahead).await.unwrap();
    for n in [4usize, 9, 2] {
        let mut r = vec![0u8; 12 + n];
        d.read_exact(&mut r).await.unwrap();
        assert_eq!(rc(&r), 0);
        assert_eq!(usize::from(u16::from_be_bytes([r[10], r[11]])), n);
    }
    // One command in three writes, split inside the header and inside the body.
    let c = get_random(7);
    for piece in [&c[..3], &c[3..11], &c[11..]] {
        d.write_all(piece).await.unwrap();
        d.flush().await.unwrap();
    }
    let mut r = vec![0u8; 19];
    d.read_exact(&mut r).await.unwrap();
    assert_eq!(rc(&r), 0);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_named_in_the_error_and_the_stack_does_not_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = vtpm_ring::stack::StackConfig::new(dir.path(), 1);
    config.base_port = Some(port);
    let Err(err) = vtpm_ring::stack::VtpmStack::start(config).await else {
        panic!("started on a taken port");
    };
    assert!(
        matches!(err, vtpm_ring::stack::StackError::Ports { port: Some(p), .. } if p == port),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}
