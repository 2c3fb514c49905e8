//! `cargo xtask demo`: one confidential guest's life, end to end, with the library crates.
//!
//! 1. **image**: build a measured IGVM image for SNP, TDX and native with the loaders
//!    (`igvm_loader`), from Debian's kernel when it is installed, else from a payload made on
//!    the fly, and measure each platform's launch digest.
//! 2. **attest**: bring up the VMBus server and client (`vmbus_channel`); the host offers a
//!    TDISP-capable virtual function (`tdisp_host`); the guest (`tdisp_guest`) negotiates,
//!    locks, reads and verifies the interface report, then starts the TDI.
//! 3. **quote**: bring up the vTPM split driver (`vtpm_ring`) in front of a real swtpm; the
//!    guest extends one PCR with the launch digest and another with the verified report's
//!    hash, and quotes them; stock `tpm2_checkquote` verifies the quote against PCR values
//!    recomputed here from the digests.
//! 4. **teardown**: unbind, close, rescind, shut the vTPM down.
//!
//! Each step is timed and recorded in a [`Timeline`]; a failure names its step.

mod attest;
mod image;
mod quote;
mod vtpm;

use serde::Serialize;
use std::time::Instant;

/// An isolation platform the demo builds the image for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// AMD SEV-SNP (SHA-384 launch digest).
    Snp,
    /// Intel TDX (MRTD).
    Tdx,
    /// No isolation (no launch digest; the file's SHA-384 stands in).
    Native,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Platforms to build the image for.
    pub platforms: Vec<Platform>,
    /// TDISP devices the host assigns to the guest.
    pub devices: usize,
    /// Leave the vTPM served after the demo, for tpm2-tools.
    pub keep: bool,
    /// Build from this kernel instead of looking for Debian's.
    pub kernel: Option<std::path::PathBuf>,
    /// Where the demo makes its working directory (the quote's files, the vTPM's state),
    /// removed when the demo ends; the system's temporary directory by default.
    pub work_root: Option<std::path::PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            platforms: vec![Platform::Snp, Platform::Tdx, Platform::Native],
            devices: 1,
            keep: false,
            kernel: None,
            work_root: None,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The step did what it says.
    Ok,
    /// The step failed; the demo stopped there.
    Failed,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// The step (`image`, `attest`, `quote`, `teardown`).
    pub step: &'static str,
    /// The component that did the work.
    pub component: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it produced, for a person.
    pub detail: String,
    /// Milliseconds it took.
    pub millis: f64,
}

/// A launch digest the image step measured.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchDigest {
    /// The platform.
    pub platform: Platform,
    /// Algorithm of the digest (`sha384`).
    pub algorithm: String,
    /// The digest, hex.
    pub digest: String,
}

/// PCR the guest extends with the image's launch digest.
pub const LAUNCH_PCR: u32 = 11;
/// PCR the guest extends with the SHA-384 of the verified device interface report.
pub const DEVICE_PCR: u32 = 12;

/// A PCR value the demo recomputed from the digests (and the TPM reported, and the quote
/// covers).
#[derive(Debug, Clone, Serialize)]
pub struct PcrValue {
    /// PCR index.
    pub pcr: u32,
    /// The bank (`sha384`).
    pub bank: String,
    /// The value, hex: SHA-384(48 zero bytes || extended digest).
    pub value: String,
}

/// Everything the demo did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// The steps in order.
    pub steps: Vec<StepRecord>,
    /// Launch digests per platform (image step).
    pub digests: Vec<LaunchDigest>,
    /// Where the image came from (Debian kernel path or "generated payload").
    pub image_source: String,
    /// The IGVM file's size in bytes.
    pub image_bytes: usize,
    /// SHA-384 of the verified interface report of the first device, hex (attest step).
    pub report_digest: String,
    /// The quoted PCRs, as recomputed (quote step).
    pub pcrs: Vec<PcrValue>,
    /// `tpm2_checkquote` accepted the quote against [`Timeline::pcrs`].
    pub quote_verified: bool,
}

impl Timeline {
    /// Whether every step succeeded.
    pub fn all_ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.outcome == Outcome::Ok)
    }

    /// The step that failed, if any.
    pub fn failed_step(&self) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.outcome == Outcome::Failed)
    }

    /// Runs `f` as step `step`, recording its time and result.
    fn record<T>(
        &mut self,
        step: &'static str,
        component: &str,
        f: impl FnOnce(&mut Self) -> anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        let result = f(self);
        let millis = start.elapsed().as_secs_f64() * 1000.0;
        let (outcome, detail, value) = match result {
            Ok((value, detail)) => (Outcome::Ok, detail, Ok(value)),
            Err(err) => (
                Outcome::Failed,
                format!("{err:#}"),
                Err(err.context(format!("demo step `{step}` failed"))),
            ),
        };
        tracing::info!(step, component, ?outcome, millis, "demo step");
        self.steps.push(StepRecord {
            step,
            component: component.to_owned(),
            outcome,
            detail,
            millis,
        });
        value
    }
}

/// Plays the demo. The timeline is returned in both cases: on failure its last step is the
/// failed one (and `Err` carries the cause).
pub fn run(options: &DemoOptions) -> (Timeline, anyhow::Result<()>) {
    let mut timeline = Timeline::default();
    let result = run_steps(options, &mut timeline);
    (timeline, result)
}

fn run_steps(options: &DemoOptions, timeline: &mut Timeline) -> anyhow::Result<()> {
    let _image = timeline.record("image", "igvm_loader", |t| image::build(options, t))?;
    let platform = options.platforms.first().copied().unwrap_or(Platform::Snp);
    let attested = timeline.record("attest", "vmbus_channel + tdisp_host + tdisp_guest", |_| {
        attest::attest(platform, options.devices)
    })?;
    timeline.report_digest = hex::encode(attested.report_digest);
    let launch = timeline
        .digests
        .iter()
        .find(|d| d.platform == platform)
        .map(|d| d.digest.clone())
        .unwrap_or_default();
    // The quote's files and the vTPM's state live only as long as the demo (a newcomer runs
    // it again and again); with --keep, as long as the vTPM is served.
    let root = options.work_root.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("cvm-demo-")
        .tempdir_in(&root)
        .map_err(|e| anyhow::anyhow!("creating the demo's working directory: {e}"))?;
    let vtpm = timeline.record("quote", "vtpm_ring + swtpm + tpm2-tools", |t| {
        quote_step(dir.path(), &launch, &attested.report_digest, t)
    });
    // Tear down what came up, even after a failed quote.
    let vtpm = match vtpm {
        Ok(vtpm) => vtpm,
        Err(err) => {
            let _ = attested.tear_down();
            return Err(err);
        }
    };
    timeline.record(
        "teardown",
        "tdisp_guest + vmbus_channel + vtpm_ring",
        |_| {
            let bus = attested.tear_down()?;
            let tpm = if options.keep {
                vtpm.serve_until_interrupted(dir.path())?
            } else {
                vtpm.shut_down()?
            };
            Ok(((), format!("{bus}; {tpm}")))
        },
    )?;
    Ok(())
}

/// Starts the vTPM, extends PCR 11 with the launch digest and PCR 12 with the report's hash,
/// and has the quote over them verified.
fn quote_step(
    dir: &std::path::Path,
    launch: &str,
    report_digest: &[u8; 48],
    timeline: &mut Timeline,
) -> anyhow::Result<(vtpm::Vtpm, String)> {
    use anyhow::Context as _;
    let launch: [u8; 48] = hex::decode(launch)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("the image step left no SHA-384 launch digest for this platform")?;
    let work = dir.join("guest");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let vtpm = vtpm::Vtpm::start(dir.join("vtpm-state"))?;
    let extends = [
        quote::Extend {
            pcr: LAUNCH_PCR,
            digest: launch,
        },
        quote::Extend {
            pcr: DEVICE_PCR,
            digest: *report_digest,
        },
    ];
    let evidence = match quote::extend_and_quote(&vtpm.endpoint, &work, &extends) {
        Ok(evidence) => evidence,
        Err(err) => {
            let _ = vtpm.shut_down();
            return Err(err);
        }
    };
    timeline.pcrs = evidence
        .expected
        .iter()
        .map(|(pcr, value)| PcrValue {
            pcr: *pcr,
            bank: quote::BANK.into(),
            value: hex::encode(value),
        })
        .collect();
    timeline.quote_verified = true;
    let detail = format!(
        "PCR {LAUNCH_PCR} <- launch digest, PCR {DEVICE_PCR} <- report hash; tpm2_checkquote accepted the quote against the recomputed values; {}",
        vtpm.describe()
    );
    Ok((vtpm, detail))
}

/// The timeline as a person reads it.
pub fn render(timeline: &Timeline) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<34} {:<6} {:>9}  detail",
        "step", "component", "result", "time"
    );
    for s in &timeline.steps {
        let result = match s.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
        };
        let _ = writeln!(
            out,
            "{:<9} {:<34} {:<6} {:>7.1}ms  {}",
            s.step, s.component, result, s.millis, s.detail
        );
    }
    if !timeline.digests.is_empty() {
        let _ = writeln!(out, "\nlaunch digests ({}):", timeline.image_source);
        for d in &timeline.digests {
            let platform = format!("{:?}", d.platform).to_lowercase();
            let _ = writeln!(out, "  {platform:<7} {:<15} {}", d.algorithm, d.digest);
        }
    }
    if !timeline.report_digest.is_empty() {
        let _ = writeln!(out, "device report sha384: {}", timeline.report_digest);
    }
    if !timeline.pcrs.is_empty() {
        let verified = if timeline.quote_verified {
            "quote verified by tpm2_checkquote"
        } else {
            "quote NOT verified"
        };
        let _ = writeln!(
            out,
            "quoted PCRs = SHA-384(0^48 || digest), recomputed here ({verified}):"
        );
        for p in &timeline.pcrs {
            let _ = writeln!(out, "  {}:{:<3} {}", p.bank, p.pcr, p.value);
        }
    }
    let total: f64 = timeline.steps.iter().map(|s| s.millis).sum();
    let _ = match timeline.failed_step() {
        None => writeln!(
            out,
            "\nall {} steps ok in {total:.0} ms",
            timeline.steps.len()
        ),
        Some(failed) => writeln!(
            out,
            "\nFAILED at step `{}` ({}): {}",
            failed.step, failed.component, failed.detail
        ),
    };
    out
}
