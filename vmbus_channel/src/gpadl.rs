//! GPADLs: guest buffers described as lists of page ranges, validated before use, and the
//! per-channel map that hands out reference-counted views of them.
//!
//! A GPADL request's buffer is a sequence of ranges; each range is one u64 word holding
//! `byte_count` (low half) and `byte_offset` (high half), followed by one page number per page
//! the range touches. Everything in it comes from the guest: [`Gpadl::new`] checks counts,
//! lengths, page-number overflow and that every page is guest memory before anyone uses it.

use crate::bus::GpadlRequest;
use crate::memory::GuestMemory;
use crate::memory::PAGE_SHIFT;
use crate::memory::PAGE_SIZE;
use crate::memory::PAGE_SIZE64;
use crate::protocol::GpaRangeHeader;
use crate::protocol::GpadlId;
use futures::channel::oneshot;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

/// Why a GPADL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpadlError {
    /// The request names no ranges.
    #[error("GPADL has no ranges")]
    NoRanges,
    /// The buffer ends before the ranges it announces.
    #[error("GPADL buffer ends inside range {0}")]
    Truncated(usize),
    /// The buffer has words after the last announced range.
    #[error("GPADL buffer has {0} words after its last range")]
    TrailingWords(usize),
    /// A range has zero length.
    #[error("GPADL range {0} is empty")]
    EmptyRange(usize),
    /// A range starts beyond its first page.
    #[error("GPADL range {0} starts at byte offset {1}, beyond its first page")]
    BadOffset(usize, u32),
    /// A page number cannot be a guest address (it overflows when shifted to a byte address).
    #[error("page number {0:#x} overflows")]
    PfnOverflow(u64),
    /// A page lies outside guest memory.
    #[error("page {0:#x} is outside guest memory")]
    OutsideMemory(u64),
    /// The id is already in use.
    #[error("GPADL {0} already exists")]
    Duplicate(GpadlId),
    /// No GPADL with this id.
    #[error("GPADL {0} does not exist")]
    Unknown(GpadlId),
    /// The GPADL cannot hold a ring pair at the requested offset.
    #[error("GPADL cannot hold a ring pair: {0}")]
    BadRing(&'static str),
}

/// One validated range of a GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaRange {
    /// Offset of the first byte within the first page.
    pub byte_offset: u32,
    /// Length in bytes.
    pub byte_count: u32,
    /// The pages the range touches, in order.
    pub pfns: Vec<u64>,
}

/// A validated GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpadl {
    id: GpadlId,
    ranges: Vec<GpaRange>,
}

impl Gpadl {
    /// Parses and checks a request against `mem`.
    pub fn new(request: &GpadlRequest, mem: &GuestMemory) -> Result<Self, GpadlError> {
        let gpadl = Self::parse(request)?;
        for range in &gpadl.ranges {
            for &pfn in &range.pfns {
                if !mem.check_range(pfn << PAGE_SHIFT, PAGE_SIZE) {
                    return Err(GpadlError::OutsideMemory(pfn));
                }
            }
        }
        Ok(gpadl)
    }

    /// Parses a request and checks its structure (not yet against guest memory).
    pub fn parse(request: &GpadlRequest) -> Result<Self, GpadlError> {
        if request.count == 0 {
            return Err(GpadlError::NoRanges);
        }
        let mut words = request.buf.as_slice();
        let mut ranges = Vec::with_capacity(usize::from(request.count));
        for index in 0..usize::from(request.count) {
            let (&header, rest) = words.split_first().ok_or(GpadlError::Truncated(index))?;
            let header = GpaRangeHeader::from_word(header);
            let (byte_offset, byte_count) = (header.byte_offset.get(), header.byte_count.get());
            if byte_count == 0 {
                return Err(GpadlError::EmptyRange(index));
            }
            if u64::from(byte_offset) >= PAGE_SIZE64 {
                return Err(GpadlError::BadOffset(index, byte_offset));
            }
            // Both values are below 2^32, so neither the sum nor the page count overflows.
            let pages = (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE64);
            let pages = usize::try_from(pages).map_err(|_| GpadlError::Truncated(index))?;
            let pfns = rest.get(..pages).ok_or(GpadlError::Truncated(index))?;
            if let Some(&bad) = pfns.iter().find(|&&pfn| pfn >> (64 - PAGE_SHIFT) != 0) {
                return Err(GpadlError::PfnOverflow(bad));
            }
            ranges.push(GpaRange {
                byte_offset,
                byte_count,
                pfns: pfns.to_vec(),
            });
            words = rest.get(pages..).unwrap_or_default();
        }
        if !words.is_empty() {
            return Err(GpadlError::TrailingWords(words.len()));
        }
        Ok(Self {
            id: request.id,
            ranges,
        })
    }

    /// The GPADL id.
    pub fn id(&self) -> GpadlId {
        self.id
    }

    /// The ranges.
    pub fn ranges(&self) -> &[GpaRange] {
        &self.ranges
    }

    /// The request this GPADL was built from (for saved state).
    pub fn to_request(&self) -> GpadlRequest {
        build_request(
            self.id,
            self.ranges
                .iter()
                .map(|r| (r.byte_offset, r.byte_count, r.pfns.as_slice())),
        )
    }

    /// Splits a ring GPADL into the pages of its two rings: `(incoming, outgoing)` from the
    /// host's view, where the host-to-guest (outgoing) ring starts `ring_offset` pages in.
    ///
    /// A ring GPADL is one page-aligned range; each ring needs a control page and at least
    /// one data page.
    pub fn ring_pages(&self, ring_offset: u32) -> Result<(&[u64], &[u64]), GpadlError> {
        let [range] = self.ranges.as_slice() else {
            return Err(GpadlError::BadRing("not a single range"));
        };
        if range.byte_offset != 0 || !(range.byte_count as usize).is_multiple_of(PAGE_SIZE) {
            return Err(GpadlError::BadRing("range is not page aligned"));
        }
        let split = usize::try_from(ring_offset).unwrap_or(usize::MAX);
        if split < 2 || range.pfns.len().saturating_sub(split) < 2 {
            return Err(GpadlError::BadRing(
                "ring offset leaves a ring under two pages",
            ));
        }
        Ok(range.pfns.split_at(split))
    }
}

/// Builds a GPADL request from `(byte_offset, byte_count, pfns)` ranges (the guest side).
pub fn build_request<'a>(
    id: GpadlId,
    ranges: impl IntoIterator<Item = (u32, u32, &'a [u64])>,
) -> GpadlRequest {
    let mut buf = Vec::new();
    let mut count = 0u16;
    for (byte_offset, byte_count, pfns) in ranges {
        buf.push(
            GpaRangeHeader {
                byte_count: byte_count.into(),
                byte_offset: byte_offset.into(),
            }
            .to_word(),
        );
        buf.extend_from_slice(pfns);
        count = count.wrapping_add(1);
    }
    GpadlRequest { id, count, buf }
}

/// A GPADL held by the map; when the last holder lets go, a pending teardown completes.
#[derive(Debug)]
struct Entry {
    gpadl: Gpadl,
    on_release: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let sender = self
            .on_release
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

/// A reference to a GPADL that keeps it valid (delays its teardown) until dropped.
#[derive(Debug, Clone)]
pub struct GpadlView(Arc<Entry>);

impl std::ops::Deref for GpadlView {
    type Target = Gpadl;
    fn deref(&self) -> &Gpadl {
        &self.0.gpadl
    }
}

/// Completes when a torn-down GPADL is no longer used by any view.
#[derive(Debug)]
pub struct GpadlTeardown(oneshot::Receiver<()>);

impl GpadlTeardown {
    /// True once every view has been released.
    pub fn is_complete(&mut self) -> bool {
        !matches!(self.0.try_recv(), Ok(None))
    }

    /// Waits until every view has been released.
    pub async fn wait(self) {
        // A dropped sender also means the entry is gone.
        let _ = self.0.await;
    }
}

/// The GPADLs of one channel.
#[derive(Debug, Default, Clone)]
pub struct GpadlMap {
    inner: Arc<Mutex<HashMap<GpadlId, Arc<Entry>>>>,
}

impl GpadlMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GpadlId, Arc<Entry>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a validated GPADL.
    pub fn add(&self, gpadl: Gpadl) -> Result<(), GpadlError> {
        let mut map = self.lock();
        let id = gpadl.id();
        if map.contains_key(&id) {
            return Err(GpadlError::Duplicate(id));
        }
        map.insert(
            id,
            Arc::new(Entry {
                gpadl,
                on_release: Mutex::new(None),
            }),
        );
        Ok(())
    }

    /// A view of GPADL `id`.
    pub fn view(&self, id: GpadlId) -> Result<GpadlView, GpadlError> {
        self.lock()
            .get(&id)
            .map(|e| GpadlView(e.clone()))
            .ok_or(GpadlError::Unknown(id))
    }

    /// Removes GPADL `id`: no new views; the result completes when existing views are gone.
    pub fn teardown(&self, id: GpadlId) -> Result<GpadlTeardown, GpadlError> {
        let entry = self.lock().remove(&id).ok_or(GpadlError::Unknown(id))?;
        let (send, recv) = oneshot::channel();
        *entry
            .on_release
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(send);
        drop(entry);
        Ok(GpadlTeardown(recv))
    }

    /// The ids currently in the map, sorted.
    pub fn ids(&self) -> Vec<GpadlId> {
        let mut ids: Vec<_> = self.lock().keys().copied().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mem() -> GuestMemory {
        GuestMemory::new(64 * PAGE_SIZE).unwrap()
    }

    fn request(ranges: &[(u32, u32, &[u64])]) -> GpadlRequest {
        build_request(GpadlId(1), ranges.iter().copied())
    }

    mod parse {
        use super::*;

        #[test]
        fn multi_range_gpadl_parses_and_round_trips() {
            let req = request(&[(0, 8192, &[3, 4]), (100, 5000, &[9, 7])]);
            let g = Gpadl::new(&req, &mem()).unwrap();
            assert_eq!(g.ranges().len(), 2);
            assert_eq!(g.ranges()[1].pfns, vec![9, 7]);
            assert_eq!(g.to_request(), req);
        }

        #[test]
        fn zero_count_is_rejected() {
            let req = GpadlRequest {
                id: GpadlId(1),
                count: 0,
                buf: vec![],
            };
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::NoRanges));
        }

        #[test]
        fn count_larger_than_buffer_is_rejected() {
            let mut req = request(&[(0, 4096, &[1])]);
            req.count = 2;
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::Truncated(1)));
        }

        #[test]
        fn words_left_over_are_rejected() {
            let mut req = request(&[(0, 4096, &[1])]);
            req.buf.push(2);
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::TrailingWords(1)));
        }

        #[test]
        fn byte_count_needing_more_pages_than_given_is_rejected() {
            let req = request(&[(4095, 2, &[1])]);
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::Truncated(0)));
            let req = request(&[(0, u32::MAX, &[1, 2])]);
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::Truncated(0)));
        }

        #[test]
        fn empty_range_and_bad_offset_are_rejected() {
            assert_eq!(
                Gpadl::parse(&request(&[(0, 0, &[])])),
                Err(GpadlError::EmptyRange(0))
            );
            assert_eq!(
                Gpadl::parse(&request(&[(4096, 1, &[1])])),
                Err(GpadlError::BadOffset(0, 4096))
            );
        }

        #[test]
        fn page_numbers_at_2_pow_52_overflow() {
            let req = request(&[(0, 4096, &[1 << 52])]);
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::PfnOverflow(1 << 52)));
            let req = request(&[(0, 4096, &[u64::MAX])]);
            assert_eq!(Gpadl::parse(&req), Err(GpadlError::PfnOverflow(u64::MAX)));
            // The largest representable page number parses but is not guest memory.
            let req = request(&[(0, 4096, &[(1 << 52) - 1])]);
            assert_eq!(
                Gpadl::new(&req, &mem()),
                Err(GpadlError::OutsideMemory((1 << 52) - 1))
            );
        }

        #[test]
        fn pages_outside_guest_memory_are_rejected() {
            let req = request(&[(0, 8192, &[63, 64])]);
            assert_eq!(Gpadl::new(&req, &mem()), Err(GpadlError::OutsideMemory(64)));
        }

        #[test]
        fn ring_pages_split_at_offset() {
            let req = request(&[(0, 5 * 4096, &[1, 2, 3, 4, 5])]);
            let g = Gpadl::new(&req, &mem()).unwrap();
            let (incoming, outgoing) = g.ring_pages(2).unwrap();
            assert_eq!((incoming, outgoing), (&[1, 2][..], &[3, 4, 5][..]));
            assert!(g.ring_pages(1).is_err());
            assert!(g.ring_pages(4).is_err());
            assert!(g.ring_pages(u32::MAX).is_err());
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Arbitrary buffers either parse into ranges that rebuild the same request, or
            /// fail with an error; nothing panics.
            #[test]
            fn arbitrary_buffers_never_panic(count in any::<u16>(), buf in prop::collection::vec(any::<u64>(), 0..32)) {
                let req = GpadlRequest { id: GpadlId(3), count, buf };
                if let Ok(g) = Gpadl::new(&req, &mem()) {
                    prop_assert_eq!(g.to_request(), req);
                }
            }
        }
    }

    mod map {
        use super::*;

        fn gpadl(id: u32) -> Gpadl {
            Gpadl::new(
                &build_request(GpadlId(id), [(0, 4096, &[1u64][..])]),
                &mem(),
            )
            .unwrap()
        }

        #[test]
        fn duplicate_id_is_rejected_and_keeps_the_first() {
            let map = GpadlMap::new();
            map.add(gpadl(1)).unwrap();
            assert_eq!(map.add(gpadl(1)), Err(GpadlError::Duplicate(GpadlId(1))));
            assert_eq!(map.ids(), vec![GpadlId(1)]);
        }

        #[test]
        fn teardown_waits_for_views_to_be_released() {
            let map = GpadlMap::new();
            map.add(gpadl(1)).unwrap();
            let view = map.view(GpadlId(1)).unwrap();
            let mut teardown = map.teardown(GpadlId(1)).unwrap();
            assert!(map.view(GpadlId(1)).is_err(), "no new views after teardown");
            assert!(!teardown.is_complete());
            assert_eq!(view.ranges()[0].pfns, vec![1], "view stays valid");
            drop(view);
            assert!(teardown.is_complete());
        }

        #[test]
        fn teardown_without_views_completes_at_once() {
            let map = GpadlMap::new();
            map.add(gpadl(2)).unwrap();
            futures::executor::block_on(map.teardown(GpadlId(2)).unwrap().wait());
            assert!(map.teardown(GpadlId(2)).is_err());
        }
    }
}
