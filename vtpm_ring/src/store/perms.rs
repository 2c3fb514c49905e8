//! Who may do what with a node: its owner, a default for other domains, and an access list.

use crate::domain::DomainId;

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Nothing.
    None,
    /// Read the value and list children.
    Read,
    /// Write the value, create children, remove.
    Write,
    /// Read and write.
    Both,
}

impl Perm {
    pub(super) fn can_read(self) -> bool {
        matches!(self, Perm::Read | Perm::Both)
    }
    pub(super) fn can_write(self) -> bool {
        matches!(self, Perm::Write | Perm::Both)
    }
}

/// The permissions of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms {
    /// Owner: full access, may change permissions.
    pub owner: DomainId,
    /// Access for domains not in `acl`.
    pub others: Perm,
    /// Per-domain access.
    pub acl: Vec<(DomainId, Perm)>,
}

impl Perms {
    /// Owned by `owner`, nobody else may do anything.
    pub fn private(owner: DomainId) -> Self {
        Self {
            owner,
            others: Perm::None,
            acl: Vec::new(),
        }
    }

    /// Adds an access list entry.
    pub fn with(mut self, domain: DomainId, perm: Perm) -> Self {
        self.acl.retain(|(d, _)| *d != domain);
        self.acl.push((domain, perm));
        self
    }

    /// What `domain` may do: everything for dom0 and the owner, else its access list entry
    /// (the first, should there be several), else `others`.
    pub(super) fn of(&self, domain: DomainId) -> Perm {
        if domain == DomainId::DOM0 || domain == self.owner {
            return Perm::Both;
        }
        self.acl
            .iter()
            .find(|(d, _)| *d == domain)
            .map_or(self.others, |(_, p)| *p)
    }
}
