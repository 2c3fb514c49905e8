//! The TPM socket facing clients that send more than it takes, or stop sending early: each
//! gets its answer, then the end of the stream, never a reset.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::socket::TpmSocket;
use vtpm_ring::socket::bind_pair;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

/// A guest's vTPM on a testbed (kept for the test's length), served as a TPM socket: the
/// task that serves the backend, the frontend and the socket.
#[expect(clippy::unwrap_used, reason = "test setup fails loudly")]
async fn served_guest() -> (
    Testbed,
    tokio::task::JoinHandle<()>,
    Arc<Frontend>,
    TpmSocket,
) {
    let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let run = tokio::spawn(run);
    let config = FrontendConfig {
        timeout: Some(Duration::from_secs(5)),
        ..FrontendConfig::default()
    };
    let frontend = Arc::new(Frontend::connect(&guest, config).await.unwrap());
    let (data, ctrl) = bind_pair(None).await.unwrap();
    let socket = TpmSocket::serve(frontend.clone(), data, ctrl).unwrap();
    (bed, run, frontend, socket)
}

/// A client sends a whole command larger than the ring carries (header and body, as
/// tpm2-tools would for a large NV write), then reads: it gets TPM_RC_COMMAND_SIZE, then the
/// end of the stream. The socket answers after reading the header, so the rest of the body
/// is still unread when it ends the stream: it drains it first, as the control port drains
/// an oversized request, since a socket closed with input unread is reset, and the reset
/// can cost the client the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_sent_in_full_gets_command_size_not_a_reset() {
    let (_bed, run, frontend, socket) = served_guest().await;
    for size in [frontend.max_packet() + 1, 256 * 1024] {
        let mut command = vec![0x80, 0x01];
        command.extend_from_slice(&u32::try_from(size).unwrap().to_be_bytes());
        command.extend_from_slice(&[0, 0, 0x01, 0x7b]);
        command.resize(size, 0);
        let stream = TcpStream::connect(socket.data_addr()).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            // The server may stop reading: a failed write is no failure of the test.
            let _ = wr.write_all(&command).await;
            wr
        });
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut reply))
            .await
            .unwrap();
        drop(writer.await);
        assert!(
            read.is_ok(),
            "size {size}: the client got {read:?} after {} bytes",
            reply.len()
        );
        assert_eq!(
            response_code(&reply),
            Some(TpmRc::COMMAND_SIZE),
            "size {size}"
        );
        assert_eq!(reply.len(), 10);
    }
    socket.stop().await;
    run.abort();
}

/// A client that sends one command and half-closes (shutdown of its write side) still gets
/// the answer, then the end of the stream; one that sends half a header and half-closes
/// gets the end of the stream; the guest's TPM keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_and_truncated_clients_get_an_answer_or_the_end() {
    let (_bed, run, frontend, socket) = served_guest().await;
    let get_random = vtpm_ring::tpm_command::get_random(8);
    for (send, answered) in [
        (get_random.clone(), true),
        (get_random[..5].to_vec(), false),
    ] {
        let mut s = TcpStream::connect(socket.data_addr()).await.unwrap();
        s.write_all(&send).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        if answered {
            assert_eq!(response_code(&reply), Some(TpmRc::SUCCESS));
        } else {
            assert!(reply.is_empty(), "{reply:?}");
        }
    }
    let r = frontend.transmit(&get_random).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    socket.stop().await;
    run.abort();
}
