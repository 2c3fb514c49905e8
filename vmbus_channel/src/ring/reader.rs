//! The consuming end of a ring: peek, then commit.
//!
//! [`IncomingRing::peek`] copies what the writer has published out of shared memory, in one
//! go, into a buffer the reader owns; it then validates the next packet in that copy and hands
//! out a borrowed [`PacketView`] of it. Later packets of the same copy are parsed without
//! touching shared memory again. The read index in the control page does not move until
//! [`IncomingRing::commit`]: a packet that was peeked but not answered is still in the ring,
//! so a restore from saved guest memory reads it again. The buffer grows to the most bytes
//! seen published at once (at most the ring's size) and is then reused, so the steady state
//! neither allocates nor zero-fills.

use super::RingCore;
use super::RingError;
use super::layout::ControlWord;
use super::layout::DESCRIPTOR_SIZE;
use super::layout::FLAG_COMPLETION_REQUESTED;
use super::layout::FOOTER_SIZE;
use super::layout::GpaDirectHeader;
use super::layout::PacketDescriptor;
use super::layout::PacketType;
use super::layout::TransferPageHeader;
use super::layout::TransferPageRange;
use super::mem::RingMem;
use crate::memory::PAGE_SIZE64;
use crate::protocol::GpaRangeHeader;
use zerocopy::FromBytes;
use zerocopy::little_endian::U64;

/// Bytes between the descriptor and the payload that transfer-page and GPA-direct packets
/// need at least (their 8-byte header).
const RANGE_HEADER_SIZE: u32 = 8;

/// What is wrong with a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The ring holds fewer bytes than a descriptor and footer.
    #[error("{available} bytes in the ring cannot hold a packet")]
    Truncated {
        /// Bytes between read and write index.
        available: u32,
    },
    /// The descriptor's length is below the descriptor size or beyond the written data.
    #[error("packet length {len} is invalid ({available} bytes available)")]
    BadLength {
        /// Packet length from the descriptor (without footer).
        len: u32,
        /// Bytes between read and write index.
        available: u32,
    },
    /// The data offset is inside the descriptor or beyond the packet.
    #[error("data offset {offset} is invalid for a {len}-byte packet")]
    BadDataOffset {
        /// Data offset from the descriptor.
        offset: u32,
        /// Packet length.
        len: u32,
    },
    /// The packet type is not one this ring carries (in-band, transfer pages, GPA direct,
    /// completion).
    #[error("unknown packet type {0:#x}")]
    UnknownType(u16),
    /// A descriptor flag other than completion-requested is set.
    #[error("unknown packet flags {0:#x}")]
    UnknownFlags(u16),
    /// The header area (data offset) of a transfer-page or GPA-direct packet cannot hold its
    /// header and the ranges the header counts.
    #[error(
        "{packet_type:?} packet with data offset {data_offset} cannot hold {range_count} ranges"
    )]
    BadHeaderSize {
        /// The packet type.
        packet_type: PacketType,
        /// Data offset from the descriptor, in bytes.
        data_offset: u32,
        /// Range count from the packet's header (0 if the header itself does not fit).
        range_count: u32,
    },
    /// The GPA ranges of a GPA-direct packet do not fit its header area or are malformed.
    #[error("malformed GPA range list")]
    BadGpaRanges,
    /// The packet is not a transfer-page packet.
    #[error("not a transfer-page packet")]
    NotTransferPages,
}

/// What the reader learned about the peeked packet; the bytes are in the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peeked {
    packet_type: PacketType,
    transaction_id: u64,
    completion_requested: bool,
    /// Where the bytes after the descriptor start in the buffer.
    body_start: usize,
    /// Bytes after the descriptor (header area and payload).
    body_len: usize,
    /// Where the payload starts within the body.
    data_start: usize,
    /// Ring bytes the packet occupies, footer included.
    consumed: u32,
}

/// A packet validated and copied out of the ring, borrowed from its reader until the reader
/// commits or peeks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// The packet type.
    pub packet_type: PacketType,
    /// The sender's transaction id.
    pub transaction_id: u64,
    /// The sender asked for a completion.
    pub completion_requested: bool,
    header_area: &'a [u8],
    data: &'a [u8],
}

/// One range of a GPA-direct packet, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRangeRef<'a> {
    /// Offset of the first byte within the first page.
    pub byte_offset: u32,
    /// Length in bytes.
    pub byte_count: u32,
    /// Page numbers (little-endian u64 each) covering the range.
    pub pfns: &'a [U64],
}

impl<'a> PacketView<'a> {
    /// The payload, including the sender's padding up to a multiple of 8 bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes between the descriptor and the payload (the range list of GPA-direct and
    /// transfer-page packets).
    pub fn header_area(&self) -> &'a [u8] {
        self.header_area
    }

    /// Iterates over the GPA ranges of a GPA-direct packet without copying them.
    ///
    /// Each range is checked (offset within a page, non-empty, page list inside the header
    /// area); the first bad one yields an error and ends the iteration.
    pub fn gpa_range_iter(
        &self,
    ) -> impl Iterator<Item = Result<GpaRangeRef<'a>, PacketError>> + use<'a> {
        // Ok((ranges left, bytes left)), or Err(whether an error is still to be reported).
        let mut state = match GpaDirectHeader::read_from_prefix(self.header_area) {
            Ok((header, rest)) => Ok((header.range_count.get(), rest)),
            Err(_) => Err(true),
        };
        std::iter::from_fn(move || match &mut state {
            Ok((0, _)) | Err(false) => None,
            Ok((left, rest)) => {
                *left -= 1;
                let range = next_gpa_range(rest);
                if range.is_err() {
                    state = Err(false);
                }
                Some(range)
            }
            Err(pending @ true) => {
                *pending = false;
                Some(Err(PacketError::BadGpaRanges))
            }
        })
    }

    /// Parses the GPA ranges of a GPA-direct packet as `(byte_offset, byte_count, pfns)`.
    pub fn gpa_ranges(&self) -> Result<Vec<(u32, u32, Vec<u64>)>, PacketError> {
        self.gpa_range_iter()
            .map(|r| {
                r.map(|r| {
                    let pfns = r.pfns.iter().map(|p| p.get()).collect();
                    (r.byte_offset, r.byte_count, pfns)
                })
            })
            .collect()
    }

    /// The header and ranges of a transfer-page packet, borrowed from the packet.
    pub fn transfer_pages(
        &self,
    ) -> Result<(TransferPageHeader, &'a [TransferPageRange]), PacketError> {
        if self.packet_type != PacketType::TRANSFER_PAGES {
            return Err(PacketError::NotTransferPages);
        }
        let bad = || PacketError::BadHeaderSize {
            packet_type: self.packet_type,
            data_offset: (DESCRIPTOR_SIZE + self.header_area.len()) as u32,
            range_count: 0,
        };
        let (header, rest) =
            TransferPageHeader::read_from_prefix(self.header_area).map_err(|_| bad())?;
        let count = header.range_count.get() as usize;
        let (ranges, _) =
            <[TransferPageRange]>::ref_from_prefix_with_elems(rest, count).map_err(|_| bad())?;
        Ok((header, ranges))
    }

    /// Copies the packet into `packet`, reusing its buffer (it only grows).
    pub fn copy_into(&self, packet: &mut IncomingPacket) {
        packet.packet_type = self.packet_type;
        packet.transaction_id = self.transaction_id;
        packet.completion_requested = self.completion_requested;
        packet.body.clear();
        packet.body.extend_from_slice(self.header_area);
        packet.body.extend_from_slice(self.data);
        packet.data_start = self.header_area.len();
    }

    /// An owned copy of the packet.
    pub fn to_packet(&self) -> IncomingPacket {
        let mut packet = IncomingPacket::default();
        self.copy_into(&mut packet);
        packet
    }
}

/// Takes one GPA range (header word, then its page numbers) off the front of `rest`.
fn next_gpa_range<'a>(rest: &mut &'a [u8]) -> Result<GpaRangeRef<'a>, PacketError> {
    let (word, tail) = U64::read_from_prefix(rest).map_err(|_| PacketError::BadGpaRanges)?;
    let h = GpaRangeHeader::from_word(word.get());
    let (byte_offset, byte_count) = (h.byte_offset.get(), h.byte_count.get());
    if u64::from(byte_offset) >= PAGE_SIZE64 || byte_count == 0 {
        return Err(PacketError::BadGpaRanges);
    }
    let pages = (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE64);
    let pages = usize::try_from(pages).map_err(|_| PacketError::BadGpaRanges)?;
    let (pfns, tail) =
        <[U64]>::ref_from_prefix_with_elems(tail, pages).map_err(|_| PacketError::BadGpaRanges)?;
    *rest = tail;
    Ok(GpaRangeRef {
        byte_offset,
        byte_count,
        pfns,
    })
}

/// A packet read out of a ring into memory of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingPacket {
    /// The packet type.
    pub packet_type: PacketType,
    /// The sender's transaction id.
    pub transaction_id: u64,
    /// The sender asked for a completion.
    pub completion_requested: bool,
    /// Everything after the descriptor.
    body: Vec<u8>,
    /// Where the payload starts within `body`.
    data_start: usize,
}

impl Default for PacketType {
    fn default() -> Self {
        Self::IN_BAND
    }
}

impl IncomingPacket {
    /// A borrowed view of the packet.
    pub fn view(&self) -> PacketView<'_> {
        let (header_area, data) = self
            .body
            .split_at_checked(self.data_start)
            .unwrap_or((&[], &[]));
        PacketView {
            packet_type: self.packet_type,
            transaction_id: self.transaction_id,
            completion_requested: self.completion_requested,
            header_area,
            data,
        }
    }

    /// The payload, including the sender's padding up to a multiple of 8 bytes.
    pub fn data(&self) -> &[u8] {
        self.view().data
    }

    /// The bytes between the descriptor and the payload (the range list of GPA-direct and
    /// transfer-page packets).
    pub fn header_area(&self) -> &[u8] {
        self.view().header_area
    }

    /// Parses the GPA ranges of a GPA-direct packet as `(byte_offset, byte_count, pfns)`.
    pub fn gpa_ranges(&self) -> Result<Vec<(u32, u32, Vec<u64>)>, PacketError> {
        self.view().gpa_ranges()
    }
}

/// Reads packets from a ring. The reader owns the ring's read index.
#[derive(Debug)]
pub struct IncomingRing<M> {
    core: RingCore<M>,
    /// The committed read index; the copy in shared memory is only ever written.
    head: u32,
    /// The packet at `head`, validated in `buf` and not yet committed.
    peeked: Option<Peeked>,
    /// Ring bytes copied in one go: `buf[pos..filled]` holds the ring from `head` on, up to
    /// the write index seen at the copy. Its length is the most ever copied at once; only
    /// `..filled` is meaningful.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    poisoned: bool,
}

impl<M: RingMem> IncomingRing<M> {
    /// Attaches to a ring, taking the current read index from the control page (so a ring
    /// restored from saved guest memory continues where it stopped, uncommitted packets
    /// included).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let core = RingCore::new(mem)?;
        let head = core.load_index(ControlWord::ReadIndex, "read")?;
        Ok(Self {
            core,
            head,
            peeked: None,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            poisoned: false,
        })
    }

    /// The ring memory.
    pub fn mem(&self) -> &M {
        &self.core.mem
    }

    /// Asks the writer not to interrupt (true) or to interrupt (false) on new packets.
    ///
    /// After unmasking, read again before waiting: a packet may have arrived meanwhile.
    pub fn set_interrupt_mask(&self, masked: bool) -> Result<(), RingError> {
        Ok(self
            .core
            .mem
            .store_control(ControlWord::InterruptMask, u32::from(masked))?)
    }

    /// True if the ring holds no packet, committed reads aside (a peeked packet still counts).
    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.core.load_index(ControlWord::WriteIndex, "write")? == self.head)
    }

    /// Returns a view of the next packet, without consuming it.
    ///
    /// When the last copy is used up, everything the writer has published is copied out of
    /// the ring in one go; the next packet is validated in that copy. `Ok(None)` means the
    /// ring is empty. Until [`IncomingRing::commit`], every call returns
    /// the same packet again (from the copy; shared memory is not read twice). Any error
    /// leaves the ring unusable.
    pub fn peek(&mut self) -> Result<Option<PacketView<'_>>, RingError> {
        Ok(self.fill()?.map(|peeked| self.view(peeked)))
    }

    /// The packet peeked and not yet committed, if any.
    pub fn peeked(&self) -> Option<PacketView<'_>> {
        self.peeked.map(|peeked| self.view(peeked))
    }

    /// Consumes the peeked packet: publishes the read index past it.
    ///
    /// Returns whether the writer must be signalled (it was blocked waiting for the space this
    /// commit freed). Without a peeked packet this does nothing and returns `Ok(false)`.
    pub fn commit(&mut self) -> Result<bool, RingError> {
        if self.poisoned {
            return Err(RingError::Poisoned);
        }
        let Some(peeked) = self.peeked.take() else {
            return Ok(false);
        };
        let result = self.publish(peeked.consumed);
        if let Err(err) = &result {
            tracing::warn!(error = err as &dyn std::error::Error, "ring commit failed");
            self.poisoned = true;
        }
        result
    }

    /// Reads the next packet into a new [`IncomingPacket`] and commits it.
    ///
    /// Returns the packet and whether the writer must be signalled.
    pub fn try_read(&mut self) -> Result<Option<(IncomingPacket, bool)>, RingError> {
        let mut packet = IncomingPacket::default();
        Ok(self
            .try_read_into(&mut packet)?
            .map(|signal| (packet, signal)))
    }

    /// Reads the next packet into `packet` (reusing its buffer) and commits it.
    ///
    /// `Ok(None)` means the ring is empty; `Ok(Some(signal))` means a packet was read and
    /// `signal` says whether to signal the writer. Any error leaves the ring unusable.
    pub fn try_read_into(
        &mut self,
        packet: &mut IncomingPacket,
    ) -> Result<Option<bool>, RingError> {
        let Some(peeked) = self.fill()? else {
            return Ok(None);
        };
        self.view(peeked).copy_into(packet);
        self.commit().map(Some)
    }

    /// Makes sure a packet is peeked; returns what was learned about it (not a borrow, so a
    /// caller can loop on it and take the view afterwards).
    pub(crate) fn fill(&mut self) -> Result<Option<Peeked>, RingError> {
        if self.poisoned {
            return Err(RingError::Poisoned);
        }
        if self.peeked.is_some() {
            return Ok(self.peeked);
        }
        match self.read_next() {
            Ok(peeked) => {
                self.peeked = peeked;
                Ok(peeked)
            }
            Err(err) => {
                tracing::warn!(error = &err as &dyn std::error::Error, "ring read failed");
                self.poisoned = true;
                Err(err)
            }
        }
    }

    /// The view of a packet `fill` returned.
    pub(crate) fn view(&self, peeked: Peeked) -> PacketView<'_> {
        let body = peeked
            .body_start
            .checked_add(peeked.body_len)
            .and_then(|end| self.buf.get(peeked.body_start..end))
            .unwrap_or_default();
        let (header_area, data) = body.split_at_checked(peeked.data_start).unwrap_or_default();
        PacketView {
            packet_type: peeked.packet_type,
            transaction_id: peeked.transaction_id,
            completion_requested: peeked.completion_requested,
            header_area,
            data,
        }
    }

    /// Copies everything published from the read index on, in one go.
    fn refill(&mut self) -> Result<(), RingError> {
        let core = &self.core;
        let tail = core.load_index(ControlWord::WriteIndex, "write")?;
        let available = core.distance(self.head, tail) as usize;
        // The buffer only grows, so a steady stream of packets is not cleared each time.
        if self.buf.len() < available {
            self.buf.resize(available, 0);
        }
        let copy = self
            .buf
            .get_mut(..available)
            .ok_or(RingError::BadSize(available))?;
        core.read_wrapped(self.head, copy)?;
        self.pos = 0;
        self.filled = available;
        Ok(())
    }

    /// Validates the packet at the read index, copying from the ring first if the last copy
    /// is used up.
    fn read_next(&mut self) -> Result<Option<Peeked>, RingError> {
        if self.pos >= self.filled {
            self.refill()?;
        }
        let head = self.head;
        let corrupt = |source| RingError::CorruptPacket {
            offset: head,
            source,
        };
        let pos = self.pos;
        let bytes = self.buf.get(pos..self.filled).unwrap_or_default();
        let available = bytes.len() as u32;
        if available == 0 {
            return Ok(None);
        }
        if (available as usize) < DESCRIPTOR_SIZE + FOOTER_SIZE {
            return Err(corrupt(PacketError::Truncated { available }));
        }

        // Every decision below uses the copy.
        let (desc, _) = PacketDescriptor::read_from_prefix(bytes)
            .map_err(|_| corrupt(PacketError::Truncated { available }))?;
        let len = u32::from(desc.length8.get()) * 8;
        let data_offset = u32::from(desc.data_offset8.get()) * 8;
        if (len as usize) < DESCRIPTOR_SIZE || len + FOOTER_SIZE as u32 > available {
            return Err(corrupt(PacketError::BadLength { len, available }));
        }
        if (data_offset as usize) < DESCRIPTOR_SIZE || data_offset > len {
            return Err(corrupt(PacketError::BadDataOffset {
                offset: data_offset,
                len,
            }));
        }
        let flags = desc.flags.get();
        if flags & !FLAG_COMPLETION_REQUESTED != 0 {
            return Err(corrupt(PacketError::UnknownFlags(flags)));
        }
        let packet_type = PacketType(desc.packet_type.get());
        let has_ranges = match packet_type {
            PacketType::IN_BAND | PacketType::COMPLETION => false,
            PacketType::TRANSFER_PAGES | PacketType::GPA_DIRECT => true,
            _ => return Err(corrupt(PacketError::UnknownType(packet_type.0))),
        };
        if has_ranges {
            let header_area = bytes
                .get(DESCRIPTOR_SIZE..data_offset as usize)
                .unwrap_or_default();
            check_range_header(packet_type, data_offset, header_area).map_err(corrupt)?;
        }
        Ok(Some(Peeked {
            packet_type,
            transaction_id: desc.transaction_id.get(),
            completion_requested: flags & FLAG_COMPLETION_REQUESTED != 0,
            body_start: pos + DESCRIPTOR_SIZE,
            body_len: len as usize - DESCRIPTOR_SIZE,
            data_start: data_offset as usize - DESCRIPTOR_SIZE,
            consumed: len + FOOTER_SIZE as u32,
        }))
    }

    /// Moves the read index past `consumed` bytes and decides whether the writer waits for
    /// the space.
    fn publish(&mut self, consumed: u32) -> Result<bool, RingError> {
        let core = &self.core;
        self.head = core.advance(self.head, consumed);
        self.pos += consumed as usize;
        core.mem.store_control(ControlWord::ReadIndex, self.head)?;
        // Read after publishing the index (both sequentially consistent): a writer that sets
        // its request after our store sees the freed space itself when it looks again.
        let pending = core.mem.load_control(ControlWord::PendingSendSize)?;
        if pending == 0 {
            return Ok(false);
        }
        // Like OpenVMM (and unlike Linux) the request is honoured without looking at the
        // feature bit: a spurious signal costs a wake-up, a missed one a hung writer.
        let tail = core.load_index(ControlWord::WriteIndex, "write")?;
        let free_after = core.len - core.distance(self.head, tail);
        // The writer needs strictly more free bytes than its packet (the ring never fills
        // completely), so it is unblocked when free space first exceeds `pending`.
        Ok(free_after
            .checked_sub(consumed)
            .is_some_and(|free_before| free_before <= pending && free_after > pending))
    }
}

/// Checks that the header area of a transfer-page or GPA-direct packet holds its 8-byte header
/// and at least the ranges the header counts (8 bytes per transfer-page range; 16 per GPA
/// range: the range word and at least one page number).
fn check_range_header(
    packet_type: PacketType,
    data_offset: u32,
    header_area: &[u8],
) -> Result<(), PacketError> {
    let bad = |range_count| PacketError::BadHeaderSize {
        packet_type,
        data_offset,
        range_count,
    };
    let (range_count, min_range_size) = if packet_type == PacketType::TRANSFER_PAGES {
        let (h, _) = TransferPageHeader::read_from_prefix(header_area).map_err(|_| bad(0))?;
        (h.range_count.get(), 8)
    } else {
        let (h, _) = GpaDirectHeader::read_from_prefix(header_area).map_err(|_| bad(0))?;
        (h.range_count.get(), 16)
    };
    let room = u64::from(data_offset)
        .saturating_sub(DESCRIPTOR_SIZE as u64 + u64::from(RANGE_HEADER_SIZE));
    let needed = u64::from(range_count) * min_range_size;
    // A GPA-direct packet names at least one range (OpenVMM rejects an empty list too).
    if needed > room || (packet_type == PacketType::GPA_DIRECT && range_count == 0) {
        return Err(bad(range_count));
    }
    Ok(())
}
