//! `igvmgen`: inspect and measure IGVM files.
//!
//! * `igvmgen dump FILE` lists every header, one per line, in file order.
//! * `igvmgen measure FILE [--platform snp|tdx|vbs]... [--vmm qemu|hyperv]
//!   [--zero-pages normal|zero] [--vmsa-gpa file|kvm] [--max-pages N]` recomputes the launch
//!   digests and prints them as JSON. Exit codes: see [`MEASURE_HELP`].
//! * `igvmgen build --manifest M.toml -o out.igvm` builds an image from a TOML manifest and
//!   writes `out.igvm`, `out.map` and `out.<platform>.json` per measured platform.
//! * `igvmgen qemu FILE [--platform native|vbs|snp|tdx] [--memory MIB] [--accel
//!   auto|kvm|tcg] [-- QEMU-ARGS]` runs the file's native platform (or another platform's
//!   start state, without isolation) on a stock QEMU (serial console on stdio).

#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use igvm_loader::importer::IsolationType;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::Progress;
use igvm_loader::measure::Vmm;
use igvm_loader::measure::VmsaGpa;
use igvm_loader::measure::ZeroPages;
use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes and conventions of `igvmgen measure` (also in the crate docs).
const MEASURE_HELP: &str = "\
SNP conventions: --vmm qemu (default) measures data-less pages as NORMAL zero pages and VMSAs
at KVM's GPA 0xfffffffff000 after every page, in VP-index order; --vmm hyperv measures
data-less pages as NORMAL zero pages and VMSAs at the file's GPA in file order. --zero-pages and --vmsa-gpa override one
convention of the preset; the JSON records the conventions used.

Exit codes:
  0  measured; JSON on stdout
  1  any other failure (for example writing the output)
  2  bad command line
  3  the file cannot be read
  4  the file is not a valid IGVM file (bad magic, truncated, invalid headers or directives)
  5  the file is valid but cannot be measured as asked (platform not in the file, more pages
     than --max-pages, a 2 MiB page carrying file data)";

/// A failure of a file, with its exit code. Every message names the file.
#[derive(Debug, thiserror::Error)]
enum FileError {
    // The message carries the error itself, so it is not also a `source` (which would print
    // it twice).
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Invalid {
        path: PathBuf,
        error: igvm_loader::Error,
    },
    #[error("{}: {error}", path.display())]
    Unmeasurable {
        path: PathBuf,
        error: igvm_loader::Error,
    },
}

impl FileError {
    fn exit_code(&self) -> u8 {
        match self {
            FileError::Read { .. } => 3,
            FileError::Invalid { .. } => 4,
            FileError::Unmeasurable { .. } => 5,
        }
    }

    /// Sorts a measurement error: the file's fault (4) or the request's (5).
    fn of_measure(path: &Path, error: igvm_loader::Error) -> Self {
        use igvm_loader::Error as E;
        let path = path.to_path_buf();
        match error {
            E::PlatformNotInFile(_) | E::TooManyPages { .. } | E::LargePageWithData { .. } => {
                FileError::Unmeasurable { path, error }
            }
            error => FileError::Invalid { path, error },
        }
    }
}

/// Reads and parses `path`; errors name it.
fn read_igvm(path: &Path) -> Result<(Vec<u8>, igvm::IgvmFile), FileError> {
    // Any regular file, however big (measuring is bounded by --max-pages, not file size).
    let bytes =
        igvm_loader::build::read_regular_file(path, u64::MAX).map_err(|error| FileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    let parsed = igvm_loader::parse(&bytes).map_err(|error| FileError::Invalid {
        path: path.to_path_buf(),
        error,
    })?;
    Ok((bytes, parsed))
}

/// Files at least this big get a progress bar while measuring.
const PROGRESS_THRESHOLD: u64 = 64 << 20;

#[derive(Parser)]
#[command(name = "igvmgen", about = "Inspect and measure IGVM files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every header of an IGVM file.
    Dump {
        /// The IGVM file.
        file: PathBuf,
    },
    /// Recompute launch measurements and print them as JSON.
    #[command(after_help = MEASURE_HELP)]
    Measure {
        /// The IGVM file.
        file: PathBuf,
        /// Platforms to measure (default: every measurable platform in the file); a platform
        /// given twice is measured once.
        #[arg(long, value_enum)]
        platform: Vec<PlatformArg>,
        /// SNP: the VMM that launches the file; selects the zero-page and VMSA conventions.
        #[arg(long, value_enum, default_value = "qemu")]
        vmm: VmmArg,
        /// SNP: override the preset's measurement of data-less measured pages.
        #[arg(long, value_enum)]
        zero_pages: Option<ZeroPagesArg>,
        /// SNP: override the preset's VMSA GPA.
        #[arg(long, value_enum)]
        vmsa_gpa: Option<VmsaGpaArg>,
        /// Refuse to measure more pages than this per platform (hostile files can declare
        /// huge ranges; hashing a 4 KiB page takes about a microsecond per record).
        #[arg(long, default_value_t = igvm_loader::measure::DEFAULT_MAX_PAGES)]
        max_pages: u64,
        /// Show a progress bar whatever the file size.
        #[arg(long)]
        progress: bool,
    },
    /// Build an IGVM file, its map and its measurements from a TOML manifest.
    Build {
        /// The manifest (payload paths are relative to it).
        #[arg(long)]
        manifest: PathBuf,
        /// The IGVM file to write (the map and JSON files go beside it).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run a native-platform IGVM file on a stock QEMU.
    Qemu {
        /// The IGVM file.
        file: PathBuf,
        /// The platform whose start state to run (without its isolation).
        #[arg(long, value_enum, default_value = "native")]
        platform: QemuPlatformArg,
        /// The QEMU binary.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Guest memory in MiB (raised to what the file needs).
        #[arg(long, default_value_t = 512)]
        memory: u64,
        /// Accelerator.
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelArg,
        /// Folder for the generated BIOS and range files (default: beside FILE).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Print the QEMU command instead of running it.
        #[arg(long)]
        dry_run: bool,
        /// More arguments for QEMU.
        #[arg(last = true)]
        extra: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum QemuPlatformArg {
    Native,
    Vbs,
    Snp,
    Tdx,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    /// KVM when the processor and /dev/kvm allow it, TCG otherwise.
    Auto,
    /// KVM.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlatformArg {
    Snp,
    Tdx,
    Vbs,
}

#[derive(Clone, Copy, ValueEnum)]
enum VmmArg {
    /// QEMU/KVM: NORMAL zero pages, VMSAs at KVM's GPA after every page.
    Qemu,
    /// Hyper-V/OpenVMM: NORMAL zero pages, VMSAs at the file's GPA in file order.
    Hyperv,
}

#[derive(Clone, Copy, ValueEnum)]
enum ZeroPagesArg {
    /// NORMAL pages of zeros (QEMU's IGVM loader, Hyper-V, the igvm crate).
    Normal,
    /// PAGE_TYPE_ZERO pages (sev-snp-measure's OVMF zero sections, igvmmeasure --native-zero).
    Zero,
}

#[derive(Clone, Copy, ValueEnum)]
enum VmsaGpaArg {
    /// The GPA in the file, in file order.
    File,
    /// KVM's fixed VMSA GPA, after every page.
    Kvm,
}

/// Adapts an indicatif bar to the measurement progress callback.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("igvmgen: {e:#}");
            ExitCode::from(
                e.downcast_ref::<FileError>()
                    .map_or(1, FileError::exit_code),
            )
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dump { file } => {
            let (_, parsed) = read_igvm(&file)?;
            print!("{}", igvm_loader::dump::dump(&parsed));
        }
        Command::Measure {
            file,
            platform,
            vmm,
            zero_pages,
            vmsa_gpa,
            max_pages,
            progress,
        } => {
            let (bytes, parsed) = read_igvm(&file)?;
            let preset = MeasureOptions::for_vmm(match vmm {
                VmmArg::Qemu => Vmm::Qemu,
                VmmArg::Hyperv => Vmm::Hyperv,
            });
            let options = MeasureOptions {
                zero_pages: match zero_pages {
                    None => preset.zero_pages,
                    Some(ZeroPagesArg::Normal) => ZeroPages::Normal,
                    Some(ZeroPagesArg::Zero) => ZeroPages::Zero,
                },
                vmsa_gpa: match vmsa_gpa {
                    None => preset.vmsa_gpa,
                    Some(VmsaGpaArg::File) => VmsaGpa::File,
                    Some(VmsaGpaArg::Kvm) => VmsaGpa::Kvm,
                },
                max_pages,
            };
            let mut platforms: Vec<IsolationType> = platform
                .iter()
                .map(|p| match p {
                    PlatformArg::Snp => IsolationType::Snp,
                    PlatformArg::Tdx => IsolationType::Tdx,
                    PlatformArg::Vbs => IsolationType::Vbs,
                })
                .collect();
            if platforms.is_empty() {
                platforms = igvm_loader::measure::measurable_platforms(&parsed)
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
            }
            let size = bytes.len() as u64;
            let bar = if progress || size >= PROGRESS_THRESHOLD {
                // An estimate: one page per 4 KiB of file, per platform.
                let bar = ProgressBar::new((size / 4096).max(1) * platforms.len() as u64);
                bar.set_style(
                    ProgressStyle::with_template("{bar:40} {pos}/{len} pages {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            } else {
                ProgressBar::hidden()
            };
            let progress = Bar(bar.clone());
            let results = igvm_loader::measure::measure_platforms_with_progress(
                &parsed, &platforms, &options, &progress,
            )
            .map_err(|e| FileError::of_measure(&file, e))?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        Command::Build { manifest, output } => {
            let built = igvm_loader::build::build_file(&manifest)?;
            for path in igvm_loader::build::write_outputs(&output, &built)? {
                println!("{}", path.display());
            }
        }
        Command::Qemu {
            file,
            platform,
            qemu,
            memory,
            accel,
            workdir,
            dry_run,
            extra,
        } => {
            let workdir = workdir.unwrap_or_else(|| file.with_extension("qemu"));
            let kvm = match accel {
                AccelArg::Auto => None,
                AccelArg::Kvm => Some(true),
                AccelArg::Tcg => Some(false),
            };
            let options = igvm_loader::qemu::RunOptions {
                file,
                platform: match platform {
                    QemuPlatformArg::Native => IsolationType::None,
                    QemuPlatformArg::Vbs => IsolationType::Vbs,
                    QemuPlatformArg::Snp => IsolationType::Snp,
                    QemuPlatformArg::Tdx => IsolationType::Tdx,
                },
                qemu,
                memory_mib: memory,
                kvm,
                workdir,
                extra,
            };
            let (mut cmd, warnings) = igvm_loader::qemu::prepare(&options)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if dry_run {
                println!("{cmd:?}");
            } else {
                // QEMU replaces igvmgen, so whoever stops igvmgen stops QEMU.
                use std::os::unix::process::CommandExt;
                return Err(anyhow::Error::from(cmd.exec()).context("starting QEMU"));
            }
        }
    }
    Ok(())
}
