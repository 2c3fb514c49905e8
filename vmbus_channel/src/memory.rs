//! A cloneable guest-memory handle over `vm-memory`'s [`GuestMemoryMmap`].
//!
//! This stands in for OpenVMM's `guestmem::GuestMemory`. Every access is bounds checked by
//! `vm-memory`; a failed access is an error, never a panic. Bulk reads and writes go through
//! `read_slice`/`write_slice`, which copy each host-contiguous piece with one `memcpy`.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use vm_memory::Address;
use vm_memory::Bytes;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryBackend;
use vm_memory::GuestMemoryMmap;
use vm_memory::GuestMemoryRegion;
use vm_memory::MemoryRegionAddress;
use vm_memory::VolatileMemory;
use vm_memory::VolatileSlice;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;
/// Size of a guest page as a u64.
pub const PAGE_SIZE64: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A guest memory access failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The range is not (entirely) backed by guest memory.
    #[error("guest memory access at {gpa:#x} (+{len:#x}) failed")]
    Access {
        /// Start of the access.
        gpa: u64,
        /// Length of the access.
        len: usize,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Creating the guest memory mapping failed.
    #[error("failed to create guest memory")]
    Create(#[source] vm_memory::mmap::FromRangesError),
}

/// Cloneable handle to a guest physical address space.
#[derive(Clone, Debug, Default)]
pub struct GuestMemory {
    inner: Arc<GuestMemoryMmap>,
}

impl GuestMemory {
    /// Anonymous guest memory of `size` bytes at guest physical address 0.
    pub fn new(size: usize) -> Result<Self, MemoryError> {
        Self::from_ranges(&[(0, size)])
    }

    /// Anonymous guest memory made of `(gpa, size)` regions.
    pub fn from_ranges(ranges: &[(u64, usize)]) -> Result<Self, MemoryError> {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(gpa, len)| (GuestAddress(gpa), len))
            .collect();
        let mmap = GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Create)?;
        Ok(Self::from_mmap(mmap))
    }

    /// Wraps an existing `vm-memory` mapping.
    pub fn from_mmap(mmap: GuestMemoryMmap) -> Self {
        Self {
            inner: Arc::new(mmap),
        }
    }

    /// The underlying `vm-memory` mapping.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.inner
    }

    /// True if every byte of `[gpa, gpa + len)` is guest memory.
    pub fn check_range(&self, gpa: u64, len: usize) -> bool {
        GuestMemoryBackend::check_range(&*self.inner, GuestAddress(gpa), len)
    }

    /// The host mapping of `[gpa, gpa + len)` if it lies within one region.
    ///
    /// This is the fast path: one region lookup, then plain copies. Accesses that cross
    /// regions or fail take vm-memory's general path, which reports the error.
    fn slice(&self, gpa: u64, len: usize) -> Option<VolatileSlice<'_>> {
        let region = self.inner.find_region(GuestAddress(gpa))?;
        let offset = gpa.checked_sub(region.start_addr().raw_value())?;
        region.get_slice(MemoryRegionAddress(offset), len).ok()
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if let Some(slice) = self.slice(gpa, buf.len()) {
            slice.copy_to(buf);
            return Ok(());
        }
        self.inner
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|source| MemoryError::Access {
                gpa,
                len: buf.len(),
                source,
            })
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write_at(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        if let Some(slice) = self.slice(gpa, buf.len()) {
            slice.copy_from(buf);
            return Ok(());
        }
        self.inner
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|source| MemoryError::Access {
                gpa,
                len: buf.len(),
                source,
            })
    }

    /// Fills `len` bytes at `gpa` with `value`.
    pub fn fill_at(&self, gpa: u64, value: u8, len: usize) -> Result<(), MemoryError> {
        self.write_at(gpa, &vec![value; len])
    }

    /// Reads one plain value (a single copy of its bytes).
    pub fn read_plain<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T, MemoryError> {
        let mut value = T::new_zeroed();
        self.read_at(gpa, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes one plain value.
    pub fn write_plain<T: IntoBytes + Immutable>(
        &self,
        gpa: u64,
        value: &T,
    ) -> Result<(), MemoryError> {
        self.write_at(gpa, value.as_bytes())
    }

    /// The aligned u32 at `gpa` as an atomic, if mapped.
    fn with_atomic_u32<R>(&self, gpa: u64, f: impl FnOnce(&AtomicU32) -> R) -> Option<R> {
        let slice = self.slice(gpa, 4)?;
        slice.get_atomic_ref::<AtomicU32>(0).ok().map(f)
    }

    /// Atomically loads an aligned u32 (sequentially consistent).
    pub fn load_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        if let Some(value) = self.with_atomic_u32(gpa, |a| a.load(Ordering::SeqCst)) {
            return Ok(value);
        }
        self.inner
            .load(GuestAddress(gpa), Ordering::SeqCst)
            .map_err(|source| MemoryError::Access {
                gpa,
                len: 4,
                source,
            })
    }

    /// Atomically stores an aligned u32 (sequentially consistent).
    pub fn store_u32(&self, gpa: u64, value: u32) -> Result<(), MemoryError> {
        if self
            .with_atomic_u32(gpa, |a| a.store(value, Ordering::SeqCst))
            .is_some()
        {
            return Ok(());
        }
        self.inner
            .store(value, GuestAddress(gpa), Ordering::SeqCst)
            .map_err(|source| MemoryError::Access {
                gpa,
                len: 4,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_across_regions() {
        let mem = GuestMemory::from_ranges(&[(0, 0x1000), (0x1000, 0x1000)]).unwrap();
        let data: Vec<u8> = (0..64).collect();
        mem.write_at(0x1000 - 32, &data).unwrap();
        let mut back = [0; 64];
        mem.read_at(0x1000 - 32, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn access_outside_memory_is_an_error() {
        let mem = GuestMemory::new(0x2000).unwrap();
        assert!(mem.read_at(0x1ff8, &mut [0; 16]).is_err());
        assert!(mem.write_at(u64::MAX - 4, &[0; 8]).is_err());
        assert!(mem.load_u32(0x2000).is_err());
        assert!(!mem.check_range(0x1000, 0x1001));
        assert!(mem.check_range(0x1000, 0x1000));
    }

    #[test]
    fn atomic_u32_round_trips() {
        let mem = GuestMemory::new(0x1000).unwrap();
        mem.store_u32(8, 0xdead_beef).unwrap();
        assert_eq!(mem.load_u32(8).unwrap(), 0xdead_beef);
        assert_eq!(mem.read_plain::<u32>(8).unwrap(), 0xdead_beef);
    }
}
