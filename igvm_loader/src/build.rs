//! `igvmgen build`: a [`Manifest`] and its payload files in, an IGVM file, one measurement
//! per measurable platform and a map of every imported range out.
//!
//! [`build`] runs the manifest's loader once per platform, each through a [`MapRecorder`]
//! that passes every call on to the platform's image and notes what landed where, then
//! merges the platforms ([`crate::builder::IgvmBuilder`]) and measures the bytes as written.
//! Nothing depends on time, paths or iteration order of hash tables, so the same inputs give
//! the same bytes.

use crate::arch::AArch64Register;
use crate::arch::GuestArch;
use crate::arch::X86Register;
use crate::builder::DEFAULT_SNP_POLICY;
use crate::builder::IgvmBuilder;
use crate::builder::PlatformConfig;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImageLoad;
use crate::importer::IsolationConfig;
use crate::importer::IsolationType;
use crate::importer::PAGE_SIZE;
use crate::importer::ParameterAreaIndex;
use crate::importer::StartupMemoryType;
use crate::loaders::LoadError;
use crate::loaders::Payload;
use crate::loaders::aarch64::Aarch64Config;
use crate::loaders::x86::RamRange;
use crate::loaders::x86::X86Layout;
use crate::manifest::Manifest;
use crate::manifest::ManifestError;
use crate::manifest::PayloadKind;
use crate::manifest::VmmPreset;
use crate::measure::MeasureOptions;
use crate::measure::Measurement;
use crate::measure::Vmm;
use crate::vp_context::tdx::RESET_PAGE_GPA;
use crate::vp_context::tdx::RESET_PAGE_TAG;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use thiserror::Error;

/// Why a build failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A payload file could not be read.
    #[error("{file}: {error}")]
    Read {
        /// The file, as the manifest names it.
        file: String,
        /// The error.
        error: std::io::Error,
    },
    /// A loader refused its payload.
    #[error("{platform}: {error}")]
    Load {
        /// The platform being loaded.
        platform: &'static str,
        /// The loader's error (names the file).
        error: LoadError,
    },
    /// The builder refused the image the manifest describes (a parameter area, the merge,
    /// the measurement).
    #[error("{manifest}: {error}")]
    Image {
        /// The manifest, as given to [`build`].
        manifest: String,
        /// The builder's error.
        error: crate::Error,
    },
    /// An output could not be written (or the manifest read).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A measurement could not be serialized.
    #[error("measurement JSON: {0}")]
    Json(serde_json::Error),
}

/// What a build produces.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The IGVM file.
    pub igvm: Vec<u8>,
    /// One measurement per measurable platform (VBS, SNP, TDX), in file order.
    pub measurements: Vec<Measurement>,
    /// The conventions the measurements follow.
    pub options: MeasureOptions,
    /// The map: every imported range per platform with its debug tag.
    pub map: String,
}

/// One line of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The loader's debug tag.
    pub tag: String,
    /// What kind of range.
    pub kind: String,
    /// Bytes of file data in it.
    pub data_len: u64,
}

/// An [`ImageLoad`] that passes every call to `inner` and records, for the map, each
/// successful import.
pub struct MapRecorder<'a, R> {
    inner: &'a mut dyn ImageLoad<R>,
    entries: Vec<MapEntry>,
    areas: Vec<(u64, String)>,
}

impl<'a, R: GuestArch> MapRecorder<'a, R> {
    /// A recorder in front of `inner`.
    pub fn new(inner: &'a mut dyn ImageLoad<R>) -> Self {
        Self {
            inner,
            entries: Vec::new(),
            areas: Vec::new(),
        }
    }

    /// The ranges recorded so far, sorted by address.
    pub fn into_entries(mut self) -> Vec<MapEntry> {
        self.entries
            .sort_by(|a, b| (a.gpa, &a.tag).cmp(&(b.gpa, &b.tag)));
        self.entries
    }

    fn note(&mut self, page_base: u64, pages: u64, tag: &str, kind: &str, data_len: usize) {
        self.entries.push(MapEntry {
            gpa: page_base.saturating_mul(PAGE_SIZE),
            size: pages.saturating_mul(PAGE_SIZE),
            tag: tag.to_string(),
            kind: kind.to_string(),
            data_len: data_len as u64,
        });
    }
}

impl<R: GuestArch> ImageLoad<R> for MapRecorder<'_, R> {
    fn isolation_config(&self) -> IsolationConfig {
        self.inner.isolation_config()
    }

    fn create_parameter_area(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
    ) -> crate::Result<ParameterAreaIndex> {
        let index = self
            .inner
            .create_parameter_area(page_base, page_count, debug_tag)?;
        self.note(page_base, page_count.into(), debug_tag, "parameter-area", 0);
        self.areas.push((page_base, debug_tag.to_string()));
        Ok(index)
    }

    fn create_parameter_area_with_data(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
        initial_data: &[u8],
    ) -> crate::Result<ParameterAreaIndex> {
        let index = self.inner.create_parameter_area_with_data(
            page_base,
            page_count,
            debug_tag,
            initial_data,
        )?;
        self.note(
            page_base,
            page_count.into(),
            debug_tag,
            "parameter-area",
            initial_data.len(),
        );
        Ok(index)
    }

    fn import_parameter(
        &mut self,
        parameter_area: ParameterAreaIndex,
        byte_offset: u32,
        parameter_type: IgvmParameterType,
    ) -> crate::Result<()> {
        self.inner
            .import_parameter(parameter_area, byte_offset, parameter_type)
    }

    fn import_pages(
        &mut self,
        page_base: u64,
        page_count: u64,
        debug_tag: &str,
        acceptance: BootPageAcceptance,
        data: &[u8],
    ) -> crate::Result<()> {
        self.inner
            .import_pages(page_base, page_count, debug_tag, acceptance, data)?;
        self.note(
            page_base,
            page_count,
            debug_tag,
            acceptance.name(),
            data.len(),
        );
        Ok(())
    }

    fn import_vp_register(&mut self, register: R) -> crate::Result<()> {
        let first = !self.entries.iter().any(|e| e.tag == RESET_PAGE_TAG);
        self.inner.import_vp_register(register)?;
        if first && self.inner.isolation_config().isolation_type == IsolationType::Tdx {
            self.note(
                RESET_PAGE_GPA / PAGE_SIZE,
                1,
                RESET_PAGE_TAG,
                "Exclusive",
                4096,
            );
        }
        Ok(())
    }

    fn verify_startup_memory_available(
        &mut self,
        page_base: u64,
        page_count: u64,
        memory_type: StartupMemoryType,
    ) -> crate::Result<()> {
        self.inner
            .verify_startup_memory_available(page_base, page_count, memory_type)
    }

    fn set_vp_context_page(&mut self, page_base: u64) -> crate::Result<()> {
        self.inner.set_vp_context_page(page_base)?;
        self.note(page_base, 1, "vmsa", "VpContext", 4096);
        Ok(())
    }

    fn relocation_region(
        &mut self,
        gpa: u64,
        size_bytes: u64,
        relocation_alignment: u64,
        minimum_relocation_gpa: u64,
        maximum_relocation_gpa: u64,
        apply_rip_offset: bool,
        apply_gdtr_offset: bool,
        vp_index: u16,
    ) -> crate::Result<()> {
        self.inner.relocation_region(
            gpa,
            size_bytes,
            relocation_alignment,
            minimum_relocation_gpa,
            maximum_relocation_gpa,
            apply_rip_offset,
            apply_gdtr_offset,
            vp_index,
        )
    }

    fn page_table_relocation(
        &mut self,
        page_table_gpa: u64,
        size_pages: u64,
        used_pages: u64,
        vp_index: u16,
    ) -> crate::Result<()> {
        self.inner
            .page_table_relocation(page_table_gpa, size_pages, used_pages, vp_index)
    }

    fn set_imported_regions_config_page(&mut self, page_base: u64) {
        self.inner.set_imported_regions_config_page(page_base);
        self.note(page_base, 1, "imported-regions", "Exclusive", 4096);
    }
}

/// The measurement conventions of `preset` (`None`: `igvmgen measure`'s defaults).
pub fn measure_options(preset: Option<VmmPreset>) -> MeasureOptions {
    match preset {
        None => MeasureOptions::default(),
        Some(VmmPreset::Qemu) => MeasureOptions::for_vmm(Vmm::Qemu),
        Some(VmmPreset::Hyperv) => MeasureOptions::for_vmm(Vmm::Hyperv),
    }
}

/// Builds `manifest` (called `manifest_name` in errors), reading payload files with `read`
/// (given the name as the manifest writes it).
pub fn build(
    manifest: &Manifest,
    manifest_name: &str,
    read: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
) -> Result<BuildOutput, BuildError> {
    let load = |name: &Option<String>| -> Result<Option<(String, Vec<u8>)>, BuildError> {
        name.as_ref()
            .map(|n| {
                read(n)
                    .map(|data| (n.clone(), data))
                    .map_err(|error| BuildError::Read {
                        file: n.clone(),
                        error,
                    })
            })
            .transpose()
    };
    let refused = |error| BuildError::Image {
        manifest: manifest_name.to_string(),
        error,
    };
    let p = &manifest.payload;
    let kernel = load(&p.kernel)?;
    let initrd = load(&p.initrd)?;
    let firmware = load(&p.firmware)?;
    let ram = manifest.ram_ranges(manifest_name)?;
    let options = measure_options(manifest.measurement.vmm);
    let mut map = String::new();
    let _ = writeln!(map, "# igvmgen map: every imported range per platform");
    let _ = writeln!(
        map,
        "# start              end (excl)           kind                   data   tag"
    );

    let (igvm, measurements) = match p.kind {
        PayloadKind::Aarch64 => {
            let (name, data) = kernel
                .as_ref()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .unwrap_or_default();
            let (ram_base, ram_size) = ram.first().copied().unwrap_or_default();
            let config = Aarch64Config {
                ram_base,
                ram_size,
                device_tree_pages: p.device_tree_pages.unwrap_or(16),
            };
            build_platforms::<AArch64Register>(manifest, &options, &mut map, &refused, |rec| {
                crate::loaders::aarch64::load_aarch64_image(rec, &Payload::new(name, data), &config)
                    .map(|_| ())
            })?
        }
        kind => {
            let mut layout = X86Layout::with_memory(0);
            layout.ram = ram
                .iter()
                .map(|&(base, size)| RamRange { base, size })
                .collect();
            if let Some(g) = manifest.memory.gdt {
                layout.gdt_gpa = g;
            }
            if let Some(g) = manifest.memory.page_tables {
                layout.page_tables_gpa = g;
            }
            if let Some(g) = manifest.memory.vmsa {
                layout.vmsa_gpa = g;
            }
            layout.snp_c_bit = manifest.memory.snp_c_bit;
            build_platforms::<X86Register>(manifest, &options, &mut map, &refused, |rec| {
                load_x86(rec, kind, manifest, &layout, &kernel, &initrd, &firmware)
            })?
        }
    };
    Ok(BuildOutput {
        igvm,
        measurements,
        options,
        map,
    })
}

/// One image per platform of the manifest: `load` fills each, then its parameter areas are
/// added and its ranges written to `map`; returns the file and its measurements.
fn build_platforms<R: GuestArch>(
    manifest: &Manifest,
    options: &MeasureOptions,
    map: &mut String,
    refused: &impl Fn(crate::Error) -> BuildError,
    mut load: impl FnMut(&mut MapRecorder<'_, R>) -> Result<(), LoadError>,
) -> Result<(Vec<u8>, Vec<Measurement>), BuildError> {
    let mut builder = IgvmBuilder::<R>::new();
    for spec in &manifest.platforms {
        let isolation = spec.kind.isolation();
        let image = builder
            .add_platform(platform_config(spec))
            .map_err(refused)?;
        let mut rec = MapRecorder::new(image);
        load(&mut rec).map_err(|error| BuildError::Load {
            platform: isolation.name(),
            error,
        })?;
        add_parameter_areas(&mut rec, manifest).map_err(refused)?;
        write_map(map, isolation, rec.into_entries());
    }
    builder.build_measured(options).map_err(refused)
}

fn platform_config(spec: &crate::manifest::PlatformSpec) -> PlatformConfig {
    let mut isolation = IsolationConfig::new(spec.kind.isolation());
    isolation.shared_gpa_boundary_bits = spec.shared_gpa_boundary_bits;
    let mut config = PlatformConfig::new(isolation);
    config.guest_policy = spec.policy.unwrap_or(DEFAULT_SNP_POLICY);
    config
}

fn load_x86(
    importer: &mut dyn ImageLoad<X86Register>,
    kind: PayloadKind,
    manifest: &Manifest,
    layout: &X86Layout,
    kernel: &Option<(String, Vec<u8>)>,
    initrd: &Option<(String, Vec<u8>)>,
    firmware: &Option<(String, Vec<u8>)>,
) -> Result<(), LoadError> {
    let missing = |what: &str| {
        LoadError::new(
            what,
            crate::loaders::Problem::Invalid("named by no manifest entry".into()),
        )
    };
    let p = &manifest.payload;
    match kind {
        PayloadKind::Linux => {
            let kernel = payload(kernel).ok_or_else(|| missing("kernel"))?;
            let mut config = crate::loaders::linux::LinuxConfig::new(kernel, layout.clone());
            config.initrd = payload(initrd);
            config.cmdline = p.cmdline.as_deref().unwrap_or("");
            crate::loaders::linux::load_linux(importer, &config).map(|_| ())
        }
        PayloadKind::Elf => {
            let kernel = payload(kernel).ok_or_else(|| missing("kernel"))?;
            let mut config = crate::loaders::elf::ElfConfig::new(kernel, layout.clone());
            config.load_base = p.load_base;
            config.rsi = p.rsi.unwrap_or(0);
            config.rsp = p.rsp;
            crate::loaders::elf::load_elf(importer, &config).map(|_| ())
        }
        PayloadKind::Firmware | PayloadKind::Aarch64 => {
            let firmware = payload(firmware).ok_or_else(|| missing("firmware"))?;
            crate::loaders::firmware::load_firmware(importer, &firmware, layout).map(|_| ())
        }
    }
}

fn payload(f: &Option<(String, Vec<u8>)>) -> Option<Payload<'_>> {
    f.as_ref()
        .map(|(n, d)| Payload::new(n.as_str(), d.as_slice()))
}

fn add_parameter_areas<R: GuestArch>(
    importer: &mut dyn ImageLoad<R>,
    manifest: &Manifest,
) -> crate::Result<()> {
    for area in &manifest.parameter_areas {
        let index = importer.create_parameter_area(area.page, area.pages, &area.tag)?;
        for p in &area.parameters {
            importer.import_parameter(index, p.offset, p.kind)?;
        }
    }
    Ok(())
}

fn write_map(map: &mut String, isolation: IsolationType, entries: Vec<MapEntry>) {
    let _ = writeln!(map, "[{}]", isolation.name());
    for e in entries {
        let _ = writeln!(
            map,
            "{:#018x}-{:#018x} {:<22} {:>6} {}",
            e.gpa,
            e.gpa.saturating_add(e.size),
            e.kind,
            e.data_len,
            e.tag
        );
    }
}

/// Reads the manifest at `path`, builds it with payload paths relative to the manifest's
/// folder, and returns the output.
pub fn build_file(path: &Path) -> Result<BuildOutput, BuildError> {
    let name = path.display().to_string();
    let text = read_regular_file(path, crate::manifest::MAX_MANIFEST_SIZE as u64)
        .and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .map_err(|error| BuildError::Io {
            path: path.to_path_buf(),
            error,
        })?;
    let manifest = Manifest::parse(&text, &name)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    build(&manifest, &name, &|file| {
        read_regular_file(&dir.join(file), MAX_PAYLOAD_SIZE)
    })
}

/// Largest payload file `build_file` reads: far more than any kernel, initrd or firmware.
pub const MAX_PAYLOAD_SIZE: u64 = 1 << 30;

/// Reads `path` if it is a regular file of at most `max` bytes. A device (`/dev/zero`), a
/// FIFO or a directory is refused before it is opened, so it can neither block nor fill
/// memory; a file that grows past `max` while read is refused too.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(invalid(format!(
            "{} bytes is more than the {max} accepted",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("more than the {max} bytes accepted")));
    }
    Ok(bytes)
}

/// The files [`write_outputs`] writes for `output` at `igvm_path`: the IGVM file, the map
/// (`.map` beside it) and one `<stem>.<platform>.json` per measurement.
pub fn output_paths(igvm_path: &Path, output: &BuildOutput) -> (PathBuf, Vec<PathBuf>) {
    let stem = igvm_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let json = output
        .measurements
        .iter()
        .map(|m| igvm_path.with_file_name(format!("{stem}.{}.json", m.platform)))
        .collect();
    (igvm_path.with_extension("map"), json)
}

/// Writes the IGVM file, the map and the measurement JSON files; returns every path written.
pub fn write_outputs(igvm_path: &Path, output: &BuildOutput) -> Result<Vec<PathBuf>, BuildError> {
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|error| BuildError::Io {
            path: path.to_path_buf(),
            error,
        })
    };
    let (map_path, json_paths) = output_paths(igvm_path, output);
    write(igvm_path, &output.igvm)?;
    write(&map_path, output.map.as_bytes())?;
    let mut written = vec![igvm_path.to_path_buf(), map_path];
    for (m, path) in output.measurements.iter().zip(json_paths) {
        let mut text = serde_json::to_string_pretty(m).map_err(BuildError::Json)?;
        text.push('\n');
        write(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
