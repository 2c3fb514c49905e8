//! TDISP request bodies (codes 0x81..=0x8c) and the typed [`TdispRequest`] enum.

use super::capabilities::LockInterfaceFlags;
use super::codec::DecodeError;
use super::codec::Reader;
use super::header::TdispMessageType;
use super::message::MessageBody;
use super::report::MmioRange;
use super::report::MmioRangeWire;
use super::vdm::VendorDefinedBody;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Size of the START_INTERFACE nonce.
pub const NONCE_SIZE: usize = 32;

/// The 20-byte LOCK_INTERFACE_REQUEST body as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct LockInterfaceWire {
    /// [`LockInterfaceFlags`] bits.
    pub flags: U16,
    /// Default IDE stream id for the TDI.
    pub default_stream_id: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// Offset the device adds to MMIO addresses in the report.
    pub mmio_reporting_offset: U64,
    /// Address mask for peer-to-peer binding.
    pub bind_p2p_address_mask: U64,
}
const _: () = assert!(size_of::<LockInterfaceWire>() == 20);

/// LOCK_INTERFACE_REQUEST parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockInterfaceParams {
    /// Lock flags.
    pub flags: LockInterfaceFlags,
    /// Default IDE stream id for the TDI.
    pub default_stream_id: u8,
    /// Offset the device adds to MMIO addresses in the report.
    pub mmio_reporting_offset: u64,
    /// Address mask for peer-to-peer binding.
    pub bind_p2p_address_mask: u64,
}

impl LockInterfaceParams {
    /// The wire form.
    pub fn to_wire(&self) -> LockInterfaceWire {
        LockInterfaceWire {
            flags: self.flags.into_bits().into(),
            default_stream_id: self.default_stream_id,
            reserved: 0,
            mmio_reporting_offset: self.mmio_reporting_offset.into(),
            bind_p2p_address_mask: self.bind_p2p_address_mask.into(),
        }
    }

    /// Validates the wire form.
    pub fn from_wire(wire: &LockInterfaceWire) -> Result<Self, DecodeError> {
        if wire.reserved != 0 {
            return Err(DecodeError::ReservedBits("lock_interface reserved"));
        }
        Ok(Self {
            flags: LockInterfaceFlags::from_wire(wire.flags.get(), "lock_interface flags")?,
            default_stream_id: wire.default_stream_id,
            mmio_reporting_offset: wire.mmio_reporting_offset.get(),
            bind_p2p_address_mask: wire.bind_p2p_address_mask.get(),
        })
    }
}

/// The 4-byte GET_DEVICE_INTERFACE_REPORT body as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReportRequestWire {
    /// Offset into the report.
    pub offset: U16,
    /// Bytes requested.
    pub length: U16,
}
const _: () = assert!(size_of::<ReportRequestWire>() == 4);

/// A TDISP request body: one variant per request code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdispRequest {
    /// GET_TDISP_VERSION (0x81), no body.
    GetVersion,
    /// GET_TDISP_CAPABILITIES (0x82).
    GetCapabilities {
        /// TSM capability flags (all reserved in TDISP 1.0; carried as received).
        tsm_caps: u32,
    },
    /// LOCK_INTERFACE_REQUEST (0x83).
    LockInterface(LockInterfaceParams),
    /// GET_DEVICE_INTERFACE_REPORT (0x84).
    GetDeviceInterfaceReport {
        /// Offset into the report.
        offset: u16,
        /// Bytes requested.
        length: u16,
    },
    /// GET_DEVICE_INTERFACE_STATE (0x85), no body.
    GetDeviceInterfaceState,
    /// START_INTERFACE_REQUEST (0x86).
    StartInterface {
        /// The nonce LOCK_INTERFACE_RESPONSE returned.
        nonce: [u8; NONCE_SIZE],
    },
    /// STOP_INTERFACE_REQUEST (0x87), no body.
    StopInterface,
    /// BIND_P2P_STREAM_REQUEST (0x88).
    BindP2pStream {
        /// The stream to bind.
        p2p_stream_id: u8,
        /// Stream configuration byte, present in newer revisions (XT enable in bit 0);
        /// `None` for the one-byte TDISP 1.0 body.
        stream_config: Option<u8>,
    },
    /// UNBIND_P2P_STREAM_REQUEST (0x89).
    UnbindP2pStream {
        /// The stream to unbind.
        p2p_stream_id: u8,
    },
    /// SET_MMIO_ATTRIBUTE_REQUEST (0x8a): one MMIO range with its new attributes.
    SetMmioAttribute(MmioRange),
    /// VDM_REQUEST (0x8b).
    Vdm(VendorDefinedBody),
    /// SET_TDISP_CONFIG_REQUEST (0x8c).
    SetTdispConfig {
        /// DSM configuration flags (bit 0 XT mode enable, bit 1 XT bit for locked MSI-X).
        dsm_config: u32,
    },
}

impl MessageBody for TdispRequest {
    fn message_type(&self) -> TdispMessageType {
        match self {
            Self::GetVersion => TdispMessageType::GET_TDISP_VERSION,
            Self::GetCapabilities { .. } => TdispMessageType::GET_TDISP_CAPABILITIES,
            Self::LockInterface(_) => TdispMessageType::LOCK_INTERFACE_REQUEST,
            Self::GetDeviceInterfaceReport { .. } => TdispMessageType::GET_DEVICE_INTERFACE_REPORT,
            Self::GetDeviceInterfaceState => TdispMessageType::GET_DEVICE_INTERFACE_STATE,
            Self::StartInterface { .. } => TdispMessageType::START_INTERFACE_REQUEST,
            Self::StopInterface => TdispMessageType::STOP_INTERFACE_REQUEST,
            Self::BindP2pStream { .. } => TdispMessageType::BIND_P2P_STREAM_REQUEST,
            Self::UnbindP2pStream { .. } => TdispMessageType::UNBIND_P2P_STREAM_REQUEST,
            Self::SetMmioAttribute(_) => TdispMessageType::SET_MMIO_ATTRIBUTE_REQUEST,
            Self::Vdm(_) => TdispMessageType::VDM_REQUEST,
            Self::SetTdispConfig { .. } => TdispMessageType::SET_TDISP_CONFIG_REQUEST,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::GetVersion | Self::GetDeviceInterfaceState | Self::StopInterface => {}
            Self::GetCapabilities { tsm_caps } => out.extend_from_slice(&tsm_caps.to_le_bytes()),
            Self::LockInterface(params) => out.extend_from_slice(params.to_wire().as_bytes()),
            Self::GetDeviceInterfaceReport { offset, length } => {
                let wire = ReportRequestWire {
                    offset: (*offset).into(),
                    length: (*length).into(),
                };
                out.extend_from_slice(wire.as_bytes());
            }
            Self::StartInterface { nonce } => out.extend_from_slice(nonce),
            Self::BindP2pStream {
                p2p_stream_id,
                stream_config,
            } => {
                out.push(*p2p_stream_id);
                out.extend(*stream_config);
            }
            Self::UnbindP2pStream { p2p_stream_id } => out.push(*p2p_stream_id),
            Self::SetMmioAttribute(range) => out.extend_from_slice(range.to_wire().as_bytes()),
            Self::Vdm(vdm) => vdm.encode(out),
            Self::SetTdispConfig { dsm_config } => out.extend_from_slice(&dsm_config.to_le_bytes()),
        }
    }

    fn decode_body(message_type: TdispMessageType, body: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(body);
        let request = match message_type {
            TdispMessageType::GET_TDISP_VERSION => Self::GetVersion,
            TdispMessageType::GET_TDISP_CAPABILITIES => Self::GetCapabilities {
                tsm_caps: reader.read::<U32>()?.get(),
            },
            TdispMessageType::LOCK_INTERFACE_REQUEST => {
                Self::LockInterface(LockInterfaceParams::from_wire(&reader.read()?)?)
            }
            TdispMessageType::GET_DEVICE_INTERFACE_REPORT => {
                let wire: ReportRequestWire = reader.read()?;
                Self::GetDeviceInterfaceReport {
                    offset: wire.offset.get(),
                    length: wire.length.get(),
                }
            }
            TdispMessageType::GET_DEVICE_INTERFACE_STATE => Self::GetDeviceInterfaceState,
            TdispMessageType::START_INTERFACE_REQUEST => Self::StartInterface {
                nonce: reader.read()?,
            },
            TdispMessageType::STOP_INTERFACE_REQUEST => Self::StopInterface,
            TdispMessageType::BIND_P2P_STREAM_REQUEST => {
                let p2p_stream_id = reader.u8()?;
                let stream_config = match reader.rest() {
                    [] => None,
                    [config] => Some(*config),
                    longer => {
                        return Err(DecodeError::TrailingBytes {
                            extra: longer.len() - 1,
                        });
                    }
                };
                Self::BindP2pStream {
                    p2p_stream_id,
                    stream_config,
                }
            }
            TdispMessageType::UNBIND_P2P_STREAM_REQUEST => Self::UnbindP2pStream {
                p2p_stream_id: reader.u8()?,
            },
            TdispMessageType::SET_MMIO_ATTRIBUTE_REQUEST => {
                Self::SetMmioAttribute(MmioRange::from_wire(&reader.read::<MmioRangeWire>()?)?)
            }
            TdispMessageType::VDM_REQUEST => Self::Vdm(VendorDefinedBody::decode(reader.rest())?),
            TdispMessageType::SET_TDISP_CONFIG_REQUEST => Self::SetTdispConfig {
                dsm_config: reader.read::<U32>()?.get(),
            },
            other if other.is_response() => return Err(DecodeError::WrongDirection(other.0)),
            other => return Err(DecodeError::UnknownMessageType(other.0)),
        };
        reader.finish()?;
        Ok(request)
    }
}
