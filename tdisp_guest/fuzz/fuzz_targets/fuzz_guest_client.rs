//! A hostile host: every reply the guest client sees is fuzzer bytes. The client must never
//! panic, and whatever it accepts must agree with the state rules.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_guest::GuestTransport;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;

/// Replies are consecutive chunks of the input, each prefixed by a one-byte length.
struct Replies<'a>(&'a [u8]);

impl GuestTransport for Replies<'_> {
    fn exchange(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let (&len, rest) = self.0.split_first().ok_or(TransportError::Closed)?;
        let len = usize::from(len).min(rest.len());
        let (reply, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(reply.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&script, replies)) = data.split_first() else {
        return;
    };
    let mut client = TdispGuestClient::new(Replies(replies), 3);
    for step in 0..8 {
        match (script >> step) & 3 {
            0 => {
                if client
                    .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
                    .is_ok()
                {
                    assert_ne!(client.state(), TdispTdiState::Error);
                }
            }
            1 => {
                if client.request_lock_device_resources().is_ok() {
                    assert_eq!(client.state(), TdispTdiState::Locked);
                }
            }
            2 => {
                if client.request_start_tdi().is_ok() {
                    assert_eq!(client.state(), TdispTdiState::Run);
                }
            }
            _ => {
                if client
                    .request_attestation_report(TdispReportType::InterfaceReport)
                    .is_ok()
                {
                    assert!(matches!(
                        client.state(),
                        TdispTdiState::Locked | TdispTdiState::Run
                    ));
                }
                let _ = client.request_unbind(TdispGuestUnbindReason::Graceful);
            }
        }
    }
});
