//! The data connection: one TPM command at a time, its locality set first, and what a
//! command whose caller went away left on the connection read off before the next one.

use super::*;

/// The data connection and what bounds each command on it.
#[derive(Debug)]
pub(super) struct DataLink {
    /// `None` after a failure, until the next command connects again.
    pub(super) stream: Option<TcpStream>,
    /// [`SwtpmConfig::io_timeout`] per command, with one timer for the connection rather
    /// than one per command.
    pub(super) watchdog: Watchdog,
    /// Where each response's first read lands.
    pub(super) scratch: Vec<u8>,
    /// How far the command under way got, for when its caller goes away.
    pub(super) progress: Progress,
}

impl DataLink {
    /// Drops the connection after a failure (swtpm, run with `--terminate`, ends with it).
    fn close(&mut self) {
        self.stream = None;
        self.progress = Progress::default();
    }
}

/// How far the command under way on the data connection got.
///
/// It lives with the connection, not in the future that sends the command, so that it
/// outlasts that future: a caller that goes away half-way (its future dropped: a timeout of
/// its own, an aborted task) leaves swtpm with a command it still runs and answers, and that
/// answer has to be read off before the next command's, or every later command gets the
/// answer before its own. Closing the connection instead is no way out: swtpm runs with
/// `--terminate` and ends when its data connection closes, and the TPM's volatile state
/// (PCRs, sessions, loaded objects) with it. Keeping count costs a few stores per command,
/// no allocation and no system call; the next command reads what is left (see
/// [`SwtpmEngine::settle`]).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Progress {
    /// Length of the command under way; 0 when none is.
    pub(super) command: usize,
    /// Bytes of it written to swtpm.
    pub(super) written: usize,
    /// Bytes of its response read (the first of them, up to a header's worth, at the start
    /// of the link's scratch buffer).
    pub(super) read: usize,
}

impl SwtpmEngine {
    pub(super) async fn run_command(
        &self,
        command: Vec<u8>,
        locality: u8,
    ) -> Result<Vec<u8>, EngineError> {
        let mut live = self.live().await?;
        // swtpm reads a command as long as its header's size says. One claiming more bytes
        // than it has would leave swtpm waiting for the rest, and the next command waiting on
        // swtpm until the I/O timeout kills it; one claiming fewer would leave the rest to be
        // read as a command of its own. Answered here, as a TPM answers a wrong size field,
        // and nothing goes to swtpm.
        if !TpmHeader::read_from_prefix_checked(&command) {
            return Ok(error_response(TpmRc::COMMAND_SIZE));
        }
        let mut on_new_swtpm = false;
        loop {
            // Locality and command go out under one hold of the data lock: a command
            // abandoned after a timeout may still be inside, and it must never run at the next
            // one's locality (or the next one at its).
            let mut data = live.data.lock().await;
            // The answer to a command whose caller went away is read off before anything else
            // goes to swtpm, the SET_LOCALITY included: swtpm may not even have read that
            // command yet, and it reads its control connection before its data connection,
            // so a locality set now could apply to it.
            let settled = match data.progress.command {
                0 => Ok(()),
                // Boxed, as every rare path here (see `live`).
                _ => Box::pin(self.settle(&mut data)).await,
            };
            if let Err(e) = settled {
                data.close();
                drop(data);
                Box::pin(self.retire(&live, &e)).await;
                if on_new_swtpm {
                    return Err(EngineError::Failed(e.to_string()));
                }
                // This command has not gone out: a new swtpm runs it.
                on_new_swtpm = true;
                live = self.live().await?;
                continue;
            }
            if live.locality.load(Ordering::Acquire) != u16::from(locality) {
                Box::pin(self.control_on(&live, ControlOp::SetLocality(locality))).await?;
            }
            return match self.send_on(&live, &mut data, &command).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    Box::pin(self.retire(&live, &e)).await;
                    Err(EngineError::Failed(e.to_string()))
                }
            };
        }
    }

    pub(super) async fn send_command(
        &self,
        live: &Live,
        command: &[u8],
    ) -> Result<Vec<u8>, SwtpmError> {
        let mut data = live.data.lock().await;
        self.send_on(live, &mut data, command).await
    }

    /// Sends `command` on the data connection the caller holds. A failure closes the
    /// connection.
    pub(super) async fn send_on(
        &self,
        live: &Live,
        data: &mut DataLink,
        command: &[u8],
    ) -> Result<Vec<u8>, SwtpmError> {
        let result = self.round_trip(live, data, command).await;
        if result.is_err() {
            data.close();
        }
        result
    }

    pub(super) async fn round_trip(
        &self,
        live: &Live,
        data: &mut DataLink,
        command: &[u8],
    ) -> Result<Vec<u8>, SwtpmError> {
        self.settle(data).await?;
        let DataLink {
            stream: link,
            watchdog,
            scratch,
            progress,
        } = data;
        let stream = match link.as_mut() {
            Some(s) => s,
            None => link.insert(TcpStream::connect(("127.0.0.1", live.data_port)).await?),
        };
        watchdog
            .within(async {
                // Counted as it goes, in case this future is dropped (see `Progress`).
                *progress = Progress {
                    command: command.len(),
                    written: 0,
                    read: 0,
                };
                while progress.written < command.len() {
                    let n = stream.write(&command[progress.written..]).await?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    progress.written += n;
                }
                let sent = self.sent_count.fetch_add(1, Ordering::SeqCst) + 1;
                // The watch's lock is taken only for someone watching (see `commands_sent`).
                fence(Ordering::SeqCst);
                if self.sent.receiver_count() > 0 {
                    self.publish_sent(sent);
                }
                let mut counted = Counted {
                    inner: stream,
                    count: &mut progress.read,
                };
                let response = read_response(&mut counted, scratch).await?;
                *progress = Progress::default();
                Ok::<_, SwtpmError>(response)
            })
            .await
            .unwrap_or(Err(SwtpmError::Timeout(self.config.io_timeout)))
    }

    /// Clears what a round trip dropped half-way left on the data connection (see
    /// [`Progress`]): the rest of the answer to its command is read and dropped, so the next
    /// command reads its own. Costs one comparison when nothing was left. An error leaves the
    /// connection to be closed.
    pub(super) async fn settle(&self, data: &mut DataLink) -> Result<(), SwtpmError> {
        if data.progress.command == 0 {
            return Ok(());
        }
        let DataLink {
            stream,
            watchdog,
            scratch,
            progress,
        } = data;
        let abandoned = *progress;
        let Some(stream) = stream.as_mut().filter(|_| abandoned.written > 0) else {
            // Nothing of it reached swtpm.
            *progress = Progress::default();
            return Ok(());
        };
        if abandoned.written < abandoned.command {
            return Err(SwtpmError::DroppedMidWrite {
                sent: abandoned.written,
                length: abandoned.command,
            });
        }
        tracing::info!(
            instance = self.instance,
            read = abandoned.read,
            "reading off the answer to a command whose caller went away"
        );
        // A dropped wait here is taken up again by the next command: `read` counts on.
        let size = watchdog
            .within(discard_response(stream, scratch, &mut progress.read))
            .await
            .unwrap_or(Err(SwtpmError::Timeout(self.config.io_timeout)))?;
        *progress = Progress::default();
        tracing::debug!(instance = self.instance, size, "answer dropped");
        Ok(())
    }
}
