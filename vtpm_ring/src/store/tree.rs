//! The tree itself: nodes by path, each domain's charged node count kept with them, path
//! helpers, and the error a domain gets for a node it may not know about.

use super::Perms;
use super::StoreError;
use super::StoreHandle;
use super::StoreQuota;
use super::watch::Watches;
use crate::domain::DomainId;
use std::collections::BTreeMap;

/// One node: its value, who may do what with it, and whether it counts against its owner's
/// node quota.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) value: String,
    pub(super) perms: Perms,
    /// Whether a domain created it (it then counts against its owner's quota). A node the
    /// toolstack creates counts against no quota: it is the toolstack's configuration,
    /// bounded by what the toolstack configures, which the owner neither asked for nor can
    /// prevent, and charged to the owner it would eat the room the owner's own writes need
    /// (a backend's directory holds the toolstack's keys for every device it serves).
    pub(super) charged: bool,
}

/// The tree, the domains' charged node counts and the watches: what the store's lock guards.
pub(super) struct StoreState {
    /// Nodes by resolved path. Added, removed and given owners only through `insert`,
    /// `remove` and `set_perms`, which keep `charged` in step; values are written in place.
    pub(super) nodes: BTreeMap<String, Node>,
    /// How many charged nodes (see [`Node::charged`]) each domain owns, kept with `nodes`
    /// (counting them on every create would cost a scan of the whole store under its lock).
    charged: BTreeMap<DomainId, usize>,
    pub(super) watches: Watches,
    /// The quotas the toolstack set; a domain not here has the default.
    quotas: BTreeMap<DomainId, StoreQuota>,
}

/// Whether `path` is `base` or below it.
pub(super) fn is_at_or_below(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// The parent of a resolved path; `None` for the root.
pub(super) fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

/// Whether `c` is a valid path component (xenstored's character set).
pub(super) fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@' | b'.' | b':'))
}

impl StoreState {
    /// The root alone, owned by dom0, and no watches.
    pub(super) fn new() -> Self {
        let root = Node {
            value: String::new(),
            perms: Perms::private(DomainId::DOM0),
            charged: false,
        };
        Self {
            nodes: BTreeMap::from([("/".to_string(), root)]),
            charged: BTreeMap::new(),
            watches: Watches::default(),
            quotas: BTreeMap::new(),
        }
    }

    pub(super) fn nearest_existing(&self, path: &str) -> Option<&Node> {
        let mut p = Some(path);
        while let Some(cur) = p {
            if let Some(n) = self.nodes.get(cur) {
                return Some(n);
            }
            p = parent_of(cur);
        }
        None
    }

    /// The error for `who`, who tried to `op` the missing node `path`: that it is missing only
    /// if `who` may read its nearest existing ancestor. Otherwise it is denied, as an existing
    /// node it may not read would be, so that no domain learns which names exist in another's
    /// private directory (xenstored answers EACCES there too).
    pub(super) fn missing(&self, who: &StoreHandle, op: &'static str, path: &str) -> StoreError {
        match self.nearest_existing(path) {
            Some(n) if n.perms.of(who.domain).can_read() => StoreError::NotFound(path.to_string()),
            _ => who.denied(op, path),
        }
    }

    /// `domain`'s quota.
    pub(super) fn quota_of(&self, domain: DomainId) -> StoreQuota {
        self.quotas.get(&domain).copied().unwrap_or_default()
    }

    pub(super) fn set_quota(&mut self, domain: DomainId, quota: StoreQuota) {
        self.quotas.insert(domain, quota);
    }

    /// How many nodes count against `domain`'s quota.
    pub(super) fn charged_to(&self, domain: DomainId) -> usize {
        self.charged.get(&domain).copied().unwrap_or(0)
    }

    /// Adds `delta` to `owner`'s charged count, if the node it is for is `charged`.
    fn count(&mut self, owner: DomainId, charged: bool, delta: isize) {
        if !charged {
            return;
        }
        let n = self.charged.entry(owner).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.charged.remove(&owner);
        }
    }

    pub(super) fn insert(&mut self, path: String, node: Node) {
        self.count(node.perms.owner, node.charged, 1);
        if let Some(old) = self.nodes.insert(path, node) {
            self.count(old.perms.owner, old.charged, -1);
        }
    }

    pub(super) fn remove(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.count(old.perms.owner, old.charged, -1);
        }
    }

    /// Replaces a node's permissions; a charged node's charge follows its owner (as
    /// xenstored's does), so only dom0, the one that may change owners, moves charges.
    pub(super) fn set_perms(&mut self, path: &str, perms: Perms) {
        let Some(node) = self.nodes.get_mut(path) else {
            return;
        };
        let (new_owner, charged) = (perms.owner, node.charged);
        let old_owner = std::mem::replace(&mut node.perms, perms).owner;
        if old_owner != new_owner {
            self.count(old_owner, charged, -1);
            self.count(new_owner, charged, 1);
        }
    }
}
