//! Repository rules no compiler lint reaches: every crate root forbids unsafe code.
//!
//! The workspace's `unsafe_code = "deny"` covers its members' targets, but not the fuzz crates
//! (separate workspaces under `<crate>/fuzz/`), and a `deny` can be lifted by an `allow` where
//! `#![forbid(unsafe_code)]` cannot. So every crate root says `forbid`: libraries, binaries,
//! examples, benches, integration tests and fuzz targets alike.

use crate::run::entries;
use crate::run::packages;
use crate::run::rust_files;
use crate::run::workspace_root;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;
use std::path::PathBuf;

const FORBID: &str = "#![forbid(unsafe_code)]";

/// Fails, naming them, when crate roots of the workspace lack `#![forbid(unsafe_code)]`.
pub(crate) fn forbid_unsafe() -> Result<()> {
    let roots = crate_roots(&workspace_root())?;
    let missing = missing_forbid(&roots)?;
    if !missing.is_empty() {
        for path in &missing {
            println!("no {FORBID}: {}", path.display());
        }
        bail!("{} crate roots do not forbid unsafe code", missing.len());
    }
    println!("{} crate roots forbid unsafe code", roots.len());
    Ok(())
}

/// The roots among `roots` whose text does not forbid unsafe code.
fn missing_forbid(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for path in roots {
        let text = std::fs::read_to_string(path)?;
        if !text.lines().any(|l| l.trim() == FORBID) {
            missing.push(path.clone());
        }
    }
    Ok(missing)
}

/// Every crate root of every package directly under `root` and of its fuzz crate: `src/lib.rs`,
/// `src/main.rs`, `src/bin/*.rs`, `examples/*.rs`, `benches/*.rs`, `tests/*.rs`,
/// `tests/*/main.rs`, and the fuzz targets (files under `fuzz/fuzz_targets/` that invoke
/// `fuzz_target!`; the others are modules they share).
fn crate_roots(root: &Path) -> Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    for package in packages(root)? {
        for file in ["src/lib.rs", "src/main.rs"] {
            let path = package.join(file);
            if path.is_file() {
                roots.push(path);
            }
        }
        for dir in ["src/bin", "examples", "benches", "tests"] {
            roots.extend(rust_files(&package.join(dir))?);
        }
        for suite in entries(&package.join("tests"), |p| p.join("main.rs").is_file())? {
            roots.push(suite.join("main.rs"));
        }
        for target in rust_files(&package.join("fuzz").join("fuzz_targets"))? {
            if std::fs::read_to_string(&target)?.contains("fuzz_target!") {
                roots.push(target);
            }
        }
    }
    roots.sort();
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn roots_without_forbid_are_named_and_modules_are_not_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let ok = "//! Docs.\n\n#![forbid(unsafe_code)]\n\nfn main() {}\n";
        let bare = "//! Docs.\n\nfn main() {}\n";
        write(root, "a/Cargo.toml", "");
        write(root, "a/src/lib.rs", ok);
        write(root, "a/src/bin/tool.rs", bare);
        write(root, "a/examples/demo.rs", ok);
        write(root, "a/benches/speed.rs", bare);
        write(root, "a/tests/flow.rs", ok);
        write(root, "a/tests/suite/main.rs", bare);
        // A module of the suite and a module the fuzz targets share: not crate roots.
        write(root, "a/tests/suite/part.rs", bare);
        write(root, "a/fuzz/fuzz_targets/shared.rs", bare);
        write(
            root,
            "a/fuzz/fuzz_targets/fuzz_a.rs",
            "#![no_main]\nlibfuzzer_sys::fuzz_target!(|d: &[u8]| {});\n",
        );
        // Not a package: ignored.
        write(root, "docs/notes.rs", bare);
        let roots = crate_roots(root).unwrap();
        assert_eq!(roots.len(), 7, "{roots:?}");
        let missing: Vec<String> = missing_forbid(&roots)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            missing,
            [
                "a/benches/speed.rs",
                "a/fuzz/fuzz_targets/fuzz_a.rs",
                "a/src/bin/tool.rs",
                "a/tests/suite/main.rs",
            ]
        );
    }

    #[test]
    fn every_crate_root_of_this_workspace_forbids_unsafe_code() {
        let roots = crate_roots(&workspace_root()).unwrap();
        assert!(
            roots.iter().any(|p| p.ends_with("vtpm_ring/src/lib.rs")),
            "{roots:?}"
        );
        assert_eq!(missing_forbid(&roots).unwrap(), Vec::<PathBuf>::new());
    }
}
