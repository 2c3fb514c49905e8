//! The tree itself: nodes by path, each owner's node count kept with them, path helpers, and
//! the error a domain gets for a node it may not know about.

use super::Perms;
use super::StoreError;
use super::StoreHandle;
use super::watch::Watches;
use crate::domain::DomainId;
use std::collections::BTreeMap;

/// One node: its value and who may do what with it.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) value: String,
    pub(super) perms: Perms,
}

/// The tree, its owners' node counts and the watches: what the store's lock guards.
pub(super) struct StoreState {
    /// Nodes by resolved path. Added, removed and given owners only through `insert`,
    /// `remove` and `set_perms`, which keep `owned` in step; values are written in place.
    pub(super) nodes: BTreeMap<String, Node>,
    /// How many nodes each domain owns, kept with `nodes` (counting them on every create
    /// would cost a scan of the whole store under its lock).
    owned: BTreeMap<DomainId, usize>,
    pub(super) watches: Watches,
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
        };
        Self {
            nodes: BTreeMap::from([("/".to_string(), root)]),
            owned: BTreeMap::from([(DomainId::DOM0, 1)]),
            watches: Watches::default(),
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

    pub(super) fn owned_by(&self, domain: DomainId) -> usize {
        self.owned.get(&domain).copied().unwrap_or(0)
    }

    pub(super) fn count(&mut self, owner: DomainId, delta: isize) {
        let n = self.owned.entry(owner).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.owned.remove(&owner);
        }
    }

    pub(super) fn insert(&mut self, path: String, node: Node) {
        self.count(node.perms.owner, 1);
        if let Some(old) = self.nodes.insert(path, node) {
            self.count(old.perms.owner, -1);
        }
    }

    pub(super) fn remove(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.count(old.perms.owner, -1);
        }
    }

    pub(super) fn set_perms(&mut self, path: &str, perms: Perms) {
        let new_owner = perms.owner;
        let Some(node) = self.nodes.get_mut(path) else {
            return;
        };
        let old_owner = std::mem::replace(&mut node.perms, perms).owner;
        if old_owner != new_owner {
            self.count(old_owner, -1);
            self.count(new_owner, 1);
        }
    }
}
