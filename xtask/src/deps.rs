//! `cargo xtask deps`: the system tools the tests and the demo need.
//!
//! Each tool is probed; what is missing is installed with the ordinary client for its kind
//! (apt-get as root, pip, cargo install), and every action is printed.

use crate::run::cargo;
use crate::run::on_path;
use crate::run::run as run_cmd;
use anyhow::Result;
use anyhow::bail;
use clap::Args;
use std::process::Command;
use std::process::Stdio;

/// Arguments of `cargo xtask deps`.
#[derive(Args, Default)]
pub(crate) struct DepsArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
}

/// A Debian package and the program that shows it is installed.
struct AptTool {
    package: &'static str,
    /// A program on PATH, or an absolute path prefix (such as `/boot/vmlinuz-`) that some
    /// installed file starts with, for packages that ship no program.
    program: &'static str,
    why: &'static str,
}

impl AptTool {
    fn present(&self) -> bool {
        if !self.program.starts_with('/') {
            return on_path(self.program);
        }
        let path = std::path::Path::new(self.program);
        let (Some(dir), Some(prefix)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let prefix = prefix.to_string_lossy();
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix.as_ref()))
        })
    }
}

const APT_TOOLS: &[AptTool] = &[
    AptTool {
        package: "swtpm",
        program: "swtpm",
        why: "the TPM 2.0 engine behind the vTPM backend",
    },
    AptTool {
        package: "swtpm-tools",
        program: "swtpm_setup",
        why: "creating swtpm state directories",
    },
    AptTool {
        package: "tpm2-tools",
        program: "tpm2_getrandom",
        why: "a real TPM client in front of the vTPM frontend",
    },
    AptTool {
        package: "qemu-system-x86",
        program: "qemu-system-x86_64",
        why: "booting built IGVM images and real Linux guests with a vTPM (TCG, or KVM)",
    },
    AptTool {
        package: "linux-image-amd64",
        program: "/boot/vmlinuz-",
        why: "a real Debian kernel for the IGVM boot and vTPM guest tests and the demo",
    },
    AptTool {
        package: "busybox-static",
        program: "busybox",
        why: "the tiny initramfs the guest tests build",
    },
    AptTool {
        package: "protobuf-compiler",
        program: "protoc",
        why: "checks the TDISP golden vectors against OpenVMM's tdisp.proto",
    },
    AptTool {
        package: "python3",
        program: "python3",
        why: "the Python measurement oracles",
    },
];

/// Packages taken from Debian bookworm's backports: bookworm's own QEMU is 7.2; the
/// references (`qemu_tpm.md`, `igvm.md`) were checked with bookworm-backports' QEMU 10.
const BOOKWORM_BACKPORTS: &[&str] = &["qemu-system-x86"];
const BACKPORTS_SUITE: &str = "bookworm-backports";
/// Where `deps` adds the backports suite when apt does not know it yet.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/xtask-bookworm-backports.sources";

/// A PyPI package and the module that shows it is importable.
struct PipPackage {
    package: &'static str,
    module: &'static str,
    why: &'static str,
}

const PIP_PACKAGES: &[PipPackage] = &[PipPackage {
    package: "sev-snp-measure",
    module: "sevsnpmeasure",
    why: "independent SEV-SNP launch digest oracle for igvm_loader tests",
}];

pub(crate) fn run(args: &DepsArgs) -> Result<()> {
    let mut missing = Vec::new();

    let apt_missing: Vec<&AptTool> = APT_TOOLS.iter().filter(|t| !t.present()).collect();
    for tool in APT_TOOLS {
        let state = if tool.present() { "ok" } else { "missing" };
        println!("deps: {:<14} {:<8} ({})", tool.package, state, tool.why);
    }
    if !apt_missing.is_empty() {
        let packages: Vec<&str> = apt_missing.iter().map(|t| t.package).collect();
        if args.check {
            missing.extend(packages.iter().map(|p| format!("apt:{p}")));
        } else {
            apt_install(&packages)?;
        }
    }

    if os_codename().as_deref() == Some("bookworm") {
        for package in BOOKWORM_BACKPORTS {
            let backported = installed_version(package).is_some_and(|v| v.contains("~bpo"));
            println!(
                "deps: {:<14} {:<8} (from {BACKPORTS_SUITE})",
                package,
                if backported { "ok" } else { "missing" }
            );
            if !backported {
                if args.check {
                    missing.push(format!("apt:{package}/{BACKPORTS_SUITE}"));
                } else {
                    backports_install(package)?;
                }
            }
        }
    }

    for pkg in PIP_PACKAGES {
        let present = python_has_module(pkg.module);
        println!(
            "deps: {:<14} {:<8} ({})",
            pkg.package,
            if present { "ok" } else { "missing" },
            pkg.why
        );
        if !present {
            if args.check {
                missing.push(format!("pip:{}", pkg.package));
            } else {
                pip_install(pkg.package)?;
            }
        }
    }

    let fuzz_present = cargo_fuzz_installed();
    println!(
        "deps: {:<14} {:<8} (runs the libFuzzer targets under */fuzz/)",
        "cargo-fuzz",
        if fuzz_present { "ok" } else { "missing" }
    );
    if !fuzz_present {
        if args.check {
            missing.push("cargo:cargo-fuzz".into());
        } else {
            println!("deps: installing cargo-fuzz with cargo install (about a minute)");
            run_cmd(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
        }
    }

    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {}; run `sudo apt-get install -y {}` or rerun as root",
            packages.join(" "),
            packages.join(" ")
        );
    }
    println!("deps: installing Debian packages: {}", packages.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs `package` from bookworm-backports, first adding that suite (on the same mirror as
/// the system's bookworm source) when apt does not know it.
fn backports_install(package: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{package} should come from {BACKPORTS_SUITE}; rerun as root, or install it with \
             `apt-get install -t {BACKPORTS_SUITE} {package}`"
        );
    }
    let known = Command::new("apt-cache")
        .arg("policy")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BACKPORTS_SUITE));
    if !known {
        let (uri, signed_by) = bookworm_source()?;
        let mut source =
            format!("Types: deb\nURIs: {uri}\nSuites: {BACKPORTS_SUITE}\nComponents: main\n");
        if let Some(key) = signed_by {
            source.push_str(&format!("Signed-By: {key}\n"));
        }
        println!("deps: adding {BACKPORTS_SUITE} from {uri} as {BACKPORTS_SOURCE}");
        std::fs::write(BACKPORTS_SOURCE, source)?;
    }
    println!("deps: installing {package} from {BACKPORTS_SUITE}");
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "-t"])
            .arg(BACKPORTS_SUITE)
            .arg(package)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The mirror (and signing key) of the system's own bookworm source, from deb822 files or the
/// one-line `sources.list`.
fn bookworm_source() -> Result<(String, Option<String>)> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(|v| v.trim().to_owned())
                })
            };
            let suites = field("Suites").unwrap_or_default();
            if suites.split_whitespace().any(|s| s == "bookworm")
                && let Some(uri) = field("URIs")
            {
                let uri = uri.split_whitespace().next().unwrap_or_default().to_owned();
                return Ok((uri, field("Signed-By")));
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["deb", uri, "bookworm", ..] = words.as_slice() {
            return Ok(((*uri).to_owned(), None));
        }
    }
    bail!("no apt source for bookworm found to add {BACKPORTS_SUITE} beside")
}

fn os_codename() -> Option<String> {
    std::fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn pip_install(package: &str) -> Result<()> {
    if !python_has_module("pip") {
        apt_install(&["python3-pip"])?;
    }
    println!("deps: installing {package} with pip");
    let pip = || {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .env("PIP_ROOT_USER_ACTION", "ignore");
        cmd
    };
    if run_cmd(pip().arg(package)).is_ok() {
        return Ok(());
    }
    // Debian's own python3 refuses user installs into the system site (PEP 668); these are
    // test-only oracles, so installing beside Debian's packages is acceptable there.
    println!("deps: retrying with --break-system-packages (Debian-managed Python)");
    run_cmd(pip().args(["--break-system-packages", package]))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

fn python_has_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cargo_fuzz_installed() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
