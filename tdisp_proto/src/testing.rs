//! A conformance suite for any [`TdispGuestRequestInterface`] implementation (feature
//! `test-suite`).
//!
//! The suite observes state only through call results, so it runs unchanged against the host
//! state machine and against the guest client: "the device is `Unlocked`" is checked as "lock
//! succeeds", "the device is not `Locked`" as "start fails". It never looks at report
//! contents. Each check runs on a fresh instance from the factory and the suite returns a
//! [`ConformanceReport`] listing every failed check instead of panicking.
//!
//! ```
//! use tdisp_proto::testing::{run_conformance, ConformanceConfig};
//! # use tdisp_proto::testing::reference::ReferenceModel;
//! let report = run_conformance(&ConformanceConfig::default(), ReferenceModel::default);
//! assert!(report.is_ok(), "{report}");
//! ```

use crate::interface::TdispGuestOperationError;
use crate::interface::TdispGuestProtocolType;
use crate::interface::TdispGuestRequestInterface;
use crate::interface::TdispGuestUnbindReason;
use crate::interface::TdispReportType;
use std::fmt;

pub mod reference;

/// What the suite needs to know about the implementation under test.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// A protocol the implementation supports.
    pub protocol: TdispGuestProtocolType,
    /// Report types the implementation serves in `Locked` and `Run`.
    pub report_types: Vec<TdispReportType>,
}

impl Default for ConformanceConfig {
    /// AMD SEV-TIO v1 and the interface report.
    fn default() -> Self {
        Self {
            protocol: TdispGuestProtocolType::AmdSevTioV1,
            report_types: vec![TdispReportType::InterfaceReport],
        }
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The check's name, which states the rule (for example `lock_from_locked_fails_and_unbinds`).
    pub check: &'static str,
    /// The step that went wrong.
    pub detail: String,
}

/// The outcome of [`run_conformance`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Names of the checks that passed.
    pub passed: Vec<&'static str>,
    /// The checks that failed.
    pub failed: Vec<CheckFailure>,
}

impl ConformanceReport {
    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Whether the named check failed.
    pub fn failed_check(&self, name: &str) -> bool {
        self.failed.iter().any(|f| f.check == name)
    }

    /// `Ok(())` if every check passed, else the failures.
    pub fn into_result(self) -> Result<(), Vec<CheckFailure>> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(self.failed)
        }
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} checks passed, {} failed",
            self.passed.len(),
            self.failed.len()
        )?;
        for failure in &self.failed {
            write!(f, "\n  {}: {}", failure.check, failure.detail)?;
        }
        Ok(())
    }
}

/// A step of a check; `Err` carries what went wrong.
type Step = Result<(), String>;

/// Drives one instance through the steps of a check.
struct Probe<'c, T> {
    target: T,
    config: &'c ConformanceConfig,
    step: usize,
}

impl<T: TdispGuestRequestInterface> Probe<'_, T> {
    fn ok<R>(
        &mut self,
        what: &str,
        result: Result<R, TdispGuestOperationError>,
    ) -> Result<R, String> {
        self.step += 1;
        result.map_err(|e| {
            format!(
                "step {} `{what}` should succeed, failed with {e:?}",
                self.step
            )
        })
    }

    fn err<R: fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<R, TdispGuestOperationError>,
    ) -> Result<TdispGuestOperationError, String> {
        self.step += 1;
        match result {
            Err(TdispGuestOperationError::Success) => Err(format!(
                "step {} `{what}` returned Err(Success), which is not an error",
                self.step
            )),
            Err(e) => Ok(e),
            Ok(value) => Err(format!(
                "step {} `{what}` should fail, succeeded with {value:?}",
                self.step
            )),
        }
    }

    /// Like [`Self::err`], and the error must be `expected`.
    fn err_is<R: fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<R, TdispGuestOperationError>,
        expected: TdispGuestOperationError,
    ) -> Step {
        let error = self.err(what, result)?;
        if error == expected {
            Ok(())
        } else {
            Err(format!(
                "step {} `{what}` should fail with {expected:?}, failed with {error:?}",
                self.step
            ))
        }
    }

    /// A supported protocol other than the configured one.
    fn other_protocol(&self) -> TdispGuestProtocolType {
        match self.config.protocol {
            TdispGuestProtocolType::AmdSevTioV1 => TdispGuestProtocolType::IntelTdxConnectV1,
            _ => TdispGuestProtocolType::AmdSevTioV1,
        }
    }

    fn negotiate(&mut self) -> Step {
        let protocol = self.config.protocol;
        let result = self.target.tdisp_negotiate_protocol(protocol);
        let info = self.ok("negotiate", result)?;
        if info.guest_protocol_type == TdispGuestProtocolType::Invalid {
            return Err(format!("negotiating {protocol:?} answered Invalid"));
        }
        Ok(())
    }

    fn lock_ok(&mut self) -> Step {
        let r = self.target.request_lock_device_resources();
        self.ok("lock", r)
    }

    fn lock_err(&mut self) -> Step {
        let r = self.target.request_lock_device_resources();
        self.err("lock", r).map(drop)
    }

    /// A lock in the wrong state after negotiation: `InvalidDeviceState`.
    fn lock_wrong_state(&mut self) -> Step {
        let r = self.target.request_lock_device_resources();
        self.err_is("lock", r, TdispGuestOperationError::InvalidDeviceState)
    }

    /// A start in the wrong state after negotiation: `InvalidDeviceState`.
    fn start_wrong_state(&mut self) -> Step {
        let r = self.target.request_start_tdi();
        self.err_is("start", r, TdispGuestOperationError::InvalidDeviceState)
    }

    /// A report outside `Locked`/`Run` after negotiation: `InvalidGuestAttestationReportState`.
    fn report_wrong_state(&mut self) -> Step {
        let report_type = self
            .config
            .report_types
            .first()
            .copied()
            .unwrap_or(TdispReportType::InterfaceReport);
        let r = self.target.request_attestation_report(report_type);
        self.err_is(
            &format!("report {report_type:?}"),
            r,
            TdispGuestOperationError::InvalidGuestAttestationReportState,
        )
    }

    /// A report of type `Invalid`: `InvalidGuestAttestationReportType`.
    fn report_invalid_type(&mut self) -> Step {
        let r = self
            .target
            .request_attestation_report(TdispReportType::Invalid);
        self.err_is(
            "report Invalid",
            r,
            TdispGuestOperationError::InvalidGuestAttestationReportType,
        )
    }

    fn start_ok(&mut self) -> Step {
        let r = self.target.request_start_tdi();
        self.ok("start", r)
    }

    fn start_err(&mut self) -> Step {
        let r = self.target.request_start_tdi();
        self.err("start", r).map(drop)
    }

    fn report_ok(&mut self) -> Step {
        for report_type in self.config.report_types.clone() {
            let r = self.target.request_attestation_report(report_type);
            self.ok(&format!("report {report_type:?}"), r)?;
        }
        Ok(())
    }

    fn report_err(&mut self) -> Step {
        let report_type = self
            .config
            .report_types
            .first()
            .copied()
            .unwrap_or(TdispReportType::InterfaceReport);
        let r = self.target.request_attestation_report(report_type);
        self.err(&format!("report {report_type:?}"), r).map(drop)
    }

    fn unbind_ok(&mut self) -> Step {
        let r = self.target.request_unbind(TdispGuestUnbindReason::Graceful);
        self.ok("unbind", r)
    }

    /// The device is `Unlocked`: a report fails (so it is neither `Locked` nor `Run`), start
    /// fails (so it is not `Locked`), and lock then succeeds (so it was `Unlocked`; the failed
    /// calls unbind, which keeps it there). Leaves the device `Locked`.
    fn expect_unbound(&mut self) -> Step {
        self.report_err()?;
        self.start_err()?;
        self.lock_ok()
    }
}

/// A named check: a sequence of steps on a fresh instance.
type Check<T> = (&'static str, fn(&mut Probe<'_, T>) -> Step);

fn checks<T: TdispGuestRequestInterface>() -> Vec<Check<T>> {
    vec![
        ("negotiate_answers_a_valid_protocol", |p| p.negotiate()),
        ("negotiate_invalid_protocol_fails", |p| {
            let r = p
                .target
                .tdisp_negotiate_protocol(TdispGuestProtocolType::Invalid);
            p.err("negotiate Invalid", r).map(drop)
        }),
        ("lock_before_negotiate_fails", |p| p.lock_err()),
        ("start_before_negotiate_fails", |p| p.start_err()),
        ("report_before_negotiate_fails", |p| p.report_err()),
        ("lock_after_negotiate_succeeds", |p| {
            p.negotiate()?;
            p.lock_ok()
        }),
        (
            "negotiate_another_protocol_is_refused_and_changes_nothing",
            |p| {
                p.negotiate()?;
                p.lock_ok()?;
                let other = p.other_protocol();
                let r = p.target.tdisp_negotiate_protocol(other);
                p.err_is(
                    &format!("negotiate {other:?}"),
                    r,
                    TdispGuestOperationError::InvalidGuestProtocolRequest,
                )?;
                // Still `Locked`: start succeeds.
                p.start_ok()
            },
        ),
        ("lock_from_locked_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.lock_wrong_state()?;
            p.expect_unbound()
        }),
        ("lock_from_run_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()?;
            p.lock_wrong_state()?;
            p.expect_unbound()
        }),
        ("start_from_unlocked_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.start_wrong_state()?;
            p.lock_ok()?;
            p.start_ok()
        }),
        ("start_from_locked_succeeds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()
        }),
        ("start_from_run_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()?;
            p.start_wrong_state()?;
            p.expect_unbound()
        }),
        ("report_in_unlocked_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.report_wrong_state()?;
            p.expect_unbound()
        }),
        ("report_in_locked_succeeds_and_keeps_state", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.report_ok()?;
            p.start_ok()
        }),
        ("report_in_run_succeeds_and_keeps_state", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()?;
            p.report_ok()?;
            p.report_ok()?;
            p.start_err()
        }),
        ("report_invalid_type_in_locked_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.report_invalid_type()?;
            p.expect_unbound()
        }),
        ("report_invalid_type_in_run_fails_and_unbinds", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()?;
            p.report_invalid_type()?;
            p.expect_unbound()
        }),
        ("report_after_wrong_state_error_fails", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.lock_err()?;
            p.report_wrong_state()
        }),
        ("unbind_from_unlocked_keeps_unlocked", |p| {
            p.negotiate()?;
            p.unbind_ok()?;
            p.expect_unbound()
        }),
        ("unbind_from_locked_returns_to_unlocked", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.unbind_ok()?;
            p.expect_unbound()
        }),
        ("unbind_from_run_returns_to_unlocked", |p| {
            p.negotiate()?;
            p.lock_ok()?;
            p.start_ok()?;
            p.unbind_ok()?;
            p.report_err()?;
            p.expect_unbound()
        }),
        ("full_cycle_repeats_after_unbind", |p| {
            p.negotiate()?;
            for _ in 0..2 {
                p.lock_ok()?;
                p.report_ok()?;
                p.start_ok()?;
                p.report_ok()?;
                p.unbind_ok()?;
            }
            Ok(())
        }),
    ]
}

/// Runs every check against fresh instances made by `make` and reports which failed.
///
/// `make` must return an implementation that has not been used yet (state `Uninitialized`).
pub fn run_conformance<T, F>(config: &ConformanceConfig, mut make: F) -> ConformanceReport
where
    T: TdispGuestRequestInterface,
    F: FnMut() -> T,
{
    let mut report = ConformanceReport::default();
    for (name, check) in checks::<T>() {
        let mut probe = Probe {
            target: make(),
            config,
            step: 0,
        };
        match check(&mut probe) {
            Ok(()) => report.passed.push(name),
            Err(detail) => {
                tracing::debug!(check = name, %detail, "conformance check failed");
                report.failed.push(CheckFailure {
                    check: name,
                    detail,
                });
            }
        }
    }
    report
}

/// The names of every check [`run_conformance`] runs, in order.
pub fn check_names() -> Vec<&'static str> {
    checks::<reference::ReferenceModel>()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TdispDeviceInterfaceInfo;
    use reference::ReferenceModel;

    /// One deliberate rule violation layered over the reference model.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// A wrong-state lock fails but leaves the state alone (no unbind).
        LockErrorKeepsState,
        /// Reports are served in `Unlocked`.
        ReportInUnlocked,
        /// Start succeeds from `Unlocked`.
        StartFromUnlocked,
        /// Unbind from `Run` leaves the device running.
        UnbindKeepsRun,
        /// Calls work without negotiation.
        NoNegotiationNeeded,
        /// A second negotiation switches to the protocol asked for.
        ProtocolSwitch,
        /// A report in the wrong state answers `InvalidDeviceState`.
        ReportStateAsDeviceState,
        /// A report of type `Invalid` fails but keeps the device bound.
        InvalidReportTypeKeepsState,
    }

    struct Faulty {
        model: ReferenceModel,
        fault: Fault,
    }

    impl Faulty {
        fn new(fault: Fault) -> Self {
            let mut model = ReferenceModel::default();
            if fault == Fault::NoNegotiationNeeded {
                model.state = TdispTdiState::Unlocked;
            }
            Self { model, fault }
        }
    }

    use crate::TdispTdiState;

    impl TdispGuestRequestInterface for Faulty {
        fn tdisp_negotiate_protocol(
            &mut self,
            requested: TdispGuestProtocolType,
        ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
            if self.fault == Fault::ProtocolSwitch {
                self.model.protocol = None;
            }
            self.model.tdisp_negotiate_protocol(requested)
        }

        fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
            if self.fault == Fault::LockErrorKeepsState
                && self.model.state != TdispTdiState::Unlocked
            {
                return Err(TdispGuestOperationError::InvalidDeviceState);
            }
            self.model.request_lock_device_resources()
        }

        fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
            if self.fault == Fault::StartFromUnlocked && self.model.state == TdispTdiState::Unlocked
            {
                self.model.state = TdispTdiState::Run;
                return Ok(());
            }
            self.model.request_start_tdi()
        }

        fn request_attestation_report(
            &mut self,
            report_type: TdispReportType,
        ) -> Result<Vec<u8>, TdispGuestOperationError> {
            if self.fault == Fault::ReportInUnlocked && self.model.state == TdispTdiState::Unlocked
            {
                return Ok(Vec::new());
            }
            let before = self.model.state;
            let result = self.model.request_attestation_report(report_type);
            match (self.fault, result) {
                (
                    Fault::ReportStateAsDeviceState,
                    Err(TdispGuestOperationError::InvalidGuestAttestationReportState),
                ) => Err(TdispGuestOperationError::InvalidDeviceState),
                (
                    Fault::InvalidReportTypeKeepsState,
                    Err(TdispGuestOperationError::InvalidGuestAttestationReportType),
                ) => {
                    self.model.state = before;
                    Err(TdispGuestOperationError::InvalidGuestAttestationReportType)
                }
                (_, result) => result,
            }
        }

        fn request_unbind(
            &mut self,
            reason: TdispGuestUnbindReason,
        ) -> Result<(), TdispGuestOperationError> {
            if self.fault == Fault::UnbindKeepsRun && self.model.state == TdispTdiState::Run {
                return Ok(());
            }
            self.model.request_unbind(reason)
        }
    }

    fn run(fault: Fault) -> ConformanceReport {
        run_conformance(&ConformanceConfig::default(), || Faulty::new(fault))
    }

    #[test]
    fn reference_model_passes_every_check() {
        let report = run_conformance(&ConformanceConfig::default(), ReferenceModel::default);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.passed, check_names());
        assert!(report.passed.len() >= 20);
    }

    #[test]
    fn reference_model_passes_as_boxed_trait_object() {
        let report = run_conformance(&ConformanceConfig::default(), || {
            Box::new(ReferenceModel::default()) as Box<dyn TdispGuestRequestInterface>
        });
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn lock_error_without_unbind_is_caught() {
        let report = run(Fault::LockErrorKeepsState);
        assert!(!report.is_ok());
        assert!(
            report.failed_check("lock_from_locked_fails_and_unbinds"),
            "{report}"
        );
        assert!(
            report.failed_check("lock_from_run_fails_and_unbinds"),
            "{report}"
        );
    }

    #[test]
    fn report_in_unlocked_is_caught() {
        let report = run(Fault::ReportInUnlocked);
        assert!(
            report.failed_check("report_in_unlocked_fails_and_unbinds"),
            "{report}"
        );
    }

    #[test]
    fn start_from_unlocked_is_caught() {
        let report = run(Fault::StartFromUnlocked);
        assert!(
            report.failed_check("start_from_unlocked_fails_and_unbinds"),
            "{report}"
        );
    }

    #[test]
    fn unbind_that_keeps_run_is_caught() {
        let report = run(Fault::UnbindKeepsRun);
        assert!(
            report.failed_check("unbind_from_run_returns_to_unlocked"),
            "{report}"
        );
        assert!(
            !report.failed_check("unbind_from_locked_returns_to_unlocked"),
            "{report}"
        );
    }

    #[test]
    fn protocol_switch_is_caught() {
        let report = run(Fault::ProtocolSwitch);
        assert_eq!(
            report.failed.iter().map(|f| f.check).collect::<Vec<_>>(),
            ["negotiate_another_protocol_is_refused_and_changes_nothing"],
            "{report}"
        );
    }

    #[test]
    fn report_in_the_wrong_state_with_another_error_is_caught() {
        let report = run(Fault::ReportStateAsDeviceState);
        assert!(
            report.failed_check("report_in_unlocked_fails_and_unbinds"),
            "{report}"
        );
        assert!(
            report.failed_check("report_after_wrong_state_error_fails"),
            "{report}"
        );
    }

    #[test]
    fn invalid_report_type_without_unbind_is_caught() {
        let report = run(Fault::InvalidReportTypeKeepsState);
        assert!(
            report.failed_check("report_invalid_type_in_locked_fails_and_unbinds"),
            "{report}"
        );
        assert!(
            report.failed_check("report_invalid_type_in_run_fails_and_unbinds"),
            "{report}"
        );
    }

    #[test]
    fn missing_negotiation_requirement_is_caught() {
        let report = run(Fault::NoNegotiationNeeded);
        assert!(
            report.failed_check("lock_before_negotiate_fails"),
            "{report}"
        );
        assert!(report.into_result().is_err());
    }
}
