//! Page ranges an image has claimed: overlap checks and the imported-regions list.

use crate::error::Error;
use crate::error::Result;
use crate::importer::ImportedRegionDescriptor;
use crate::importer::PAGE_SIZE_USIZE;
use std::collections::BTreeMap;
use zerocopy::IntoBytes;

/// One claimed range `[start, end)` of pages.
#[derive(Debug, Clone)]
struct Claim {
    end: u64,
    tag: String,
    /// Whether the loader accepts these pages (reported in the imported-regions list).
    accepted: bool,
}

/// Non-overlapping page ranges, keyed by first page.
#[derive(Debug, Clone, Default)]
pub(crate) struct Regions {
    claims: BTreeMap<u64, Claim>,
}

impl Regions {
    /// The end page of `count` pages at `base`, or an overflow error.
    pub(crate) fn end_of(what: &str, base: u64, count: u64) -> Result<u64> {
        if count == 0 {
            return Err(Error::Empty(what.to_string()));
        }
        base.checked_add(count)
            .filter(|end| end.checked_mul(crate::importer::PAGE_SIZE).is_some())
            .ok_or_else(|| Error::RangeOverflow {
                what: what.to_string(),
                page_base: base,
                page_count: count,
            })
    }

    /// Fails if `[start, end)` overlaps a claimed range.
    pub(crate) fn check_free(&self, tag: &str, start: u64, end: u64) -> Result<()> {
        // The only candidates: the last claim starting before `end`.
        if let Some((&other_start, claim)) = self.claims.range(..end).next_back()
            && claim.end > start
        {
            return Err(Error::Overlap {
                tag: tag.to_string(),
                start,
                end,
                other: claim.tag.clone(),
                other_start,
                other_end: claim.end,
            });
        }
        Ok(())
    }

    /// Claims `[start, end)` after checking it is free.
    pub(crate) fn claim(&mut self, tag: &str, start: u64, end: u64, accepted: bool) -> Result<()> {
        self.check_free(tag, start, end)?;
        self.claims.insert(
            start,
            Claim {
                end,
                tag: tag.to_string(),
                accepted,
            },
        );
        Ok(())
    }

    /// Whether every page of `[start, end)` is claimed (by one or several adjacent claims).
    pub(crate) fn covered(&self, start: u64, end: u64) -> bool {
        let mut next = start;
        if let Some((_, c)) = self.claims.range(..start).next_back() {
            next = next.max(c.end);
        }
        for (&s, c) in self.claims.range(start..end) {
            if s > next {
                return false;
            }
            next = next.max(c.end);
        }
        next >= end
    }

    /// The sorted, merged list of accepted ranges, terminated by a zero-count entry, encoded
    /// as one page.
    pub(crate) fn imported_regions_page(&self) -> Result<Vec<u8>> {
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (&start, claim) in self.claims.iter().filter(|(_, c)| c.accepted) {
            match merged.last_mut() {
                Some((_, end)) if *end == start => *end = claim.end,
                _ => merged.push((start, claim.end)),
            }
        }
        let count = merged.len() + 1;
        let capacity = PAGE_SIZE_USIZE / size_of::<ImportedRegionDescriptor>();
        if count > capacity {
            return Err(Error::ImportedRegionsTooMany { count });
        }
        let mut page = Vec::with_capacity(PAGE_SIZE_USIZE);
        for (start, end) in merged {
            let desc = ImportedRegionDescriptor {
                base_page_number: start.into(),
                page_count: (end - start).into(),
                accepted: 1,
                padding: [0; 7],
            };
            page.extend_from_slice(desc.as_bytes());
        }
        page.resize(PAGE_SIZE_USIZE, 0);
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn adjacent_claims_do_not_overlap_but_crossing_ones_do() {
        let mut r = Regions::default();
        r.claim("a", 10, 20, true).unwrap();
        r.claim("b", 20, 30, true).unwrap();
        r.claim("c", 0, 10, true).unwrap();
        assert!(matches!(
            r.claim("d", 19, 21, true),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            r.claim("e", 5, 6, true),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            r.claim("f", 0, 100, true),
            Err(Error::Overlap { .. })
        ));
        assert!(r.covered(12, 20));
        assert!(r.covered(5, 25));
        assert!(!r.covered(12, 31));
        r.claim("g", 40, 50, true).unwrap();
        assert!(!r.covered(25, 45));
    }

    #[test]
    fn imported_regions_are_sorted_merged_and_terminated() {
        let mut r = Regions::default();
        r.claim("hi", 100, 110, true).unwrap();
        r.claim("lo", 1, 3, true).unwrap();
        r.claim("lo2", 3, 4, true).unwrap();
        r.claim("shared", 50, 60, false).unwrap();
        let page = r.imported_regions_page().unwrap();
        let (descs, _) =
            <[ImportedRegionDescriptor]>::ref_from_prefix_with_elems(&page, 3).unwrap();
        let got: Vec<(u64, u64, u8)> = descs
            .iter()
            .map(|d| (d.base_page_number.get(), d.page_count.get(), d.accepted))
            .collect();
        assert_eq!(got, vec![(1, 3, 1), (100, 10, 1), (0, 0, 0)]);
    }

    #[test]
    fn a_list_that_overflows_its_page_is_an_error() {
        let mut r = Regions::default();
        // 169 ranges and the terminator fill the page exactly (170 x 24 bytes).
        for i in 0..169 {
            r.claim("gap", i * 2, i * 2 + 1, true).unwrap();
        }
        assert_eq!(r.imported_regions_page().unwrap().len(), 4096);
        r.claim("one more", 1000, 1001, true).unwrap();
        assert!(matches!(
            r.imported_regions_page(),
            Err(Error::ImportedRegionsTooMany { count: 171 })
        ));
    }

    #[test]
    fn zero_and_overflowing_ranges_are_rejected() {
        assert!(matches!(Regions::end_of("x", 5, 0), Err(Error::Empty(_))));
        assert!(matches!(
            Regions::end_of("x", u64::MAX, 2),
            Err(Error::RangeOverflow { .. })
        ));
        assert!(matches!(
            Regions::end_of("x", u64::MAX / 4096, 1),
            Err(Error::RangeOverflow { .. })
        ));
    }
}
