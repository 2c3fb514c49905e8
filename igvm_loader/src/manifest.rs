//! The `igvmgen build` manifest: a TOML description of an image.
//!
//! ```toml
//! [payload]
//! kind = "linux"              # linux | elf | firmware | aarch64
//! kernel = "bzImage"          # paths are relative to the manifest
//! initrd = "initrd.cpio"
//! cmdline = "console=ttyS0"
//!
//! [memory]
//! size = "512M"               # RAM from address 0 (or ram = [{ base = 0, size = "512M" }])
//!
//! [[platform]]
//! type = "native"             # native | vbs | snp | tdx
//! [[platform]]
//! type = "snp"
//! policy = 0x30000
//!
//! [[parameter_area]]          # optional: areas the IGVM loader fills at launch
//! page = 0x300
//! pages = 1
//! tag = "memory-map"
//! parameters = [{ kind = "memory_map", offset = 0 }]
//!
//! [measurement]               # optional: conventions of the written digests
//! vmm = "qemu"                # qemu | hyperv
//! ```
//!
//! [`Manifest::parse`] is the one place that reads the text: it rejects unknown keys and
//! checks everything that does not need the payload files (sizes, platform list, what each
//! payload kind needs), so a bad manifest fails before any file is read. Errors name the
//! manifest.

use crate::importer::IgvmParameterType;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use serde::Deserialize;
use std::collections::HashSet;
use thiserror::Error;

/// Largest manifest accepted, in bytes (a manifest is a few hundred bytes; this bounds the
/// parser's work on hostile input).
pub const MAX_MANIFEST_SIZE: usize = 1 << 20;
/// Largest guest memory a manifest may describe (the x86 identity map covers 512 GiB).
pub const MAX_MEMORY: u64 = 512 << 30;

/// A manifest that cannot be used.
#[derive(Debug, Error)]
#[error("{file}: {problem}")]
pub struct ManifestError {
    /// The manifest's name.
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

impl ManifestError {
    fn new(file: &str, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            problem: problem.into(),
        }
    }
}

/// A byte size: an integer, or a string with a K, M or G suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size in bytes, or a string like \"512M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is not a size")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses "512M", "4G", "64K", "4096".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 4096, 64K, 512M, 4G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} overflows 64 bits"))
}

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// What to load.
    pub payload: PayloadSpec,
    /// The guest memory.
    pub memory: MemorySpec,
    /// The platforms the file supports, in compatibility-mask order.
    #[serde(rename = "platform")]
    pub platforms: Vec<PlatformSpec>,
    /// Parameter areas for the IGVM loader to fill.
    #[serde(default, rename = "parameter_area")]
    pub parameter_areas: Vec<ParameterAreaSpec>,
    /// Measurement conventions.
    #[serde(default)]
    pub measurement: MeasurementSpec,
}

/// The payload kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// An x86-64 bzImage, booted directly ([`crate::loaders::linux`]).
    Linux,
    /// An x86-64 ELF kernel ([`crate::loaders::elf`]).
    Elf,
    /// A flat firmware ending at 4 GiB ([`crate::loaders::firmware`]).
    Firmware,
    /// An AArch64 Linux Image ([`crate::loaders::aarch64`]).
    Aarch64,
}

/// The `[payload]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSpec {
    /// Which loader.
    pub kind: PayloadKind,
    /// The kernel file (linux, elf, aarch64).
    pub kernel: Option<String>,
    /// The initrd file (linux).
    pub initrd: Option<String>,
    /// The kernel command line (linux).
    pub cmdline: Option<String>,
    /// The firmware file (firmware).
    pub firmware: Option<String>,
    /// Load base of a position-independent ELF kernel (elf).
    pub load_base: Option<u64>,
    /// RSI at entry (elf).
    pub rsi: Option<u64>,
    /// RSP at entry (elf).
    pub rsp: Option<u64>,
    /// Pages for the device tree (aarch64, default 16).
    pub device_tree_pages: Option<u32>,
}

/// One RAM range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamSpec {
    /// First byte.
    pub base: u64,
    /// Size.
    pub size: Size,
}

/// The `[memory]` table: `size` (RAM from 0) or explicit `ram` ranges, and optional
/// placement of the x86 boot structures.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// RAM from address 0 (x86) or from `ram_base` (aarch64).
    pub size: Option<Size>,
    /// Explicit RAM ranges.
    pub ram: Option<Vec<RamSpec>>,
    /// AArch64 RAM base (default 0x4000_0000).
    pub ram_base: Option<u64>,
    /// GPA of the x86 boot GDT.
    pub gdt: Option<u64>,
    /// GPA of the x86 page tables.
    pub page_tables: Option<u64>,
    /// GPA of the SNP VMSA.
    pub vmsa: Option<u64>,
    /// SEV C-bit position for SNP page tables without vTOM
    /// ([`crate::loaders::x86::X86Layout::snp_c_bit`]).
    pub snp_c_bit: Option<u8>,
}

/// The platform types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformType {
    /// No isolation.
    Native,
    /// Hyper-V VBS.
    Vbs,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl PlatformType {
    /// The crate's isolation type.
    pub fn isolation(self) -> IsolationType {
        match self {
            PlatformType::Native => IsolationType::None,
            PlatformType::Vbs => IsolationType::Vbs,
            PlatformType::Snp => IsolationType::Snp,
            PlatformType::Tdx => IsolationType::Tdx,
        }
    }
}

/// One `[[platform]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSpec {
    /// Which platform.
    #[serde(rename = "type")]
    pub kind: PlatformType,
    /// SNP guest policy (SNP only; default [`crate::builder::DEFAULT_SNP_POLICY`]).
    pub policy: Option<u64>,
    /// Shared GPA boundary bit (SNP vTOM, TDX shared bit).
    pub shared_gpa_boundary_bits: Option<u8>,
}

/// One parameter in an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// What the IGVM loader deposits.
    pub kind: IgvmParameterType,
    /// Byte offset in the area.
    pub offset: u32,
}

/// One `[[parameter_area]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterAreaSpec {
    /// First page number.
    pub page: u64,
    /// Pages.
    pub pages: u32,
    /// Debug tag.
    pub tag: String,
    /// The parameters deposited in it.
    pub parameters: Vec<ParameterSpec>,
}

/// Which VMM's conventions the written digests follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmPreset {
    /// QEMU/KVM ([`crate::measure::Vmm::Qemu`]).
    Qemu,
    /// Hyper-V ([`crate::measure::Vmm::Hyperv`]).
    Hyperv,
}

/// The `[measurement]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSpec {
    /// Conventions (default: those of `igvmgen measure` without options).
    pub vmm: Option<VmmPreset>,
}

impl Manifest {
    /// Parses and checks a manifest called `file`.
    pub fn parse(text: &str, file: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::new(
                file,
                format!("{} bytes is more than a manifest may be", text.len()),
            ));
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::new(file, e.to_string()))?;
        manifest.check(file)?;
        Ok(manifest)
    }

    fn check(&self, file: &str) -> Result<(), ManifestError> {
        let err = |p: String| Err(ManifestError::new(file, p));
        if self.platforms.is_empty() {
            return err("no [[platform]]".into());
        }
        let mut seen = HashSet::new();
        for p in &self.platforms {
            if !seen.insert(p.kind) {
                return err(format!("platform {:?} is listed twice", p.kind));
            }
            if p.policy.is_some() && p.kind != PlatformType::Snp {
                return err(format!("policy is for snp, not {:?}", p.kind));
            }
            if p.shared_gpa_boundary_bits
                .is_some_and(|b| !(1..=63).contains(&b))
            {
                return err("shared_gpa_boundary_bits must be 1..=63".into());
            }
        }
        let p = &self.payload;
        let need = |what: &str, v: &Option<String>| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => err(format!("payload kind {:?} needs {what}", p.kind)),
        };
        let refuse = |what: &str, present: bool| {
            if present {
                err(format!("payload kind {:?} takes no {what}", p.kind))
            } else {
                Ok(())
            }
        };
        match p.kind {
            PayloadKind::Linux => {
                need("kernel", &p.kernel)?;
                refuse("firmware", p.firmware.is_some())?;
                refuse(
                    "load_base/rsi/rsp",
                    p.load_base.or(p.rsi).or(p.rsp).is_some(),
                )?;
            }
            PayloadKind::Elf => {
                need("kernel", &p.kernel)?;
                refuse(
                    "firmware, initrd or cmdline",
                    p.firmware.is_some() || p.initrd.is_some() || p.cmdline.is_some(),
                )?;
            }
            PayloadKind::Firmware => {
                need("firmware", &p.firmware)?;
                refuse(
                    "kernel, initrd or cmdline",
                    p.kernel.is_some() || p.initrd.is_some() || p.cmdline.is_some(),
                )?;
            }
            PayloadKind::Aarch64 => {
                need("kernel", &p.kernel)?;
                refuse(
                    "firmware or initrd",
                    p.firmware.is_some() || p.initrd.is_some(),
                )?;
                if let Some(pl) = self
                    .platforms
                    .iter()
                    .find(|pl| pl.kind != PlatformType::Vbs)
                {
                    return err(format!(
                        "an aarch64 image can only target vbs, not {:?}",
                        pl.kind
                    ));
                }
            }
        }
        if p.kind != PayloadKind::Aarch64 && p.device_tree_pages.is_some() {
            return err("device_tree_pages is for aarch64".into());
        }
        let ram = self.ram_ranges(file)?;
        let mut prev_end = 0u64;
        for (i, (base, size)) in ram.iter().enumerate() {
            let end = base.checked_add(*size).filter(|e| *e <= MAX_MEMORY);
            let Some(end) = end else {
                return err(format!("RAM range {base:#x}+{size:#x} is beyond 512 GiB"));
            };
            if *size == 0 || !base.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
                return err(format!(
                    "RAM range {base:#x}+{size:#x} is empty or not page aligned"
                ));
            }
            if i > 0 && *base < prev_end {
                return err("RAM ranges overlap or are out of order".into());
            }
            prev_end = end;
        }
        for area in &self.parameter_areas {
            if area.pages == 0 {
                return err(format!("parameter area {:?} has no pages", area.tag));
            }
            let bytes = u64::from(area.pages) * PAGE_SIZE;
            if area
                .page
                .checked_add(u64::from(area.pages))
                .and_then(|e| e.checked_mul(PAGE_SIZE))
                .is_none()
            {
                return err(format!("parameter area {:?} wraps", area.tag));
            }
            if let Some(p) = area
                .parameters
                .iter()
                .find(|p| u64::from(p.offset) >= bytes)
            {
                return err(format!(
                    "parameter {:?} at offset {:#x} is outside area {:?}",
                    p.kind, p.offset, area.tag
                ));
            }
        }
        Ok(())
    }

    /// The RAM ranges `(base, size)` the manifest describes.
    pub fn ram_ranges(&self, file: &str) -> Result<Vec<(u64, u64)>, ManifestError> {
        match (&self.memory.size, &self.memory.ram) {
            (Some(size), None) => Ok(vec![(
                if self.payload.kind == PayloadKind::Aarch64 {
                    self.memory.ram_base.unwrap_or(AARCH64_RAM_BASE)
                } else {
                    0
                },
                size.bytes(),
            )]),
            (None, Some(ram)) if !ram.is_empty() => {
                Ok(ram.iter().map(|r| (r.base, r.size.bytes())).collect())
            }
            _ => Err(ManifestError::new(
                file,
                "[memory] needs exactly one of size or ram (non-empty)",
            )),
        }
    }
}

/// Default RAM base of AArch64 guests.
pub const AARCH64_RAM_BASE: u64 = 0x4000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[payload]
kind = "linux"
kernel = "bzImage"
initrd = "initrd.cpio"
cmdline = "console=ttyS0"

[memory]
size = "512M"

[[platform]]
type = "native"
[[platform]]
type = "snp"
policy = 0x30000

[[parameter_area]]
page = 0x300
pages = 1
tag = "memory-map"
parameters = [{ kind = "memory_map", offset = 0 }]

[measurement]
vmm = "hyperv"
"#;

    #[test]
    fn parses_a_complete_manifest() {
        let m = Manifest::parse(GOOD, "m.toml").unwrap();
        assert_eq!(m.payload.kind, PayloadKind::Linux);
        assert_eq!(m.memory.size.unwrap().bytes(), 512 << 20);
        assert_eq!(m.platforms.len(), 2);
        assert_eq!(m.platforms[1].policy, Some(0x30000));
        assert_eq!(
            m.parameter_areas[0].parameters[0].kind,
            IgvmParameterType::MemoryMap
        );
        assert_eq!(m.measurement.vmm, Some(VmmPreset::Hyperv));
        assert_eq!(m.ram_ranges("m").unwrap(), vec![(0, 512 << 20)]);
    }

    #[test]
    fn refuses_bad_manifests_naming_the_file() {
        let cases = [
            (
                GOOD.replace("kind = \"linux\"", "kind = \"exe\""),
                "unknown variant",
            ),
            (GOOD.replace("cmdline", "cmd_line"), "unknown field"),
            (
                GOOD.replace("type = \"snp\"", "type = \"native\""),
                "listed twice",
            ),
            (
                GOOD.replace("size = \"512M\"", "size = \"lots\""),
                "not a size",
            ),
            (
                GOOD.replace("size = \"512M\"", "size = \"1000G\""),
                "beyond 512 GiB",
            ),
            (
                GOOD.replace("size = \"512M\"", "size = 1000"),
                "not page aligned",
            ),
            (GOOD.replace("kernel = \"bzImage\"", ""), "needs kernel"),
            (GOOD.replace("offset = 0", "offset = 4096"), "outside area"),
            (
                GOOD.replace("page = 0x300", "page = 0xffffffffffffffff"),
                "wraps",
            ),
            (
                GOOD.replace("type = \"native\"", "type = \"native\"\npolicy = 1"),
                "policy is for snp",
            ),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text, "bad.toml").unwrap_err();
            assert_eq!(err.file, "bad.toml");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let aarch = GOOD
            .replace("kind = \"linux\"", "kind = \"aarch64\"")
            .replace("initrd = \"initrd.cpio\"\n", "");
        assert!(
            Manifest::parse(&aarch, "a")
                .unwrap_err()
                .to_string()
                .contains("only target vbs")
        );
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("").is_err());
    }
}
