//! TDISP response bodies (codes 0x01..=0x0c and TDISP_ERROR) and the typed [`TdispResponse`].

use super::capabilities::Capabilities;
use super::capabilities::CapabilitiesWire;
use super::codec::DecodeError;
use super::codec::Reader;
use super::error::ErrorBodyWire;
use super::error::TdispErrorCode;
use super::error::TdispErrorResponse;
use super::header::TdispMessageType;
use super::message::MessageBody;
use super::report::MAX_REPORT_SIZE;
use super::request::NONCE_SIZE;
use super::state::TdiState;
use super::vdm::MAX_VDM_SIZE;
use super::vdm::VendorDefinedBody;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;

/// The 4-byte head of a DEVICE_INTERFACE_REPORT response as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReportPortionWire {
    /// Bytes of report in this response.
    pub portion_length: U16,
    /// Bytes of report after this portion.
    pub remainder_length: U16,
}
const _: () = assert!(size_of::<ReportPortionWire>() == 4);

/// A TDISP response body: one variant per response code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdispResponse {
    /// TDISP_VERSION (0x01): the versions the device supports (at least one).
    Version {
        /// Version bytes, major version in the high nibble.
        versions: Vec<u8>,
    },
    /// TDISP_CAPABILITIES (0x02).
    Capabilities(Capabilities),
    /// LOCK_INTERFACE_RESPONSE (0x03).
    LockInterface {
        /// Nonce START_INTERFACE must echo.
        nonce: [u8; NONCE_SIZE],
    },
    /// DEVICE_INTERFACE_REPORT (0x04): one portion of the report.
    DeviceInterfaceReport {
        /// Bytes of report after this portion.
        remainder_length: u16,
        /// This portion (its length is the `portion_length` field).
        portion: Vec<u8>,
    },
    /// DEVICE_INTERFACE_STATE (0x05).
    DeviceInterfaceState {
        /// The TDI state.
        state: TdiState,
    },
    /// START_INTERFACE_RESPONSE (0x06), no body.
    StartInterface,
    /// STOP_INTERFACE_RESPONSE (0x07), no body.
    StopInterface,
    /// BIND_P2P_STREAM_RESPONSE (0x08), no body.
    BindP2pStream,
    /// UNBIND_P2P_STREAM_RESPONSE (0x09), no body.
    UnbindP2pStream,
    /// SET_MMIO_ATTRIBUTE_RESPONSE (0x0a), no body.
    SetMmioAttribute,
    /// VDM_RESPONSE (0x0b).
    Vdm(VendorDefinedBody),
    /// SET_TDISP_CONFIG_RESPONSE (0x0c), no body.
    SetTdispConfig,
    /// TDISP_ERROR (0x7f).
    Error(TdispErrorResponse),
}

impl MessageBody for TdispResponse {
    fn message_type(&self) -> TdispMessageType {
        match self {
            Self::Version { .. } => TdispMessageType::TDISP_VERSION,
            Self::Capabilities(_) => TdispMessageType::TDISP_CAPABILITIES,
            Self::LockInterface { .. } => TdispMessageType::LOCK_INTERFACE_RESPONSE,
            Self::DeviceInterfaceReport { .. } => TdispMessageType::DEVICE_INTERFACE_REPORT,
            Self::DeviceInterfaceState { .. } => TdispMessageType::DEVICE_INTERFACE_STATE,
            Self::StartInterface => TdispMessageType::START_INTERFACE_RESPONSE,
            Self::StopInterface => TdispMessageType::STOP_INTERFACE_RESPONSE,
            Self::BindP2pStream => TdispMessageType::BIND_P2P_STREAM_RESPONSE,
            Self::UnbindP2pStream => TdispMessageType::UNBIND_P2P_STREAM_RESPONSE,
            Self::SetMmioAttribute => TdispMessageType::SET_MMIO_ATTRIBUTE_RESPONSE,
            Self::Vdm(_) => TdispMessageType::VDM_RESPONSE,
            Self::SetTdispConfig => TdispMessageType::SET_TDISP_CONFIG_RESPONSE,
            Self::Error(_) => TdispMessageType::TDISP_ERROR,
        }
    }

    /// Encodes the body. Counts that do not fit their fields (more than 255 versions, a
    /// portion over 64 KiB) are clamped, which the decoder then rejects: callers keep within
    /// the protocol's limits.
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Version { versions } => {
                let versions = versions.get(..255).unwrap_or(versions);
                out.push(u8::try_from(versions.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(versions);
            }
            Self::Capabilities(caps) => out.extend_from_slice(caps.to_wire().as_bytes()),
            Self::LockInterface { nonce } => out.extend_from_slice(nonce),
            Self::DeviceInterfaceReport {
                remainder_length,
                portion,
            } => {
                let wire = ReportPortionWire {
                    portion_length: u16::try_from(portion.len()).unwrap_or(u16::MAX).into(),
                    remainder_length: (*remainder_length).into(),
                };
                out.extend_from_slice(wire.as_bytes());
                out.extend_from_slice(portion);
            }
            Self::DeviceInterfaceState { state } => out.push((*state).into()),
            Self::StartInterface
            | Self::StopInterface
            | Self::BindP2pStream
            | Self::UnbindP2pStream
            | Self::SetMmioAttribute
            | Self::SetTdispConfig => {}
            Self::Vdm(vdm) => vdm.encode(out),
            Self::Error(error) => {
                let wire = ErrorBodyWire {
                    error_code: error.code.0.into(),
                    error_data: error.data.into(),
                };
                out.extend_from_slice(wire.as_bytes());
                out.extend_from_slice(&error.extended);
            }
        }
    }

    fn decode_body(message_type: TdispMessageType, body: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(body);
        let response = match message_type {
            TdispMessageType::TDISP_VERSION => {
                let count = reader.u8()?;
                if count == 0 {
                    return Err(DecodeError::InvalidValue {
                        field: "version_num_count",
                        value: 0,
                    });
                }
                let rest = reader.rest();
                if rest.len() != usize::from(count) {
                    return Err(DecodeError::CountMismatch {
                        field: "version_num_count",
                        claimed: count.into(),
                        actual: rest.len() as u64,
                    });
                }
                Self::Version {
                    versions: rest.to_vec(),
                }
            }
            TdispMessageType::TDISP_CAPABILITIES => Self::Capabilities(Capabilities::from_wire(
                &reader.read::<CapabilitiesWire>()?,
            )?),
            TdispMessageType::LOCK_INTERFACE_RESPONSE => Self::LockInterface {
                nonce: reader.read()?,
            },
            TdispMessageType::DEVICE_INTERFACE_REPORT => {
                let head: ReportPortionWire = reader.read()?;
                let portion_length = head.portion_length.get();
                let remainder_length = head.remainder_length.get();
                let rest = reader.rest();
                if rest.len() != usize::from(portion_length) {
                    return Err(DecodeError::CountMismatch {
                        field: "portion_length",
                        claimed: portion_length.into(),
                        actual: rest.len() as u64,
                    });
                }
                let total = usize::from(portion_length) + usize::from(remainder_length);
                if total > MAX_REPORT_SIZE {
                    return Err(DecodeError::TooLarge {
                        field: "portion_length + remainder_length",
                        len: total as u64,
                        max: MAX_REPORT_SIZE as u64,
                    });
                }
                Self::DeviceInterfaceReport {
                    remainder_length,
                    portion: rest.to_vec(),
                }
            }
            TdispMessageType::DEVICE_INTERFACE_STATE => Self::DeviceInterfaceState {
                state: TdiState::try_from(reader.u8()?)?,
            },
            TdispMessageType::START_INTERFACE_RESPONSE => Self::StartInterface,
            TdispMessageType::STOP_INTERFACE_RESPONSE => Self::StopInterface,
            TdispMessageType::BIND_P2P_STREAM_RESPONSE => Self::BindP2pStream,
            TdispMessageType::UNBIND_P2P_STREAM_RESPONSE => Self::UnbindP2pStream,
            TdispMessageType::SET_MMIO_ATTRIBUTE_RESPONSE => Self::SetMmioAttribute,
            TdispMessageType::VDM_RESPONSE => Self::Vdm(VendorDefinedBody::decode(reader.rest())?),
            TdispMessageType::SET_TDISP_CONFIG_RESPONSE => Self::SetTdispConfig,
            TdispMessageType::TDISP_ERROR => {
                let wire: ErrorBodyWire = reader.read()?;
                let extended = reader.rest();
                if extended.len() > MAX_VDM_SIZE {
                    return Err(DecodeError::TooLarge {
                        field: "extended_error_data",
                        len: extended.len() as u64,
                        max: MAX_VDM_SIZE as u64,
                    });
                }
                Self::Error(TdispErrorResponse {
                    code: TdispErrorCode(wire.error_code.get()),
                    data: wire.error_data.get(),
                    extended: extended.to_vec(),
                })
            }
            other if other.is_request() => return Err(DecodeError::WrongDirection(other.0)),
            other => return Err(DecodeError::UnknownMessageType(other.0)),
        };
        reader.finish()?;
        Ok(response)
    }
}
