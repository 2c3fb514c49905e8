//! The producing end of a ring.

use super::RingCore;
use super::RingError;
use super::layout::ControlWord;
use super::layout::DESCRIPTOR_SIZE;
use super::layout::FEATURE_PENDING_SEND_SIZE;
use super::layout::FLAG_COMPLETION_REQUESTED;
use super::layout::FOOTER_SIZE;
use super::layout::GpaDirectHeader;
use super::layout::MAX_PACKET_LEN;
use super::layout::PacketDescriptor;
use super::layout::PacketFooter;
use super::layout::PacketType;
use super::mem::RingMem;
use crate::protocol::GpaRangeHeader;
use zerocopy::IntoBytes;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// A range of guest pages named by a GPA-direct packet.
#[derive(Debug, Clone, Copy)]
pub struct PagedRange<'a> {
    /// Offset of the first byte within the first page.
    pub byte_offset: u32,
    /// Length in bytes.
    pub byte_count: u32,
    /// Page numbers covering `byte_offset..byte_offset + byte_count`.
    pub pfns: &'a [u64],
}

/// What kind of packet to write.
#[derive(Debug, Clone, Copy)]
pub enum OutgoingPayload<'a> {
    /// Data in the ring.
    InBand,
    /// A completion for `transaction_id`.
    Completion,
    /// Data in the ring plus GPA ranges describing external buffers.
    GpaDirect(&'a [PagedRange<'a>]),
}

/// A packet to write.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPacket<'a> {
    /// Transaction id (echoed in the completion).
    pub transaction_id: u64,
    /// Ask the peer for a completion.
    pub completion_requested: bool,
    /// Packet kind.
    pub kind: OutgoingPayload<'a>,
    /// The payload as pieces, written back to back.
    pub payload: &'a [&'a [u8]],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band packet.
    pub fn in_band(
        transaction_id: u64,
        completion_requested: bool,
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            transaction_id,
            completion_requested,
            kind: OutgoingPayload::InBand,
            payload,
        }
    }

    /// A completion packet for `transaction_id`.
    pub fn completion(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        Self {
            transaction_id,
            completion_requested: false,
            kind: OutgoingPayload::Completion,
            payload,
        }
    }
}

/// A write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TryWriteError {
    /// Not enough free space now; `needed` bytes (packet + footer) must be free. The reader
    /// has been asked to signal once they are.
    #[error("ring full, {needed} bytes needed")]
    Full {
        /// Bytes the packet occupies in the ring.
        needed: u32,
    },
    /// The packet can never fit this ring or the descriptor format.
    #[error("packet of {0} bytes is too large for the ring")]
    TooLarge(usize),
    /// The ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl From<super::RingMemError> for TryWriteError {
    fn from(err: super::RingMemError) -> Self {
        Self::Ring(err.into())
    }
}

/// The result of a successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The reader may be waiting: deliver its interrupt.
    pub signal_peer: bool,
}

/// Writes packets into a ring. The writer owns the ring's write index.
#[derive(Debug)]
pub struct OutgoingRing<M> {
    core: RingCore<M>,
    /// Our write index; the copy in shared memory is only ever written.
    tail: u32,
    /// The reader's index as last loaded and validated (`None` before the first load). The
    /// reader only ever frees space, so a stale copy under-estimates the free space: it is
    /// reloaded, and validated, only when it looks too small.
    cached_head: Option<u32>,
    /// We set `pending_send_size` and have not cleared it yet.
    pending_set: bool,
    poisoned: bool,
    /// The descriptor and range list of a GPA-direct packet, assembled before the copy.
    scratch: Vec<u8>,
}

impl<M: RingMem> OutgoingRing<M> {
    /// Attaches to a ring, taking the current write index from the control page (so a ring
    /// restored from saved guest memory continues where it stopped).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let core = RingCore::new(mem)?;
        let tail = core.load_index(ControlWord::WriteIndex, "write")?;
        Ok(Self {
            core,
            tail,
            cached_head: None,
            pending_set: false,
            poisoned: false,
            scratch: Vec::new(),
        })
    }

    /// Attaches the host's writer to the host-to-guest ring.
    ///
    /// Besides [`OutgoingRing::new`], this sets the pending-send-size feature bit (Linux's
    /// reader signals a blocked writer only when it is set) and clears `pending_send_size`,
    /// which belongs to this ring's writer: a request left by a writer that no longer exists
    /// would otherwise make the guest signal for space nobody waits for, and this writer
    /// starts without one. Call it whenever the host attaches, including after a restore.
    ///
    /// The guest-to-host ring is left alone: its `pending_send_size` is the guest's request
    /// and must survive, or a guest blocked on a full ring would never be woken.
    pub fn attach_host(mem: M) -> Result<Self, RingError> {
        let ring = Self::new(mem)?;
        let control = &ring.core.mem;
        let features = control.load_control(ControlWord::FeatureBits)?;
        control.store_control(
            ControlWord::FeatureBits,
            features | FEATURE_PENDING_SEND_SIZE,
        )?;
        control.store_control(ControlWord::PendingSendSize, 0)?;
        Ok(ring)
    }

    /// The ring memory.
    pub fn mem(&self) -> &M {
        &self.core.mem
    }

    /// Bytes a packet with `header_len` header bytes (after the descriptor) and `payload_len`
    /// payload bytes occupies in the ring, footer included.
    pub fn packet_size(header_len: usize, payload_len: usize) -> usize {
        (DESCRIPTOR_SIZE + header_len + payload_len).next_multiple_of(8) + FOOTER_SIZE
    }

    /// Writes one packet if it fits now.
    pub fn try_write(
        &mut self,
        packet: &OutgoingPacket<'_>,
    ) -> Result<WriteOutcome, TryWriteError> {
        if self.poisoned {
            return Err(RingError::Poisoned.into());
        }
        let result = self.write_inner(packet);
        if let Err(TryWriteError::Ring(err)) = &result {
            tracing::warn!(error = err as &dyn std::error::Error, "ring write failed");
            self.poisoned = true;
        }
        result
    }

    fn write_inner(&mut self, packet: &OutgoingPacket<'_>) -> Result<WriteOutcome, TryWriteError> {
        let (packet_type, ranges) = match packet.kind {
            OutgoingPayload::InBand => (PacketType::IN_BAND, &[][..]),
            OutgoingPayload::Completion => (PacketType::COMPLETION, &[][..]),
            OutgoingPayload::GpaDirect(ranges) => (PacketType::GPA_DIRECT, ranges),
        };
        let header_len = if matches!(packet.kind, OutgoingPayload::GpaDirect(_)) {
            ranges.iter().fold(size_of::<GpaDirectHeader>(), |n, r| {
                n.saturating_add(8)
                    .saturating_add(r.pfns.len().saturating_mul(8))
            })
        } else {
            0
        };
        let payload_len = packet
            .payload
            .iter()
            .fold(0usize, |n, p| n.saturating_add(p.len()));
        let data_offset = DESCRIPTOR_SIZE.saturating_add(header_len);
        let len = data_offset.saturating_add(payload_len).next_multiple_of(8);
        let needed = len.saturating_add(FOOTER_SIZE);
        if len > MAX_PACKET_LEN || needed >= self.core.len as usize || data_offset > len {
            return Err(TryWriteError::TooLarge(needed));
        }
        let needed = needed as u32;

        self.reserve(needed)?;

        let desc = PacketDescriptor {
            packet_type: U16::new(packet_type.0),
            data_offset8: U16::new((data_offset / 8) as u16),
            length8: U16::new((len / 8) as u16),
            flags: U16::new(if packet.completion_requested {
                FLAG_COMPLETION_REQUESTED
            } else {
                0
            }),
            transaction_id: U64::new(packet.transaction_id),
        };
        let footer = PacketFooter {
            reserved: U32::new(0),
            offset: U32::new(self.tail),
        };
        let padding = len - data_offset - payload_len;

        let core = &self.core;
        let mut at = self.tail;
        // Each part goes straight from where it is into the ring. Gathering a small packet
        // into a scratch buffer first is slower: the copy out of the buffer reloads bytes
        // just stored in pieces, which stalls store forwarding.
        let head: &[u8] = if matches!(packet.kind, OutgoingPayload::GpaDirect(_)) {
            let scratch = &mut self.scratch;
            scratch.clear();
            scratch.extend_from_slice(desc.as_bytes());
            push_gpa_header(scratch, ranges);
            scratch
        } else {
            desc.as_bytes()
        };
        core.write_wrapped(at, head)?;
        at = core.advance(at, head.len() as u32);
        for piece in packet.payload {
            core.write_wrapped(at, piece)?;
            at = core.advance(at, piece.len() as u32);
        }
        let mut trailer = [0u8; 16];
        let trailer_len = padding + FOOTER_SIZE;
        trailer[padding..trailer_len].copy_from_slice(footer.as_bytes());
        core.write_wrapped(at, &trailer[..trailer_len])?;

        let old_tail = self.tail;
        self.tail = core.advance(old_tail, needed);
        // Publishing the index is the release point: the packet bytes are visible before it
        // (the control store is sequentially consistent, which also orders it before the
        // loads below).
        core.mem.store_control(ControlWord::WriteIndex, self.tail)?;

        // The reader wants an interrupt only if it is not polling and had consumed everything
        // we wrote before this packet (it may be waiting).
        let masked = core.mem.load_control(ControlWord::InterruptMask)? != 0;
        let head = core.mem.load_control(ControlWord::ReadIndex)?;
        if head < core.len && head % 8 == 0 {
            self.cached_head = Some(head);
        }
        Ok(WriteOutcome {
            signal_peer: !masked && head == old_tail,
        })
    }

    /// Makes sure `needed` bytes are free, or arranges to be signalled when they are.
    fn reserve(&mut self, needed: u32) -> Result<(), TryWriteError> {
        let core = &self.core;
        let tail = self.tail;
        let fits = |head: u32| needed < core.len - core.distance(head, tail);
        let head = match self.cached_head {
            Some(head) if fits(head) => head,
            _ => core.load_index(ControlWord::ReadIndex, "read")?,
        };
        self.cached_head = Some(head);
        if fits(head) {
            if self.pending_set {
                core.mem.store_control(ControlWord::PendingSendSize, 0)?;
                self.pending_set = false;
            }
            return Ok(());
        }
        core.mem
            .store_control(ControlWord::PendingSendSize, needed)?;
        self.pending_set = true;
        // The reader may have freed space before it could see the request: look again.
        let head = core.load_index(ControlWord::ReadIndex, "read")?;
        self.cached_head = Some(head);
        if fits(head) {
            core.mem.store_control(ControlWord::PendingSendSize, 0)?;
            self.pending_set = false;
            return Ok(());
        }
        Err(TryWriteError::Full { needed })
    }
}

/// Appends the GPA-direct header and range list of a GPA-direct packet.
fn push_gpa_header(scratch: &mut Vec<u8>, ranges: &[PagedRange<'_>]) {
    let header = GpaDirectHeader {
        reserved: U32::new(0),
        range_count: U32::new(ranges.len() as u32),
    };
    scratch.extend_from_slice(header.as_bytes());
    for r in ranges {
        let h = GpaRangeHeader {
            byte_count: U32::new(r.byte_count),
            byte_offset: U32::new(r.byte_offset),
        };
        scratch.extend_from_slice(&h.to_word().to_le_bytes());
        for pfn in r.pfns {
            scratch.extend_from_slice(&pfn.to_le_bytes());
        }
    }
}
