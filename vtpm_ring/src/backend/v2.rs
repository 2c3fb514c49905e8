//! The backend's side of protocol v2: the shared page (plus any extra pages) of current Xen.
//!
//! The backend reads the state byte on every doorbell and acts on SUBMIT (a command) and
//! CANCEL; it writes only the response, its length and the states IDLE and FINISH.

use super::Doorbell;
use crate::domain::Domain;
use crate::domain::DomainId;
use crate::grant::GrantAccess;
use crate::grant::GrantRef;
use crate::grant::MappedPage;
use crate::protocol::RingError;
use crate::protocol::v2;
use crate::protocol::v2::V2Page;
use crate::protocol::v2::V2State;

/// A connected v2 device, as the backend sees it.
pub(super) struct V2Transport {
    page: V2Page<MappedPage>,
}

impl V2Transport {
    /// Maps the shared page and the extra pages it lists (at most `max_extra`).
    pub(super) fn map(
        domain: &Domain,
        frontend: DomainId,
        ring_ref: GrantRef,
        max_extra: u8,
    ) -> Result<Self, super::BackendError> {
        let page = domain.map_grant(frontend, ring_ref, GrantAccess::ReadWrite)?;
        let refs = v2::read_extra_refs(&page, max_extra)?;
        let mut pages = vec![page];
        for r in refs {
            pages.push(domain.map_grant(frontend, GrantRef(r), GrantAccess::ReadWrite)?);
        }
        Ok(Self {
            page: V2Page::new(pages)?,
        })
    }

    /// Reads what a doorbell announces, from the state byte.
    pub(super) fn doorbell(&mut self, busy: bool) -> Doorbell {
        let state = match self.page.state() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read shared page state");
                return Doorbell::Nothing;
            }
        };
        match (state, busy) {
            (V2State::SUBMIT, false) => match self.page.read_request() {
                Ok(r) => Doorbell::Request {
                    packet: r.packet,
                    locality: Some(r.locality),
                    kind: r.kind,
                },
                Err(e) => Doorbell::Malformed(e),
            },
            (V2State::CANCEL, true) => Doorbell::Cancel,
            (V2State::CANCEL, false) => Doorbell::CancelIdle,
            // SUBMIT while busy: the frontend is ahead of itself; it gets the answer to the
            // command under way. IDLE/FINISH/unknown: nothing to do.
            _ => Doorbell::Nothing,
        }
    }

    /// Acknowledges a cancel with nothing under way: IDLE. (Whether the page still holds our
    /// last response or a request submitted and canceled before we saw it cannot be told
    /// from here; a frontend cancels only a SUBMIT, atomically, so it never needs FINISH
    /// again: see `V2Page::cancel_submitted`.)
    pub(super) fn ack_cancel(&mut self) -> Result<(), RingError> {
        self.page.set_state(V2State::IDLE)
    }

    /// Writes a response and its length, then FINISH (never the locality: that is the
    /// frontend's byte).
    pub(super) fn write_response(&mut self, response: &[u8]) -> Result<(), RingError> {
        self.page.write_response(response)?;
        self.page.set_state(V2State::FINISH)
    }
}
