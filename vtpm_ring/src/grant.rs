//! The grant table: how a domain lets exactly one other domain touch exactly one of its pages.
//!
//! The granting domain names the grantee, the frame and the access (read-only or read-write)
//! and gets a [`GrantRef`]. The grantee maps by (granter, ref) and receives a [`MappedPage`]
//! that enforces the granted access on every byte. Revoking is refused while the page is
//! mapped, as in Xen: the granter must wait for the grantee to unmap first.

use crate::domain::DomainId;
use crate::page::Gfn;
use crate::page::PageError;
use crate::page::PageIo;
use crate::page::RawPage;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use thiserror::Error;

/// Most grants one domain may have outstanding; bounds what a hostile guest can pin.
pub const MAX_GRANTS_PER_DOMAIN: usize = 1024;

/// A grant reference: the granter's handle for one granted page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// What the grantee may do with a granted page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantAccess {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// Errors granting, mapping or revoking.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GrantError {
    /// The granter has no such grant reference.
    #[error("domain {granter} has no grant {gref:?}")]
    NoSuchGrant {
        /// The granter.
        granter: DomainId,
        /// The reference.
        gref: GrantRef,
    },
    /// The grant exists but was made to another domain.
    #[error("grant {gref:?} of domain {granter} is not for domain {mapper}")]
    NotGrantee {
        /// The granter.
        granter: DomainId,
        /// The reference.
        gref: GrantRef,
        /// Who tried to map it.
        mapper: DomainId,
    },
    /// Read-write mapping of a read-only grant.
    #[error("grant {0:?} is read-only")]
    ReadOnlyGrant(GrantRef),
    /// Revocation of a grant that is still mapped.
    #[error("grant {0:?} is still mapped")]
    InUse(GrantRef),
    /// The granter has too many grants outstanding.
    #[error("domain {0} has too many grants")]
    TableFull(DomainId),
    /// The frame is outside the granter's memory.
    #[error("frame {0:?} is outside the granting domain")]
    BadFrame(Gfn),
    /// The granting domain does not exist.
    #[error("no domain {0}")]
    NoSuchDomain(DomainId),
}

#[derive(Debug)]
struct GrantEntry {
    grantee: DomainId,
    gfn: Gfn,
    access: GrantAccess,
    maps: u32,
}

#[derive(Debug, Default)]
struct DomainGrants {
    entries: BTreeMap<u32, GrantEntry>,
    next: u32,
}

/// Every domain's grant entries (the host owns one).
#[derive(Debug, Default, Clone)]
pub(crate) struct GrantTable {
    tables: Arc<Mutex<BTreeMap<DomainId, DomainGrants>>>,
}

impl GrantTable {
    pub(crate) fn grant(
        &self,
        granter: DomainId,
        grantee: DomainId,
        gfn: Gfn,
        access: GrantAccess,
    ) -> Result<GrantRef, GrantError> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let table = tables.entry(granter).or_default();
        if table.entries.len() >= MAX_GRANTS_PER_DOMAIN {
            return Err(GrantError::TableFull(granter));
        }
        // Skip references still in use after wrap-around; the size bound guarantees a free one.
        let mut r = table.next;
        while table.entries.contains_key(&r) {
            r = r.wrapping_add(1);
        }
        table.next = r.wrapping_add(1);
        table.entries.insert(
            r,
            GrantEntry {
                grantee,
                gfn,
                access,
                maps: 0,
            },
        );
        tracing::trace!(%granter, %grantee, gref = r, ?access, "grant");
        Ok(GrantRef(r))
    }

    pub(crate) fn revoke(&self, granter: DomainId, gref: GrantRef) -> Result<(), GrantError> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let table = tables
            .get_mut(&granter)
            .ok_or(GrantError::NoSuchGrant { granter, gref })?;
        let entry = table
            .entries
            .get(&gref.0)
            .ok_or(GrantError::NoSuchGrant { granter, gref })?;
        if entry.maps > 0 {
            return Err(GrantError::InUse(gref));
        }
        table.entries.remove(&gref.0);
        Ok(())
    }

    pub(crate) fn map(
        &self,
        mapper: DomainId,
        granter: DomainId,
        gref: GrantRef,
        access: GrantAccess,
    ) -> Result<Gfn, GrantError> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = tables
            .get_mut(&granter)
            .and_then(|t| t.entries.get_mut(&gref.0))
            .ok_or(GrantError::NoSuchGrant { granter, gref })?;
        if entry.grantee != mapper {
            return Err(GrantError::NotGrantee {
                granter,
                gref,
                mapper,
            });
        }
        if access == GrantAccess::ReadWrite && entry.access == GrantAccess::ReadOnly {
            return Err(GrantError::ReadOnlyGrant(gref));
        }
        entry.maps = entry.maps.saturating_add(1);
        Ok(entry.gfn)
    }

    fn unmap(&self, granter: DomainId, gref: GrantRef) {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = tables
            .get_mut(&granter)
            .and_then(|t| t.entries.get_mut(&gref.0))
        {
            entry.maps = entry.maps.saturating_sub(1);
        }
    }
}

/// A page another domain granted to this one, mapped with a fixed access; unmapped on drop.
#[derive(Debug)]
pub struct MappedPage {
    raw: RawPage,
    access: GrantAccess,
    table: GrantTable,
    granter: DomainId,
    gref: GrantRef,
}

impl MappedPage {
    pub(crate) fn new(
        raw: RawPage,
        access: GrantAccess,
        table: GrantTable,
        granter: DomainId,
        gref: GrantRef,
    ) -> Self {
        Self {
            raw,
            access,
            table,
            granter,
            gref,
        }
    }

    /// The domain that granted the page.
    pub fn granter(&self) -> DomainId {
        self.granter
    }

    /// The grant reference it was mapped by.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// The access this mapping allows.
    pub fn access(&self) -> GrantAccess {
        self.access
    }

    fn writable(&self) -> Result<(), PageError> {
        match self.access {
            GrantAccess::ReadWrite => Ok(()),
            GrantAccess::ReadOnly => Err(PageError::ReadOnly),
        }
    }
}

impl PageIo for MappedPage {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PageError> {
        self.raw.read(offset, buf)
    }
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), PageError> {
        self.writable()?;
        self.raw.write(offset, buf)
    }
    fn load_u8(&self, offset: usize) -> Result<u8, PageError> {
        self.raw.load_u8(offset)
    }
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), PageError> {
        self.writable()?;
        self.raw.store_u8(offset, value)
    }
    fn compare_exchange_u8(&self, offset: usize, current: u8, new: u8) -> Result<bool, PageError> {
        self.writable()?;
        self.raw.compare_exchange_u8(offset, current, new)
    }
}

impl Drop for MappedPage {
    fn drop(&mut self) {
        self.table.unmap(self.granter, self.gref);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Host;

    fn two_domains() -> (
        crate::domain::Domain,
        crate::domain::Domain,
        crate::domain::Domain,
    ) {
        let host = Host::new();
        (
            host.create_domain(DomainId(1), 4).unwrap(),
            host.create_domain(DomainId(2), 4).unwrap(),
            host.create_domain(DomainId(3), 4).unwrap(),
        )
    }

    #[test]
    fn grantee_reads_and_writes_a_read_write_grant() {
        let (front, back, _) = two_domains();
        let page = front.alloc_page().unwrap();
        page.write(0, b"hello").unwrap();
        let gref = front
            .grant_access(back.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        let mapped = back
            .map_grant(front.id(), gref, GrantAccess::ReadWrite)
            .unwrap();
        let mut buf = [0; 5];
        mapped.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        mapped.write(10, b"back").unwrap();
        let mut seen = [0; 4];
        page.read(10, &mut seen).unwrap();
        assert_eq!(&seen, b"back");
    }

    #[test]
    fn read_only_grant_cannot_be_written_or_mapped_writable() {
        let (front, back, _) = two_domains();
        let page = front.alloc_page().unwrap();
        let gref = front
            .grant_access(back.id(), page.gfn(), GrantAccess::ReadOnly)
            .unwrap();
        assert_eq!(
            back.map_grant(front.id(), gref, GrantAccess::ReadWrite)
                .unwrap_err(),
            GrantError::ReadOnlyGrant(gref)
        );
        let mapped = back
            .map_grant(front.id(), gref, GrantAccess::ReadOnly)
            .unwrap();
        assert_eq!(mapped.write(0, b"x").unwrap_err(), PageError::ReadOnly);
        assert_eq!(mapped.store_u8(0, 1).unwrap_err(), PageError::ReadOnly);
    }

    #[test]
    fn only_the_named_grantee_can_map() {
        let (front, back, other) = two_domains();
        let page = front.alloc_page().unwrap();
        let gref = front
            .grant_access(back.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        assert!(matches!(
            other.map_grant(front.id(), gref, GrantAccess::ReadOnly),
            Err(GrantError::NotGrantee { .. })
        ));
    }

    #[test]
    fn ungranted_reference_cannot_be_mapped() {
        let (front, back, _) = two_domains();
        assert!(matches!(
            back.map_grant(front.id(), GrantRef(77), GrantAccess::ReadOnly),
            Err(GrantError::NoSuchGrant { .. })
        ));
        assert!(matches!(
            back.map_grant(DomainId(99), GrantRef(0), GrantAccess::ReadOnly),
            Err(GrantError::NoSuchDomain(_))
        ));
    }

    #[test]
    fn revoking_a_mapped_grant_is_refused_until_unmapped() {
        let (front, back, _) = two_domains();
        let page = front.alloc_page().unwrap();
        let gref = front
            .grant_access(back.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        let mapped = back
            .map_grant(front.id(), gref, GrantAccess::ReadWrite)
            .unwrap();
        assert_eq!(front.end_access(gref).unwrap_err(), GrantError::InUse(gref));
        drop(mapped);
        front.end_access(gref).unwrap();
        assert!(
            back.map_grant(front.id(), gref, GrantAccess::ReadOnly)
                .is_err()
        );
    }

    #[test]
    fn access_outside_the_page_is_refused() {
        let (front, back, _) = two_domains();
        let page = front.alloc_page().unwrap();
        let gref = front
            .grant_access(back.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        let mapped = back
            .map_grant(front.id(), gref, GrantAccess::ReadWrite)
            .unwrap();
        let mut buf = [0; 2];
        assert!(mapped.read(4095, &mut buf).is_err());
        assert!(mapped.read(usize::MAX, &mut buf).is_err());
        assert!(mapped.write(4095, &buf).is_err());
    }

    #[test]
    fn grant_table_is_bounded() {
        let (front, back, _) = two_domains();
        for _ in 0..MAX_GRANTS_PER_DOMAIN {
            front
                .grant_access(back.id(), Gfn(0), GrantAccess::ReadOnly)
                .unwrap();
        }
        assert_eq!(
            front
                .grant_access(back.id(), Gfn(0), GrantAccess::ReadOnly)
                .unwrap_err(),
            GrantError::TableFull(front.id())
        );
    }
}
