//! The consuming end of a ring.

use super::RingCore;
use super::RingError;
use super::layout::ControlWord;
use super::layout::DESCRIPTOR_SIZE;
use super::layout::FEATURE_PENDING_SEND_SIZE;
use super::layout::FLAG_COMPLETION_REQUESTED;
use super::layout::FOOTER_SIZE;
use super::layout::GpaDirectHeader;
use super::layout::PacketDescriptor;
use super::layout::PacketType;
use super::mem::RingMem;
use crate::memory::PAGE_SIZE64;
use crate::protocol::GpaRangeHeader;
use zerocopy::FromBytes;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

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
    /// The GPA ranges of a GPA-direct packet do not fit its header area or are malformed.
    #[error("malformed GPA range list")]
    BadGpaRanges,
}

/// A packet read out of a ring: its header fields and a private copy of its bytes.
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
    /// The payload, including the sender's padding up to a multiple of 8 bytes.
    pub fn data(&self) -> &[u8] {
        self.body.get(self.data_start..).unwrap_or_default()
    }

    /// The bytes between the descriptor and the payload (the range list of GPA-direct and
    /// transfer-page packets).
    pub fn header_area(&self) -> &[u8] {
        self.body.get(..self.data_start).unwrap_or_default()
    }

    /// Parses the GPA ranges of a GPA-direct packet as `(byte_offset, byte_count, pfns)`.
    pub fn gpa_ranges(&self) -> Result<Vec<(u32, u32, Vec<u64>)>, PacketError> {
        let area = self.header_area();
        let (header, mut rest) =
            GpaDirectHeader::read_from_prefix(area).map_err(|_| PacketError::BadGpaRanges)?;
        let mut ranges = Vec::new();
        for _ in 0..header.range_count.get() {
            let (word, tail) =
                u64::read_from_prefix(rest).map_err(|_| PacketError::BadGpaRanges)?;
            let h = GpaRangeHeader::from_word(word);
            let (offset, count) = (h.byte_offset.get(), h.byte_count.get());
            if u64::from(offset) >= PAGE_SIZE64 || count == 0 {
                return Err(PacketError::BadGpaRanges);
            }
            let pages = (u64::from(offset) + u64::from(count)).div_ceil(PAGE_SIZE64) as usize;
            let bytes = pages.checked_mul(8).ok_or(PacketError::BadGpaRanges)?;
            let pfn_bytes = tail.get(..bytes).ok_or(PacketError::BadGpaRanges)?;
            let pfns = pfn_bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            rest = tail.get(bytes..).unwrap_or_default();
            ranges.push((offset, count, pfns));
        }
        Ok(ranges)
    }
}

/// Reads packets from a ring. The reader owns the ring's read index.
#[derive(Debug)]
pub struct IncomingRing<M> {
    core: RingCore<M>,
    /// Our read index; the copy in shared memory is only ever written.
    head: u32,
    /// The ring's creator advertised pending-send-size support (read once at attach).
    pending_send_supported: bool,
    poisoned: bool,
}

impl<M: RingMem> IncomingRing<M> {
    /// Attaches to a ring, taking the current read index from the control page (so a ring
    /// restored from saved guest memory continues where it stopped).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let core = RingCore::new(mem)?;
        let head = core.load_index(ControlWord::ReadIndex, "read")?;
        let pending_send_supported =
            core.mem.load_control(ControlWord::FeatureBits)? & FEATURE_PENDING_SEND_SIZE != 0;
        Ok(Self {
            core,
            head,
            pending_send_supported,
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

    /// True if the ring currently holds no packet.
    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.core.load_index(ControlWord::WriteIndex, "write")? == self.head)
    }

    /// Reads the next packet into a new [`IncomingPacket`].
    ///
    /// Returns the packet and whether the writer must be signalled (it was blocked waiting for
    /// the space this read freed).
    pub fn try_read(&mut self) -> Result<Option<(IncomingPacket, bool)>, RingError> {
        let mut packet = IncomingPacket::default();
        Ok(self
            .try_read_into(&mut packet)?
            .map(|signal| (packet, signal)))
    }

    /// Reads the next packet into `packet`, reusing its buffer.
    ///
    /// `Ok(None)` means the ring is empty; `Ok(Some(signal))` means a packet was read and
    /// `signal` says whether to signal the writer. Any error leaves the ring unusable.
    pub fn try_read_into(
        &mut self,
        packet: &mut IncomingPacket,
    ) -> Result<Option<bool>, RingError> {
        if self.poisoned {
            return Err(RingError::Poisoned);
        }
        let result = self.read_inner(packet);
        if let Err(err) = &result {
            tracing::warn!(error = err as &dyn std::error::Error, "ring read failed");
            self.poisoned = true;
        }
        result
    }

    fn read_inner(&mut self, packet: &mut IncomingPacket) -> Result<Option<bool>, RingError> {
        let core = &self.core;
        let head = self.head;
        let tail = core.load_index(ControlWord::WriteIndex, "write")?;
        let available = core.distance(head, tail);
        if available == 0 {
            return Ok(None);
        }
        let corrupt = |source| RingError::CorruptPacket {
            offset: head,
            source,
        };
        if (available as usize) < DESCRIPTOR_SIZE + FOOTER_SIZE {
            return Err(corrupt(PacketError::Truncated { available }));
        }

        // One copy of the descriptor; every decision below uses this copy.
        let mut desc = PacketDescriptor::new_zeroed();
        core.read_wrapped(head, desc.as_mut_bytes())?;
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

        let body_len = len as usize - DESCRIPTOR_SIZE;
        // Same-size packets reuse the buffer without clearing it.
        packet.body.resize(body_len, 0);
        core.read_wrapped(core.advance(head, DESCRIPTOR_SIZE as u32), &mut packet.body)?;
        packet.packet_type = PacketType(desc.packet_type.get());
        packet.transaction_id = desc.transaction_id.get();
        packet.completion_requested = desc.flags.get() & FLAG_COMPLETION_REQUESTED != 0;
        packet.data_start = data_offset as usize - DESCRIPTOR_SIZE;

        let consumed = len + FOOTER_SIZE as u32;
        self.head = core.advance(head, consumed);
        core.mem.store_control(ControlWord::ReadIndex, self.head)?;
        Ok(Some(self.writer_needs_signal(available, consumed)?))
    }

    /// Whether this read freed the space a blocked writer asked for.
    fn writer_needs_signal(&self, available: u32, consumed: u32) -> Result<bool, RingError> {
        if !self.pending_send_supported {
            return Ok(false);
        }
        let pending = self.core.mem.load_control(ControlWord::PendingSendSize)?;
        if pending == 0 {
            return Ok(false);
        }
        // The writer needs strictly more free bytes than its packet (the ring never fills
        // completely), so it is unblocked when free space first exceeds `pending`.
        let free_before = self.core.len - available;
        let free_after = free_before + consumed;
        Ok(free_before <= pending && free_after > pending)
    }
}
