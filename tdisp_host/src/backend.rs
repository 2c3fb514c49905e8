//! Where the state machine's device-side work goes: [`TdiBackend`].
//!
//! [`TsmBackend`] issues the work through the TSM to the device (lock -> LOCK_INTERFACE, start
//! -> START_INTERFACE, report -> GET_DEVICE_INTERFACE_REPORT portions, unbind ->
//! STOP_INTERFACE). [`NotTdispCapable`] stands for an assigned device without TDISP: the guest
//! learns so at negotiation.

use crate::tsm::PciAddress;
use crate::tsm::Tsm;
use crate::tsm::TsmDeviceState;
use crate::tsm::TsmError;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use tdisp_proto::REPORT_NONCE_SIZE;
use tdisp_proto::TdispReportType;
use tdisp_proto::pcie::TdiState;
use thiserror::Error;

/// Why device-side work failed; decides what the state machine does next.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    /// The work is not available for this device (for example a report type that needs an
    /// SPDM session). Nothing changed.
    #[error("not supported by this device: {0}")]
    NotSupported(&'static str),
    /// The TDI is in ERROR (its locked configuration changed); only an unbind leaves it.
    #[error("the TDI is in ERROR")]
    TdiInError,
    /// The work failed; the device may be in any state.
    #[error("device work failed: {0}")]
    Failed(String),
}

/// The device-side half of the host state machine for one TDI.
pub trait TdiBackend: Send {
    /// Whether the device speaks TDISP (decides the negotiated protocol).
    fn is_tdisp_capable(&self) -> bool;
    /// Whether the device is reached through an SPDM secured session, so that the
    /// `Measurements` report is session evidence (advertised to the guest as
    /// [`tdisp_proto::FEATURE_SESSION_EVIDENCE`]). None by default.
    fn serves_session_evidence(&self) -> bool {
        false
    }
    /// Locks the TDI (CONFIG_UNLOCKED -> CONFIG_LOCKED).
    fn lock(&mut self) -> Result<(), BackendError>;
    /// Starts the TDI (CONFIG_LOCKED -> RUN).
    fn start(&mut self) -> Result<(), BackendError>;
    /// Produces a report of `report_type` (never [`TdispReportType::Invalid`]).
    fn report(&mut self, report_type: TdispReportType) -> Result<Vec<u8>, BackendError>;
    /// As [`Self::report`], with the guest's nonce: `Measurements` evidence must carry it as
    /// the device-signed requester nonce. Other types ignore it. By default a backend cannot
    /// take a nonce and refuses `Measurements` (never serving evidence without the nonce the
    /// guest asked for).
    fn fresh_report(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = nonce;
        match report_type {
            TdispReportType::Measurements => Err(BackendError::NotSupported(
                "this backend cannot put a guest nonce into measurements",
            )),
            other => self.report(other),
        }
    }
    /// Stops the TDI (back to CONFIG_UNLOCKED, TVM data scrubbed).
    fn stop(&mut self) -> Result<(), BackendError>;
}

impl<T: TdiBackend + ?Sized> TdiBackend for Box<T> {
    fn is_tdisp_capable(&self) -> bool {
        (**self).is_tdisp_capable()
    }
    fn serves_session_evidence(&self) -> bool {
        (**self).serves_session_evidence()
    }
    fn lock(&mut self) -> Result<(), BackendError> {
        (**self).lock()
    }
    fn start(&mut self) -> Result<(), BackendError> {
        (**self).start()
    }
    fn report(&mut self, report_type: TdispReportType) -> Result<Vec<u8>, BackendError> {
        (**self).report(report_type)
    }
    fn fresh_report(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, BackendError> {
        (**self).fresh_report(report_type, nonce)
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        (**self).stop()
    }
}

/// A TSM shared by the state machines of every device it manages.
pub type SharedTsm = Arc<Mutex<Tsm>>;

/// Device-side work through the TSM, for the TDI bound on the device at `address`.
///
/// Report types: [`TdispReportType::InterfaceReport`] is the TDISP DEVICE_INTERFACE_REPORT read
/// in portions; [`TdispReportType::GuestDeviceId`] is the TDI's 12-byte TDISP interface id as on
/// the wire; [`TdispReportType::IsRegistered`] is one byte, 1 while the TDI is bound through the
/// TSM. [`TdispReportType::CertificateChain`] is the device's chain in SPDM slot format as the
/// TSM's session validated it; [`TdispReportType::Measurements`] is session evidence
/// ([`tdisp_proto::evidence::bundle`]): the session's signed key exchange and measurements the
/// device signs inside that session, asked afresh for each report, whose TDI binding blocks
/// carry SHA-384 of each locked TDI's interface report. Both need an SPDM session: over a plain
/// channel they are not supported. Every report is answered from the device, never from what
/// the host remembers: the interface report is read from it, and the other types ask it the
/// TDI's state first, so a TDI in ERROR has no report of any type.
#[derive(Debug, Clone)]
pub struct TsmBackend {
    tsm: SharedTsm,
    address: PciAddress,
}

impl TsmBackend {
    /// Work for the TDI bound on the device at `address` of `tsm`.
    pub fn new(tsm: SharedTsm, address: PciAddress) -> Self {
        Self { tsm, address }
    }

    fn with_tsm<T>(
        &self,
        f: impl FnOnce(&mut Tsm, PciAddress) -> Result<T, TsmError>,
    ) -> Result<T, BackendError> {
        // A panic elsewhere while holding the lock leaves the TSM's data consistent (every
        // operation commits its effects last), so a poisoned lock is still usable.
        let mut tsm = self.tsm.lock().unwrap_or_else(PoisonError::into_inner);
        match f(&mut tsm, self.address) {
            Ok(value) => Ok(value),
            Err(error) => {
                // A failed state change already asked the device; otherwise ask now.
                let in_error = tsm.device_state(self.address) == Some(TsmDeviceState::Error)
                    || matches!(tsm.interface_state(self.address), Ok(TdiState::Error));
                tracing::warn!(address = self.address, %error, in_error, "TSM work failed");
                Err(if in_error {
                    BackendError::TdiInError
                } else {
                    BackendError::Failed(error.to_string())
                })
            }
        }
    }
}

impl TdiBackend for TsmBackend {
    fn is_tdisp_capable(&self) -> bool {
        let tsm = self.tsm.lock().unwrap_or_else(PoisonError::into_inner);
        tsm.binding(self.address).is_some()
    }

    fn serves_session_evidence(&self) -> bool {
        let tsm = self.tsm.lock().unwrap_or_else(PoisonError::into_inner);
        tsm.is_channel_secure(self.address) == Some(true)
    }

    fn lock(&mut self) -> Result<(), BackendError> {
        self.with_tsm(Tsm::lock)
    }

    fn start(&mut self) -> Result<(), BackendError> {
        self.with_tsm(Tsm::start)
    }

    fn report(&mut self, report_type: TdispReportType) -> Result<Vec<u8>, BackendError> {
        match report_type {
            TdispReportType::InterfaceReport => self.with_tsm(Tsm::read_interface_report),
            TdispReportType::GuestDeviceId | TdispReportType::IsRegistered => {
                let binding = {
                    let tsm = self.tsm.lock().unwrap_or_else(PoisonError::into_inner);
                    tsm.binding(self.address)
                };
                let Some(binding) = binding else {
                    return match report_type {
                        TdispReportType::IsRegistered => Ok(vec![0]),
                        _ => Err(BackendError::Failed("no TDI bound".into())),
                    };
                };
                // Answered from the device, not from what the TSM remembers: a TDI in ERROR
                // has no report of any type.
                if self.with_tsm(Tsm::interface_state)? == TdiState::Error {
                    return Err(BackendError::TdiInError);
                }
                if report_type == TdispReportType::IsRegistered {
                    return Ok(vec![1]);
                }
                let mut id = binding
                    .interface
                    .function_id
                    .into_bits()
                    .to_le_bytes()
                    .to_vec();
                id.extend_from_slice(&[0; 8]);
                Ok(id)
            }
            TdispReportType::CertificateChain => {
                let tsm = self.tsm.lock().unwrap_or_else(PoisonError::into_inner);
                tsm.certificate_chain(self.address)
                    .ok_or(BackendError::NotSupported(
                        "certificates need an SPDM session",
                    ))
            }
            TdispReportType::Measurements => self.measurements(None),
            TdispReportType::Invalid => Err(BackendError::NotSupported("invalid report type")),
        }
    }

    fn fresh_report(
        &mut self,
        report_type: TdispReportType,
        nonce: [u8; REPORT_NONCE_SIZE],
    ) -> Result<Vec<u8>, BackendError> {
        match report_type {
            TdispReportType::Measurements => self.measurements(Some(nonce)),
            other => self.report(other),
        }
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.with_tsm(Tsm::stop)
    }
}

impl TsmBackend {
    /// Session evidence with measurements the device signs over `nonce` (the guest's) or a
    /// fresh one of the TSM's.
    fn measurements(
        &mut self,
        nonce: Option<[u8; REPORT_NONCE_SIZE]>,
    ) -> Result<Vec<u8>, BackendError> {
        self.with_tsm(|tsm, address| tsm.signed_measurements_with_nonce(address, nonce))?
            .ok_or(BackendError::NotSupported(
                "measurements need an SPDM session",
            ))
    }
}

/// An assigned device that does not speak TDISP: negotiation answers `Invalid` and nothing
/// else is possible.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotTdispCapable;

impl TdiBackend for NotTdispCapable {
    fn is_tdisp_capable(&self) -> bool {
        false
    }
    fn lock(&mut self) -> Result<(), BackendError> {
        Err(BackendError::NotSupported("not TDISP capable"))
    }
    fn start(&mut self) -> Result<(), BackendError> {
        Err(BackendError::NotSupported("not TDISP capable"))
    }
    fn report(&mut self, _report_type: TdispReportType) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::NotSupported("not TDISP capable"))
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        Err(BackendError::NotSupported("not TDISP capable"))
    }
}
