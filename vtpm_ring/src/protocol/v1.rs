//! Protocol v1 (seed 004): one shared ring page holding [`RING_SIZE`] `tpmif_tx_request`
//! entries `{addr, ref, unused, size}`, each naming one pre-allocated, pre-granted frontend
//! page. A packet fills as many of those pages as it needs, in entry order; entry *i*'s `size`
//! is the number of packet bytes from page *i* on (so entry 0 holds the packet length), and
//! unused entries have size 0. Requests and responses travel the same ring, strictly
//! alternating: the frontend writes a request and notifies, the backend writes the response
//! into the same pages and notifies back. There is no locality and no cancel on the wire.
//! `addr` is informational (the frame's address); the backend trusts only `ref`. Entry 0's
//! `unused` field tags each request: its low byte is the [`PacketKind`](super::PacketKind)
//! (meaningful with `feature-vtpm-control` negotiated), its high byte a request number
//! (1..=255, never 0) that changes with every request, so a doorbell that finds the number
//! already answered is spurious whatever the pages hold (a command can be byte-identical to
//! the previous response: TPM_RC_COMMAND_SIZE's 10 bytes are also TPM2_IncrementalSelfTest's
//! header; a control request to the previous control reply: `STORE_VOLATILE` is `0000000a`,
//! `TPM_BAD_ORDINAL` too). With control the number is required; without it, 0 means "not
//! numbered" (the original tpmfront leaves the field 0). The backend never writes the field.

use super::RingError;
use crate::page::PAGE_SIZE;
use crate::page::PageIo;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Entries in the ring (as in the original header).
pub const RING_SIZE: usize = 10;
/// Size of one entry.
pub const ENTRY_SIZE: usize = 16;
/// Largest packet: every entry's page full.
pub const MAX_PACKET: usize = RING_SIZE * PAGE_SIZE;
const SIZE_FIELD_OFFSET: usize = 14;
const UNUSED_FIELD_OFFSET: usize = 12;

/// `tpmif_tx_request` (x86_64 layout).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TxRequest {
    /// Address of the page (informational).
    pub addr: U64,
    /// Grant reference of the page.
    pub gref: U32,
    /// Unused.
    pub unused: U16,
    /// Packet bytes from this page on.
    pub size: U16,
}
const _: () = assert!(size_of::<TxRequest>() == ENTRY_SIZE);

/// Snapshot of the whole ring.
pub type Ring = [TxRequest; RING_SIZE];

/// Pages a packet of `len` bytes spans (at least one: an empty packet still names page 0).
pub fn pages_needed(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE).max(1)
}

/// The `size` field of every entry for a packet of `len` bytes.
pub fn sizes_for(len: usize) -> Result<[u16; RING_SIZE], RingError> {
    if len > MAX_PACKET || len > usize::from(u16::MAX) {
        return Err(RingError::TooLarge {
            len,
            capacity: MAX_PACKET,
        });
    }
    let mut sizes = [0u16; RING_SIZE];
    for (i, s) in sizes.iter_mut().enumerate() {
        // Checked above: len fits in u16.
        *s = u16::try_from(len.saturating_sub(i * PAGE_SIZE)).unwrap_or(0);
    }
    Ok(sizes)
}

/// Copies the ring out once.
pub fn read_ring(ring: &impl PageIo) -> Result<Ring, RingError> {
    let mut raw = [0u8; RING_SIZE * ENTRY_SIZE];
    ring.read(0, &mut raw)?;
    Ring::read_from_bytes(&raw).map_err(|_| RingError::Inconsistent("ring"))
}

/// Writes the whole ring (frontend setup).
pub fn write_ring(ring: &impl PageIo, entries: &Ring) -> Result<(), RingError> {
    Ok(ring.write(0, entries.as_bytes())?)
}

/// Writes only the `size` fields for a packet of `len` bytes.
pub fn write_sizes(ring: &impl PageIo, len: usize) -> Result<(), RingError> {
    for (i, s) in sizes_for(len)?.iter().enumerate() {
        ring.write(i * ENTRY_SIZE + SIZE_FIELD_OFFSET, &s.to_le_bytes())?;
    }
    Ok(())
}

/// Frontend: tags the next request with its kind and number in entry 0's `unused` field.
pub fn write_tag(ring: &impl PageIo, kind: super::PacketKind, number: u8) -> Result<(), RingError> {
    let tag = u16::from_le_bytes([kind.0, number]);
    Ok(ring.write(UNUSED_FIELD_OFFSET, &tag.to_le_bytes())?)
}

/// The request kind of a ring snapshot (low byte of entry 0's `unused` field).
pub fn packet_kind(ring: &Ring) -> super::PacketKind {
    super::PacketKind(ring[0].unused.get().to_le_bytes()[0])
}

/// The request number of a ring snapshot (high byte of entry 0's `unused` field; 0 = none).
pub fn request_number(ring: &Ring) -> u8 {
    ring[0].unused.get().to_le_bytes()[1]
}

/// The request number after `n`: 1..=255, never 0.
pub fn next_request_number(n: u8) -> u8 {
    n.checked_add(1).unwrap_or(1)
}

/// Checks that the sizes of a ring snapshot describe one packet and returns its length.
pub fn packet_len(ring: &Ring) -> Result<usize, RingError> {
    let len = usize::from(ring[0].size.get());
    let expected = sizes_for(len)?;
    if ring.iter().zip(expected).any(|(e, s)| e.size.get() != s) {
        return Err(RingError::Inconsistent(
            "entry sizes do not describe one packet",
        ));
    }
    Ok(len)
}

/// Copies a packet of `len` bytes out of the pages `map` yields for the ring's entries.
pub fn read_packet<Q: PageIo>(
    ring: &Ring,
    len: usize,
    map: impl Fn(u32) -> Result<Q, RingError>,
) -> Result<Vec<u8>, RingError> {
    let mut packet = super::packet_buffer(len);
    for (i, chunk) in packet.chunks_mut(PAGE_SIZE).enumerate() {
        let entry = ring
            .get(i)
            .ok_or(RingError::Inconsistent("packet too long"))?;
        map(entry.gref.get())?.read(0, chunk)?;
    }
    Ok(packet)
}

/// Writes a packet into the pages `map` yields for the ring's entries, then the sizes.
pub fn write_packet<Q: PageIo>(
    ring_page: &impl PageIo,
    ring: &Ring,
    packet: &[u8],
    map: impl Fn(u32) -> Result<Q, RingError>,
) -> Result<(), RingError> {
    let sizes = sizes_for(packet.len())?;
    for (i, chunk) in packet.chunks(PAGE_SIZE).enumerate() {
        let entry = ring
            .get(i)
            .ok_or(RingError::Inconsistent("packet too long"))?;
        map(entry.gref.get())?.write(0, chunk)?;
    }
    for (i, s) in sizes.iter().enumerate() {
        ring_page.write(i * ENTRY_SIZE + SIZE_FIELD_OFFSET, &s.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainId;
    use crate::domain::Host;
    use crate::page::OwnPage;
    use proptest::prelude::*;

    fn ring_with_pages() -> (OwnPage, Vec<OwnPage>, Ring) {
        let host = Host::new();
        let d = host.create_domain(DomainId(1), 12).unwrap();
        let ring_page = d.alloc_page().unwrap();
        let pages: Vec<OwnPage> = (0..RING_SIZE).map(|_| d.alloc_page().unwrap()).collect();
        let mut ring = Ring::default();
        for (i, (e, p)) in ring.iter_mut().zip(&pages).enumerate() {
            e.addr = U64::new(p.gfn().address());
            e.gref = U32::new(i as u32);
        }
        write_ring(&ring_page, &ring).unwrap();
        (ring_page, pages, ring)
    }

    #[test]
    fn sizes_count_down_per_page() {
        let s = sizes_for(9000).unwrap();
        assert_eq!(&s[..4], &[9000, 9000 - 4096, 9000 - 8192, 0]);
        assert!(sizes_for(MAX_PACKET + 1).is_err());
    }

    #[test]
    fn inconsistent_sizes_are_refused() {
        let mut ring = Ring::default();
        ring[0].size = U16::new(5000);
        ring[1].size = U16::new(5000);
        assert!(packet_len(&ring).is_err());
        ring[1].size = U16::new(5000 - 4096);
        assert_eq!(packet_len(&ring).unwrap(), 5000);
        ring[5].size = U16::new(1);
        assert!(packet_len(&ring).is_err());
    }

    #[test]
    fn the_kind_travels_in_entry_zero_unused_field() {
        let (ring_page, _pages, _ring) = ring_with_pages();
        write_tag(&ring_page, crate::protocol::PacketKind::CONTROL, 7).unwrap();
        let mut raw = [0u8; ENTRY_SIZE];
        ring_page.read(0, &mut raw).unwrap();
        // Golden: addr (8), ref 0 (4), unused = kind 1 | number 7 << 8 (LE), size untouched.
        assert_eq!(&raw[12..14], &[1, 7]);
        let snap = read_ring(&ring_page).unwrap();
        assert_eq!(packet_kind(&snap), crate::protocol::PacketKind::CONTROL);
        assert_eq!(request_number(&snap), 7);
        assert_eq!(next_request_number(255), 1);
        assert_eq!(next_request_number(0), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn packets_round_trip(data in proptest::collection::vec(any::<u8>(), 0..(MAX_PACKET + 100))) {
            let (ring_page, pages, ring) = ring_with_pages();
            let map = |r: u32| pages.get(r as usize).cloned().ok_or(RingError::Inconsistent("ref"));
            let w = write_packet(&ring_page, &ring, &data, map);
            if data.len() <= MAX_PACKET {
                prop_assert!(w.is_ok());
                let snap = read_ring(&ring_page).unwrap();
                let len = packet_len(&snap).unwrap();
                prop_assert_eq!(len, data.len());
                prop_assert_eq!(read_packet(&snap, len, map).unwrap(), data);
            } else {
                prop_assert!(w.is_err());
            }
        }
    }
}
