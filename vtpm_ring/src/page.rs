//! Pages: the unit of sharing between domains, and byte access to them.
//!
//! Everything that crosses a domain boundary is a 4 KiB page. [`PageIo`] is the access a party
//! has to one page: its own page ([`OwnPage`]) or a page another domain granted it
//! ([`MappedPage`](crate::grant::MappedPage)). [`PageSpan`] strings several pages into one linear
//! byte range, which is how a TPM packet larger than a page is laid out.

use std::sync::atomic::Ordering;
use thiserror::Error;
use vm_memory::Bytes;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryBackend;
use vm_memory::GuestMemoryMmap;
use vm_memory::VolatileMemory;

/// Size of a page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// A guest frame number: a page index inside one domain's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gfn(pub u64);

impl Gfn {
    /// The guest physical address of the first byte of this frame.
    pub fn address(self) -> u64 {
        self.0.saturating_mul(PAGE_SIZE as u64)
    }
}

/// Errors touching a page.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PageError {
    /// The access runs past the end of the page (or span).
    #[error("access of {len} bytes at offset {offset} leaves the page range of {limit} bytes")]
    OutOfRange {
        /// First byte accessed.
        offset: usize,
        /// Bytes accessed.
        len: usize,
        /// Bytes available.
        limit: usize,
    },
    /// A write to a page mapped read-only.
    #[error("page is mapped read-only")]
    ReadOnly,
    /// The backing memory refused the access.
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
}

/// Byte access to one page.
pub trait PageIo {
    /// Copies `buf.len()` bytes starting at `offset` out of the page.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PageError>;
    /// Copies `buf` into the page at `offset`.
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), PageError>;
    /// Reads one byte with acquire ordering (a state flag written by the peer).
    fn load_u8(&self, offset: usize) -> Result<u8, PageError>;
    /// Writes one byte with release ordering, publishing every earlier write to the peer.
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), PageError>;
    /// Atomically replaces the byte at `offset` with `new` if it holds `current`, and says
    /// whether it did. Where both sides write one byte, a plain store can overwrite the
    /// peer's newer value: the frontend's CANCEL over the backend's FINISH.
    fn compare_exchange_u8(&self, offset: usize, current: u8, new: u8) -> Result<bool, PageError>;
}

/// Checks that `len` bytes at `offset` fit in a page and returns the offset as a `u64`.
pub(crate) fn check_in_page(offset: usize, len: usize) -> Result<u64, PageError> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(offset as u64),
        _ => Err(PageError::OutOfRange {
            offset,
            len,
            limit: PAGE_SIZE,
        }),
    }
}

/// Raw access to a page of some domain's memory; the caller has already decided it may.
#[derive(Clone, Debug)]
pub(crate) struct RawPage {
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) gfn: Gfn,
}

impl RawPage {
    fn addr(&self, offset: usize, len: usize) -> Result<GuestAddress, PageError> {
        let offset = check_in_page(offset, len)?;
        Ok(GuestAddress(self.gfn.address().saturating_add(offset)))
    }

    // One region lookup and one copy: a page never spans regions (they are page-aligned),
    // so the general multi-region path of `Bytes::read_slice` is not needed, and it costs
    // several times more per access on the command path.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PageError> {
        let addr = self.addr(offset, buf.len())?;
        let copied = self
            .memory
            .get_slice(addr, buf.len())
            .map_err(|_| PageError::Memory(addr.0))?
            .copy_to(buf);
        if copied == buf.len() {
            Ok(())
        } else {
            Err(PageError::Memory(addr.0))
        }
    }

    pub(crate) fn write(&self, offset: usize, buf: &[u8]) -> Result<(), PageError> {
        let addr = self.addr(offset, buf.len())?;
        let slice = self
            .memory
            .get_slice(addr, buf.len())
            .map_err(|_| PageError::Memory(addr.0))?;
        if slice.len() != buf.len() {
            return Err(PageError::Memory(addr.0));
        }
        slice.copy_from(buf);
        Ok(())
    }

    // Through `get_slice` for the reason `read` is: `GuestMemory::load` and `store` take the
    // multi-region path, which cost a state byte's every look (several per command) about
    // twice as much.
    pub(crate) fn load_u8(&self, offset: usize) -> Result<u8, PageError> {
        let addr = self.addr(offset, 1)?;
        self.memory
            .get_slice(addr, 1)
            .and_then(|slice| Ok(slice.load::<u8>(0, Ordering::Acquire)?))
            .map_err(|_| PageError::Memory(addr.0))
    }

    pub(crate) fn store_u8(&self, offset: usize, value: u8) -> Result<(), PageError> {
        let addr = self.addr(offset, 1)?;
        self.memory
            .get_slice(addr, 1)
            .and_then(|slice| Ok(slice.store(value, 0, Ordering::Release)?))
            .map_err(|_| PageError::Memory(addr.0))
    }

    pub(crate) fn compare_exchange_u8(
        &self,
        offset: usize,
        current: u8,
        new: u8,
    ) -> Result<bool, PageError> {
        let addr = self.addr(offset, 1)?;
        let slice = self
            .memory
            .get_slice(addr, 1)
            .map_err(|_| PageError::Memory(addr.0))?;
        let byte = slice
            .get_atomic_ref::<std::sync::atomic::AtomicU8>(0)
            .map_err(|_| PageError::Memory(addr.0))?;
        Ok(byte
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok())
    }
}

/// A page of a domain's own memory, accessed by that domain (read-write).
#[derive(Clone, Debug)]
pub struct OwnPage {
    pub(crate) raw: RawPage,
}

impl OwnPage {
    /// The frame this page lives at.
    pub fn gfn(&self) -> Gfn {
        self.raw.gfn
    }
}

impl PageIo for OwnPage {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PageError> {
        self.raw.read(offset, buf)
    }
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), PageError> {
        self.raw.write(offset, buf)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, PageError> {
        self.raw.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), PageError> {
        self.raw.store_u8(offset, value)
    }
    fn compare_exchange_u8(&self, offset: usize, current: u8, new: u8) -> Result<bool, PageError> {
        self.raw.compare_exchange_u8(offset, current, new)
    }
}

/// Several pages seen as one linear byte range (page 0 first).
pub struct PageSpan<'a, P> {
    pages: &'a [P],
}

impl<'a, P: PageIo> PageSpan<'a, P> {
    /// A span over `pages`.
    pub fn new(pages: &'a [P]) -> Self {
        Self { pages }
    }

    /// Bytes the span holds.
    pub fn len(&self) -> usize {
        self.pages.len().saturating_mul(PAGE_SIZE)
    }

    /// Whether the span holds no page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), PageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(PageError::OutOfRange {
                offset,
                len,
                limit: self.len(),
            }),
        }
    }

    /// Visits the page pieces covering `len` bytes at `offset`: (page, offset in page, range in buffer).
    fn pieces(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Iterator<Item = (&'a P, usize, std::ops::Range<usize>)> + use<'a, P> {
        let pages = self.pages;
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = offset + done;
            let page = pages.get(at / PAGE_SIZE)?;
            let in_page = at % PAGE_SIZE;
            let take = (PAGE_SIZE - in_page).min(len - done);
            let range = done..done + take;
            done += take;
            Some((page, in_page, range))
        })
    }

    /// Copies bytes out of the span.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PageError> {
        self.check(offset, buf.len())?;
        for (page, in_page, range) in self.pieces(offset, buf.len()) {
            let chunk = buf.get_mut(range).ok_or(PageError::OutOfRange {
                offset,
                len: 0,
                limit: 0,
            })?;
            page.read(in_page, chunk)?;
        }
        Ok(())
    }

    /// Copies bytes into the span.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<(), PageError> {
        self.check(offset, buf.len())?;
        for (page, in_page, range) in self.pieces(offset, buf.len()) {
            let chunk = buf.get(range).ok_or(PageError::OutOfRange {
                offset,
                len: 0,
                limit: 0,
            })?;
            page.write(in_page, chunk)?;
        }
        Ok(())
    }
}
