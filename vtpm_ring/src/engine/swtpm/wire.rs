//! The bytes on swtpm's two sockets: one TPM command and its response on the data socket,
//! one control operation and its reply on the control socket.

use super::*;

/// Largest response accepted from swtpm (its buffer is at most 4 KiB; leave room).
const MAX_RESPONSE: usize = 64 * 1024;
/// What the first read of a response asks for: any response swtpm sends (its buffer is at
/// most 4 KiB), so that one read usually takes all of it.
const FIRST_READ: usize = 4096;

/// Sends one raw TPM command on a swtpm data connection and reads its response.
pub async fn data_round_trip(
    stream: &mut TcpStream,
    command: &[u8],
) -> Result<Vec<u8>, SwtpmError> {
    stream.write_all(command).await?;
    read_response(stream, &mut first_read_buffer()).await
}

/// A buffer for [`read_response`]'s first read, kept with a connection so that a command
/// does not allocate (and zero) one.
pub(super) fn first_read_buffer() -> Vec<u8> {
    vec![0; FIRST_READ]
}

/// Reads one response; `scratch` holds the first read ([`first_read_buffer`]).
pub(super) async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    scratch: &mut [u8],
) -> Result<Vec<u8>, SwtpmError> {
    // One read takes a whole response that is already there, as a client reading straight
    // from swtpm would: reading the header first costs every command another system call.
    // swtpm answers one command at a time, so anything past the announced size is a fault.
    let mut have = 0;
    let size = loop {
        if have >= TPM_HEADER_SIZE {
            let size = response_size(scratch)?;
            if have > size {
                return Err(SwtpmError::Protocol(format!(
                    "{have} bytes for a {size}-byte response"
                )));
            }
            break size;
        }
        have += read_some(stream, &mut scratch[have..]).await?;
    };
    let mut response = Vec::with_capacity(size);
    response.extend_from_slice(&scratch[..have]);
    response.resize(size, 0);
    stream.read_exact(&mut response[have..]).await?;
    Ok(response)
}

/// Reads and drops the rest of a response of which `read` bytes were read already, through
/// [`read_response`] or an earlier call of this (so the first `read` of them, up to the
/// header's size, are at the start of `scratch`). `read` counts on as bytes come in, so a
/// call dropped half-way can be taken up again where it stopped. Returns the response's size.
pub(super) async fn discard_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    scratch: &mut [u8],
    read: &mut usize,
) -> Result<usize, SwtpmError> {
    // No further than the header: anything after it is kept from view until it is known
    // to belong to this response.
    while *read < TPM_HEADER_SIZE {
        *read += read_some(stream, &mut scratch[*read..TPM_HEADER_SIZE]).await?;
    }
    let size = response_size(scratch)?;
    if *read > size {
        return Err(SwtpmError::Protocol(format!(
            "{read} bytes for a {size}-byte response"
        )));
    }
    let (_, sink) = scratch.split_at_mut(TPM_HEADER_SIZE);
    while *read < size {
        let want = (size - *read).min(sink.len());
        *read += read_some(stream, &mut sink[..want]).await?;
    }
    Ok(size)
}

/// The size a response announces in its header, at the start of `bytes`.
fn response_size(bytes: &[u8]) -> Result<usize, SwtpmError> {
    let header = TpmHeader::read_from_prefix(bytes)
        .map_err(|_| SwtpmError::Protocol("short response header".into()))?
        .0;
    let size = header.size.get() as usize;
    if !(TPM_HEADER_SIZE..=MAX_RESPONSE).contains(&size) {
        return Err(SwtpmError::Protocol(format!("response size {size}")));
    }
    Ok(size)
}

/// One read into `buf` (not empty) that got something; the end of the stream is an error.
async fn read_some(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> Result<usize, SwtpmError> {
    match stream.read(buf).await? {
        0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        n => Ok(n),
    }
}

/// A reader that counts what it reads into `count`, where it outlives a read dropped
/// half-way.
pub(super) struct Counted<'a, R> {
    pub(super) inner: &'a mut R,
    pub(super) count: &'a mut usize,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<'_, R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        *this.count += buf.filled().len() - before;
        polled
    }
}

/// One control operation on a swtpm control connection. `Ok(Err(rc))` is swtpm's refusal;
/// after one the connection must be dropped, since swtpm may or may not follow the result
/// with the rest of a header.
pub async fn ctrl_round_trip(
    stream: &mut TcpStream,
    op: &ControlOp,
) -> Result<Result<ControlReply, CtrlResult>, SwtpmError> {
    stream.write_all(&ctrl::encode_request(op)).await?;
    let cmd = op.cmd();
    let mut reply = vec![0u8; 4];
    stream.read_exact(&mut reply).await?;
    if cmd != CtrlCmd::GET_CAPABILITY {
        let rc = CtrlResult(u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]));
        if rc != CtrlResult::SUCCESS {
            return Ok(Err(rc));
        }
    }
    reply.resize(ctrl::reply_fixed_len(cmd), 0);
    stream.read_exact(&mut reply[4..]).await?;
    if cmd == CtrlCmd::GET_STATEBLOB {
        let header = ctrl::GetStateHeader::read_from_bytes(&reply)
            .map_err(|_| SwtpmError::Protocol("state blob header".into()))?;
        let length = header.length.get() as usize;
        if length > ctrl::MAX_STATE_BLOB {
            return Err(CtrlError::BlobTooLarge(length).into());
        }
        let fixed = reply.len();
        reply.resize(fixed + length, 0);
        stream.read_exact(&mut reply[fixed..]).await?;
    }
    Ok(ctrl::decode_reply(cmd, &reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer whose every read returns the next chunk: each split is seen as scripted.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl tokio::io::AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn scripted_peer(chunks: Vec<Vec<u8>>) -> Result<Vec<u8>, SwtpmError> {
        read_response(&mut Chunks(chunks.into()), &mut first_read_buffer()).await
    }

    fn response(size: usize) -> Vec<u8> {
        let mut r = vec![0x80, 0x01];
        r.extend_from_slice(&(size as u32).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.resize(size, 0xa5);
        r
    }

    #[tokio::test]
    async fn a_response_is_assembled_from_however_many_pieces_it_arrives_in() {
        let whole = response(44);
        assert_eq!(scripted_peer(vec![whole.clone()]).await.unwrap(), whole);
        let pieces = vec![
            whole[..3].to_vec(),
            whole[3..10].to_vec(),
            whole[10..].to_vec(),
        ];
        assert_eq!(scripted_peer(pieces).await.unwrap(), whole);
        // Larger than the first read: the rest is read to the announced size.
        let big = response(FIRST_READ + 900);
        assert_eq!(scripted_peer(vec![big.clone()]).await.unwrap(), big);
    }

    #[tokio::test]
    async fn bytes_past_the_announced_size_or_a_bad_size_are_protocol_errors() {
        let mut trailing = response(12);
        trailing.extend_from_slice(&[1, 2, 3]);
        let err = scripted_peer(vec![trailing]).await.unwrap_err();
        assert!(matches!(err, SwtpmError::Protocol(_)), "{err}");
        for size in [0, 9, MAX_RESPONSE + 1] {
            let mut r = response(12);
            r[2..6].copy_from_slice(&(size as u32).to_be_bytes());
            let err = scripted_peer(vec![r]).await.unwrap_err();
            assert!(matches!(err, SwtpmError::Protocol(_)), "size {size}: {err}");
        }
    }

    /// A peer that serves its chunks in turn and stalls (pending) at each `None`.
    struct Stalling(std::collections::VecDeque<Option<Vec<u8>>>);

    impl tokio::io::AsyncRead for Stalling {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            match self.0.pop_front() {
                Some(None) => return std::task::Poll::Pending,
                Some(Some(mut chunk)) => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(Some(chunk.split_off(n)));
                    }
                }
                None => {}
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_response_whose_read_was_dropped_is_discarded_to_its_end_and_no_further() {
        use futures::FutureExt;
        let whole = response(FIRST_READ + 900);
        let next = response(12);
        let mut peer = Stalling(
            [
                Some(whole[..7].to_vec()),
                None,
                Some(whole[7..100].to_vec()),
                None,
                Some(whole[100..].to_vec()),
                Some(next.clone()),
            ]
            .into(),
        );
        let mut scratch = first_read_buffer();
        let mut read = 0;
        // Dropped with part of the header in.
        let mut counted = Counted {
            inner: &mut peer,
            count: &mut read,
        };
        assert!(
            read_response(&mut counted, &mut scratch)
                .now_or_never()
                .is_none()
        );
        assert_eq!(read, 7);
        // The discard itself is dropped half-way, and taken up again.
        assert!(
            discard_response(&mut peer, &mut scratch, &mut read)
                .now_or_never()
                .is_none()
        );
        assert_eq!(read, 100);
        let size = discard_response(&mut peer, &mut scratch, &mut read).await;
        assert_eq!(size.unwrap(), whole.len());
        assert_eq!(read, whole.len());
        // What follows is left whole.
        let after = read_response(&mut peer, &mut scratch).await.unwrap();
        assert_eq!(after, next);
    }

    #[tokio::test]
    async fn discarding_a_response_with_a_bad_size_or_cut_short_is_an_error() {
        let mut r = response(12);
        r[2..6].copy_from_slice(&((MAX_RESPONSE + 1) as u32).to_be_bytes());
        let mut peer = Stalling([Some(r)].into());
        let err = discard_response(&mut peer, &mut first_read_buffer(), &mut 0)
            .await
            .unwrap_err();
        assert!(matches!(err, SwtpmError::Protocol(_)), "{err}");
        let mut peer = Stalling([Some(response(44)[..20].to_vec())].into());
        let err = discard_response(&mut peer, &mut first_read_buffer(), &mut 0)
            .await
            .unwrap_err();
        assert!(matches!(err, SwtpmError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn a_peer_closing_mid_response_is_an_io_error() {
        for cut in [0, 5, 20] {
            let err = scripted_peer(vec![response(44)[..cut].to_vec()])
                .await
                .unwrap_err();
            assert!(matches!(err, SwtpmError::Io(_)), "cut at {cut}: {err}");
        }
    }
}
