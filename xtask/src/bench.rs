//! `cargo xtask bench`: runs the criterion benches, then reports each headline figure beside the
//! reference measured in the same run.
//!
//! Criterion leaves one `new/estimates.json` per benchmark under `target/criterion/`. After the
//! run this command reads those written by this run (older results are ignored, so a ratio never
//! pairs figures from different runs), pairs each figure with its reference as listed in
//! [`FIGURES`], and writes `target/bench-report.json`, a table on stdout and an SVG chart at
//! `target/bench-report.svg`.

use crate::run::cargo;
use crate::run::run as run_cmd;
use crate::run::workspace_root;
use anyhow::Context;
use anyhow::Result;
use clap::Args;
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// A fast pass: criterion's `--quick` mode (fewer samples, wider intervals).
    #[arg(long)]
    quick: bool,
    /// Only this package's benches (default: every package).
    #[arg(short, long)]
    package: Option<String>,
    /// Only this bench target.
    #[arg(long)]
    bench: Option<String>,
    /// Extra arguments for criterion (after `--`), e.g. a filter.
    #[arg(last = true)]
    criterion_args: Vec<String>,
}

/// A headline figure: a benchmark and the reference it is judged against, both criterion ids
/// (`group/function[/parameter]`) measured in the same run.
struct Figure {
    /// What the ratio means, as printed.
    name: &'static str,
    /// The benchmark under test.
    measured: &'static str,
    /// The reference it is divided by.
    reference: &'static str,
    /// The goal the issues set for the ratio, if any.
    goal: Option<f64>,
}

/// The figures the project tracks (see docs/benchmarks.md).
const FIGURES: &[Figure] = &[
    Figure {
        name: "vmbus 4 KiB packet vs 2x memcpy",
        measured: "packet_one_thread/write_peek_commit/4096",
        reference: "packet_one_thread/memcpy_x2/4096",
        goal: Some(1.5),
    },
    Figure {
        name: "SNP measure 256 MiB vs SHA-384 one core",
        measured: "256MiB/ours_snp",
        reference: "256MiB/sha384_one_core",
        goal: None,
    },
    Figure {
        name: "SNP measure 256 MiB vs SHA-384 all cores",
        measured: "256MiB/ours_snp",
        reference: "256MiB/sha384_all_cores",
        goal: None,
    },
    Figure {
        name: "vTPM GetRandom(32) ring vs direct swtpm",
        measured: "round_trip/v2/get_random_32",
        reference: "round_trip/swtpm_direct/get_random_32",
        goal: Some(1.1),
    },
    Figure {
        name: "TDISP command in the SPDM session vs plain channel",
        measured: "spdm/tdisp_get_state/in_session",
        reference: "spdm/tdisp_get_state/plain_channel",
        goal: None,
    },
    Figure {
        name: "TDISP command over VMBus vs bare ring round trip",
        measured: "vmbus_round_trip/tdisp_negotiate_over_vmbus",
        reference: "vmbus_round_trip/bare_ring_same_sizes",
        goal: Some(2.0),
    },
];

/// One benchmark result read back from criterion.
#[derive(Serialize, Clone, Debug)]
struct BenchResult {
    id: String,
    mean_ns: f64,
    lower_ns: f64,
    upper_ns: f64,
}

/// A figure as reported.
#[derive(Serialize, Debug)]
struct FigureReport {
    name: String,
    measured: String,
    reference: String,
    measured_ns: Option<f64>,
    reference_ns: Option<f64>,
    ratio: Option<f64>,
    goal: Option<f64>,
}

/// The whole report, as written to `target/bench-report.json`.
#[derive(Serialize, Debug)]
struct Report {
    quick: bool,
    figures: Vec<FigureReport>,
    benches: Vec<BenchResult>,
}

/// The package whose benches run pinned to one CPU: where the scheduler puts the swtpm
/// processes they start costs more than the code under test (a cross-vCPU wakeup per round
/// trip on a small VM; see docs/benchmarks.md). swtpm inherits the affinity.
const PINNED_PACKAGE: &str = "vtpm_ring";
/// Its bench targets.
const PINNED_BENCHES: &[&str] = &["round_trip"];

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let started = SystemTime::now();
    let mut criterion_args = args.criterion_args.clone();
    if args.quick {
        criterion_args.push("--quick".into());
    }
    let bench = args.bench.as_deref();
    let package = args.package.as_deref();
    let (wants_rest, wants_pinned) = selection(package, bench);
    let cpu = pin_cpu();
    if wants_rest {
        let mut cmd = bench_command(args.package.as_deref(), bench, &[]);
        if package.is_none() && wants_pinned {
            cmd.args(["--exclude", PINNED_PACKAGE]);
        }
        with_criterion_args(&mut cmd, &criterion_args);
        run_cmd(&mut cmd)?;
    }
    if wants_pinned {
        // Built unpinned (one CPU would only slow the build down), then run pinned.
        run_cmd(&mut bench_command(
            Some(PINNED_PACKAGE),
            bench,
            &["--no-run"],
        ))?;
        let mut cmd = match &cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.current_dir(workspace_root());
                taskset
                    .args(["-c", cpu])
                    .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                taskset.args(bench_command(Some(PINNED_PACKAGE), bench, &[]).get_args());
                taskset
            }
            None => {
                println!(
                    "warning: taskset not found; {PINNED_PACKAGE}'s figures are unpinned and \
                     depend on where swtpm is scheduled"
                );
                bench_command(Some(PINNED_PACKAGE), bench, &[])
            }
        };
        with_criterion_args(&mut cmd, &criterion_args);
        run_cmd(&mut cmd)?;
    }

    let target = target_dir();
    let benches = read_results(&target.join("criterion"), started)?;
    let report = Report {
        quick: args.quick,
        figures: figures(&benches),
        benches,
    };
    let json = target.join("bench-report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    print_table(&report);
    let svg = target.join("bench-report.svg");
    draw_chart(&report, &svg)?;
    println!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}

/// Which of the two runs a selection needs: (the unpinned one, the pinned one).
fn selection(package: Option<&str>, bench: Option<&str>) -> (bool, bool) {
    let pinned_bench = |b: &str| PINNED_BENCHES.contains(&b);
    let pinned = package.is_none_or(|p| p == PINNED_PACKAGE) && bench.is_none_or(pinned_bench);
    let rest = match package {
        Some(p) => p != PINNED_PACKAGE,
        // Every package, or a bench that some other package has.
        None => bench.is_none_or(|b| !pinned_bench(b)),
    };
    (rest, pinned)
}

/// `cargo bench` of the `[[bench]]` targets of `package` (every package without one), or of
/// `bench` alone.
fn bench_command(package: Option<&str>, bench: Option<&str>, extra: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(["bench", "--locked"]);
    match package {
        Some(p) => cmd.args(["--package", p]),
        None => cmd.arg("--workspace"),
    };
    // Only the `[[bench]]` targets (`--benches` would add every lib, whose libtest harness
    // knows none of criterion's options).
    cmd.args(["--bench", bench.unwrap_or("*")]);
    cmd.args(extra);
    cmd
}

fn with_criterion_args(cmd: &mut Command, criterion_args: &[String]) {
    if !criterion_args.is_empty() {
        cmd.arg("--").args(criterion_args);
    }
}

/// The CPU the pinned benches run on (the last one this process may use), when `taskset` is
/// there to pin them.
fn pin_cpu() -> Option<String> {
    if !crate::run::on_path("taskset") {
        return None;
    }
    // The highest CPU this process may run on: the end of `Cpus_allowed_list` (`0-1`, `2,5-7`).
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let last = list.rsplit([',', '-']).next()?;
    last.parse::<usize>().ok().map(|cpu| cpu.to_string())
}

/// Cargo's target directory, as criterion sees it.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Every `new/estimates.json` under `dir` written at or after `since`.
fn read_results(dir: &Path, since: SystemTime) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "report") {
                stack.push(path);
            }
        }
        let estimates = d.join("new").join("estimates.json");
        let meta = d.join("new").join("benchmark.json");
        let fresh = std::fs::metadata(&estimates)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if fresh && let Some(result) = parse_result(&meta, &estimates)? {
            out.push(result);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn parse_result(meta: &Path, estimates: &Path) -> Result<Option<BenchResult>> {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(meta)?)?;
    let est: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(estimates)?)?;
    let Some(id) = meta.get("full_id").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let mean = &est["mean"];
    let (Some(point), Some(lower), Some(upper)) = (
        mean["point_estimate"].as_f64(),
        mean["confidence_interval"]["lower_bound"].as_f64(),
        mean["confidence_interval"]["upper_bound"].as_f64(),
    ) else {
        return Ok(None);
    };
    Ok(Some(BenchResult {
        id: id.to_owned(),
        mean_ns: point,
        lower_ns: lower,
        upper_ns: upper,
    }))
}

fn figures(benches: &[BenchResult]) -> Vec<FigureReport> {
    let find = |id: &str| benches.iter().find(|b| b.id == id).map(|b| b.mean_ns);
    FIGURES
        .iter()
        .map(|f| {
            let measured_ns = find(f.measured);
            let reference_ns = find(f.reference);
            let ratio = match (measured_ns, reference_ns) {
                (Some(m), Some(r)) if r > 0.0 => Some(m / r),
                _ => None,
            };
            FigureReport {
                name: f.name.into(),
                measured: f.measured.into(),
                reference: f.reference.into(),
                measured_ns,
                reference_ns,
                ratio,
                goal: f.goal,
            }
        })
        .collect()
}

/// Human units for a time in nanoseconds.
fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn print_table(report: &Report) {
    println!(
        "\n{:<50} {:>11} {:>11} {:>7} {:>6}",
        "figure", "measured", "reference", "ratio", "goal"
    );
    for f in &report.figures {
        let cell = |v: Option<f64>| v.map_or_else(|| "absent".to_owned(), human);
        let ratio = f
            .ratio
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        let goal = f.goal.map_or_else(String::new, |g| format!("{g:.1}x"));
        println!(
            "{:<50} {:>11} {:>11} {:>7} {:>6}",
            f.name,
            cell(f.measured_ns),
            cell(f.reference_ns),
            ratio,
            goal
        );
    }
    println!("({} benchmarks measured in this run)", report.benches.len());
}

/// A horizontal bar per figure: its ratio to the reference, with the goal marked.
fn draw_chart(report: &Report, path: &Path) -> Result<()> {
    let rows: Vec<&FigureReport> = report.figures.iter().collect();
    let max = rows
        .iter()
        .flat_map(|f| [f.ratio, f.goal])
        .flatten()
        .fold(1.0_f64, f64::max)
        * 1.15;
    let height = 80 + 50 * u32::try_from(rows.len()).unwrap_or(1);
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let count = i32::try_from(rows.len()).unwrap_or(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "each figure / its reference, same run (lower is better)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(380)
        .build_cartesian_2d(0.0..max, (0..count).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| rows.get(i))
                .map_or_else(String::new, |f| f.name.clone()),
            _ => String::new(),
        })
        .x_desc("ratio")
        .draw()?;
    for (i, f) in (0..count).zip(&rows) {
        let Some(ratio) = f.ratio else {
            continue;
        };
        let colour = match f.goal {
            Some(goal) if ratio > goal => RED.mix(0.7),
            _ => BLUE.mix(0.6),
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (ratio, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{ratio:.2}x"),
            (ratio, SegmentValue::CenterOf(i)),
            ("sans-serif", 14),
        )))?;
        if let Some(goal) = f.goal {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (goal, SegmentValue::Exact(i)),
                    (goal, SegmentValue::Exact(i + 1)),
                ],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, mean_ns: f64) -> BenchResult {
        BenchResult {
            id: id.into(),
            mean_ns,
            lower_ns: mean_ns,
            upper_ns: mean_ns,
        }
    }

    #[test]
    fn the_vtpm_benches_run_apart_and_only_when_selected() {
        // (unpinned run, pinned run)
        assert_eq!(selection(None, None), (true, true));
        assert_eq!(selection(Some("vtpm_ring"), None), (false, true));
        assert_eq!(selection(None, Some("round_trip")), (false, true));
        assert_eq!(
            selection(Some("vtpm_ring"), Some("round_trip")),
            (false, true)
        );
        assert_eq!(selection(None, Some("ring")), (true, false));
        assert_eq!(selection(Some("vmbus_channel"), None), (true, false));
        assert_eq!(
            selection(Some("vmbus_channel"), Some("ring")),
            (true, false)
        );
    }

    #[test]
    fn figures_pair_measured_with_reference_and_mark_absent() {
        let benches = [
            result("packet_one_thread/write_peek_commit/4096", 300.0),
            result("packet_one_thread/memcpy_x2/4096", 200.0),
        ];
        let figures = figures(&benches);
        assert_eq!(figures[0].ratio, Some(1.5));
        assert!(figures[1..].iter().all(|f| f.ratio.is_none()));
    }

    #[test]
    fn chart_is_written_as_svg() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("c.svg");
        let report = Report {
            quick: true,
            figures: figures(&[
                result("256MiB/ours_snp", 3.0),
                result("256MiB/sha384_one_core", 5.0),
            ]),
            benches: Vec::new(),
        };
        draw_chart(&report, &path)?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.starts_with("<svg") && svg.contains("0.60x"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
