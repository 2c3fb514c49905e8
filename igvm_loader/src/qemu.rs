//! Running a native-platform IGVM file on a stock QEMU, which has no IGVM loader.
//!
//! [`QemuPlan::from_file`] turns the file's native platform into what plain QEMU options can
//! express ([`QemuPlan::for_platform`] does the same for the other platforms' start states,
//! without their isolation): every imported range with data becomes a generic loader device
//! (`-device loader,file=...,addr=...,force-raw=on`), data-less pages are left to QEMU's
//! zeroed RAM, and the native VP context becomes a generated 64 KiB BIOS whose reset-vector
//! trampoline ([`crate::vp_context::trampoline`]) goes from real mode to that context. The
//! BIOS is not part of the file and not measured: it only stands in for the IGVM loader.
//!
//! A native file without a VP context whose pages end at 4 GiB (a flat firmware) runs with
//! those pages as the BIOS instead.
//!
//! Not expressible, and reported as warnings: parameter areas (QEMU has nothing to fill them
//! with, so they stay zero).

use crate::importer::IsolationType;
use crate::vp_context::ContextError;
use crate::vp_context::LongModeContext;
use crate::vp_context::tdx::RESET_PAGE_GPA;
use crate::vp_context::trampoline;
use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmPlatformHeader;
use igvm_defs::IgvmPlatformType;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use thiserror::Error;

/// The BIOS window QEMU maps below 4 GiB for the generated BIOS.
const BIOS_BASE: u64 = (1 << 32) - trampoline::QEMU_BIOS_SIZE as u64;
const PAGE: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;

/// Why a file cannot run on QEMU this way.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum QemuError {
    /// The file does not have the platform asked for.
    #[error("the file has no {0} platform")]
    NoPlatform(&'static str),
    /// The platform has no VP context (or TDX reset page) to start.
    #[error("the {0} platform has no start state for the boot processor")]
    NoVpContext(&'static str),
    /// The VP context cannot be reached by the trampoline.
    #[error("VP context: {0}")]
    Context(ContextError),
    /// An imported range collides with the generated BIOS.
    #[error("imported range {gpa:#x}+{size:#x} overlaps the BIOS window at {BIOS_BASE:#x}")]
    BiosOverlap {
        /// Range start.
        gpa: u64,
        /// Range size.
        size: u64,
    },
    /// Writing the range files failed.
    #[error("{path}: {error}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

// Display carries the inner error, so it is not also a `source` (which `{:#}` would print
// twice).
impl From<ContextError> for QemuError {
    fn from(e: ContextError) -> Self {
        QemuError::Context(e)
    }
}

/// A contiguous range of guest memory with contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRange {
    /// First byte.
    pub gpa: u64,
    /// Contents (the range's size).
    pub data: Vec<u8>,
}

/// What QEMU needs to run the file's native platform.
#[derive(Debug, Clone)]
pub struct QemuPlan {
    /// The generated BIOS (64 KiB).
    pub bios: Vec<u8>,
    /// Ranges for generic loader devices, sorted, adjacent pages merged.
    pub ranges: Vec<LoadRange>,
    /// The highest byte the file asks to be memory, plus one.
    pub memory_top: u64,
    /// Things the plan could not express.
    pub warnings: Vec<String>,
    /// The start state the BIOS enters (`None` for TDX, whose reset page the BIOS runs).
    pub context: Option<LongModeContext>,
}

impl QemuPlan {
    /// The plan for `file`'s native platform.
    pub fn from_file(file: &IgvmFile) -> Result<Self, QemuError> {
        Self::for_platform(file, IsolationType::None)
    }

    /// The plan for `file`'s `platform`, started without its isolation: the native VP
    /// context, the VBS register list or the SNP VMSA becomes a trampoline BIOS, and a TDX
    /// reset page runs as it would in a TD after a BIOS prologue that recreates a TD's
    /// start state ([`trampoline::td_start_emulation_bios`]). Pages load the same for
    /// every platform; nothing is encrypted or measured. This checks that each platform's
    /// start state boots, not that the platform accepts the file. (An SNP image whose page
    /// tables carry a C-bit cannot start this way: without SEV the bit is an address bit.)
    pub fn for_platform(file: &IgvmFile, platform: IsolationType) -> Result<Self, QemuError> {
        let wanted = match platform {
            IsolationType::None => IgvmPlatformType::NATIVE,
            IsolationType::Vbs => IgvmPlatformType::VSM_ISOLATION,
            IsolationType::Snp => IgvmPlatformType::SEV_SNP,
            IsolationType::Tdx => IgvmPlatformType::TDX,
        };
        let name = platform.name();
        let mask = file
            .platforms()
            .iter()
            .find_map(|p| match p {
                IgvmPlatformHeader::SupportedPlatform(info) if info.platform_type == wanted => {
                    Some(info.compatibility_mask)
                }
                _ => None,
            })
            .ok_or(QemuError::NoPlatform(name))?;
        let mut reset_page: Option<Vec<u8>> = None;
        let mut ranges: Vec<LoadRange> = Vec::new();
        let mut context = None;
        let mut warnings = Vec::new();
        let mut memory_top = 0u64;
        for d in file.directives() {
            if d.compatibility_mask().is_some_and(|m| m & mask == 0) {
                continue;
            }
            match d {
                IgvmDirectiveHeader::PageData {
                    gpa, flags, data, ..
                } => {
                    let size = if flags.is_2mb_page() { PAGE_2M } else { PAGE };
                    if data.is_empty() {
                        // Zero pages need RAM, unless they are in the BIOS window.
                        if gpa.saturating_add(size) <= BIOS_BASE || *gpa >= 1 << 32 {
                            memory_top = memory_top.max(gpa.saturating_add(size));
                        }
                        continue;
                    }
                    if platform == IsolationType::Tdx && *gpa == RESET_PAGE_GPA {
                        reset_page = Some(data.clone());
                        continue;
                    }
                    // A page carries at most its own size of data (the parser checks this;
                    // a directive built in memory may not have been).
                    let data = data.get(..size as usize).unwrap_or(data);
                    match ranges.last_mut() {
                        Some(last)
                            if last.gpa.checked_add(last.data.len() as u64) == Some(*gpa) =>
                        {
                            let at = last.data.len();
                            last.data.extend_from_slice(data);
                            last.data.resize(at + size as usize, 0);
                        }
                        _ => {
                            let mut bytes = data.to_vec();
                            bytes.resize(size as usize, 0);
                            ranges.push(LoadRange {
                                gpa: *gpa,
                                data: bytes,
                            });
                        }
                    }
                }
                IgvmDirectiveHeader::RequiredMemory {
                    gpa,
                    number_of_bytes,
                    ..
                } => memory_top = memory_top.max(gpa.saturating_add(u64::from(*number_of_bytes))),
                IgvmDirectiveHeader::ParameterInsert(insert) => warnings.push(format!(
                    "parameter area {} at {:#x} stays zero: QEMU cannot fill it",
                    insert.parameter_area_index, insert.gpa
                )),
                IgvmDirectiveHeader::X64NativeVpContext {
                    context: native,
                    vp_index: 0,
                    ..
                } => context = Some(LongModeContext::from_native(native)?),
                IgvmDirectiveHeader::SnpVpContext {
                    vmsa, vp_index: 0, ..
                } => context = Some(LongModeContext::from_vmsa(vmsa)?),
                IgvmDirectiveHeader::X64VbsVpContext { registers, .. } => {
                    context = Some(LongModeContext::from_vbs_registers(registers)?);
                }
                _ => {}
            }
        }
        ranges.sort_by_key(|r| r.gpa);
        let bios = match (&context, reset_page) {
            (Some(ctx), _) => trampoline::qemu_bios(ctx)?,
            (None, Some(page)) => trampoline::td_start_emulation_bios(&page)?,
            // A native file without a VP context starts at the reset vector: if it carries
            // a firmware there, that firmware is the BIOS.
            (None, None) if platform == IsolationType::None => {
                firmware_bios(&mut ranges).ok_or(QemuError::NoVpContext(name))?
            }
            (None, None) => return Err(QemuError::NoVpContext(name)),
        };
        if let Some(r) = ranges
            .iter()
            .find(|r| r.gpa < 1 << 32 && r.gpa.saturating_add(r.data.len() as u64) > BIOS_BASE)
        {
            return Err(QemuError::BiosOverlap {
                gpa: r.gpa,
                size: r.data.len() as u64,
            });
        }
        for r in &ranges {
            memory_top = memory_top.max(r.gpa.saturating_add(r.data.len() as u64));
        }
        for r in &mut ranges {
            // Trailing zeros come free with QEMU's RAM.
            let keep = r.data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            r.data.truncate(keep.max(1));
        }
        ranges.sort_by_key(|r| r.gpa);
        Ok(Self {
            bios,
            ranges,
            memory_top,
            warnings,
            context,
        })
    }

    /// Writes the BIOS and one file per range into `dir` and returns the QEMU arguments
    /// that use them (machine, BIOS, loader devices; add memory, accelerator and I/O).
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, QemuError> {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|error| QemuError::Io {
                path: path.clone(),
                error,
            })?;
            Ok::<_, QemuError>(path)
        };
        let bios = write("bios.bin", &self.bios)?;
        let mut args = vec![
            "-machine".to_string(),
            "pc".to_string(),
            "-bios".to_string(),
            bios.display().to_string(),
        ];
        for (i, r) in self.ranges.iter().enumerate() {
            let path = write(&format!("range-{i:04}-{:x}.bin", r.gpa), &r.data)?;
            args.push("-device".into());
            // force-raw: a range that happens to start like an ELF or uImage must still be
            // copied as bytes.
            args.push(format!(
                "loader,file={},addr={:#x},force-raw=on",
                path.display(),
                r.gpa
            ));
        }
        Ok(args)
    }

    /// Memory to give QEMU, in MiB: what the file needs, at least `minimum_mib`.
    pub fn memory_mib(&self, minimum_mib: u64) -> u64 {
        self.memory_top.div_ceil(1 << 20).max(minimum_mib)
    }
}

/// Largest firmware taken from a file as the BIOS.
const MAX_FIRMWARE_BIOS: u64 = 16 << 20;

/// Takes the ranges that end at 4 GiB (contiguous, within 16 MiB) out of `ranges` as a BIOS
/// image sized to whole 64 KiB, or `None` if nothing ends at 4 GiB.
fn firmware_bios(ranges: &mut Vec<LoadRange>) -> Option<Vec<u8>> {
    const TOP: u64 = 1 << 32;
    let mut start = TOP;
    for r in ranges.iter().rev() {
        let end = r.gpa.checked_add(r.data.len() as u64)?;
        if end == start && r.gpa >= TOP - MAX_FIRMWARE_BIOS {
            start = r.gpa;
        } else if end > TOP - MAX_FIRMWARE_BIOS && r.gpa < TOP {
            // Part of the window but not contiguous with the firmware above it.
            break;
        }
    }
    if start == TOP {
        return None;
    }
    let base = start & !(trampoline::QEMU_BIOS_SIZE as u64 - 1);
    let mut bios = vec![0u8; (TOP - base) as usize];
    ranges.retain(|r| {
        if r.gpa >= start && r.gpa < TOP {
            let at = (r.gpa - base) as usize;
            if let Some(dst) = bios.get_mut(at..at + r.data.len()) {
                dst.copy_from_slice(&r.data);
            }
            false
        } else {
            true
        }
    });
    Some(bios)
}

/// Whether KVM can be used: the processor advertises VMX or SVM and /dev/kvm opens
/// read-write. (Some sandboxes offer a /dev/kvm on a processor without virtualization
/// extensions, where QEMU exits at once; TCG is the only choice there.)
pub fn kvm_usable() -> bool {
    let virt = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    virt && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A QEMU command for `plan` (already written with `args` from [`QemuPlan::write`]): no
/// default devices, the serial port on stdio, no display.
pub fn command(qemu: &Path, args: &[String], memory_mib: u64, kvm: bool) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args(["-m", &format!("{memory_mib}M")])
    .args(["-accel", if kvm { "kvm" } else { "tcg" }])
    .args(args);
    cmd
}

/// How `igvmgen qemu` runs a file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The IGVM file.
    pub file: PathBuf,
    /// Which of its platforms to start ([`QemuPlan::for_platform`]).
    pub platform: IsolationType,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Minimum memory in MiB (the file's needs win if larger).
    pub memory_mib: u64,
    /// Use KVM: `Some(true)` force, `Some(false)` never, `None` when usable.
    pub kvm: Option<bool>,
    /// Where the BIOS and range files go.
    pub workdir: PathBuf,
    /// More QEMU arguments.
    pub extra: Vec<String>,
}

/// Errors of [`prepare`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The file could not be read or parsed.
    #[error("{file}: {problem}")]
    File {
        /// The file.
        file: String,
        /// What went wrong.
        problem: String,
    },
    /// The file cannot run this way.
    #[error("{file}: {error}")]
    Plan {
        /// The file.
        file: String,
        /// Why.
        error: QemuError,
    },
}

/// Reads and plans `options.file`, writes the BIOS and ranges into `options.workdir` and
/// returns the QEMU command (not started) with the plan's warnings.
pub fn prepare(options: &RunOptions) -> Result<(Command, Vec<String>), RunError> {
    let file = options.file.display().to_string();
    let bytes =
        crate::build::read_regular_file(&options.file, u64::MAX).map_err(|e| RunError::File {
            file: file.clone(),
            problem: e.to_string(),
        })?;
    let parsed = crate::parse(&bytes).map_err(|e| RunError::File {
        file: file.clone(),
        problem: e.to_string(),
    })?;
    let plan_err = |error| RunError::Plan {
        file: file.clone(),
        error,
    };
    let plan = QemuPlan::for_platform(&parsed, options.platform).map_err(plan_err)?;
    std::fs::create_dir_all(&options.workdir).map_err(|error| {
        plan_err(QemuError::Io {
            path: options.workdir.clone(),
            error,
        })
    })?;
    let args = plan.write(&options.workdir).map_err(plan_err)?;
    let kvm = options.kvm.unwrap_or_else(kvm_usable);
    let mut cmd = command(
        &options.qemu,
        &args,
        plan.memory_mib(options.memory_mib),
        kvm,
    );
    cmd.args(&options.extra);
    Ok((cmd, plan.warnings))
}
