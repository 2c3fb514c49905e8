//! Domains: separate guest address spaces on one host, and the host that owns them.
//!
//! A [`Host`] plays the hypervisor: it owns every domain's memory, the grant table, the event
//! channels and the store. A [`Domain`] handle is the capability to act *as* that domain: it
//! can touch its own memory, grant its pages, map pages granted to it, bind event channels and
//! talk to the store with its own permissions. Nothing else reaches another domain's memory.
//!
//! Privilege is held by types: a `Domain` never yields its `Host`, and dom0 (the toolstack)
//! is not a `Domain` at all. Its powers (writing anywhere in the store, creating devices) come
//! only from a [`Toolstack`], which only [`Host::toolstack`] makes.

use crate::event::EventChannel;
use crate::event::EventError;
use crate::event::EventTable;
use crate::event::Port;
use crate::grant::GrantAccess;
use crate::grant::GrantError;
use crate::grant::GrantRef;
use crate::grant::GrantTable;
use crate::grant::MappedPage;
use crate::page::Gfn;
use crate::page::OwnPage;
use crate::page::PAGE_SIZE;
use crate::page::RawPage;
use crate::store::Store;
use crate::store::StoreHandle;
use crate::store::StoreQuota;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use thiserror::Error;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryMmap;

/// A domain identifier. Domain 0 is the privileged toolstack domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u16);

impl DomainId {
    /// The privileged toolstack domain.
    pub const DOM0: DomainId = DomainId(0);
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Errors creating or using domains.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// A domain with this id already exists.
    #[error("domain {0} already exists")]
    Exists(DomainId),
    /// No domain with this id.
    #[error("no domain {0}")]
    NoSuchDomain(DomainId),
    /// The domain's memory could not be created.
    #[error("cannot create {pages} pages of memory for domain {domain}")]
    Memory {
        /// The domain.
        domain: DomainId,
        /// Pages asked for.
        pages: usize,
    },
    /// The id is reserved (dom0 acts only through a [`Toolstack`]).
    #[error("domain id {0} is reserved")]
    Reserved(DomainId),
    /// All pages of the domain are allocated.
    #[error("domain {0} has no free page")]
    OutOfPages(DomainId),
    /// The frame is not inside the domain's memory.
    #[error("frame {gfn:?} is outside domain {domain}")]
    BadFrame {
        /// The domain.
        domain: DomainId,
        /// The frame.
        gfn: Gfn,
    },
}

pub(crate) struct DomainInner {
    id: DomainId,
    memory: GuestMemoryMmap,
    pages: usize,
    /// Which frames are handed out by the page allocator.
    used: Mutex<Vec<bool>>,
    /// Grants given up on while still mapped, with their pages: neither is reused until the
    /// grantee unmaps (see [`Domain::release_grant`]).
    deferred: Mutex<Vec<(GrantRef, OwnPage)>>,
}

struct HostInner {
    domains: Mutex<BTreeMap<DomainId, Arc<DomainInner>>>,
    grants: GrantTable,
    events: EventTable,
    store: Store,
}

/// The hypervisor: domains, grant table, event channels and store.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host with no domains but the store's root (owned by dom0).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HostInner {
                domains: Mutex::new(BTreeMap::new()),
                grants: GrantTable::default(),
                events: EventTable::default(),
                store: Store::new(),
            }),
        }
    }

    /// Creates domain `id` with `pages` pages of memory at guest physical address 0, and its
    /// store home `/local/domain/<id>` owned by it.
    pub fn create_domain(&self, id: DomainId, pages: usize) -> Result<Domain, DomainError> {
        if id == DomainId::DOM0 {
            return Err(DomainError::Reserved(id));
        }
        let mut domains = self
            .inner
            .domains
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if domains.contains_key(&id) {
            return Err(DomainError::Exists(id));
        }
        let bytes = pages
            .checked_mul(PAGE_SIZE)
            .ok_or(DomainError::Memory { domain: id, pages })?;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)])
            .map_err(|_| DomainError::Memory { domain: id, pages })?;
        let inner = Arc::new(DomainInner {
            id,
            memory,
            pages,
            used: Mutex::new(vec![false; pages]),
            deferred: Mutex::default(),
        });
        domains.insert(id, inner.clone());
        drop(domains);
        self.inner.store.create_home(id);
        tracing::debug!(domain = %id, pages, "domain created");
        Ok(Domain {
            inner,
            host: self.clone(),
        })
    }

    /// The toolstack's powers (dom0 in the store).
    pub fn toolstack(&self) -> Toolstack {
        Toolstack {
            store: self.inner.store.connect(DomainId::DOM0),
            quotas: self.inner.store.clone(),
        }
    }

    fn domain(&self, id: DomainId) -> Result<Arc<DomainInner>, DomainError> {
        self.inner
            .domains
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or(DomainError::NoSuchDomain(id))
    }
}

/// The toolstack's capability: dom0's access to the store, for creating and removing devices
/// (see [`crate::xenbus::create_device`]), and the domains' store quotas. Only the host side
/// gets one, from [`Host::toolstack`].
#[derive(Clone)]
pub struct Toolstack {
    store: StoreHandle,
    quotas: Store,
}

impl fmt::Debug for Toolstack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Toolstack").finish_non_exhaustive()
    }
}

impl Toolstack {
    /// The store as dom0.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// Sets the store quota of `domain`, running or not (it keeps it if created later), as
    /// `xenstore-control quota-set` does: a domain serving others (a backend) needs more
    /// than a guest's default. Only the toolstack can: a guest that set its own would have
    /// no quota. Dom0 has none to set ([`DomainError::Reserved`]).
    pub fn set_store_quota(&self, domain: DomainId, quota: StoreQuota) -> Result<(), DomainError> {
        if domain == DomainId::DOM0 {
            return Err(DomainError::Reserved(domain));
        }
        tracing::debug!(%domain, nodes = quota.nodes, watches = quota.watches, "store quota set");
        self.quotas.set_quota(domain, quota);
        Ok(())
    }

    /// The store quota of `domain` (the default unless set; dom0's is never applied).
    pub fn store_quota(&self, domain: DomainId) -> StoreQuota {
        self.quotas.quota(domain)
    }
}

/// The capability to act as one domain.
///
/// It reaches only what that domain may: its memory, its grants, its event channels and the
/// store with its own permissions. It cannot reach the [`Host`] that made it:
///
/// ```compile_fail
/// use vtpm_ring::domain::{DomainId, Host};
/// let host = Host::new();
/// let guest = host.create_domain(DomainId(2), 1).unwrap();
/// let _escaped: &Host = guest.host();
/// ```
#[derive(Clone)]
pub struct Domain {
    inner: Arc<DomainInner>,
    host: Host,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.inner.id)
            .field("pages", &self.inner.pages)
            .finish()
    }
}

impl Domain {
    /// This domain's id.
    pub fn id(&self) -> DomainId {
        self.inner.id
    }

    /// This domain's own memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.inner.memory
    }

    /// Number of pages of memory.
    pub fn pages(&self) -> usize {
        self.inner.pages
    }

    /// Allocates a free page of this domain's memory and zeroes it.
    pub fn alloc_page(&self) -> Result<OwnPage, DomainError> {
        self.retry_deferred();
        let mut used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = used
            .iter()
            .position(|u| !*u)
            .ok_or(DomainError::OutOfPages(self.id()))?;
        if let Some(slot) = used.get_mut(index) {
            *slot = true;
        }
        drop(used);
        let page = self.own_page(Gfn(index as u64))?;
        // A recycled page must not leak old contents to whoever it is granted to next.
        let _ = page.raw.write(0, &[0; PAGE_SIZE]);
        Ok(page)
    }

    /// Returns a page to the allocator.
    pub fn free_page(&self, page: OwnPage) {
        let mut used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = usize::try_from(page.gfn().0)
            .ok()
            .and_then(|i| used.get_mut(i))
        {
            *slot = false;
        }
    }

    /// Access to one of this domain's own frames.
    pub fn own_page(&self, gfn: Gfn) -> Result<OwnPage, DomainError> {
        if usize::try_from(gfn.0).map_or(true, |g| g >= self.inner.pages) {
            return Err(DomainError::BadFrame {
                domain: self.id(),
                gfn,
            });
        }
        Ok(OwnPage {
            raw: RawPage {
                memory: self.inner.memory.clone(),
                gfn,
            },
        })
    }

    /// Grants `grantee` access to this domain's frame `gfn`.
    pub fn grant_access(
        &self,
        grantee: DomainId,
        gfn: Gfn,
        access: GrantAccess,
    ) -> Result<GrantRef, GrantError> {
        if usize::try_from(gfn.0).map_or(true, |g| g >= self.inner.pages) {
            return Err(GrantError::BadFrame(gfn));
        }
        // Set-aside grants count against the table: give back those now free.
        self.retry_deferred();
        self.host
            .inner
            .grants
            .grant(self.id(), grantee, gfn, access)
    }

    /// Revokes a grant; refused while the grantee still has it mapped.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), GrantError> {
        self.host.inner.grants.revoke(self.id(), gref)
    }

    /// Revokes `gref` and frees `page`, the frame it grants. While the grantee still maps
    /// it (a backend that has not let go yet), both are set aside instead, and a later
    /// allocation or grant of this domain releases them once it has unmapped: the page is
    /// never reused while another domain can see it, and never lost either (Linux's
    /// `gnttab_end_foreign_access` defers a busy grant the same way). Other failures are
    /// returned, and the page is kept out of reuse.
    pub fn release_grant(&self, gref: GrantRef, page: OwnPage) -> Result<(), GrantError> {
        match self.end_access(gref) {
            Ok(()) => {
                self.free_page(page);
                Ok(())
            }
            Err(GrantError::InUse(_)) => {
                tracing::debug!(domain = %self.id(), gref = gref.0, "grant still mapped; released later");
                self.deferred().push((gref, page));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Vec<(GrantRef, OwnPage)>> {
        self.inner
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases the set-aside grants whose grantee has unmapped them.
    fn retry_deferred(&self) {
        let ready: Vec<OwnPage> = {
            let mut deferred = self.deferred();
            if deferred.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            deferred.retain(|(gref, page)| match self.end_access(*gref) {
                Err(GrantError::InUse(_)) => true,
                Ok(()) => {
                    ready.push(page.clone());
                    false
                }
                // Gone some other way: nobody can map it any more, but the page is not
                // known to be free of other uses either; keep it out.
                Err(e) => {
                    tracing::warn!(error = %e, "set-aside grant vanished; page kept out");
                    false
                }
            });
            ready
        };
        for page in ready {
            self.free_page(page);
        }
    }

    /// Maps page `gref` that `granter` granted to this domain, with `access`.
    pub fn map_grant(
        &self,
        granter: DomainId,
        gref: GrantRef,
        access: GrantAccess,
    ) -> Result<MappedPage, GrantError> {
        let owner = self
            .host
            .domain(granter)
            .map_err(|_| GrantError::NoSuchDomain(granter))?;
        let gfn = self
            .host
            .inner
            .grants
            .map(self.id(), granter, gref, access)?;
        Ok(MappedPage::new(
            RawPage {
                memory: owner.memory.clone(),
                gfn,
            },
            access,
            self.host.inner.grants.clone(),
            granter,
            gref,
        ))
    }

    /// Allocates an unbound event channel port that `remote` may bind to.
    pub fn alloc_unbound(&self, remote: DomainId) -> Result<EventChannel, EventError> {
        self.host.inner.events.alloc_unbound(self.id(), remote)
    }

    /// Binds to port `remote_port` that `remote` allocated for this domain.
    pub fn bind_interdomain(
        &self,
        remote: DomainId,
        remote_port: Port,
    ) -> Result<EventChannel, EventError> {
        self.host
            .inner
            .events
            .bind_interdomain(self.id(), remote, remote_port)
    }

    /// The store, with this domain's permissions.
    pub fn store(&self) -> StoreHandle {
        self.host.inner.store.connect(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::PageIo;

    #[test]
    fn domains_have_separate_memory() {
        let host = Host::new();
        let a = host.create_domain(DomainId(1), 4).unwrap();
        let b = host.create_domain(DomainId(2), 4).unwrap();
        a.own_page(Gfn(0)).unwrap().write(0, b"alpha").unwrap();
        let mut buf = [0u8; 5];
        b.own_page(Gfn(0)).unwrap().read(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 5]);
        a.own_page(Gfn(0)).unwrap().read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"alpha");
    }

    #[test]
    fn a_grant_released_while_mapped_frees_its_page_only_after_the_unmap() {
        let host = Host::new();
        let guest = host.create_domain(DomainId(2), 1).unwrap();
        let backend = host.create_domain(DomainId(1), 1).unwrap();
        let page = guest.alloc_page().unwrap();
        let gref = guest
            .grant_access(backend.id(), page.gfn(), GrantAccess::ReadWrite)
            .unwrap();
        let mapped = backend
            .map_grant(guest.id(), gref, GrantAccess::ReadWrite)
            .unwrap();
        guest.release_grant(gref, page).unwrap();
        // Still visible to the backend: not reused.
        assert!(matches!(
            guest.alloc_page(),
            Err(DomainError::OutOfPages(_))
        ));
        drop(mapped);
        // Unmapped: the next allocation gets it back, and the grant is gone.
        let again = guest.alloc_page().unwrap();
        assert!(
            backend
                .map_grant(guest.id(), gref, GrantAccess::ReadOnly)
                .is_err()
        );
        // A grant nobody maps is released at once.
        let gref = guest
            .grant_access(backend.id(), again.gfn(), GrantAccess::ReadOnly)
            .unwrap();
        guest.release_grant(gref, again).unwrap();
        guest.alloc_page().unwrap();
    }

    #[test]
    fn dom0_is_never_a_domain_handle() {
        let host = Host::new();
        assert_eq!(
            host.create_domain(DomainId::DOM0, 1).unwrap_err(),
            DomainError::Reserved(DomainId::DOM0)
        );
    }

    #[test]
    fn a_guest_store_handle_acts_only_as_the_guest() {
        let host = Host::new();
        let guest = host.create_domain(DomainId(2), 1).unwrap();
        let store = guest.store();
        assert_eq!(store.domain(), DomainId(2));
        assert!(store.write("/tool/x", "1").is_err());
        assert!(store.write("/local/domain/3/x", "1").is_err());
        host.toolstack().store().write("/tool/x", "1").unwrap();
        assert!(store.read("/tool/x").is_err());
    }

    #[test]
    fn duplicate_domain_is_refused() {
        let host = Host::new();
        host.create_domain(DomainId(3), 1).unwrap();
        assert_eq!(
            host.create_domain(DomainId(3), 1).unwrap_err(),
            DomainError::Exists(DomainId(3))
        );
    }

    #[test]
    fn page_allocator_runs_out_and_recycles_zeroed() {
        let host = Host::new();
        let d = host.create_domain(DomainId(1), 2).unwrap();
        let p0 = d.alloc_page().unwrap();
        let _p1 = d.alloc_page().unwrap();
        assert_eq!(
            d.alloc_page().unwrap_err(),
            DomainError::OutOfPages(DomainId(1))
        );
        p0.write(100, &[7; 8]).unwrap();
        let gfn = p0.gfn();
        d.free_page(p0);
        let again = d.alloc_page().unwrap();
        assert_eq!(again.gfn(), gfn);
        let mut buf = [1u8; 8];
        again.read(100, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn frame_outside_memory_is_refused() {
        let host = Host::new();
        let d = host.create_domain(DomainId(1), 2).unwrap();
        assert!(d.own_page(Gfn(2)).is_err());
        assert!(d.own_page(Gfn(u64::MAX)).is_err());
    }
}
