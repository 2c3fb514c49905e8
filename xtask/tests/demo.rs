//! The demo's library entry point, step by step: what `cargo xtask demo` prints is rendered from
//! this same timeline.

#![forbid(unsafe_code)]

use sha2::Digest as _;
use sha2::Sha384;
use xtask::demo::DemoOptions;
use xtask::demo::Outcome;
use xtask::demo::Platform;
use xtask::demo::run;

#[test]
fn every_step_of_the_demo_succeeds_and_the_digests_are_real() {
    let work = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        devices: 2,
        work_root: Some(work.path().to_path_buf()),
        ..DemoOptions::default()
    };
    let (timeline, result) = run(&options);
    result.unwrap();
    // Nothing is left behind: the quote's files and the vTPM's state went with the demo.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    let steps: Vec<(&str, Outcome)> = timeline.steps.iter().map(|s| (s.step, s.outcome)).collect();
    assert_eq!(
        steps,
        [
            ("image", Outcome::Ok),
            ("attest", Outcome::Ok),
            ("quote", Outcome::Ok),
            ("teardown", Outcome::Ok),
        ]
    );
    // The quoted PCRs are the recomputation from the printed digests, and the quote held.
    assert!(timeline.quote_verified);
    let launch = hex::decode(&timeline.digests[0].digest).unwrap();
    let report = hex::decode(&timeline.report_digest).unwrap();
    let expect = |digest: &[u8]| {
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(digest);
        hex::encode(h.finalize())
    };
    let pcrs: Vec<(u32, String)> = timeline
        .pcrs
        .iter()
        .map(|p| (p.pcr, p.value.clone()))
        .collect();
    assert_eq!(
        pcrs,
        [
            (xtask::demo::LAUNCH_PCR, expect(&launch)),
            (xtask::demo::DEVICE_PCR, expect(&report)),
        ]
    );
    assert!(timeline.all_ok());
    let platforms: Vec<Platform> = timeline.digests.iter().map(|d| d.platform).collect();
    assert_eq!(platforms, [Platform::Snp, Platform::Tdx, Platform::Native]);
    for digest in &timeline.digests {
        assert_eq!(digest.digest.len(), 96, "{digest:?}");
    }
    // SNP and TDX measure the same pages differently: equal digests would mean a bug.
    assert_ne!(timeline.digests[0].digest, timeline.digests[1].digest);
    assert_eq!(timeline.report_digest.len(), 96);
    assert!(
        timeline.steps[1].detail.starts_with("2 device(s) in RUN"),
        "{}",
        timeline.steps[1].detail
    );
}

#[test]
fn a_failure_names_its_step_and_stops_the_demo() {
    let options = DemoOptions {
        kernel: Some("/nonexistent/vmlinuz".into()),
        ..DemoOptions::default()
    };
    let (timeline, result) = run(&options);
    let err = result.unwrap_err();
    assert!(
        format!("{err:#}").contains("demo step `image` failed"),
        "{err:#}"
    );
    assert_eq!(timeline.steps.len(), 1);
    let failed = timeline.failed_step().unwrap();
    assert_eq!((failed.step, failed.outcome), ("image", Outcome::Failed));
    assert!(failed.detail.contains("/nonexistent/vmlinuz"));
    assert!(xtask::demo::render(&timeline).contains("FAILED at step `image`"));
}

#[test]
fn zero_devices_is_refused_at_the_attest_step() {
    let options = DemoOptions {
        devices: 0,
        platforms: vec![Platform::Tdx],
        ..DemoOptions::default()
    };
    let (timeline, result) = run(&options);
    assert!(result.is_err());
    assert_eq!(timeline.failed_step().unwrap().step, "attest");
    assert_eq!(timeline.digests.len(), 1);
}
