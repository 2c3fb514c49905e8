//! `igvmgen`: inspect and measure IGVM files.
//!
//! * `igvmgen dump FILE` lists every header, one per line, in file order.
//! * `igvmgen measure FILE [--platform snp|tdx|vbs]... [--zero-pages qemu|normal]
//!   [--vmsa-gpa file|kvm]` recomputes the launch digests and prints them as JSON.
//! * `igvmgen build --manifest M.toml -o out.igvm` builds an image from a TOML manifest and
//!   writes `out.igvm`, `out.map` and `out.<platform>.json` per measured platform.
//! * `igvmgen qemu FILE [--platform native|vbs|snp|tdx] [--memory MIB] [--accel
//!   auto|kvm|tcg] [-- QEMU-ARGS]` runs the file's native platform (or another platform's
//!   start state, without isolation) on a stock QEMU (serial console on stdio).

#![forbid(unsafe_code)]

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use igvm_loader::importer::IsolationType;
use igvm_loader::measure::MeasureOptions;
use igvm_loader::measure::Progress;
use igvm_loader::measure::VmsaGpa;
use igvm_loader::measure::ZeroPages;
use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use std::path::PathBuf;

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
    Measure {
        /// The IGVM file.
        file: PathBuf,
        /// Platforms to measure (default: every measurable platform in the file).
        #[arg(long, value_enum)]
        platform: Vec<PlatformArg>,
        /// SNP: how data-less measured pages are measured.
        #[arg(long, value_enum, default_value = "qemu")]
        zero_pages: ZeroPagesArg,
        /// SNP: which GPA VMSA pages are measured at.
        #[arg(long, value_enum, default_value = "file")]
        vmsa_gpa: VmsaGpaArg,
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
enum ZeroPagesArg {
    /// PAGE_TYPE_ZERO, as QEMU/KVM measure them.
    Qemu,
    /// NORMAL pages of zeros, as Hyper-V and the igvm crate do.
    Normal,
}

#[derive(Clone, Copy, ValueEnum)]
enum VmsaGpaArg {
    /// The GPA in the file.
    File,
    /// KVM's fixed VMSA GPA.
    Kvm,
}

/// Adapts an indicatif bar to the measurement progress callback.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dump { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let parsed = igvm_loader::parse(&bytes)?;
            print!("{}", igvm_loader::dump::dump(&parsed));
        }
        Command::Measure {
            file,
            platform,
            zero_pages,
            vmsa_gpa,
            progress,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let parsed = igvm_loader::parse(&bytes)?;
            let options = MeasureOptions {
                zero_pages: match zero_pages {
                    ZeroPagesArg::Qemu => ZeroPages::Qemu,
                    ZeroPagesArg::Normal => ZeroPages::Normal,
                },
                vmsa_gpa: match vmsa_gpa {
                    VmsaGpaArg::File => VmsaGpa::File,
                    VmsaGpaArg::Kvm => VmsaGpa::Kvm,
                },
                ..MeasureOptions::default()
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
            )?;
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
                return Err(cmd.exec()).context("starting QEMU");
            }
        }
    }
    Ok(())
}
