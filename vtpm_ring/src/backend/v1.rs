//! The backend's side of protocol v1 (seed 004): the ring page of `tpmif_tx_request` entries
//! and the packet pages they name.
//!
//! v1 has no state on the wire: only the doorbell says a request is there. The ring is copied
//! once per doorbell; its references name the pages the request is read from and the response
//! is written back to. After an exchange the pages hold the backend's own response, so a
//! doorbell must not make the backend take that response for a command. A frontend that
//! numbers its requests (entry 0's `unused` field, see [`v1`]; ours always does, and with
//! `feature-vtpm-control` it must) settles it: a doorbell whose number was already taken
//! announces nothing, whatever the pages hold. For a frontend that leaves the field 0 (the
//! original tpmfront), a doorbell that finds exactly the last response in the pages is taken
//! as spurious; such a frontend cannot send a command byte-identical to the response it just
//! got (a 10-byte error response is also a well-formed command header, e.g.
//! TPM_RC_COMMAND_SIZE reads as TPM_CC_IncrementalSelfTest), which it would never get
//! answered. Every packet page is mapped only for the copy, by reference, from the frontend's
//! own grant table, so an entry can never name another domain's page.

use super::Doorbell;
use crate::domain::Domain;
use crate::domain::DomainId;
use crate::grant::GrantAccess;
use crate::grant::GrantRef;
use crate::grant::MappedPage;
use crate::protocol::RingError;
use crate::protocol::v1;

/// A connected v1 device, as the backend sees it.
pub(super) struct V1Transport {
    domain: Domain,
    frontend: DomainId,
    ring: MappedPage,
    /// The ring as copied for the request under way: its refs name the response pages.
    snapshot: Option<v1::Ring>,
    /// The response last written, while the pages may still hold it.
    last_response: Option<Vec<u8>>,
    /// `feature-vtpm-control`: requests must be numbered (see [`v1`]). Without it, a request
    /// is numbered if its number is not 0.
    numbered: bool,
    /// The number of the request last taken.
    last_number: Option<u8>,
}

impl V1Transport {
    /// Maps the frontend's ring page.
    pub(super) fn map(
        domain: &Domain,
        frontend: DomainId,
        ring_ref: GrantRef,
        numbered: bool,
    ) -> Result<Self, super::BackendError> {
        Ok(Self {
            numbered,
            last_number: None,
            domain: domain.clone(),
            frontend,
            ring: domain.map_grant(frontend, ring_ref, GrantAccess::ReadWrite)?,
            snapshot: None,
            last_response: None,
        })
    }

    /// Reads what a doorbell announces: a request, copied out of shared memory once.
    pub(super) fn doorbell(&mut self, busy: bool) -> Doorbell {
        if busy {
            // Strict request/response: nothing new can be there while we owe an answer.
            return Doorbell::Nothing;
        }
        let entries = match v1::read_ring(&self.ring) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read v1 ring");
                return Doorbell::Nothing;
            }
        };
        let number = v1::request_number(&entries);
        let numbered = self.numbered || number != 0;
        if numbered {
            if self.last_number == Some(number) {
                tracing::debug!(
                    number,
                    "v1 doorbell for a request already answered; ignored"
                );
                return Doorbell::Nothing;
            }
            self.last_number = Some(number);
        }
        self.snapshot = Some(entries);
        let (domain, frontend) = (&self.domain, self.frontend);
        let packet = v1::packet_len(&entries).and_then(|len| {
            v1::read_packet(&entries, len, |r| {
                Ok(domain.map_grant(frontend, GrantRef(r), GrantAccess::ReadOnly)?)
            })
        });
        match packet {
            Ok(packet) if !numbered && self.last_response.as_ref() == Some(&packet) => {
                tracing::debug!("v1 doorbell with our own response in the pages; ignored");
                Doorbell::Nothing
            }
            // v1 carries no locality: the connection's applies.
            Ok(packet) => {
                self.last_response = None;
                Doorbell::Request {
                    packet,
                    locality: None,
                    kind: v1::packet_kind(&entries),
                }
            }
            Err(e) => {
                self.last_response = None;
                Doorbell::Malformed(e)
            }
        }
    }

    /// Writes a response into the pages the request came in.
    pub(super) fn write_response(&mut self, response: &[u8]) -> Result<(), RingError> {
        let entries = self.snapshot.unwrap_or_default();
        let (domain, frontend) = (&self.domain, self.frontend);
        let map = |r: u32| Ok(domain.map_grant(frontend, GrantRef(r), GrantAccess::ReadWrite)?);
        v1::write_packet(&self.ring, &entries, response, map)?;
        self.last_response = Some(response.to_vec());
        Ok(())
    }

    /// Forgets the request's page list once it is answered.
    pub(super) fn answered(&mut self) {
        self.snapshot = None;
    }
}
