//! Access to one ring's memory: the control page words and the data area.
//!
//! [`RingMem`] is deliberately small so tests can substitute a wrapper (for example one that
//! changes bytes after the host read them). [`PagedRingMem`] is the real implementation over
//! guest pages; it coalesces physically adjacent pages so each access is one bulk copy per
//! contiguous piece.

use super::layout::CONTROL_PAGE_SIZE;
use super::layout::ControlWord;
use crate::memory::GuestMemory;
use crate::memory::MemoryError;
use crate::memory::PAGE_SHIFT;
use crate::memory::PAGE_SIZE;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use vm_memory::Address;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryBackend;
use vm_memory::GuestMemoryRegion;
use vm_memory::MmapRegion;
use vm_memory::VolatileMemory;

/// A ring memory access failed.
#[derive(Debug, thiserror::Error)]
pub enum RingMemError {
    /// The underlying guest memory access failed.
    #[error("ring memory access failed")]
    Memory(#[from] MemoryError),
    /// The access does not fit in the data area (a bug in the caller, reported not panicked).
    #[error("ring data access {offset:#x}+{len:#x} is outside the {size:#x}-byte data area")]
    OutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the data area.
        size: usize,
    },
    /// The host mapping refused the access.
    #[error("host mapping access failed")]
    Mapping(#[from] vm_memory::VolatileMemoryError),
    /// The ring's pages are not usable as a ring.
    #[error("invalid ring pages: {0}")]
    InvalidPages(&'static str),
}

/// Memory of one ring direction.
pub trait RingMem: Send + Sync {
    /// Length of the data area in bytes (a multiple of 8).
    fn data_len(&self) -> usize;
    /// Atomically loads a control word.
    fn load_control(&self, word: ControlWord) -> Result<u32, RingMemError>;
    /// Atomically stores a control word.
    fn store_control(&self, word: ControlWord, value: u32) -> Result<(), RingMemError>;
    /// Copies `buf.len()` bytes from the data area at `offset`; must not pass the end.
    fn read_data(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingMemError>;
    /// Copies `buf` into the data area at `offset`; must not pass the end.
    fn write_data(&self, offset: usize, buf: &[u8]) -> Result<(), RingMemError>;
}

impl<T: RingMem + ?Sized> RingMem for Arc<T> {
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
    fn load_control(&self, word: ControlWord) -> Result<u32, RingMemError> {
        (**self).load_control(word)
    }
    fn store_control(&self, word: ControlWord, value: u32) -> Result<(), RingMemError> {
        (**self).store_control(word, value)
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingMemError> {
        (**self).read_data(offset, buf)
    }
    fn write_data(&self, offset: usize, buf: &[u8]) -> Result<(), RingMemError> {
        (**self).write_data(offset, buf)
    }
}

/// A piece of the data area that is contiguous in the host mapping.
#[derive(Debug, Clone)]
struct Run {
    /// Offset of the run within the data area.
    start: usize,
    /// The host mapping holding the run, resolved once when the ring is built so that each
    /// access is a bounds check and a copy.
    mmap: Arc<MmapRegion>,
    /// Offset of the run's first byte within `mmap`.
    offset: usize,
}

/// A ring over guest pages: the first page is the control page, the rest the data area.
#[derive(Debug, Clone)]
pub struct PagedRingMem {
    mem: GuestMemory,
    control_gpa: u64,
    control: (Arc<MmapRegion>, usize),
    /// Runs sorted by `start`; the last run ends at `data_len`.
    runs: Arc<[Run]>,
    data_len: usize,
}

impl PagedRingMem {
    /// A ring over `pfns`: `pfns[0]` is the control page, the others the data pages in order.
    ///
    /// Every page must be inside `mem`; at least one data page is needed, and the data area
    /// must fit u32 indices.
    pub fn new(mem: GuestMemory, pfns: &[u64]) -> Result<Self, RingMemError> {
        let (&control_pfn, data) = pfns
            .split_first()
            .ok_or(RingMemError::InvalidPages("no control page"))?;
        if data.is_empty() {
            return Err(RingMemError::InvalidPages("no data pages"));
        }
        let data_len = data
            .len()
            .checked_mul(PAGE_SIZE)
            .filter(|&n| u32::try_from(n).is_ok())
            .ok_or(RingMemError::InvalidPages("data area too large"))?;
        let gpa_of = |pfn: u64| {
            pfn.checked_shl(PAGE_SHIFT)
                .filter(|gpa| gpa >> PAGE_SHIFT == pfn && mem.check_range(*gpa, PAGE_SIZE))
                .ok_or(RingMemError::InvalidPages("page outside guest memory"))
        };
        // The host mapping and offset of a page; pages never straddle regions because
        // regions are page aligned, and the whole page was checked above.
        let host_of = |gpa: u64| {
            let region = mem
                .mmap()
                .find_region(GuestAddress(gpa))
                .ok_or(RingMemError::InvalidPages("page outside guest memory"))?;
            let offset = usize::try_from(gpa - region.start_addr().raw_value())
                .map_err(|_| RingMemError::InvalidPages("page offset too large"))?;
            // Confirm the page is inside this one mapping before relying on it.
            let mmap = region.get_mmap();
            mmap.get_slice(offset, PAGE_SIZE)?;
            Ok::<_, RingMemError>((mmap, offset))
        };
        let control_gpa = gpa_of(control_pfn)?;
        let control = host_of(control_gpa)?;
        let mut runs: Vec<Run> = Vec::new();
        for (i, &pfn) in data.iter().enumerate() {
            let (mmap, offset) = host_of(gpa_of(pfn)?)?;
            let extends_last = runs.last().is_some_and(|r| {
                Arc::ptr_eq(&r.mmap, &mmap) && r.offset + (i * PAGE_SIZE - r.start) == offset
            });
            if !extends_last {
                runs.push(Run {
                    start: i * PAGE_SIZE,
                    mmap,
                    offset,
                });
            }
        }
        Ok(Self {
            mem,
            control_gpa,
            control,
            runs: runs.into(),
            data_len,
        })
    }

    /// Number of physically contiguous pieces of the data area.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Zeroes the control page and advertises pending-send-size support; done once by the
    /// side that creates the ring, before either end uses it.
    pub fn initialize(&self) -> Result<(), RingMemError> {
        self.mem.fill_at(self.control_gpa, 0, CONTROL_PAGE_SIZE)?;
        self.store_control(
            ControlWord::FeatureBits,
            super::layout::FEATURE_PENDING_SEND_SIZE,
        )
    }

    /// Checks that `[offset, offset + len)` lies in the data area.
    fn check_access(&self, offset: usize, len: usize) -> Result<(), RingMemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.data_len => Ok(()),
            _ => Err(RingMemError::OutOfRange {
                offset,
                len,
                size: self.data_len,
            }),
        }
    }

    /// Calls `f(run, offset_in_mapping, range)` for each contiguous piece of
    /// `[offset, offset + len)`.
    fn for_each_piece(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&MmapRegion, usize, std::ops::Range<usize>) -> Result<(), RingMemError>,
    ) -> Result<(), RingMemError> {
        let out_of_range = || RingMemError::OutOfRange {
            offset,
            len,
            size: self.data_len,
        };
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.data_len)
            .ok_or_else(out_of_range)?;
        let mut i = self.runs.partition_point(|r| r.start <= offset);
        let mut pos = offset;
        while pos < end {
            let run = i
                .checked_sub(1)
                .and_then(|j| self.runs.get(j))
                .ok_or_else(out_of_range)?;
            let run_end = self.runs.get(i).map_or(self.data_len, |r| r.start);
            let piece_end = run_end.min(end);
            f(
                &run.mmap,
                run.offset + (pos - run.start),
                (pos - offset)..(piece_end - offset),
            )?;
            pos = piece_end;
            i += 1;
        }
        Ok(())
    }

    fn control_word(&self, word: ControlWord) -> Result<&AtomicU32, RingMemError> {
        let (mmap, offset) = &self.control;
        Ok(mmap.get_atomic_ref::<AtomicU32>(offset + word.offset())?)
    }
}

impl RingMem for PagedRingMem {
    fn data_len(&self) -> usize {
        self.data_len
    }

    fn load_control(&self, word: ControlWord) -> Result<u32, RingMemError> {
        Ok(self.control_word(word)?.load(Ordering::SeqCst))
    }

    fn store_control(&self, word: ControlWord, value: u32) -> Result<(), RingMemError> {
        self.control_word(word)?.store(value, Ordering::SeqCst);
        Ok(())
    }

    fn read_data(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingMemError> {
        if let [run] = &*self.runs {
            self.check_access(offset, buf.len())?;
            run.mmap
                .get_slice(run.offset + offset, buf.len())?
                .copy_to(buf);
            return Ok(());
        }
        self.for_each_piece(offset, buf.len(), |mmap, at, range| {
            let piece = buf.get_mut(range).ok_or(RingMemError::OutOfRange {
                offset,
                len: 0,
                size: 0,
            })?;
            mmap.get_slice(at, piece.len())?.copy_to(piece);
            Ok(())
        })
    }

    fn write_data(&self, offset: usize, buf: &[u8]) -> Result<(), RingMemError> {
        if let [run] = &*self.runs {
            self.check_access(offset, buf.len())?;
            run.mmap
                .get_slice(run.offset + offset, buf.len())?
                .copy_from(buf);
            return Ok(());
        }
        self.for_each_piece(offset, buf.len(), |mmap, at, range| {
            let piece = buf.get(range).ok_or(RingMemError::OutOfRange {
                offset,
                len: 0,
                size: 0,
            })?;
            mmap.get_slice(at, piece.len())?.copy_from(piece);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_pages_coalesce_into_one_run() {
        let mem = GuestMemory::new(16 * PAGE_SIZE).unwrap();
        let ring = PagedRingMem::new(mem.clone(), &[0, 1, 2, 3]).unwrap();
        assert_eq!(ring.run_count(), 1);
        let ring = PagedRingMem::new(mem, &[0, 5, 3, 4, 9]).unwrap();
        assert_eq!(ring.run_count(), 3);
        assert_eq!(ring.data_len(), 4 * PAGE_SIZE);
    }

    #[test]
    fn data_access_crosses_scattered_pages() {
        let mem = GuestMemory::new(16 * PAGE_SIZE).unwrap();
        let ring = PagedRingMem::new(mem.clone(), &[0, 7, 3]).unwrap();
        let data: Vec<u8> = (0..32).collect();
        ring.write_data(PAGE_SIZE - 16, &data).unwrap();
        let mut lo = [0; 16];
        mem.read_at(7 * PAGE_SIZE as u64 + PAGE_SIZE as u64 - 16, &mut lo)
            .unwrap();
        let mut hi = [0; 16];
        mem.read_at(3 * PAGE_SIZE as u64, &mut hi).unwrap();
        assert_eq!(&lo[..], &data[..16]);
        assert_eq!(&hi[..], &data[16..]);
        let mut back = [0; 32];
        ring.read_data(PAGE_SIZE - 16, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn access_past_data_area_is_an_error() {
        let mem = GuestMemory::new(4 * PAGE_SIZE).unwrap();
        let ring = PagedRingMem::new(mem, &[0, 1]).unwrap();
        assert!(ring.read_data(PAGE_SIZE - 4, &mut [0; 8]).is_err());
        assert!(ring.write_data(usize::MAX, &[0; 1]).is_err());
    }

    #[test]
    fn bad_pages_are_rejected() {
        let mem = GuestMemory::new(4 * PAGE_SIZE).unwrap();
        assert!(PagedRingMem::new(mem.clone(), &[]).is_err());
        assert!(PagedRingMem::new(mem.clone(), &[0]).is_err());
        assert!(PagedRingMem::new(mem.clone(), &[0, 4]).is_err());
        assert!(PagedRingMem::new(mem.clone(), &[0, 1 << 52]).is_err());
        assert!(PagedRingMem::new(mem, &[u64::MAX, 1]).is_err());
    }
}
