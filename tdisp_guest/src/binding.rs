//! The binding between the interface report a guest receives and the SPDM session it
//! travelled in: the guest's policy for it ([`BindingPolicy`]) and the one place that decides
//! whether a piece of session evidence vouches for a report ([`verify_binding`]).
//!
//! The evidence is what the host serves as the `Measurements` report
//! ([`tdisp_proto::evidence::bundle`]), checked against the `CertificateChain` report and the
//! `GuestDeviceId` report. [`verify_binding`] runs these checks in this order and answers with
//! the first [`BindingViolation`], whose [`BindingViolation::check`] names the
//! [`BindingCheck`] that failed:
//!
//! 1. the policy names at least one trusted root;
//! 2. the chain (SPDM slot format) leads to one of those roots, each certificate signed by
//!    the one before, every issuer a CA, the leaf key P-384, and, when the policy gives a
//!    [`BindingPolicy::validity_time`], the root and each certificate valid at that time (no
//!    revocation);
//! 3. the evidence parses (every length checked);
//! 4. the leaf key signed the session's key exchange: `VCA || SHA-384(chain) || KEY_EXCHANGE ||
//!    KEY_EXCHANGE_RSP`, which names the session (its hash with the signature is TH1, the
//!    value every session key is derived from);
//! 5. the leaf key signed the measurements: `VCA || GET_MEASUREMENTS || MEASUREMENTS` (the
//!    same VCA: one connection), and, when the guest sent a nonce
//!    ([`BindingPolicy::guest_nonce`], the default), over exactly that nonce: the device signed
//!    after the guest asked, so no older evidence passes;
//! 6. among the measurement blocks is exactly one TDI binding block for the guest's interface;
//! 7. that block names the session of step 4 (its TH1): evidence from another or an older
//!    session is refused;
//! 8. that block holds SHA-384 of exactly the interface report bytes the guest received;
//! 9. that block says the TDI is CONFIG_LOCKED (the guest verifies before it starts the TDI).
//!
//! After its start succeeds the flow asks once more, with a new nonce, and
//! [`verify_running`] requires the same checks with the TDI in RUN, in the same session, over
//! the same report: a host that stopped, reconfigured and re-locked the TDI between the
//! guest's check and its start is caught there.

use std::time::SystemTime;
use tdisp_proto::FEATURE_SESSION_EVIDENCE;
use tdisp_proto::REPORT_NONCE_SIZE;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispReportType;
use tdisp_proto::evidence::bundle::EvidenceError;
use tdisp_proto::evidence::bundle::SessionEvidence;
use tdisp_proto::evidence::cert::CertError;
use tdisp_proto::evidence::cert::validate_slot_at;
use tdisp_proto::evidence::signature::HASH_SIZE;
use tdisp_proto::evidence::signature::context;
use tdisp_proto::evidence::signature::hash;
use tdisp_proto::evidence::signature::verify;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::header::FunctionId;
use thiserror::Error;

/// When the guest requires the session binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BindingRequirement {
    /// Always: a host that serves no evidence is refused.
    Always,
    /// When the host advertises [`FEATURE_SESSION_EVIDENCE`] at negotiation (the default). A
    /// host that does not advertise it, honestly (a plain channel) or not, is not asked: a
    /// guest that must not depend on the host's word sets [`Self::Always`].
    #[default]
    WhenAdvertised,
    /// Never: the guest accepts the report on the host's word.
    Never,
}

/// What the guest requires of the binding and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingPolicy {
    /// When the binding is required.
    pub requirement: BindingRequirement,
    /// Root certificates (DER) a device chain may lead to: the device vendors' roots, known to
    /// the guest by its own means (never taken from the host). Empty refuses every device
    /// whose binding is required.
    pub trusted_roots: Vec<Vec<u8>>,
    /// The time at which the root and every certificate of the chain must be within their
    /// validity period (notBefore ..= notAfter), read by the guest from a clock it trusts
    /// before it runs the flow. In a confidential VM the ordinary wall clock is the host's:
    /// a time from it proves nothing against the host. `None` (the default): dates are not
    /// checked.
    pub validity_time: Option<SystemTime>,
    /// Send a fresh nonce of the guest's own with the `Measurements` request and require the
    /// device-signed evidence to carry it (the default): evidence older than the request is
    /// refused. Needs a host that takes the nonce (this project's extension of the protocol);
    /// `false` accepts the host's nonce, and with it replays of whole older sessions.
    pub guest_nonce: bool,
}

impl Default for BindingPolicy {
    /// Required when advertised, no trusted root, no date check, a guest nonce.
    fn default() -> Self {
        Self {
            requirement: BindingRequirement::default(),
            trusted_roots: Vec::new(),
            validity_time: None,
            guest_nonce: true,
        }
    }
}

impl BindingPolicy {
    /// Requires the binding always, trusting `roots`.
    pub fn require(roots: Vec<Vec<u8>>) -> Self {
        Self {
            requirement: BindingRequirement::Always,
            trusted_roots: roots,
            ..Self::default()
        }
    }

    /// Whether the binding is required of a host advertising `supported_features`.
    pub fn is_required(&self, supported_features: u64) -> bool {
        match self.requirement {
            BindingRequirement::Always => true,
            BindingRequirement::WhenAdvertised => {
                supported_features & FEATURE_SESSION_EVIDENCE != 0
            }
            BindingRequirement::Never => false,
        }
    }
}

/// The checks of [`verify_binding`] (and the fetches before it), in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingCheck {
    /// The host served every report the binding needs.
    Evidence,
    /// The policy names a trusted root.
    TrustedRoot,
    /// The chain leads to a trusted root.
    Chain,
    /// The evidence and the guest device id parse.
    Format,
    /// The device signed the session's key exchange.
    SessionSignature,
    /// The device signed the measurements.
    MeasurementSignature,
    /// The measurements were signed over the guest's nonce.
    Freshness,
    /// One binding block names the guest's interface.
    BindingBlock,
    /// The binding block names the session the evidence shows.
    Session,
    /// The binding block holds the digest of the report received.
    ReportDigest,
    /// The binding block says the TDI is CONFIG_LOCKED.
    TdiState,
}

/// Why the binding was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindingViolation {
    /// The host did not serve a report the binding needs.
    #[error("host did not serve the {report_type:?} report: {error}")]
    Missing {
        /// The report.
        report_type: TdispReportType,
        /// The host's answer.
        #[source]
        error: TdispGuestOperationError,
    },
    /// The policy trusts no root.
    #[error("the binding is required but the policy trusts no root")]
    NoTrustedRoot,
    /// The chain leads to none of the trusted roots, or is outside its validity period at the
    /// policy's time (the error for the root the chain names, if it names a trusted one).
    #[error("certificate chain refused")]
    Chain(#[source] CertError),
    /// The evidence is malformed.
    #[error("session evidence malformed")]
    Evidence(#[source] EvidenceError),
    /// The guest device id is not a TDISP interface id.
    #[error("guest device id of {0} bytes is not a TDISP interface id")]
    DeviceId(usize),
    /// The key-exchange signature does not verify under the chain's leaf key.
    #[error("the session's key exchange is not signed by the device's leaf key")]
    SessionSignature,
    /// The measurements signature does not verify under the chain's leaf key.
    #[error("the measurements are not signed by the device's leaf key")]
    MeasurementSignature,
    /// The signed measurements carry another nonce than the one the guest sent.
    #[error("the measurements were not signed over the guest's nonce (stale or replayed)")]
    StaleEvidence,
    /// The guest could not draw a nonce.
    #[error("no randomness for the guest's nonce")]
    NoRandomness,
    /// No (or more than one) binding block names the interface.
    #[error("{found} binding blocks name interface {interface:?}, expected one")]
    BindingBlock {
        /// The guest's interface.
        interface: InterfaceId,
        /// How many name it.
        found: usize,
    },
    /// The binding block names another session than the evidence's.
    #[error("the binding names another session than the one the evidence shows (replay?)")]
    OtherSession,
    /// The binding block's digest is not the digest of the report received.
    #[error("the interface report received is not the one the device bound")]
    ReportDigest,
    /// The binding block's TDI state is not the one expected (CONFIG_LOCKED before the
    /// guest's start, RUN after it).
    #[error("the device bound the report in state {0:?}, not the one expected")]
    TdiState(TdiState),
}

impl BindingViolation {
    /// The check that failed.
    pub fn check(&self) -> BindingCheck {
        match self {
            Self::Missing { .. } => BindingCheck::Evidence,
            Self::NoTrustedRoot => BindingCheck::TrustedRoot,
            Self::Chain(_) => BindingCheck::Chain,
            Self::Evidence(_) | Self::DeviceId(_) => BindingCheck::Format,
            Self::SessionSignature => BindingCheck::SessionSignature,
            Self::MeasurementSignature => BindingCheck::MeasurementSignature,
            Self::StaleEvidence | Self::NoRandomness => BindingCheck::Freshness,
            Self::BindingBlock { .. } => BindingCheck::BindingBlock,
            Self::OtherSession => BindingCheck::Session,
            Self::ReportDigest => BindingCheck::ReportDigest,
            Self::TdiState(_) => BindingCheck::TdiState,
        }
    }
}

/// The reports the binding is checked on, exactly as the host served them.
#[derive(Debug, Clone, Copy)]
pub struct BindingInputs<'a> {
    /// The interface report.
    pub report: &'a [u8],
    /// The `CertificateChain` report (SPDM slot format).
    pub chain: &'a [u8],
    /// The `Measurements` report (session evidence).
    pub evidence: &'a [u8],
    /// The `GuestDeviceId` report (the TDISP interface id, 12 bytes).
    pub guest_device_id: &'a [u8],
    /// The nonce the guest sent with its `Measurements` request, which the signed
    /// measurements must carry; `None` when it sent none.
    pub nonce: Option<[u8; REPORT_NONCE_SIZE]>,
}

/// A binding that passed every check: what the guest may keep as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBinding {
    /// Which trusted root the chain leads to (index into [`BindingPolicy::trusted_roots`]).
    pub root_index: usize,
    /// The device's chain, slot format.
    pub chain: Vec<u8>,
    /// The session evidence, as served.
    pub evidence: Vec<u8>,
    /// The SPDM session id (as the key exchange carried it).
    pub session_id: u32,
    /// The session's TH1.
    pub session_th1: [u8; HASH_SIZE],
    /// The interface the device bound the report to.
    pub interface: InterfaceId,
    /// SHA-384 of the interface report.
    pub report_digest: [u8; HASH_SIZE],
    /// The GET_MEASUREMENTS nonce the device signed: the guest's own when it sent one (then
    /// the measurements are younger than the request), else the host TSM's (which proves no
    /// freshness to the guest).
    pub requester_nonce: [u8; 32],
    /// Whether the nonce is the guest's.
    pub fresh: bool,
}

/// Decodes a `GuestDeviceId` report: the 12-byte TDISP interface id (function id u32 LE,
/// 8 reserved zero bytes).
pub fn decode_guest_device_id(bytes: &[u8]) -> Result<InterfaceId, BindingViolation> {
    let bad = || BindingViolation::DeviceId(bytes.len());
    let (function, reserved) = bytes.split_at_checked(4).ok_or_else(bad)?;
    let function = u32::from_le_bytes(function.try_into().map_err(|_| bad())?);
    if reserved != [0; 8] || function & !FunctionId::DEFINED_BITS != 0 {
        return Err(bad());
    }
    Ok(InterfaceId {
        function_id: FunctionId::from_bits(function),
    })
}

/// Decides whether `inputs` bind the interface report to an SPDM session with a device whose
/// chain leads to one of `policy`'s roots (the checks of the module docs, in order).
pub fn verify_binding(
    policy: &BindingPolicy,
    inputs: BindingInputs<'_>,
) -> Result<VerifiedBinding, BindingViolation> {
    verify_in_state(policy, inputs, TdiState::ConfigLocked)
}

/// The check after the guest's start: `inputs` (fresh evidence, the same report, chain and
/// guest device id) must pass every check of [`verify_binding`] with the TDI in RUN, in the
/// same session as `before`, over the same report: the TDI the host started is the one the
/// guest verified, not one stopped, reconfigured and locked again in between.
pub fn verify_running(
    policy: &BindingPolicy,
    before: &VerifiedBinding,
    inputs: BindingInputs<'_>,
) -> Result<VerifiedBinding, BindingViolation> {
    let after = verify_in_state(policy, inputs, TdiState::Run)?;
    if after.session_th1 != before.session_th1 {
        return Err(BindingViolation::OtherSession);
    }
    if after.report_digest != before.report_digest || after.interface != before.interface {
        return Err(BindingViolation::ReportDigest);
    }
    Ok(after)
}

fn verify_in_state(
    policy: &BindingPolicy,
    inputs: BindingInputs<'_>,
    expected_state: TdiState,
) -> Result<VerifiedBinding, BindingViolation> {
    if policy.trusted_roots.is_empty() {
        return Err(BindingViolation::NoTrustedRoot);
    }
    let mut first_error = None;
    let mut validated = None;
    for (index, root) in policy.trusted_roots.iter().enumerate() {
        match validate_slot_at(inputs.chain, root, policy.validity_time) {
            Ok(chain) => {
                validated = Some((index, chain));
                break;
            }
            // Report the root the chain names (its hash matched) over the ones it does not.
            Err(e) => {
                if matches!(first_error, None | Some(CertError::RootMismatch)) {
                    first_error = Some(e);
                }
            }
        }
    }
    let Some((root_index, chain)) = validated else {
        return Err(BindingViolation::Chain(
            first_error.unwrap_or(CertError::RootMismatch),
        ));
    };
    let evidence = SessionEvidence::decode(inputs.evidence).map_err(BindingViolation::Evidence)?;
    let interface = decode_guest_device_id(inputs.guest_device_id)?;
    verify(
        &chain.leaf_key,
        context::KEY_EXCHANGE_RSP,
        &hash(&evidence.key_exchange_transcript(inputs.chain)),
        &evidence.key_exchange_signature,
    )
    .map_err(|_| BindingViolation::SessionSignature)?;
    verify(
        &chain.leaf_key,
        context::MEASUREMENTS,
        &hash(&evidence.measurements_transcript()),
        &evidence.measurements_signature,
    )
    .map_err(|_| BindingViolation::MeasurementSignature)?;
    let requester_nonce = evidence
        .requester_nonce()
        .map_err(BindingViolation::Evidence)?;
    if inputs.nonce.is_some_and(|sent| sent != requester_nonce) {
        return Err(BindingViolation::StaleEvidence);
    }
    let bindings = evidence.bindings().map_err(BindingViolation::Evidence)?;
    let mut ours = bindings.iter().filter(|b| b.interface == interface);
    let (Some(binding), None) = (ours.next(), ours.next()) else {
        return Err(BindingViolation::BindingBlock {
            interface,
            found: bindings.iter().filter(|b| b.interface == interface).count(),
        });
    };
    let th1 = evidence.th1(inputs.chain);
    if binding.session_th1 != th1 {
        return Err(BindingViolation::OtherSession);
    }
    let report_digest = hash(inputs.report);
    if binding.report_digest != report_digest {
        return Err(BindingViolation::ReportDigest);
    }
    if binding.state != expected_state {
        return Err(BindingViolation::TdiState(binding.state));
    }
    Ok(VerifiedBinding {
        root_index,
        chain: inputs.chain.to_vec(),
        evidence: inputs.evidence.to_vec(),
        session_id: evidence.session_id(),
        session_th1: th1,
        interface,
        report_digest,
        requester_nonce,
        fresh: inputs.nonce.is_some(),
    })
}
