//! The emulated DSM: a TDISP responder for the functions of a [`DsmConfig`].
//!
//! Three layers, each a plain function of bytes in to bytes out, so the device can be driven at
//! whichever level a test or the TSM works at:
//!
//! - [`EmulatedDsm::respond`]: one typed TDISP request in, one typed response out. This is the
//!   one place that decides; the PCIe TDI state machine is one `match (state, request)` behind it.
//! - [`EmulatedDsm::handle_tdisp`] / [`EmulatedDsm::handle_spdm`]: TDISP and SPDM
//!   vendor-defined bytes, with TDISP_ERROR (or SPDM ERROR) for anything malformed.
//! - [`DoeMailbox`] for [`EmulatedDsm`]: whole DOE data objects, with DOE discovery.
//!
//! The device speaks TDISP inside plain SPDM vendor-defined messages; it does not implement the
//! SPDM handshake or secured messages (a later issue brings SPDM sessions). A session-capable
//! device wraps this one: it terminates the session on its DOE mailbox and hands the decrypted
//! vendor-defined messages to [`EmulatedDsm::handle_spdm`].
//!
//! Where the specification leaves room, this device chooses:
//!
//! - STOP_INTERFACE succeeds in every state; from CONFIG_UNLOCKED it changes nothing (with
//!   [`DsmConfig::spdm_emu_quirks`] it is refused there with INVALID_INTERFACE_STATE, as DMTF
//!   spdm-emu does).
//! - A START_INTERFACE with the wrong nonce answers INVALID_NONCE and leaves the TDI
//!   CONFIG_LOCKED; a successful START consumes the nonce.
//! - BIND_P2P_STREAM / UNBIND_P2P_STREAM are accepted in RUN only, and only after a lock with
//!   the BIND_P2P flag; SET_MMIO_ATTRIBUTE in CONFIG_LOCKED and RUN, for a range named exactly
//!   as reported, updatable, changing only its non-TEE bit; SET_TDISP_CONFIG in
//!   CONFIG_UNLOCKED only. VDM_REQUEST is not supported (UNSUPPORTED_REQUEST).
//! - Malformed requests answer INVALID_REQUEST, unknown codes UNSUPPORTED_REQUEST, another
//!   TDISP version VERSION_MISMATCH, a function the device does not host INVALID_INTERFACE, lock
//!   flags the device does not support INVALID_REQUEST, a lock with memory space disabled
//!   INVALID_DEVICE_CONFIGURATION, and an RNG failure INSUFFICIENT_ENTROPY.

use super::config::ConfigChange;
use super::config::ConfigError;
use super::config::DsmConfig;
use super::entropy::EntropySource;
use super::entropy::OsEntropy;
use super::ide_km::IdeKmDevice;
use super::ide_km::IdeKmError;
use crate::spdm::codes::HASH_SIZE;
use crate::spdm::messages::MeasurementBlock;
use crate::tsm::doe::DiscoveryRequestWire;
use crate::tsm::doe::DiscoveryResponseWire;
use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::MAX_DOE_OBJECT_SIZE;
use crate::tsm::doe::MailboxError;
use crate::tsm::doe::trim_vendor_defined_padding;
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;
use tdisp_proto::evidence::binding::BINDING_INDEX_FIRST;
use tdisp_proto::evidence::binding::BINDING_INDEX_LAST;
use tdisp_proto::evidence::binding::BINDING_VALUE_TYPE;
use tdisp_proto::evidence::binding::TdiBinding;
use tdisp_proto::evidence::signature::hash as evidence_hash;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::doe::PCI_SIG_VENDOR_ID;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::PciProtocolId;
use tdisp_proto::framing::spdm::SPDM_VERSION_1_2;
use tdisp_proto::framing::spdm::SpdmFramingError;
use tdisp_proto::framing::spdm::SpdmVendorMessage;
use tdisp_proto::pcie::Capabilities;
use tdisp_proto::pcie::DecodeError;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::RequestBitmap;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispMessageType;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::capabilities::DsmCaps;
use tdisp_proto::pcie::header::TDISP_VERSION_1_0;
use tdisp_proto::pcie::header::TdispHeader;
use tdisp_proto::pcie::report::report_portion;
use tdisp_proto::pcie::request::NONCE_SIZE;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// SPDM ERROR response code.
const SPDM_ERROR: u8 = 0x7f;
/// SPDM error code InvalidRequest.
const SPDM_ERROR_INVALID_REQUEST: u8 = 0x01;
/// SPDM error code UnsupportedRequest.
const SPDM_ERROR_UNSUPPORTED_REQUEST: u8 = 0x07;
/// SPDM error code VersionMismatch.
const SPDM_ERROR_VERSION_MISMATCH: u8 = 0x41;

/// SET_TDISP_CONFIG bits this device defines: XT mode enable, XT bit for locked MSI-X.
const DSM_CONFIG_DEFINED_BITS: u32 = 0x3;
/// BIND_P2P_STREAM stream_config bits this device defines: XT enable.
const STREAM_CONFIG_DEFINED_BITS: u8 = 0x1;

/// The requests this device supports (everything but VDM_REQUEST).
pub fn supported_requests() -> RequestBitmap {
    RequestBitmap::from_requests(
        (0x81..=0x8c)
            .map(TdispMessageType)
            .filter(|&code| code != TdispMessageType::VDM_REQUEST),
    )
}

/// The request bitmap DMTF spdm-emu advertises: 0x7F in the first byte, which by the
/// bitmap's layout (bit n for code 0x80 + n) leaves STOP_INTERFACE out although it answers it.
pub fn spdm_emu_requests() -> RequestBitmap {
    let mut bitmap = [0; 16];
    bitmap[0] = 0x7f;
    RequestBitmap(bitmap)
}

/// The runtime state of one TDI.
#[derive(Debug, Clone)]
struct Tdi {
    requester_id: u16,
    state: TdiState,
    /// The parameters of the current lock (CONFIG_LOCKED, RUN, and ERROR reached from them).
    lock: Option<LockInterfaceParams>,
    /// The nonce START_INTERFACE must echo; consumed by a successful START.
    nonce: Option<[u8; NONCE_SIZE]>,
    /// The report frozen at lock time (its attributes follow SET_MMIO_ATTRIBUTE).
    report: Option<DeviceInterfaceReport>,
    p2p_streams: BTreeSet<u8>,
    /// SET_TDISP_CONFIG value.
    dsm_config: u32,
}

impl Tdi {
    fn new(requester_id: u16) -> Self {
        Self {
            requester_id,
            state: TdiState::ConfigUnlocked,
            lock: None,
            nonce: None,
            report: None,
            p2p_streams: BTreeSet::new(),
            dsm_config: 0,
        }
    }

    /// Back to CONFIG_UNLOCKED with every TVM-bound secret and binding scrubbed.
    fn scrub(&mut self) {
        self.state = TdiState::ConfigUnlocked;
        self.lock = None;
        self.nonce = None;
        self.report = None;
        self.p2p_streams.clear();
    }

    fn lock_flags(&self) -> LockInterfaceFlags {
        self.lock.map_or(LockInterfaceFlags::new(), |l| l.flags)
    }
}

/// An emulated device security manager for the functions of a [`DsmConfig`].
pub struct EmulatedDsm {
    config: DsmConfig,
    tdis: Vec<Tdi>,
    entropy: Box<dyn EntropySource>,
    ide_km: IdeKmDevice,
}

impl std::fmt::Debug for EmulatedDsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedDsm")
            .field("config", &self.config)
            .field("tdis", &self.tdis)
            .finish_non_exhaustive()
    }
}

fn error(code: TdispErrorCode) -> TdispResponse {
    TdispResponse::Error(TdispErrorResponse::new(code))
}

impl EmulatedDsm {
    /// A device for `config`, drawing nonces from the operating system's RNG.
    pub fn new(config: DsmConfig) -> Result<Self, ConfigError> {
        Self::with_entropy(config, Box::new(OsEntropy))
    }

    /// A device for `config` drawing nonces from `entropy`.
    pub fn with_entropy(
        config: DsmConfig,
        entropy: Box<dyn EntropySource>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let tdis = config
            .functions
            .iter()
            .map(|f| Tdi::new(f.requester_id))
            .collect();
        Ok(Self {
            config,
            tdis,
            ide_km: IdeKmDevice::new(),
            entropy,
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &DsmConfig {
        &self.config
    }

    /// The state of the TDI at `requester_id`.
    pub fn tdi_state(&self, requester_id: u16) -> Option<TdiState> {
        self.tdis
            .iter()
            .find(|t| t.requester_id == requester_id)
            .map(|t| t.state)
    }

    /// The TDISP capabilities this device reports.
    pub fn capabilities(&self) -> Capabilities {
        let caps = &self.config.capabilities;
        Capabilities {
            dsm_caps: DsmCaps::new().with_xt_mode_supported(caps.xt_mode_supported),
            req_msg_supported: if self.config.spdm_emu_quirks {
                spdm_emu_requests()
            } else {
                supported_requests()
            },
            lock_interface_flags_supported: caps.lock_flags_supported,
            dev_addr_width: caps.dev_addr_width,
            num_req_this: caps.num_req_this,
            num_req_all: caps.num_req_all,
        }
    }

    /// Applies a host configuration change. Every TDI in CONFIG_LOCKED or RUN whose locked
    /// configuration the change breaks moves to ERROR, as the PCIe specification requires;
    /// their requester ids are returned. A refused change changes nothing.
    pub fn apply_config_change(&mut self, change: ConfigChange) -> Result<Vec<u16>, ConfigError> {
        change.apply(&mut self.config)?;
        let mut errored = Vec::new();
        for tdi in &mut self.tdis {
            let targeted = change
                .requester_id()
                .is_none_or(|id| id == tdi.requester_id);
            if targeted
                && matches!(tdi.state, TdiState::ConfigLocked | TdiState::Run)
                && change.is_security_relevant(tdi.lock_flags())
            {
                tracing::warn!(
                    requester_id = tdi.requester_id,
                    ?change,
                    from = ?tdi.state,
                    "security-relevant configuration change: TDI moves to ERROR"
                );
                tdi.state = TdiState::Error;
                tdi.nonce = None;
                tdi.p2p_streams.clear();
                errored.push(tdi.requester_id);
            }
        }
        Ok(errored)
    }

    fn tdi_index(&self, interface: InterfaceId) -> Option<usize> {
        let function = interface.function_id;
        if function.segment_valid() && function.segment() != 0 {
            return None;
        }
        self.tdis
            .iter()
            .position(|t| t.requester_id == function.requester_id())
    }

    /// Answers one typed request about `interface` and applies its effect.
    pub fn respond(&mut self, interface: InterfaceId, request: &TdispRequest) -> TdispResponse {
        let Some(index) = self.tdi_index(interface) else {
            tracing::debug!(
                ?interface,
                "request for an interface this device does not host"
            );
            return error(TdispErrorCode::INVALID_INTERFACE);
        };
        let response = self.decide(index, request);
        if let TdispResponse::Error(e) = &response {
            tracing::debug!(?interface, code = ?e.code, ?request, "TDISP_ERROR");
        }
        response
    }

    /// The PCIe TDI state machine: decides the response to `request` for TDI `index` and applies
    /// the transition. Every arm names the states it is allowed in; every other state answers
    /// INVALID_INTERFACE_STATE.
    fn decide(&mut self, index: usize, request: &TdispRequest) -> TdispResponse {
        let capabilities = self.capabilities();
        let Some(tdi) = self.tdis.get_mut(index) else {
            return error(TdispErrorCode::INVALID_INTERFACE);
        };
        match (tdi.state, request) {
            (_, TdispRequest::GetVersion) => TdispResponse::Version {
                versions: vec![TDISP_VERSION_1_0],
            },
            (_, TdispRequest::GetCapabilities { .. }) => TdispResponse::Capabilities(capabilities),
            (_, TdispRequest::GetDeviceInterfaceState) => {
                TdispResponse::DeviceInterfaceState { state: tdi.state }
            }
            (TdiState::ConfigUnlocked, TdispRequest::LockInterface(params)) => {
                Self::lock(&self.config, self.entropy.as_mut(), tdi, params)
            }
            (
                TdiState::ConfigLocked | TdiState::Run,
                TdispRequest::GetDeviceInterfaceReport { offset, length },
            ) => Self::report(&self.config, tdi, *offset, *length),
            (TdiState::ConfigLocked, TdispRequest::StartInterface { nonce }) => {
                Self::start(tdi, nonce)
            }
            (TdiState::ConfigUnlocked, TdispRequest::StopInterface)
                if self.config.spdm_emu_quirks =>
            {
                error(TdispErrorCode::INVALID_INTERFACE_STATE)
            }
            // STOP is accepted in every state; from CONFIG_UNLOCKED it changes nothing.
            (_, TdispRequest::StopInterface) => {
                tdi.scrub();
                TdispResponse::StopInterface
            }
            (
                TdiState::Run,
                TdispRequest::BindP2pStream {
                    p2p_stream_id,
                    stream_config,
                },
            ) => Self::bind_p2p(&self.config, tdi, *p2p_stream_id, *stream_config),
            (TdiState::Run, TdispRequest::UnbindP2pStream { p2p_stream_id }) => {
                if tdi.p2p_streams.remove(p2p_stream_id) {
                    TdispResponse::UnbindP2pStream
                } else {
                    error(TdispErrorCode::INVALID_REQUEST)
                }
            }
            (TdiState::ConfigLocked | TdiState::Run, TdispRequest::SetMmioAttribute(range)) => {
                Self::set_mmio_attribute(tdi, range)
            }
            (TdiState::ConfigUnlocked, TdispRequest::SetTdispConfig { dsm_config }) => {
                let xt_requested = dsm_config & 0x3 != 0;
                if dsm_config & !DSM_CONFIG_DEFINED_BITS != 0
                    || (xt_requested && !self.config.capabilities.xt_mode_supported)
                {
                    error(TdispErrorCode::INVALID_REQUEST)
                } else {
                    tdi.dsm_config = *dsm_config;
                    TdispResponse::SetTdispConfig
                }
            }
            (_, TdispRequest::Vdm(_)) => error(TdispErrorCode::UNSUPPORTED_REQUEST),
            (
                _,
                TdispRequest::LockInterface(_)
                | TdispRequest::GetDeviceInterfaceReport { .. }
                | TdispRequest::StartInterface { .. }
                | TdispRequest::BindP2pStream { .. }
                | TdispRequest::UnbindP2pStream { .. }
                | TdispRequest::SetMmioAttribute(_)
                | TdispRequest::SetTdispConfig { .. },
            ) => error(TdispErrorCode::INVALID_INTERFACE_STATE),
        }
    }

    fn lock(
        config: &DsmConfig,
        entropy: &mut dyn EntropySource,
        tdi: &mut Tdi,
        params: &LockInterfaceParams,
    ) -> TdispResponse {
        let supported = config.capabilities.lock_flags_supported.into_bits();
        if params.flags.into_bits() & !supported != 0 {
            return error(TdispErrorCode::INVALID_REQUEST);
        }
        let Some(function) = config.function(tdi.requester_id) else {
            return error(TdispErrorCode::INVALID_INTERFACE);
        };
        if !function.memory_space_enabled {
            return error(TdispErrorCode::INVALID_DEVICE_CONFIGURATION);
        }
        let xt_mode = tdi.dsm_config & 0x1 != 0;
        let Ok(report) = function.build_report(params.flags, params.mmio_reporting_offset, xt_mode)
        else {
            return error(TdispErrorCode::INVALID_REQUEST);
        };
        let mut nonce = [0u8; NONCE_SIZE];
        if let Err(e) = entropy.fill(&mut nonce) {
            tracing::warn!(error = %e, "no entropy for the START_INTERFACE nonce");
            return error(TdispErrorCode::INSUFFICIENT_ENTROPY);
        }
        tdi.state = TdiState::ConfigLocked;
        tdi.lock = Some(*params);
        tdi.nonce = Some(nonce);
        tdi.report = Some(report);
        TdispResponse::LockInterface { nonce }
    }

    fn report(config: &DsmConfig, tdi: &Tdi, offset: u16, length: u16) -> TdispResponse {
        let Some(report) = &tdi.report else {
            return error(TdispErrorCode::UNSPECIFIED);
        };
        let bytes = report.to_bytes();
        match report_portion(&bytes, offset, length, config.max_report_portion) {
            Ok((portion, remainder_length)) => TdispResponse::DeviceInterfaceReport {
                remainder_length,
                portion: portion.to_vec(),
            },
            Err(_) => error(TdispErrorCode::INVALID_REQUEST),
        }
    }

    fn start(tdi: &mut Tdi, nonce: &[u8; NONCE_SIZE]) -> TdispResponse {
        let matches = tdi
            .nonce
            .as_ref()
            .is_some_and(|expected| bool::from(expected.ct_eq(nonce)));
        if !matches {
            // The TDI stays CONFIG_LOCKED: a wrong nonce is refused, not punished.
            return error(TdispErrorCode::INVALID_NONCE);
        }
        tdi.nonce = None;
        tdi.state = TdiState::Run;
        TdispResponse::StartInterface
    }

    fn bind_p2p(
        config: &DsmConfig,
        tdi: &mut Tdi,
        stream: u8,
        stream_config: Option<u8>,
    ) -> TdispResponse {
        let xt_bad = stream_config.is_some_and(|c| {
            c & !STREAM_CONFIG_DEFINED_BITS != 0 || (c & 1 != 0 && tdi.dsm_config & 1 == 0)
        });
        if !tdi.lock_flags().bind_p2p()
            || xt_bad
            || tdi.p2p_streams.contains(&stream)
            || tdi.p2p_streams.len() >= config.max_p2p_streams
        {
            return error(TdispErrorCode::INVALID_REQUEST);
        }
        tdi.p2p_streams.insert(stream);
        TdispResponse::BindP2pStream
    }

    /// Only the non-TEE attribute of a reported, updatable range may change; the range must be
    /// named exactly as the report names it.
    fn set_mmio_attribute(tdi: &mut Tdi, requested: &MmioRange) -> TdispResponse {
        let Some(report) = tdi.report.as_mut() else {
            return error(TdispErrorCode::UNSPECIFIED);
        };
        let Some(range) = report.mmio_ranges.iter_mut().find(|r| {
            r.first_page == requested.first_page
                && r.number_of_pages == requested.number_of_pages
                && r.range_id == requested.range_id
        }) else {
            return error(TdispErrorCode::INVALID_REQUEST);
        };
        let fixed_bits_differ = range.attributes.with_non_tee_memory(false)
            != requested.attributes.with_non_tee_memory(false);
        if !range.attributes.attributes_updatable() || fixed_bits_differ {
            return error(TdispErrorCode::INVALID_REQUEST);
        }
        range.attributes = requested.attributes;
        TdispResponse::SetMmioAttribute
    }

    /// Answers one TDISP request message (header included) with one response message.
    /// Malformed requests get the TDISP_ERROR code that names what is wrong; nothing panics.
    pub fn handle_tdisp(&mut self, request: &[u8]) -> Vec<u8> {
        let (interface, response) = self.handle_tdisp_typed(request);
        let mut out = Vec::new();
        response.encode(interface, &mut out);
        out
    }

    fn handle_tdisp_typed(&mut self, request: &[u8]) -> (InterfaceId, TdispResponse) {
        let Ok((header, _)) = TdispHeader::read_from_prefix(request) else {
            return (
                InterfaceId::default(),
                error(TdispErrorCode::INVALID_REQUEST),
            );
        };
        let interface = match header.validate() {
            Ok(interface) => interface,
            Err(DecodeError::UnsupportedVersion(_)) => {
                // Answer about the function asked about, if its id is well formed.
                let mut same = header;
                same.version = TDISP_VERSION_1_0;
                let interface = same.validate().unwrap_or_default();
                return (interface, error(TdispErrorCode::VERSION_MISMATCH));
            }
            Err(_) => {
                return (
                    InterfaceId::default(),
                    error(TdispErrorCode::INVALID_REQUEST),
                );
            }
        };
        if self.tdi_index(interface).is_none() {
            return (interface, error(TdispErrorCode::INVALID_INTERFACE));
        }
        match TdispRequest::decode(request) {
            Ok((interface, body)) => {
                let response = self.respond(interface, &body);
                (interface, response)
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed TDISP request");
                let code = match e {
                    DecodeError::UnknownMessageType(_) | DecodeError::WrongDirection(_) => {
                        TdispErrorCode::UNSUPPORTED_REQUEST
                    }
                    DecodeError::UnsupportedVersion(_) => TdispErrorCode::VERSION_MISMATCH,
                    _ => TdispErrorCode::INVALID_REQUEST,
                };
                (interface, error(code))
            }
        }
    }

    /// Answers one SPDM request message. PCI-SIG vendor-defined requests carrying TDISP get a
    /// vendor-defined response; everything else gets an SPDM ERROR (this device implements no
    /// other SPDM request). Up to three bytes of DOE padding after the message are accepted.
    pub fn handle_spdm(&mut self, request: &[u8]) -> Vec<u8> {
        self.handle_vendor(request, false)
    }

    /// Answers one SPDM request message received inside a secured SPDM session: as
    /// [`Self::handle_spdm`], and PCIe IDE_KM (protocol id 0) too, which carries keys and so
    /// is never served in the clear.
    pub fn handle_session_vendor(&mut self, request: &[u8]) -> Vec<u8> {
        self.handle_vendor(request, true)
    }

    /// The TDI binding measurement blocks this device reports inside the SPDM session whose
    /// TH1 is `session_th1`: one per TDI in CONFIG_LOCKED or RUN, in configuration order, at
    /// index [`BINDING_INDEX_FIRST`] + n (a TDI past the sixteenth gets none), each holding
    /// SHA-384 of the report that TDI serves now (see [`tdisp_proto::evidence::binding`]).
    pub fn binding_blocks(&self, session_th1: &[u8; HASH_SIZE]) -> Vec<MeasurementBlock> {
        let slots = BINDING_INDEX_FIRST..=BINDING_INDEX_LAST;
        self.tdis
            .iter()
            .filter_map(|tdi| match (&tdi.report, tdi.state) {
                (Some(report), TdiState::ConfigLocked | TdiState::Run) => Some((tdi, report)),
                _ => None,
            })
            .zip(slots)
            .map(|((tdi, report), index)| MeasurementBlock {
                index,
                value_type: BINDING_VALUE_TYPE,
                value: TdiBinding {
                    interface: InterfaceId::from_requester_id(tdi.requester_id),
                    state: tdi.state,
                    report_digest: evidence_hash(&report.to_bytes()),
                    session_th1: *session_th1,
                }
                .encode(),
            })
            .collect()
    }

    /// The IDE_KM device (key slots), for the owner and tests.
    pub fn ide_km(&self) -> &IdeKmDevice {
        &self.ide_km
    }

    fn handle_vendor(&mut self, request: &[u8], secured: bool) -> Vec<u8> {
        let request = trim_vendor_defined_padding(request);
        let spdm_version = match request.first() {
            Some(&v) if v >> 4 == 1 => v,
            Some(_) => return spdm_error(SPDM_VERSION_1_2, SPDM_ERROR_VERSION_MISMATCH, 0),
            None => return spdm_error(SPDM_VERSION_1_2, SPDM_ERROR_INVALID_REQUEST, 0),
        };
        // Any SPDM request but VENDOR_DEFINED_REQUEST is unsupported, whatever its length.
        if let Some(&code) = request.get(1)
            && code != Direction::Request.code()
        {
            return spdm_error(spdm_version, SPDM_ERROR_UNSUPPORTED_REQUEST, code);
        }
        match SpdmVendorMessage::decode(request, Direction::Request) {
            Ok(vendor)
                if vendor.protocol_id == PciProtocolId::TDISP
                    || (secured && vendor.protocol_id == PciProtocolId::IDE_KM) =>
            {
                let payload = if vendor.protocol_id == PciProtocolId::TDISP {
                    self.handle_tdisp(vendor.payload)
                } else {
                    match self.ide_km.handle(vendor.payload) {
                        Ok(response) => response,
                        Err(e) => {
                            tracing::debug!(error = %e, "IDE_KM request refused");
                            let code = match e {
                                IdeKmError::UnsupportedObject(_) => SPDM_ERROR_UNSUPPORTED_REQUEST,
                                _ => SPDM_ERROR_INVALID_REQUEST,
                            };
                            return spdm_error(spdm_version, code, 0);
                        }
                    }
                };
                let mut out = Vec::new();
                let encoded = SpdmVendorMessage {
                    spdm_version: vendor.spdm_version,
                    direction: Direction::Response,
                    protocol_id: vendor.protocol_id,
                    payload: &payload,
                }
                .encode(&mut out);
                match encoded {
                    Ok(()) => out,
                    Err(_) => spdm_error(spdm_version, SPDM_ERROR_INVALID_REQUEST, 0),
                }
            }
            Ok(_) => spdm_error(spdm_version, SPDM_ERROR_UNSUPPORTED_REQUEST, 0),
            Err(SpdmFramingError::UnsupportedSpdmVersion(_)) => {
                spdm_error(SPDM_VERSION_1_2, SPDM_ERROR_VERSION_MISMATCH, 0)
            }
            Err(SpdmFramingError::UnexpectedCode { found, .. }) => {
                spdm_error(spdm_version, SPDM_ERROR_UNSUPPORTED_REQUEST, found)
            }
            Err(_) => spdm_error(spdm_version, SPDM_ERROR_INVALID_REQUEST, 0),
        }
    }

    fn discovery(&self, payload: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let request = DiscoveryRequestWire::read_from_prefix(payload)
            .map_err(|_| MailboxError::DeviceError("short discovery request"))?
            .0;
        // Protocols at index 0 and 1; secured SPDM is not offered (no session support).
        let (object_type, next_index) = match request.index {
            0 => (DoeObjectType::DISCOVERY, 1),
            1 => (DoeObjectType::SPDM, 0),
            _ => return Err(MailboxError::DeviceError("discovery index out of range")),
        };
        let response = DiscoveryResponseWire {
            vendor_id: PCI_SIG_VENDOR_ID.into(),
            object_type: object_type.0,
            next_index,
        };
        let mut out = Vec::new();
        DoeObject::new(DoeObjectType::DISCOVERY, response.as_bytes()).encode(&mut out);
        Ok(out)
    }
}

fn spdm_error(version: u8, code: u8, data: u8) -> Vec<u8> {
    vec![version, SPDM_ERROR, code, data]
}

/// The device end of the DOE mailbox: discovery and plain SPDM objects are answered; anything
/// else sets the DOE Error bit, as a device does for objects it cannot process.
impl DoeMailbox for EmulatedDsm {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        if request.len() > MAX_DOE_OBJECT_SIZE {
            return Err(MailboxError::TooLarge(request.len()));
        }
        let object = DoeObject::decode(request)
            .map_err(|_| MailboxError::DeviceError("malformed object"))?;
        match object.object_type {
            DoeObjectType::DISCOVERY => self.discovery(object.payload),
            DoeObjectType::SPDM => {
                let response = self.handle_spdm(object.payload);
                let mut out = Vec::new();
                DoeObject::new(DoeObjectType::SPDM, &response).encode(&mut out);
                Ok(out)
            }
            _ => Err(MailboxError::DeviceError("unsupported data object type")),
        }
    }
}

#[cfg(test)]
mod tests;
