//! Where each instance's swtpm state lives.

use std::path::Path;
use std::path::PathBuf;

/// Maps vTPM instance ids to state directories under one root: instance `n` lives in
/// `<root>/instance-<n>`. The mapping is a pure function of the id, so any manager started
/// on the same root finds every instance's state again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDirs {
    root: PathBuf,
}

impl StateDirs {
    /// State directories under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `instance`.
    pub fn dir(&self, instance: u32) -> PathBuf {
        self.root.join(dir_name(instance))
    }

    /// Creates the directory of `instance` (owner-only) and returns it.
    pub fn create(&self, instance: u32) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir(instance);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// Instances that have a state directory, sorted. Only an entry named exactly as
    /// [`dir`](Self::dir) names it counts: `instance-07` or `instance-+7` would parse as 7,
    /// but instance 7's state is not there.
    pub fn instances(&self) -> std::io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(instance_of) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// What an instance's directory is named after its id.
const DIR_PREFIX: &str = "instance-";

/// The name of `instance`'s directory.
fn dir_name(instance: u32) -> String {
    format!("{DIR_PREFIX}{instance}")
}

/// The instance whose directory is named `name`, if any: the name must be exactly the one
/// [`dir_name`] gives that id.
fn instance_of(name: &str) -> Option<u32> {
    let id = name.strip_prefix(DIR_PREFIX)?.parse().ok()?;
    (dir_name(id) == name).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_map_to_their_own_directories_and_back() {
        let root = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(root.path());
        assert_eq!(dirs.dir(7), root.path().join("instance-7"));
        assert_ne!(dirs.dir(1), dirs.dir(11));
        for id in [11, 2, 7] {
            dirs.create(id).unwrap();
        }
        // Foreign entries are not instances.
        std::fs::create_dir(root.path().join("instance-x")).unwrap();
        std::fs::write(root.path().join("notes"), b"").unwrap();
        assert_eq!(dirs.instances().unwrap(), [2, 7, 11]);
        // A second mapping over the same root finds the same directories.
        assert_eq!(StateDirs::new(root.path()).dir(7), dirs.dir(7));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dirs.dir(2)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// `instances` lists ids whose state lives in their own directory: an entry that is not
    /// `dir(id)` (leading zeros, a sign) is not that instance's state.
    #[test]
    fn state_dirs_list_only_instances_whose_directory_is_theirs() {
        let root = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(root.path());
        dirs.create(7).unwrap();
        for alias in [
            "instance-07",
            "instance-+7",
            "instance-0008",
            "instance-",
            "instance-4294967296",
        ] {
            std::fs::create_dir(root.path().join(alias)).unwrap();
        }
        let listed = dirs.instances().unwrap();
        for id in &listed {
            assert!(
                dirs.dir(*id).is_dir(),
                "instances() lists {id} (from {listed:?}) but {} does not exist",
                dirs.dir(*id).display()
            );
        }
        assert_eq!(listed, [7], "each instance once, from its own directory");
    }
}
