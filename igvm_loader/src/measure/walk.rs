//! The one walk over a file's directives that every platform's measurement consumes.
//!
//! [`Walk`] yields, for one compatibility mask, the guest pages the directives add as runs of
//! consecutive 4 KiB pages ([`Run`]), the SNP VMSAs and the VBS registers, in file order. It
//! owns every check that does not depend on the platform: parameter areas declared once and
//! in whole pages, inserts of declared areas only, no range past 2^64, no 2 MiB page with
//! file data, and the page budget. A data-less run stays one [`Run`] however many pages it
//! covers, so a huge declared area costs nothing until a platform hashes it, and the budget
//! refuses it before that.

use crate::error::Error;
use crate::error::Result;
use igvm::IgvmDirectiveHeader;
use igvm_defs::IgvmPageDataType;
use igvm_defs::VbsVpContextRegister;
use std::collections::HashMap;

use super::PAGE_U64;

/// Pages in a 2 MiB page directive.
const LARGE_PAGE_PAGES: u64 = 512;

/// Why a run of pages exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A page data directive.
    Page {
        /// Its data type.
        data_type: IgvmPageDataType,
        /// Its unmeasured flag.
        unmeasured: bool,
    },
    /// A parameter area inserted at a GPA: host-written, never measured.
    Parameter,
    /// A VBS error range: host readable and writable, never measured.
    ErrorRange,
}

/// Consecutive 4 KiB guest pages added by one directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    /// GPA of the first page.
    pub gpa: u64,
    /// Number of pages, at least 1.
    pub pages: u64,
    /// What added them.
    pub source: Source,
    /// File data for the run (page `i` holds bytes `i * 4096..`); pages past it are zero.
    /// Empty for a data-less run.
    pub data: &'a [u8],
}

/// One item of the walk.
#[derive(Debug, Clone)]
pub(crate) enum Step<'a> {
    /// Guest pages.
    Pages(Run<'a>),
    /// An SNP VMSA page.
    SnpVmsa {
        /// GPA the file gives for it.
        gpa: u64,
        /// The VP it starts.
        vp_index: u16,
        /// The VMSA bytes (shorter than a page; zero-padded when hashed).
        vmsa: &'a [u8],
    },
    /// VBS VP registers, measured after all memory.
    VbsRegisters(Vec<VbsVpContextRegister>),
}

/// The walk over `directives` for the platform with compatibility mask `mask`.
pub(crate) struct Walk<'a> {
    directives: std::slice::Iter<'a, IgvmDirectiveHeader>,
    mask: u32,
    /// Parameter area sizes in pages, by index.
    areas: HashMap<u32, u64>,
    /// Pages still allowed.
    budget: u64,
    limit: u64,
}

impl<'a> Walk<'a> {
    /// Walks `directives` for `mask`, allowing at most `max_pages` pages in total.
    pub fn new(directives: &'a [IgvmDirectiveHeader], mask: u32, max_pages: u64) -> Self {
        Self {
            directives: directives.iter(),
            mask,
            areas: HashMap::new(),
            budget: max_pages,
            limit: max_pages,
        }
    }

    /// Every step, or the first error. The budget is checked as the walk goes, so a hostile
    /// file is refused before any page is hashed.
    pub fn collect_steps(self) -> Result<Vec<Step<'a>>> {
        self.collect()
    }

    fn take(&mut self, pages: u64) -> Result<()> {
        self.budget = self
            .budget
            .checked_sub(pages)
            .ok_or(Error::TooManyPages { limit: self.limit })?;
        Ok(())
    }

    fn step(&mut self, d: &'a IgvmDirectiveHeader) -> Result<Option<Step<'a>>> {
        if d.compatibility_mask()
            .is_some_and(|m| m & self.mask != self.mask)
        {
            return Ok(None);
        }
        Ok(Some(match d {
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                let index = *parameter_area_index;
                if self.areas.contains_key(&index) {
                    return Err(Error::DuplicateParameterArea(index));
                }
                let bytes = *number_of_bytes;
                if bytes == 0 || !bytes.is_multiple_of(PAGE_U64) {
                    return Err(Error::Malformed(format!(
                        "parameter area {index} has {bytes:#x} bytes, not whole pages"
                    )));
                }
                let pages = bytes / PAGE_U64;
                if pages > self.limit {
                    return Err(Error::TooManyPages { limit: self.limit });
                }
                self.areas.insert(index, pages);
                return Ok(None);
            }
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                if flags.shared() {
                    return Ok(None);
                }
                let pages = if flags.is_2mb_page() {
                    // The igvm crate reads 4 KiB of file data whatever the page size, so the
                    // rest of a 2 MiB page's data never reaches us: refuse rather than
                    // measure zeros in its place.
                    if !data.is_empty() {
                        return Err(Error::LargePageWithData { gpa: *gpa });
                    }
                    LARGE_PAGE_PAGES
                } else {
                    1
                };
                self.run(
                    "page data",
                    *gpa,
                    pages,
                    Source::Page {
                        data_type: *data_type,
                        unmeasured: flags.unmeasured(),
                    },
                    data,
                )?
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                let index = insert.parameter_area_index;
                let pages = *self
                    .areas
                    .get(&index)
                    .ok_or(Error::UndeclaredParameterArea(index))?;
                self.run(
                    "parameter insert",
                    insert.gpa,
                    pages,
                    Source::Parameter,
                    &[],
                )?
            }
            IgvmDirectiveHeader::ErrorRange {
                gpa, size_bytes, ..
            } => {
                let pages = u64::from(*size_bytes).div_ceil(PAGE_U64);
                if pages == 0 {
                    return Ok(None);
                }
                self.run("error range", *gpa, pages, Source::ErrorRange, &[])?
            }
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                vmsa,
                vp_index,
                ..
            } => {
                self.take(1)?;
                Step::SnpVmsa {
                    gpa: *gpa,
                    vp_index: *vp_index,
                    vmsa: zerocopy::IntoBytes::as_bytes(vmsa.as_ref()),
                }
            }
            IgvmDirectiveHeader::X64VbsVpContext { vtl, registers, .. } => Step::VbsRegisters(
                registers
                    .iter()
                    .map(|r| r.into_vbs_vp_context_reg(*vtl))
                    .collect(),
            ),
            IgvmDirectiveHeader::AArch64VbsVpContext { vtl, registers, .. } => Step::VbsRegisters(
                registers
                    .iter()
                    .map(|r| r.into_vbs_vp_context_reg(*vtl))
                    .collect(),
            ),
            _ => return Ok(None),
        }))
    }

    fn run(
        &mut self,
        what: &'static str,
        gpa: u64,
        pages: u64,
        source: Source,
        data: &'a [u8],
    ) -> Result<Step<'a>> {
        // The last byte of the run must be addressable: a run may end exactly at 2^64.
        let fits = pages
            .checked_mul(PAGE_U64)
            .and_then(|bytes| gpa.checked_add(bytes - 1))
            .is_some();
        if !fits {
            return Err(Error::AddressWrap { what, gpa, pages });
        }
        self.take(pages)?;
        Ok(Step::Pages(Run {
            gpa,
            pages,
            source,
            data,
        }))
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = Result<Step<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(d) = self.directives.next() {
            match self.step(d) {
                Ok(None) => {}
                Ok(Some(step)) => return Some(Ok(step)),
                Err(e) => {
                    // Nothing after an error is meaningful: end the walk.
                    self.directives = [].iter();
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use igvm_defs::IGVM_VHS_PARAMETER_INSERT;
    use igvm_defs::IgvmPageDataFlags;

    fn area(index: u32, bytes: u64) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: bytes,
            parameter_area_index: index,
            initial_data: vec![],
        }
    }

    fn insert(index: u32, gpa: u64) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa,
            compatibility_mask: 1,
            parameter_area_index: index,
        })
    }

    fn page(gpa: u64, large: bool, data: Vec<u8>) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: 1,
            flags: IgvmPageDataFlags::new().with_is_2mb_page(large),
            data_type: IgvmPageDataType::NORMAL,
            data,
        }
    }

    fn walk(d: &[IgvmDirectiveHeader], max: u64) -> Result<Vec<Step<'_>>> {
        Walk::new(d, 1, max).collect_steps()
    }

    #[test]
    fn a_huge_declared_area_stays_one_run() {
        let d = [area(0, 1 << 40), insert(0, 0)];
        let steps = walk(&d, u64::MAX).unwrap();
        assert_eq!(steps.len(), 1);
        assert!(matches!(&steps[0], Step::Pages(r) if r.pages == 1 << 28));
    }

    #[test]
    fn areas_over_the_budget_are_refused_when_declared() {
        let d = [area(0, 1 << 40)];
        assert!(matches!(
            walk(&d, 1 << 20),
            Err(Error::TooManyPages { limit }) if limit == 1 << 20
        ));
    }

    #[test]
    fn the_budget_counts_every_run() {
        let d = [area(0, 0x4000), insert(0, 0), insert(0, 0x10000)];
        assert!(walk(&d, 8).is_ok());
        assert!(matches!(walk(&d, 7), Err(Error::TooManyPages { .. })));
    }

    #[test]
    fn a_duplicate_area_is_refused() {
        let d = [area(3, 0x1000), area(3, 0x1000)];
        assert!(matches!(
            walk(&d, 100),
            Err(Error::DuplicateParameterArea(3))
        ));
    }

    #[test]
    fn an_insert_of_an_undeclared_area_is_refused() {
        let d = [insert(9, 0)];
        assert!(matches!(
            walk(&d, 100),
            Err(Error::UndeclaredParameterArea(9))
        ));
    }

    #[test]
    fn an_insert_wrapping_past_2_pow_64_is_refused() {
        let d = [area(0, 0x2000), insert(0, u64::MAX - 0xfff)];
        assert!(matches!(
            walk(&d, 100),
            Err(Error::AddressWrap {
                what: "parameter insert",
                ..
            })
        ));
        // Ending exactly at 2^64 is fine.
        let d = [area(0, 0x2000), insert(0, 0u64.wrapping_sub(0x2000))];
        assert!(walk(&d, 100).is_ok());
    }

    #[test]
    fn a_2mib_page_with_data_is_refused_and_without_data_is_512_pages() {
        let d = [page(0x20_0000, true, vec![1; 16])];
        assert!(matches!(
            walk(&d, 1000),
            Err(Error::LargePageWithData { gpa: 0x20_0000 })
        ));
        let d = [page(0x20_0000, true, vec![])];
        let steps = walk(&d, 1000).unwrap();
        assert!(matches!(&steps[0], Step::Pages(r) if r.pages == 512));
    }

    #[test]
    fn the_walk_ends_at_the_first_error() {
        let d = [insert(0, 0), page(0, false, vec![])];
        let mut w = Walk::new(&d, 1, 100);
        assert!(matches!(w.next(), Some(Err(_))));
        assert!(w.next().is_none());
    }

    #[test]
    fn directives_of_other_platforms_are_skipped() {
        let d = [IgvmDirectiveHeader::PageData {
            gpa: 0,
            compatibility_mask: 2,
            flags: IgvmPageDataFlags::new(),
            data_type: IgvmPageDataType::NORMAL,
            data: vec![],
        }];
        assert!(walk(&d, 100).unwrap().is_empty());
    }
}
