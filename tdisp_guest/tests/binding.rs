//! The binding of the interface report to the SPDM session, end to end: our TSM and emulated
//! DSM over an SPDM 1.2 session behind the host state machine, the guest's acceptance flow in
//! front, and a host that tampers with what it serves in between. Each refusal names its
//! check, unbinds the device with reason `Graceful` and leaves the host `Unlocked`.

#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test setup failures and unexpected outcomes fail the test"
)]

use proptest::prelude::*;
use std::sync::Arc;
use std::sync::Mutex;
use tdisp_guest::BindingCheck;
use tdisp_guest::BindingInputs;
use tdisp_guest::BindingPolicy;
use tdisp_guest::BindingRequirement;
use tdisp_guest::BindingViolation;
use tdisp_guest::FlowError;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::accept_device;
use tdisp_guest::verify_binding;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::spdm::cert::DeviceIdentity;
use tdisp_host::spdm::crypto;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::state_machine::TdiStateMachine;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::Tsm;
use tdisp_proto::FEATURE_SESSION_EVIDENCE;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::report::DeviceInterfaceReport;

const ADDRESS: u32 = 0x0500;
const REQUESTER_ID: u16 = 0x0501;
const DEVICE_ID: u64 = 5;
const PROTOCOL: TdispGuestProtocolType = TdispGuestProtocolType::AmdSevTioV1;

/// Rewrites a report the honest host served, or refuses it.
type Edit = Box<dyn FnMut(TdispReportType, Vec<u8>) -> Result<Vec<u8>, TdispGuestOperationError>>;

/// The real host state machine with a hostile step in front of its reports.
struct Tampering {
    machine: TdiStateMachine<TsmBackend>,
    edit: Edit,
    unbinds: Vec<TdispGuestUnbindReason>,
    /// Clear every feature bit the host advertises.
    hide_features: bool,
    /// Start the TDI behind the guest's back before serving the measurements.
    start_before_measurements: bool,
    /// Serve evidence asked with the TSM's own nonce instead of the guest's.
    ignore_nonce: bool,
    /// On the guest's start: stop the TDI, run this (a configuration change), lock and start.
    relock_on_start: Option<Box<dyn FnMut()>>,
}

impl Tampering {
    fn new(machine: TdiStateMachine<TsmBackend>, edit: Edit) -> Self {
        Self {
            machine,
            edit,
            unbinds: Vec::new(),
            hide_features: false,
            start_before_measurements: false,
            ignore_nonce: false,
            relock_on_start: None,
        }
    }
}

impl TdispGuestRequestInterface for Tampering {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        let mut info = self.machine.tdisp_negotiate_protocol(requested)?;
        if self.hide_features {
            info.supported_features = 0;
        }
        Ok(info)
    }
    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        self.machine.request_lock_device_resources()
    }
    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        if let Some(reconfigure) = &mut self.relock_on_start {
            self.machine
                .request_unbind(TdispGuestUnbindReason::Graceful)?;
            reconfigure();
            self.machine.request_lock_device_resources()?;
        }
        self.machine.request_start_tdi()
    }
    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        if self.start_before_measurements && report_type == TdispReportType::Measurements {
            self.machine.request_start_tdi()?;
        }
        let honest = self.machine.request_attestation_report(report_type)?;
        (self.edit)(report_type, honest)
    }
    fn request_attestation_report_with_nonce(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; 32],
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        if self.ignore_nonce {
            return self.request_attestation_report(report_type);
        }
        if self.start_before_measurements && report_type == TdispReportType::Measurements {
            self.machine.request_start_tdi()?;
        }
        let honest = self
            .machine
            .request_attestation_report_with_nonce(report_type, nonce)?;
        (self.edit)(report_type, honest)
    }
    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        self.unbinds.push(reason);
        self.machine.request_unbind(reason)
    }
}

fn assignment() -> EmulatedAssignment {
    EmulatedAssignment::single(ADDRESS, REQUESTER_ID, DEVICE_ID).unwrap()
}

fn policy(roots: Vec<Vec<u8>>) -> InterfacePolicy {
    InterfacePolicy {
        expected_device_specific_info: Some(b"emulated-dsm".to_vec()),
        binding: BindingPolicy::require(roots),
        ..Default::default()
    }
}

fn honest() -> Edit {
    Box::new(|_, report| Ok(report))
}

/// Runs the flow against `assignment` with `edit` in front of its reports and expects a
/// refusal by `check`, after which the device was unbound gracefully and is unlocked.
fn refused_by(
    assignment: &EmulatedAssignment,
    policy: &InterfacePolicy,
    edit: Edit,
    check: BindingCheck,
) -> BindingViolation {
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), edit);
    let error = accept_device(&mut host, PROTOCOL, policy).unwrap_err();
    let FlowError::Binding(violation) = error else {
        panic!("expected a binding refusal, got {error:?}");
    };
    assert_eq!(violation.check(), check, "{violation}");
    assert_eq!(host.unbinds, vec![TdispGuestUnbindReason::Graceful]);
    assert_eq!(host.machine.state(), TdispTdiState::Unlocked);
    violation
}

/// Rewrites the session evidence served as the `Measurements` report.
fn edit_evidence(mut f: impl FnMut(&mut SessionEvidence) + 'static) -> Edit {
    Box::new(move |report_type, report| {
        if report_type != TdispReportType::Measurements {
            return Ok(report);
        }
        let mut evidence = SessionEvidence::decode(&report).unwrap();
        f(&mut evidence);
        Ok(evidence.encode())
    })
}

/// The reports the flow's binding step fetches, captured from a locked device.
struct Captured {
    report: Vec<u8>,
    chain: Vec<u8>,
    evidence: Vec<u8>,
    guest_device_id: Vec<u8>,
}

impl Captured {
    fn inputs(&self) -> BindingInputs<'_> {
        BindingInputs {
            report: &self.report,
            chain: &self.chain,
            evidence: &self.evidence,
            guest_device_id: &self.guest_device_id,
            nonce: None,
        }
    }
}

/// Negotiates, locks and captures every report the binding needs; leaves the TDI locked.
fn capture(machine: &mut impl TdispGuestRequestInterface) -> Captured {
    machine.tdisp_negotiate_protocol(PROTOCOL).unwrap();
    machine.request_lock_device_resources().unwrap();
    let mut get = |t| machine.request_attestation_report(t).unwrap();
    Captured {
        report: get(TdispReportType::InterfaceReport),
        chain: get(TdispReportType::CertificateChain),
        evidence: get(TdispReportType::Measurements),
        guest_device_id: get(TdispReportType::GuestDeviceId),
    }
}

#[test]
fn the_emulated_device_binds_the_report_to_the_session_and_the_guest_accepts_it() {
    let assignment = assignment();
    let mut machine = assignment.machine(MachineConfig::new(DEVICE_ID));
    // The default policy requires the binding of a host that advertises session evidence.
    let policy = InterfacePolicy {
        binding: BindingPolicy {
            trusted_roots: vec![assignment.root_der().to_vec()],
            ..Default::default()
        },
        ..policy(Vec::new())
    };
    assert_eq!(
        policy.binding.requirement,
        BindingRequirement::WhenAdvertised
    );
    let accepted = accept_device(&mut machine, PROTOCOL, &policy).unwrap();
    assert_ne!(
        accepted.info.supported_features & FEATURE_SESSION_EVIDENCE,
        0
    );
    assert_eq!(machine.state(), TdispTdiState::Run);
    let binding = accepted.binding.unwrap();
    assert!(binding.fresh, "the device signed the guest's nonce");
    assert_eq!(binding.report_digest, crypto::hash(&accepted.report_bytes));
    assert_eq!(binding.interface, assignment.interface());
    let evidence = SessionEvidence::decode(&binding.evidence).unwrap();
    assert_eq!(binding.session_th1, evidence.th1(&binding.chain));
    assert_eq!(binding.session_id, evidence.session_id());
    let tsm = assignment.tsm().lock().unwrap();
    assert_eq!(tsm.certificate_chain(ADDRESS), Some(binding.chain.clone()));
}

#[test]
fn a_report_other_than_the_one_the_device_bound_is_refused() {
    let assignment = assignment();
    // The host serves a report the policy accepts, but not the device's.
    let edit: Edit = Box::new(|report_type, report| {
        if report_type != TdispReportType::InterfaceReport {
            return Ok(report);
        }
        let mut decoded = DeviceInterfaceReport::decode(&report).unwrap();
        decoded.lnr_control ^= 1;
        Ok(decoded.to_bytes())
    });
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let violation = refused_by(&assignment, &policy, edit, BindingCheck::ReportDigest);
    assert_eq!(violation, BindingViolation::ReportDigest);
}

#[test]
fn measurements_signed_by_another_key_are_refused() {
    let assignment = assignment();
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let other = DeviceIdentity::generate("impostor").unwrap();
    let key = other.leaf_key.clone();
    let resign = edit_evidence(move |evidence| {
        evidence.measurements_signature = crypto::sign(
            &key,
            crypto::context::MEASUREMENTS,
            &crypto::hash(&evidence.measurements_transcript()),
        );
    });
    refused_by(
        &assignment,
        &policy,
        resign,
        BindingCheck::MeasurementSignature,
    );
}

#[test]
fn a_session_signed_by_another_key_is_refused() {
    let assignment = assignment();
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let other = DeviceIdentity::generate("impostor").unwrap();
    // Another device's whole evidence, served with this device's chain: its key exchange
    // and measurements are signed by a key the chain does not hold.
    let mut impostor = impostor_machine(other);
    let foreign = capture(&mut impostor).evidence;
    let replace: Edit = Box::new(move |report_type, report| {
        Ok(match report_type {
            TdispReportType::Measurements => foreign.clone(),
            _ => report,
        })
    });
    refused_by(
        &assignment,
        &policy,
        replace,
        BindingCheck::SessionSignature,
    );
}

/// A second emulated device with `identity` (same function, so its binding block would name
/// the same interface).
fn impostor_machine(identity: DeviceIdentity) -> TdiStateMachine<TsmBackend> {
    use tdisp_host::dsm::DoeFunction;
    use tdisp_host::spdm::channel::SpdmChannel;
    use tdisp_host::spdm::requester::RequesterConfig;
    use tdisp_host::spdm::responder::ResponderConfig;
    use tdisp_host::spdm::responder::SpdmResponder;
    use tdisp_host::tsm::RegisterMailbox;
    use tdisp_host::tsm::SystemClock;
    let dsm = Arc::new(Mutex::new(
        EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap(),
    ));
    let channel = SpdmChannel::new(RequesterConfig::new(identity.root_der.clone()));
    let responder = SpdmResponder::new(
        ResponderConfig::new(identity, EmulatedAssignment::measurements()),
        dsm,
    );
    let mailbox =
        RegisterMailbox::new(DoeFunction::new(responder), Box::new(SystemClock::new())).unwrap();
    let mut tsm = Tsm::new();
    tsm.probe(
        PciDeviceInfo::tee_io(ADDRESS),
        Box::new(mailbox),
        Box::new(channel),
    );
    tsm.connect(ADDRESS).unwrap();
    tsm.bind(
        ADDRESS,
        BindParams {
            lock: EmulatedAssignment::default_lock(),
            ..BindParams::new(InterfaceId::from_requester_id(REQUESTER_ID), DEVICE_ID)
        },
    )
    .unwrap();
    TdiStateMachine::new(
        MachineConfig::new(DEVICE_ID),
        TsmBackend::new(Arc::new(Mutex::new(tsm)), ADDRESS),
    )
}

#[test]
fn a_chain_that_does_not_lead_to_the_configured_root_is_refused() {
    let assignment = assignment();
    let other_root = DeviceIdentity::generate("other vendor").unwrap().root_der;
    let violation = refused_by(
        &assignment,
        &policy(vec![other_root]),
        honest(),
        BindingCheck::Chain,
    );
    assert!(matches!(violation, BindingViolation::Chain(_)));
}

#[test]
fn a_required_binding_without_a_trusted_root_is_refused() {
    let assignment = assignment();
    refused_by(
        &assignment,
        &policy(Vec::new()),
        honest(),
        BindingCheck::TrustedRoot,
    );
    // The default policy too, since the host advertises session evidence.
    let default = InterfacePolicy::default();
    refused_by(&assignment, &default, honest(), BindingCheck::TrustedRoot);
}

/// Evidence captured in one session, then a new session with the same device (the same
/// report once locked again).
fn older_session(assignment: &EmulatedAssignment) -> SessionEvidence {
    let old = {
        let mut machine = assignment.machine(MachineConfig::new(DEVICE_ID));
        let captured = capture(&mut machine);
        machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        SessionEvidence::decode(&captured.evidence).unwrap()
    };
    let mut tsm = assignment.tsm().lock().unwrap();
    let params = tsm.binding(ADDRESS).unwrap();
    tsm.disconnect(ADDRESS).unwrap();
    tsm.connect(ADDRESS).unwrap();
    tsm.bind(ADDRESS, params).unwrap();
    old
}

#[test]
fn measurements_from_an_older_session_are_refused() {
    let assignment = assignment();
    let old = older_session(&assignment);
    // The host splices the old measurements into this session's evidence.
    let splice = move || {
        let old = old.clone();
        edit_evidence(move |evidence| {
            assert_ne!(evidence.key_exchange, old.key_exchange, "a new session");
            evidence.get_measurements = old.get_measurements.clone();
            evidence.measurements = old.measurements.clone();
            evidence.measurements_signature = old.measurements_signature;
        })
    };
    // They were not signed over the guest's nonce.
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let violation = refused_by(&assignment, &policy, splice(), BindingCheck::Freshness);
    assert_eq!(violation, BindingViolation::StaleEvidence);
    // Without a guest nonce, the binding block still names the old session.
    let mut no_guest_nonce = policy.clone();
    no_guest_nonce.binding.guest_nonce = false;
    let violation = refused_by(
        &assignment,
        &no_guest_nonce,
        splice(),
        BindingCheck::Session,
    );
    assert_eq!(violation, BindingViolation::OtherSession);
}

#[test]
fn a_current_binding_shown_under_an_older_key_exchange_is_refused() {
    let assignment = assignment();
    let old = older_session(&assignment);
    // Fresh measurements (over the guest's nonce, in the current session) presented as if
    // they came from the older session.
    let splice = edit_evidence(move |evidence| {
        assert_eq!(evidence.vca, old.vca, "the same negotiation");
        evidence.key_exchange = old.key_exchange.clone();
        evidence.key_exchange_rsp = old.key_exchange_rsp.clone();
        evidence.key_exchange_signature = old.key_exchange_signature;
    });
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let violation = refused_by(&assignment, &policy, splice, BindingCheck::Session);
    assert_eq!(violation, BindingViolation::OtherSession);
}

#[test]
fn evidence_without_the_guests_nonce_is_refused() {
    let assignment = assignment();
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), honest());
    host.ignore_nonce = true;
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let error = accept_device(&mut host, PROTOCOL, &policy).unwrap_err();
    assert_eq!(error, FlowError::Binding(BindingViolation::StaleEvidence));
    assert_eq!(host.unbinds, vec![TdispGuestUnbindReason::Graceful]);
    assert_eq!(host.machine.state(), TdispTdiState::Unlocked);
}

#[test]
fn missing_evidence_is_refused_when_required() {
    let assignment = assignment();
    let policy = policy(vec![assignment.root_der().to_vec()]);
    for withheld in [
        TdispReportType::CertificateChain,
        TdispReportType::Measurements,
        TdispReportType::GuestDeviceId,
    ] {
        let edit: Edit = Box::new(move |report_type, report| {
            if report_type == withheld {
                Err(TdispGuestOperationError::NotImplemented)
            } else {
                Ok(report)
            }
        });
        let violation = refused_by(&assignment, &policy, edit, BindingCheck::Evidence);
        assert_eq!(
            violation,
            BindingViolation::Missing {
                report_type: withheld,
                error: TdispGuestOperationError::NotImplemented
            }
        );
    }
}

#[test]
fn a_binding_for_another_interface_is_refused() {
    let assignment = assignment();
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let edit: Edit = Box::new(|report_type, report| {
        Ok(match report_type {
            TdispReportType::GuestDeviceId => {
                let mut id = report;
                id[0] ^= 0x08;
                id
            }
            _ => report,
        })
    });
    let violation = refused_by(&assignment, &policy, edit, BindingCheck::BindingBlock);
    assert!(matches!(
        violation,
        BindingViolation::BindingBlock { found: 0, .. }
    ));
}

/// An emulated device whose TSM reaches it over the insecure plain channel.
fn plain_machine() -> TdiStateMachine<TsmBackend> {
    let dsm = EmulatedDsm::new(DsmConfig::single_function(REQUESTER_ID)).unwrap();
    let mut tsm = Tsm::new();
    tsm.probe(
        PciDeviceInfo::tee_io(ADDRESS),
        Box::new(dsm),
        Box::new(PlainChannel::insecure_opt_in()),
    );
    tsm.connect(ADDRESS).unwrap();
    tsm.bind(
        ADDRESS,
        BindParams::new(InterfaceId::from_requester_id(REQUESTER_ID), DEVICE_ID),
    )
    .unwrap();
    TdiStateMachine::new(
        MachineConfig::new(DEVICE_ID),
        TsmBackend::new(Arc::new(Mutex::new(tsm)), ADDRESS),
    )
}

#[test]
fn a_plain_channel_cannot_produce_the_binding() {
    let root = DeviceIdentity::generate("vendor").unwrap().root_der;
    // The host does not advertise session evidence: the default policy does not ask for it.
    let mut machine = plain_machine();
    let accepted = accept_device(&mut machine, PROTOCOL, &InterfacePolicy::default()).unwrap();
    assert_eq!(
        accepted.info.supported_features & FEATURE_SESSION_EVIDENCE,
        0
    );
    assert_eq!(accepted.binding, None);
    // A guest that always requires it refuses the device: there is no evidence to serve.
    let mut machine = plain_machine();
    let policy = InterfacePolicy {
        binding: BindingPolicy::require(vec![root]),
        ..Default::default()
    };
    let error = accept_device(&mut machine, PROTOCOL, &policy).unwrap_err();
    assert!(
        matches!(error, FlowError::Binding(ref v) if v.check() == BindingCheck::Evidence),
        "{error:?}"
    );
    assert_eq!(machine.state(), TdispTdiState::Unlocked);
}

#[test]
fn a_host_hiding_the_feature_opts_out_only_guests_that_let_it() {
    let assignment = assignment();
    let roots = vec![assignment.root_der().to_vec()];
    // The default policy takes the host's word: no feature, no binding asked for.
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), honest());
    host.hide_features = true;
    let default = InterfacePolicy {
        binding: BindingPolicy {
            trusted_roots: roots.clone(),
            ..Default::default()
        },
        ..policy(Vec::new())
    };
    let accepted = accept_device(&mut host, PROTOCOL, &default).unwrap();
    assert_eq!(accepted.binding, None);
    host.request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();
    // A guest that always requires the binding checks it whatever the host advertises.
    let always = policy(roots);
    let accepted = accept_device(&mut host, PROTOCOL, &always).unwrap();
    assert!(accepted.binding.is_some());
}

#[test]
fn a_binding_made_after_the_tdi_left_config_locked_is_refused() {
    let assignment = assignment();
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), honest());
    host.start_before_measurements = true;
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let error = accept_device(&mut host, PROTOCOL, &policy).unwrap_err();
    assert_eq!(
        error,
        FlowError::Binding(BindingViolation::TdiState(tdisp_proto::pcie::TdiState::Run))
    );
    assert_eq!(host.unbinds, vec![TdispGuestUnbindReason::Graceful]);
    assert_eq!(host.machine.state(), TdispTdiState::Unlocked);
}

#[test]
fn certificates_outside_their_validity_at_the_policys_time_are_refused() {
    use std::time::Duration;
    use std::time::SystemTime;
    use tdisp_proto::evidence::cert::CertError;
    let (captured, root) = &*CAPTURED;
    let with_time = |time| BindingPolicy {
        validity_time: Some(time),
        ..BindingPolicy::require(vec![root.clone()])
    };
    // The emulated identity is valid from its creation for ten years.
    let now = SystemTime::now();
    assert!(
        verify_binding(
            &with_time(now + Duration::from_secs(3600)),
            captured.inputs()
        )
        .is_ok()
    );
    let later = now + Duration::from_secs(11 * 365 * 24 * 3600);
    assert_eq!(
        verify_binding(&with_time(later), captured.inputs()),
        Err(BindingViolation::Chain(CertError::RootNotValid))
    );
    let earlier = now - Duration::from_secs(24 * 3600);
    assert_eq!(
        verify_binding(&with_time(earlier), captured.inputs()).map_err(|v| v.check()),
        Err(BindingCheck::Chain)
    );

    // In the flow: refused by the chain check, unbound gracefully.
    let assignment = assignment();
    let policy = InterfacePolicy {
        binding: BindingPolicy {
            validity_time: Some(later),
            ..BindingPolicy::require(vec![assignment.root_der().to_vec()])
        },
        ..policy(Vec::new())
    };
    refused_by(&assignment, &policy, honest(), BindingCheck::Chain);
}

/// A host replaying a whole older session together with that session's report
/// (byte-identical to today's): the evidence it served while the TDI was locked, then the
/// evidence it served once it ran. The guest's nonce refuses it; a guest that does without the
/// nonce cannot tell (the limit `BindingPolicy::guest_nonce` documents).
#[test]
fn a_whole_older_session_replayed_is_refused_only_with_the_guests_nonce() {
    let assignment = assignment();
    let (old, old_running) = {
        let mut machine = assignment.machine(MachineConfig::new(DEVICE_ID));
        let captured = capture(&mut machine);
        machine.request_start_tdi().unwrap();
        let running = machine
            .request_attestation_report(TdispReportType::Measurements)
            .unwrap();
        machine
            .request_unbind(TdispGuestUnbindReason::Graceful)
            .unwrap();
        (captured, running)
    };
    {
        let mut tsm = assignment.tsm().lock().unwrap();
        let params = tsm.binding(ADDRESS).unwrap();
        tsm.disconnect(ADDRESS).unwrap();
        tsm.connect(ADDRESS).unwrap();
        tsm.bind(ADDRESS, params).unwrap();
    }
    let replay = || {
        let report = old.report.clone();
        let mut evidence = vec![old.evidence.clone(), old_running.clone()].into_iter();
        let edit: Edit = Box::new(move |report_type, honest| {
            Ok(match report_type {
                TdispReportType::InterfaceReport => report.clone(),
                TdispReportType::Measurements => evidence.next().unwrap_or(honest),
                _ => honest,
            })
        });
        edit
    };
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let violation = refused_by(&assignment, &policy, replay(), BindingCheck::Freshness);
    assert_eq!(violation, BindingViolation::StaleEvidence);

    let mut without_nonce = policy;
    without_nonce.binding.guest_nonce = false;
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), replay());
    let accepted = accept_device(&mut host, PROTOCOL, &without_nonce).unwrap();
    let binding = accepted.binding.unwrap();
    assert!(!binding.fresh);
    let current = assignment
        .tsm()
        .lock()
        .unwrap()
        .signed_measurements(ADDRESS);
    let current = SessionEvidence::decode(&current.unwrap().unwrap()).unwrap();
    assert_ne!(
        binding.session_th1,
        current.th1(&binding.chain),
        "accepted on an older session's evidence"
    );
}

/// A host that, asked to start the TDI, stops it, moves a BAR, locks it again and starts
/// it: the guest's start succeeds, and the check after it refuses the device.
#[test]
fn a_tdi_reconfigured_and_relocked_behind_the_guests_start_is_refused_after_it() {
    let assignment = assignment();
    let dsm = assignment.dsm().clone();
    let mut host = Tampering::new(assignment.machine(MachineConfig::new(DEVICE_ID)), honest());
    host.relock_on_start = Some(Box::new(move || {
        dsm.lock()
            .unwrap()
            .apply_config_change(tdisp_host::dsm::config::ConfigChange::MoveBar {
                requester_id: REQUESTER_ID,
                bar: 0,
                new_address: 0x2_0000_0000,
            })
            .unwrap();
    }));
    let policy = policy(vec![assignment.root_der().to_vec()]);
    let error = accept_device(&mut host, PROTOCOL, &policy).unwrap_err();
    assert_eq!(error, FlowError::Binding(BindingViolation::ReportDigest));
    assert_eq!(host.unbinds, vec![TdispGuestUnbindReason::Graceful]);
    assert_eq!(host.machine.state(), TdispTdiState::Unlocked);
}

#[test]
fn a_report_with_a_nonce_follows_the_state_rules_of_any_report() {
    let assignment = assignment();
    let mut machine = assignment.machine(MachineConfig::new(DEVICE_ID));
    machine.tdisp_negotiate_protocol(PROTOCOL).unwrap();
    // Before the lock: refused, as any report.
    assert_eq!(
        machine.request_attestation_report_with_nonce(TdispReportType::Measurements, [7; 32]),
        Err(TdispGuestOperationError::InvalidGuestAttestationReportState)
    );
    machine.request_lock_device_resources().unwrap();
    // Locked: the evidence carries the nonce; other types ignore it.
    let evidence = machine
        .request_attestation_report_with_nonce(TdispReportType::Measurements, [7; 32])
        .unwrap();
    let evidence = SessionEvidence::decode(&evidence).unwrap();
    assert_eq!(evidence.requester_nonce().unwrap(), [7; 32]);
    assert_eq!(
        machine.request_attestation_report_with_nonce(TdispReportType::GuestDeviceId, [7; 32]),
        machine.request_attestation_report(TdispReportType::GuestDeviceId)
    );
    assert_eq!(machine.state(), TdispTdiState::Locked);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any single changed byte of the report, the chain or the evidence is refused; the
    /// untouched inputs verify.
    #[test]
    fn every_changed_byte_is_refused(which in 0..3usize, position in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let (captured, root) = &*CAPTURED;
        let policy = BindingPolicy::require(vec![root.clone()]);
        prop_assert!(verify_binding(&policy, captured.inputs()).is_ok());
        let mut report = captured.report.clone();
        let mut chain = captured.chain.clone();
        let mut evidence = captured.evidence.clone();
        let target = match which {
            0 => &mut report,
            1 => &mut chain,
            _ => &mut evidence,
        };
        let at = position.index(target.len());
        target[at] ^= flip;
        let inputs = BindingInputs { report: &report, chain: &chain, evidence: &evidence, guest_device_id: &captured.guest_device_id, nonce: None };
        prop_assert!(verify_binding(&policy, inputs).is_err());
    }
}

/// One capture shared by the property cases (a handshake per case would dominate).
static CAPTURED: std::sync::LazyLock<(Captured, Vec<u8>)> = std::sync::LazyLock::new(|| {
    let assignment = assignment();
    let mut machine = assignment.machine(MachineConfig::new(DEVICE_ID));
    (capture(&mut machine), assignment.root_der().to_vec())
});
