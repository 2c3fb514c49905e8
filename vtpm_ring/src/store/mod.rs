//! A xenstore-like store: hierarchical keys, per-domain permissions and watches.
//!
//! Every node has an owner, a default permission for other domains and an access list. The
//! owner and dom0 may do anything (but only dom0 may change a node's owner); others get what
//! the access list (or the default) says. A node a domain creates counts against its owner's
//! node quota (the creator's, until dom0 gives the node away); one the toolstack creates counts
//! against no quota, since it is the toolstack's configuration, bounded by what the toolstack
//! configures, not anything the owner did. Each domain but dom0 has its own quota of nodes
//! and watches ([`StoreQuota`]): a guest's default, unless the toolstack sets another (a
//! backend serving many guests needs more).
//! Creating a node needs write permission on the nearest existing ancestor; the new node copies
//! its parent's permissions with the creator as owner. So a guest, which owns only
//! `/local/domain/<id>`, writes only there unless someone granted it more.
//!
//! Watches deliver the path of every node changed at or below the watched path (plus one
//! initial event on registration, as Xen does), only to domains allowed to read the node.
//! Each watch queues a bounded number of events (see [`Watch`]).
//! Transactions are not implemented.

mod perms;
mod tree;
mod watch;

pub use perms::Perm;
pub use perms::Perms;
use tree::Node;
use tree::StoreState;
use tree::is_at_or_below;
use tree::parent_of;
use tree::valid_component;
use watch::Wakes;
pub use watch::Watch;

use crate::domain::DomainId;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use thiserror::Error;

/// Longest path accepted.
pub const MAX_PATH_LEN: usize = 1024;
/// Largest value accepted.
pub const MAX_VALUE_LEN: usize = 4096;
/// Most nodes one domain may own unless the toolstack sets it another quota (a hostile guest
/// cannot exhaust the store).
pub const MAX_NODES_PER_DOMAIN: usize = 1000;
/// Most watches one domain may hold unless the toolstack sets it another quota.
pub const MAX_WATCHES_PER_DOMAIN: usize = 128;
/// Most access list entries on one node (xenstored's default quota): every node created below
/// copies the list, and every watch event consults it.
pub const MAX_PERMS_PER_NODE: usize = 5;
/// Most characters of a bad value [`StoreError::BadValue`] quotes. Each may escape to at most
/// 10 bytes (`\u{10ffff}`), so the quote stays far below [`MAX_VALUE_LEN`] however long or
/// strange the value.
pub const MAX_EXCERPT_CHARS: usize = 32;
/// Most events one watch queues before further events collapse into one (XSA-349: a guest
/// writing nodes must not grow the memory of whoever watches them).
pub const MAX_WATCH_EVENTS: usize = 64;

/// How much of the store one domain may use. Every domain but dom0 has one: the default
/// ([`MAX_NODES_PER_DOMAIN`], [`MAX_WATCHES_PER_DOMAIN`]) suits a guest; a service domain
/// (a backend serving many guests) needs more, which only the toolstack can give it
/// ([`crate::domain::Toolstack::set_store_quota`], as `xenstore-control quota-set` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreQuota {
    /// Most nodes the domain may own (of those that count, see the [module](self) docs).
    pub nodes: usize,
    /// Most watches the domain may hold at once.
    pub watches: usize,
}

impl Default for StoreQuota {
    fn default() -> Self {
        Self {
            nodes: MAX_NODES_PER_DOMAIN,
            watches: MAX_WATCHES_PER_DOMAIN,
        }
    }
}

/// Errors from store operations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The node does not exist.
    #[error("no such node {0}")]
    NotFound(String),
    /// The domain lacks permission.
    #[error("domain {domain} may not {op} {path}")]
    PermissionDenied {
        /// Who asked.
        domain: DomainId,
        /// What it tried.
        op: &'static str,
        /// Where.
        path: String,
    },
    /// Malformed path.
    #[error("invalid path {0:?}")]
    InvalidPath(String),
    /// Value larger than [`MAX_VALUE_LEN`].
    #[error("value of {0} bytes is too large")]
    ValueTooLarge(usize),
    /// The domain owns too many nodes or watches.
    #[error("domain {0} exceeded its store quota")]
    Quota(DomainId),
    /// An access list longer than [`MAX_PERMS_PER_NODE`].
    #[error("access list of {0} entries is too long")]
    TooManyPerms(usize),
    /// A value that should be a number or a state was not.
    #[error("node {path} holds {excerpt} ({len} bytes), not a valid {what}")]
    BadValue {
        /// Where.
        path: String,
        /// The start of what was there, escaped and quoted (see [`MAX_EXCERPT_CHARS`]):
        /// the value is a guest's, and this text is written back to the store (a backend's
        /// `error` node), so quoted whole it could outgrow [`MAX_VALUE_LEN`].
        excerpt: String,
        /// The length of the whole value, in bytes.
        len: usize,
        /// What was expected.
        what: &'static str,
    },
}

/// The first [`MAX_EXCERPT_CHARS`] characters of `value`, escaped and quoted, with `...`
/// after the quote when there was more.
fn excerpt(value: &str) -> String {
    let mut quoted = String::from("\"");
    for c in value.chars().take(MAX_EXCERPT_CHARS) {
        quoted.extend(c.escape_debug());
    }
    quoted.push('"');
    if value.chars().nth(MAX_EXCERPT_CHARS).is_some() {
        quoted.push_str("...");
    }
    quoted
}

/// The store (the host owns one; domains reach it through a [`StoreHandle`] acting as them).
#[derive(Clone)]
pub struct Store {
    state: Arc<Mutex<StoreState>>,
}

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(StoreState::new())),
        }
    }

    /// Creates `/local/domain/<id>` owned by `id` (the toolstack does this for a new domain).
    pub(crate) fn create_home(&self, id: DomainId) {
        let dom0 = self.connect(DomainId::DOM0);
        let home = format!("/local/domain/{id}");
        // Dom0 always may write; a failure here can only be a malformed path, which this isn't.
        if dom0.write(&home, "").is_ok() {
            let _ = dom0.set_perms(&home, Perms::private(id));
        }
    }

    /// A connection acting as `domain`: only the host makes them, through a domain's or the
    /// toolstack's handle.
    pub(crate) fn connect(&self, domain: DomainId) -> StoreHandle {
        StoreHandle {
            store: self.clone(),
            domain,
        }
    }

    /// Sets `domain`'s quota (dom0 has none). Only the toolstack may: a domain raising its
    /// own would be no quota at all. Lowering it below what the domain uses takes nothing
    /// away; it refuses the domain's next creations until it is back below.
    pub(crate) fn set_quota(&self, domain: DomainId, quota: StoreQuota) {
        self.lock().set_quota(domain, quota);
    }

    /// `domain`'s quota.
    pub(crate) fn quota(&self, domain: DomainId) -> StoreQuota {
        self.lock().quota_of(domain)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One domain's connection to the store. Relative paths are relative to `/local/domain/<id>`.
#[derive(Clone)]
pub struct StoreHandle {
    store: Store,
    domain: DomainId,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("domain", &self.domain)
            .finish()
    }
}

/// Whether a write may create the missing ancestors of its node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ancestors {
    Create,
    MustExist,
}

impl StoreHandle {
    /// The domain this connection acts as.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Resolves and validates a path.
    pub fn resolve(&self, path: &str) -> Result<String, StoreError> {
        let full = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/local/domain/{}/{path}", self.domain)
        };
        // One trailing slash is tolerated ("" names the domain's home); an empty component
        // anywhere else is not a path (xenstored refuses "//" too), and trimming every
        // slash would turn "//" into "", a path below nothing that every watch matched.
        if full.contains("//") {
            return Err(StoreError::InvalidPath(path.to_string()));
        }
        let full = match full.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.to_string(),
            _ => full,
        };
        if full.len() > MAX_PATH_LEN
            || (full != "/" && !full.split('/').skip(1).all(valid_component))
        {
            return Err(StoreError::InvalidPath(path.to_string()));
        }
        Ok(full)
    }

    fn denied(&self, op: &'static str, path: &str) -> StoreError {
        tracing::debug!(domain = %self.domain, op, path, "store permission denied");
        StoreError::PermissionDenied {
            domain: self.domain,
            op,
            path: path.to_string(),
        }
    }

    /// Reads a node's value.
    pub fn read(&self, path: &str) -> Result<String, StoreError> {
        let path = self.resolve(path)?;
        let state = self.store.lock();
        let Some(node) = state.nodes.get(&path) else {
            return Err(state.missing(self, "read", &path));
        };
        if !node.perms.of(self.domain).can_read() {
            return Err(self.denied("read", &path));
        }
        Ok(node.value.clone())
    }

    /// Reads a node, `None` if it does not exist.
    pub fn try_read(&self, path: &str) -> Result<Option<String>, StoreError> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a node and parses it as a decimal number.
    pub fn read_num<T: std::str::FromStr>(&self, path: &str) -> Result<T, StoreError> {
        let value = self.read(path)?;
        value.trim().parse().map_err(|_| StoreError::BadValue {
            path: path.to_string(),
            excerpt: excerpt(&value),
            len: value.len(),
            what: "number",
        })
    }

    /// Writes a node's value, creating it (and missing ancestors) if needed.
    pub fn write(&self, path: &str, value: &str) -> Result<(), StoreError> {
        self.write_node(path, value, Ancestors::Create)
    }

    /// Writes a node's value, creating the node if needed but never its parent: a write
    /// into a directory that is gone fails (`NotFound`, or the denial a missing node gets
    /// when its nearest ancestor is unreadable) instead of bringing the directory back. A
    /// device's driver writes its keys this way, so a directory the toolstack removed
    /// stays removed (Linux's `xenbus_switch_state` checks the node in a transaction, to
    /// the same end).
    pub fn write_in_place(&self, path: &str, value: &str) -> Result<(), StoreError> {
        self.write_node(path, value, Ancestors::MustExist)
    }

    fn write_node(&self, path: &str, value: &str, ancestors: Ancestors) -> Result<(), StoreError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(StoreError::ValueTooLarge(value.len()));
        }
        let path = self.resolve(path)?;
        let mut state = self.store.lock();
        let mut created = Vec::new();
        if let Some(node) = state.nodes.get(&path) {
            if !node.perms.of(self.domain).can_write() {
                return Err(self.denied("write", &path));
            }
        } else {
            if ancestors == Ancestors::MustExist
                && !parent_of(&path).is_some_and(|p| state.nodes.contains_key(p))
            {
                return Err(state.missing(self, "write", &path));
            }
            let parent = state
                .nearest_existing(&path)
                .ok_or(StoreError::InvalidPath(path.clone()))?;
            // Named as for an existing node: the answer must not tell whether it exists.
            if !parent.perms.of(self.domain).can_write() {
                return Err(self.denied("write", &path));
            }
            let mut perms = parent.perms.clone();
            if self.domain != DomainId::DOM0 {
                perms.owner = self.domain;
            }
            let mut missing = Vec::new();
            let mut p = Some(path.as_str());
            while let Some(cur) = p {
                if state.nodes.contains_key(cur) {
                    break;
                }
                missing.push(cur.to_string());
                p = parent_of(cur);
            }
            let charged = self.domain != DomainId::DOM0;
            if charged
                && state.charged_to(self.domain).saturating_add(missing.len())
                    > state.quota_of(self.domain).nodes
            {
                tracing::debug!(domain = %self.domain, path, "store node quota reached");
                return Err(StoreError::Quota(self.domain));
            }
            for m in missing.into_iter().rev() {
                state.insert(
                    m.clone(),
                    Node {
                        value: String::new(),
                        perms: perms.clone(),
                        charged,
                    },
                );
                created.push(m);
            }
        }
        let perms = match state.nodes.get_mut(&path) {
            Some(node) => {
                node.value = value.to_string();
                node.perms.clone()
            }
            None => return Err(StoreError::NotFound(path)),
        };
        let mut wakes = Wakes::default();
        for c in created.iter().filter(|c| **c != path) {
            state
                .watches
                .fire(c, |d| perms.of(d).can_read(), &mut wakes);
        }
        state
            .watches
            .fire(&path, |d| perms.of(d).can_read(), &mut wakes);
        drop(state);
        wakes.wake();
        Ok(())
    }

    /// Creates an empty node if it does not exist.
    pub fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        if self.try_read(path)?.is_some() {
            return Ok(());
        }
        self.write(path, "")
    }

    /// Removes a node and everything below it.
    pub fn rm(&self, path: &str) -> Result<(), StoreError> {
        let path = self.resolve(path)?;
        if path == "/" {
            return Err(self.denied("remove", &path));
        }
        let mut state = self.store.lock();
        let Some(node) = state.nodes.get(&path) else {
            return Err(state.missing(self, "remove", &path));
        };
        if !node.perms.of(self.domain).can_write() {
            return Err(self.denied("remove", &path));
        }
        let doomed: Vec<(String, Perms)> = state
            .nodes
            .iter()
            .filter(|(p, _)| is_at_or_below(p, &path))
            .map(|(p, n)| (p.clone(), n.perms.clone()))
            .collect();
        let mut wakes = Wakes::default();
        for (p, perms) in &doomed {
            state.remove(p);
            state
                .watches
                .fire(p, |d| perms.of(d).can_read(), &mut wakes);
        }
        drop(state);
        wakes.wake();
        Ok(())
    }

    /// Names of the children of a node.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, StoreError> {
        let path = self.resolve(path)?;
        let state = self.store.lock();
        let Some(node) = state.nodes.get(&path) else {
            return Err(state.missing(self, "list", &path));
        };
        if !node.perms.of(self.domain).can_read() {
            return Err(self.denied("list", &path));
        }
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        Ok(state
            .nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(p, _)| p.get(prefix.len()..))
            .filter(|rest| !rest.contains('/') && !rest.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// A node's permissions (needs read access).
    pub fn get_perms(&self, path: &str) -> Result<Perms, StoreError> {
        let path = self.resolve(path)?;
        let state = self.store.lock();
        let Some(node) = state.nodes.get(&path) else {
            return Err(state.missing(self, "read permissions of", &path));
        };
        if !node.perms.of(self.domain).can_read() {
            return Err(self.denied("read permissions of", &path));
        }
        Ok(node.perms.clone())
    }

    /// Replaces a node's permissions; only its owner or dom0 may, and only dom0 may change the
    /// owner (as xenstored rules): a guest that could hand its nodes to another domain would
    /// escape its node quota and charge the nodes to the other domain.
    pub fn set_perms(&self, path: &str, perms: Perms) -> Result<(), StoreError> {
        let path = self.resolve(path)?;
        if perms.acl.len() > MAX_PERMS_PER_NODE {
            tracing::debug!(domain = %self.domain, path, entries = perms.acl.len(), "access list too long");
            return Err(StoreError::TooManyPerms(perms.acl.len()));
        }
        let mut state = self.store.lock();
        let Some(node) = state.nodes.get(&path) else {
            return Err(state.missing(self, "change permissions of", &path));
        };
        if self.domain != DomainId::DOM0 && node.perms.owner != self.domain {
            return Err(self.denied("change permissions of", &path));
        }
        if self.domain != DomainId::DOM0 && perms.owner != node.perms.owner {
            return Err(self.denied("change the owner of", &path));
        }
        state.set_perms(&path, perms.clone());
        let mut wakes = Wakes::default();
        state
            .watches
            .fire(&path, |d| perms.of(d).can_read(), &mut wakes);
        drop(state);
        wakes.wake();
        Ok(())
    }

    /// Watches `path` and everything below it. The first event names `path` itself.
    pub fn watch(&self, path: &str) -> Result<Watch, StoreError> {
        let path = self.resolve(path)?;
        let store = self.store.clone();
        let mut state = self.store.lock();
        let limit = state.quota_of(self.domain).watches;
        state.watches.register(self.domain, path, store, limit)
    }
}

#[cfg(test)]
pub(super) mod tests;
