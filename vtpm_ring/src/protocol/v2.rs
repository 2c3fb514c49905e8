//! Protocol v2: one shared page `{length, state, locality, pad, nr_extra_pages, extra_pages[]}`
//! followed by the packet, which may run on into the extra pages.
//!
//! The frontend writes the command, its length and locality, then (release) `state = SUBMIT`
//! and notifies. The backend copies the command out once, answers, writes the response and its
//! length, then (release) `state = FINISH` and notifies. A frontend may write `CANCEL`; the
//! backend then either finishes or acknowledges with `IDLE`. The backend writes only IDLE and
//! FINISH, the frontend only SUBMIT and CANCEL. Fields are little-endian (x86 native order,
//! as in Xen's `tpmif.h`).

use super::RingError;
use crate::page::PAGE_SIZE;
use crate::page::PageIo;
use crate::page::PageSpan;
use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U32;

/// Size of the fixed part of the shared page.
pub const HEADER_SIZE: usize = 8;
/// Offset of the `state` byte.
pub const STATE_OFFSET: usize = 4;
/// Offset of the `locality` byte.
pub const LOCALITY_OFFSET: usize = 5;
/// Offset of the byte Xen's `tpmif.h` leaves as padding: the request's
/// [`PacketKind`](super::PacketKind) once `feature-vtpm-control` is negotiated.
pub const KIND_OFFSET: usize = 6;
/// Most extra pages this implementation accepts (16 pages hold any 64 KiB packet).
pub const MAX_EXTRA_PAGES: u8 = 16;

/// The shared page's state byte.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u8)]
pub enum V2State {
    /// No request outstanding.
    IDLE = 0,
    /// The frontend submitted a command.
    SUBMIT = 1,
    /// The backend wrote a response.
    FINISH = 2,
    /// The frontend asks to cancel.
    CANCEL = 3,
}

/// The fixed part of the shared page.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedHeader {
    /// Packet length in bytes.
    pub length: U32,
    /// A [`V2State`].
    pub state: V2State,
    /// Locality of the command.
    pub locality: u8,
    /// Padding in Xen's `tpmif.h` (Linux leaves it zero); with `feature-vtpm-control`
    /// negotiated, the frontend's [`PacketKind`](super::PacketKind) of the request.
    pub kind: u8,
    /// Number of extra pages whose grant references follow.
    pub nr_extra_pages: u8,
}
const _: () = assert!(size_of::<SharedHeader>() == HEADER_SIZE);

/// Offset of the packet for `nr_extra` extra pages.
pub fn packet_offset(nr_extra: u8) -> usize {
    HEADER_SIZE + 4 * usize::from(nr_extra)
}

/// Packet bytes that fit with `nr_extra` extra pages.
pub fn capacity(nr_extra: u8) -> usize {
    (1 + usize::from(nr_extra)) * PAGE_SIZE - packet_offset(nr_extra)
}

/// The shared page and its extra pages, as one side sees them. The number of extra pages is
/// fixed when the view is made: a peer rewriting `nr_extra_pages` later changes nothing.
#[derive(Debug)]
pub struct V2Page<P> {
    pages: Vec<P>,
    nr_extra: u8,
}

impl<P: PageIo> V2Page<P> {
    /// A view over `pages` (shared page first). Fails if there are more than
    /// [`MAX_EXTRA_PAGES`] extra pages.
    pub fn new(pages: Vec<P>) -> Result<Self, RingError> {
        let nr_extra = pages
            .len()
            .checked_sub(1)
            .and_then(|n| u8::try_from(n).ok())
            .filter(|n| *n <= MAX_EXTRA_PAGES)
            .ok_or(RingError::Inconsistent("number of v2 pages"))?;
        Ok(Self { pages, nr_extra })
    }

    /// Pages, shared page first.
    pub fn pages(&self) -> &[P] {
        &self.pages
    }

    /// Consumes the view, returning its pages.
    pub fn into_pages(self) -> Vec<P> {
        self.pages
    }

    /// Packet bytes that fit.
    pub fn capacity(&self) -> usize {
        capacity(self.nr_extra)
    }

    fn shared(&self) -> Result<&P, RingError> {
        self.pages
            .first()
            .ok_or(RingError::Inconsistent("no shared page"))
    }

    /// Frontend setup: writes `nr_extra_pages` and the extra pages' grant references.
    pub fn init_header(&self, extra_refs: &[u32]) -> Result<(), RingError> {
        if extra_refs.len() != usize::from(self.nr_extra) {
            return Err(RingError::Inconsistent("extra page references"));
        }
        let header = SharedHeader {
            length: U32::new(0),
            state: V2State::IDLE,
            locality: 0,
            kind: 0,
            nr_extra_pages: self.nr_extra,
        };
        let shared = self.shared()?;
        shared.write(0, header.as_bytes())?;
        for (i, r) in extra_refs.iter().enumerate() {
            shared.write(HEADER_SIZE + 4 * i, &r.to_le_bytes())?;
        }
        Ok(())
    }

    /// Reads the state byte (acquire).
    pub fn state(&self) -> Result<V2State, RingError> {
        Ok(V2State(self.shared()?.load_u8(STATE_OFFSET)?))
    }

    /// Publishes a state (release: everything written before is visible to the peer first).
    pub fn set_state(&self, state: V2State) -> Result<(), RingError> {
        Ok(self.shared()?.store_u8(STATE_OFFSET, state.0)?)
    }

    /// Frontend: asks to cancel the submitted command, turning SUBMIT into CANCEL in one
    /// atomic step; false (nothing written) when the state is no longer SUBMIT: the backend
    /// answered meanwhile, and its FINISH and response stand. A plain store could write
    /// CANCEL over that FINISH, and the backend would then acknowledge IDLE for a command
    /// that ran.
    pub fn cancel_submitted(&self) -> Result<bool, RingError> {
        Ok(self.shared()?.compare_exchange_u8(
            STATE_OFFSET,
            V2State::SUBMIT.0,
            V2State::CANCEL.0,
        )?)
    }

    /// Frontend: writes a command, its length and its locality (not the state), marked as a
    /// TPM command.
    pub fn write_command(&self, packet: &[u8], locality: u8) -> Result<(), RingError> {
        self.write_request(packet, locality, super::PacketKind::TPM_COMMAND)
    }

    /// Frontend: writes a request of `kind`, its length and its locality (not the state).
    pub fn write_request(
        &self,
        packet: &[u8],
        locality: u8,
        kind: super::PacketKind,
    ) -> Result<(), RingError> {
        self.write_body(packet)?;
        self.shared()?.write(LOCALITY_OFFSET, &[locality, kind.0])?;
        Ok(())
    }

    /// Backend: writes a response and its length (not the state). The locality byte stays
    /// the frontend's: the backend writes only length and state in the shared page.
    pub fn write_response(&self, packet: &[u8]) -> Result<(), RingError> {
        self.write_body(packet)
    }

    fn write_body(&self, packet: &[u8]) -> Result<(), RingError> {
        if packet.len() > self.capacity() {
            return Err(RingError::TooLarge {
                len: packet.len(),
                capacity: self.capacity(),
            });
        }
        PageSpan::new(&self.pages).write(packet_offset(self.nr_extra), packet)?;
        // Bounded by capacity above, far below 4 GiB.
        self.shared()?
            .write(0, &(packet.len() as u32).to_le_bytes())?;
        Ok(())
    }

    /// Copies the packet out: the header is read once, the length checked against the
    /// capacity fixed at setup, then the packet copied once into private memory.
    pub fn read_packet(&self) -> Result<(Vec<u8>, u8), RingError> {
        self.read_request().map(|r| (r.packet, r.locality))
    }

    /// [`Self::read_packet`] with the request's kind byte, from the same single read of the
    /// header.
    pub fn read_request(&self) -> Result<V2Request, RingError> {
        let mut raw = [0u8; HEADER_SIZE];
        self.shared()?.read(0, &mut raw)?;
        let header = SharedHeader::read_from_bytes(&raw)
            .map_err(|_| RingError::Inconsistent("shared header"))?;
        let len = usize::try_from(header.length.get()).unwrap_or(usize::MAX);
        if len > self.capacity() {
            return Err(RingError::TooLarge {
                len,
                capacity: self.capacity(),
            });
        }
        let mut packet = super::packet_buffer(len);
        PageSpan::new(&self.pages).read(packet_offset(self.nr_extra), &mut packet)?;
        Ok(V2Request {
            packet,
            locality: header.locality,
            kind: super::PacketKind(header.kind),
        })
    }
}

/// A request as copied out of the shared page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Request {
    /// The packet.
    pub packet: Vec<u8>,
    /// The locality byte.
    pub locality: u8,
    /// The kind byte (meaningful only with `feature-vtpm-control`).
    pub kind: super::PacketKind,
}

/// Reads `nr_extra_pages` and the extra grant references from a freshly mapped shared page
/// (backend setup); refuses more than `max` extra pages.
pub fn read_extra_refs(shared: &impl PageIo, max: u8) -> Result<Vec<u32>, RingError> {
    let mut raw = [0u8; HEADER_SIZE];
    shared.read(0, &mut raw)?;
    let header =
        SharedHeader::read_from_bytes(&raw).map_err(|_| RingError::Inconsistent("header"))?;
    let n = header.nr_extra_pages;
    if n > max.min(MAX_EXTRA_PAGES) {
        return Err(RingError::Inconsistent("too many extra pages"));
    }
    let mut refs = vec![0u8; 4 * usize::from(n)];
    shared.read(HEADER_SIZE, &mut refs)?;
    Ok(refs
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainId;
    use crate::domain::Host;
    use proptest::prelude::*;

    fn page_set(extra: usize) -> V2Page<crate::page::OwnPage> {
        let host = Host::new();
        let d = host.create_domain(DomainId(1), 20).unwrap();
        let pages = (0..=extra).map(|_| d.alloc_page().unwrap()).collect();
        let v = V2Page::new(pages).unwrap();
        v.init_header(&vec![0; extra]).unwrap();
        v
    }

    #[test]
    fn a_cancel_replaces_only_a_submit() {
        let v = page_set(0);
        for (from, canceled, after) in [
            (V2State::SUBMIT, true, V2State::CANCEL),
            (V2State::FINISH, false, V2State::FINISH),
            (V2State::IDLE, false, V2State::IDLE),
            (V2State::CANCEL, false, V2State::CANCEL),
        ] {
            v.set_state(from).unwrap();
            assert_eq!(v.cancel_submitted().unwrap(), canceled, "{from:?}");
            assert_eq!(v.state().unwrap(), after);
        }
    }

    #[test]
    fn capacity_accounts_for_the_header_and_refs() {
        assert_eq!(capacity(0), 4088);
        assert_eq!(capacity(1), 8192 - 12);
        assert!(capacity(1) >= 4096);
    }

    #[test]
    fn lying_length_is_refused() {
        let v = page_set(0);
        v.pages()[0].write(0, &5000u32.to_le_bytes()).unwrap();
        assert!(matches!(v.read_packet(), Err(RingError::TooLarge { .. })));
    }

    #[test]
    fn nr_extra_pages_rewritten_by_the_peer_changes_nothing() {
        let v = page_set(1);
        v.write_command(&[1; 100], 0).unwrap();
        v.pages()[0].write(7, &[200]).unwrap();
        assert_eq!(v.capacity(), capacity(1));
        assert_eq!(v.read_packet().unwrap().0, vec![1; 100]);
    }

    #[test]
    fn too_many_extra_pages_are_refused() {
        let host = Host::new();
        let d = host.create_domain(DomainId(1), 1).unwrap();
        let p = d.alloc_page().unwrap();
        p.write(7, &[MAX_EXTRA_PAGES + 1]).unwrap();
        assert!(read_extra_refs(&p, MAX_EXTRA_PAGES).is_err());
        p.write(7, &[3]).unwrap();
        assert!(read_extra_refs(&p, 2).is_err());
        assert_eq!(read_extra_refs(&p, 3).unwrap().len(), 3);
    }

    #[test]
    fn the_kind_travels_in_the_padding_byte_beside_the_locality() {
        let v = page_set(0);
        v.write_request(&[7; 12], 3, crate::protocol::PacketKind::CONTROL)
            .unwrap();
        let mut raw = [0u8; HEADER_SIZE];
        v.pages()[0].read(0, &mut raw).unwrap();
        // Golden: length 12 (LE), state untouched (IDLE), locality 3, kind 1, no extra pages.
        assert_eq!(raw, [12, 0, 0, 0, 0, 3, 1, 0]);
        let r = v.read_request().unwrap();
        assert_eq!(r.kind, crate::protocol::PacketKind::CONTROL);
        assert_eq!((r.packet, r.locality), (vec![7; 12], 3));
        // A response rewrites neither.
        v.write_response(&[1; 20]).unwrap();
        assert_eq!(
            v.read_request().unwrap().kind,
            crate::protocol::PacketKind::CONTROL
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_response_leaves_the_locality_byte_alone(loc in 0u8..=255, data in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let v = page_set(0);
            v.write_command(&[0; 10], loc).unwrap();
            v.write_response(&data).unwrap();
            prop_assert_eq!(v.read_packet().unwrap(), (data, loc));
        }

        #[test]
        fn packets_round_trip_across_pages(extra in 0usize..3, data in proptest::collection::vec(any::<u8>(), 0..12000), loc in 0u8..5) {
            let v = page_set(extra);
            let r = v.write_command(&data, loc);
            if data.len() <= v.capacity() {
                prop_assert!(r.is_ok());
                let (back, l) = v.read_packet().unwrap();
                prop_assert_eq!(back, data);
                prop_assert_eq!(l, loc);
            } else {
                let too_large = matches!(r, Err(RingError::TooLarge { .. }));
                prop_assert!(too_large);
            }
        }
    }
}
