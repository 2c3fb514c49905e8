//! VMBus ring buffers over guest memory, in the Hyper-V/Linux `hv_ring_buffer` layout.
//!
//! A channel has two rings, one per direction. [`OutgoingRing`] writes packets into a ring,
//! [`IncomingRing`] reads them; both the host and the guest side use the same two types.
//! Each end keeps its own index locally and only publishes it: the peer's index is read once
//! per operation, validated, and then only that copy is used, so a peer that scribbles on the
//! control page or the packets gets an error on this ring and nothing else.
//!
//! Reading is peek, then commit: [`IncomingRing::peek`] copies what the writer published
//! into the reader's own buffer, validates the next packet there and lends a [`PacketView`]
//! of it; the read index moves only at [`IncomingRing::commit`]. A packet read but not yet
//! answered therefore survives a save and restore of guest memory.
//!
//! The host attaches its writer with [`OutgoingRing::attach_host`], at open and again after
//! every restore: it advertises pending-send-size support and clears a stale request.

mod layout;
mod mem;
mod reader;
mod writer;

pub use layout::*;
pub use mem::PagedRingMem;
pub use mem::RingMem;
pub use mem::RingMemError;
pub use reader::GpaRangeRef;
pub use reader::IncomingPacket;
pub use reader::IncomingRing;
pub use reader::PacketError;
pub use reader::PacketView;
pub use writer::OutgoingPacket;
pub use writer::OutgoingPayload;
pub use writer::OutgoingRing;
pub use writer::PagedRange;
pub use writer::TryWriteError;
pub use writer::WriteOutcome;

/// A ring failed; the ring is unusable afterwards (its peer broke the protocol).
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// Ring memory could not be accessed.
    #[error("ring memory access failed")]
    Memory(#[from] RingMemError),
    /// The peer's index is outside the data area or not 8-byte aligned.
    #[error("peer {which} index {value:#x} is invalid for a {len:#x}-byte ring")]
    CorruptIndex {
        /// Which index.
        which: &'static str,
        /// The value read.
        value: u32,
        /// The ring's data size.
        len: u32,
    },
    /// A packet descriptor in the ring is inconsistent.
    #[error("corrupt packet at ring offset {offset:#x}")]
    CorruptPacket {
        /// Ring offset of the packet.
        offset: u32,
        /// What was wrong.
        #[source]
        source: PacketError,
    },
    /// The ring's data area cannot be used (size not a multiple of 8 or too large).
    #[error("ring data area of {0:#x} bytes is unusable")]
    BadSize(usize),
    /// An earlier error made the ring unusable.
    #[error("ring is unusable after an earlier error")]
    Poisoned,
}

/// Wrapping arithmetic on ring offsets, shared by reader and writer.
#[derive(Debug)]
struct RingCore<M> {
    mem: M,
    len: u32,
}

impl<M: RingMem> RingCore<M> {
    fn new(mem: M) -> Result<Self, RingError> {
        let size = mem.data_len();
        let len = u32::try_from(size)
            .ok()
            .filter(|&l| l > 0 && l % 8 == 0)
            .ok_or(RingError::BadSize(size))?;
        Ok(Self { mem, len })
    }

    /// Loads a peer-owned index once and checks it is a valid, aligned ring offset.
    fn load_index(&self, word: ControlWord, which: &'static str) -> Result<u32, RingError> {
        let value = self.mem.load_control(word)?;
        if value >= self.len || value % 8 != 0 {
            tracing::warn!(which, value, len = self.len, "corrupt ring index");
            return Err(RingError::CorruptIndex {
                which,
                value,
                len: self.len,
            });
        }
        Ok(value)
    }

    /// `offset + n` modulo the ring size, for `offset < len` and `n <= len` (then one
    /// subtraction replaces a division, which is on every packet's path).
    fn advance(&self, offset: u32, n: u32) -> u32 {
        let sum = u64::from(offset) + u64::from(n);
        let len = u64::from(self.len);
        let wrapped = if sum >= len { sum - len } else { sum };
        // Only out-of-contract inputs need the general form.
        (if wrapped < len { wrapped } else { sum % len }) as u32
    }

    /// Bytes from `from` forward to `to`.
    fn distance(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            self.len - from + to
        }
    }

    /// Reads `buf` starting at ring offset `offset`, wrapping at the end.
    fn read_wrapped(&self, offset: u32, buf: &mut [u8]) -> Result<(), RingError> {
        let first = (self.len - offset) as usize;
        if buf.len() <= first {
            self.mem.read_data(offset as usize, buf)?;
        } else {
            let (a, b) = buf.split_at_mut(first);
            self.mem.read_data(offset as usize, a)?;
            self.mem.read_data(0, b)?;
        }
        Ok(())
    }

    /// Writes `buf` at ring offset `offset`, wrapping at the end.
    fn write_wrapped(&self, offset: u32, buf: &[u8]) -> Result<(), RingError> {
        let first = (self.len - offset) as usize;
        if buf.len() <= first {
            self.mem.write_data(offset as usize, buf)?;
        } else {
            let (a, b) = buf.split_at(first);
            self.mem.write_data(offset as usize, a)?;
            self.mem.write_data(0, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
