//! VMBus control-protocol types that the bus API carries: GPADL ids, user-defined offer data,
//! feature and offer flags, and the wire layout of a channel offer.
//!
//! GUIDs are `uuid::Uuid`; where they hit the wire they use the Hyper-V mixed-endian order
//! (first three fields little-endian), see [`guid_to_wire`].

use crate::bus::ChannelType;
use crate::bus::OfferParams;
use bitfield_struct::bitfield;
use open_enum::open_enum;
use serde::Deserialize;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;
use zerocopy::FromBytes;
use zerocopy::FromZeros;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Identifies a GPADL (guest physical address descriptor list) within a connection.
#[derive(
    Debug,
    Copy,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct GpadlId(pub u32);

const _: () = assert!(size_of::<GpadlId>() == 4);

impl fmt::Display for GpadlId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Size of the user-defined area of an offer and of an open request.
pub const USER_DEFINED_DATA_SIZE: usize = 120;

/// The 120 bytes of interface-specific data in an offer or open request.
///
/// Named-pipe offers (Linux's `u.pipe`) start with a 4-byte [`PipeType`] and leave 116 bytes;
/// hvsocket offers start with [`HvsockUserDefinedParameters`].
#[derive(Copy, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct UserDefinedData(pub [u8; USER_DEFINED_DATA_SIZE]);

const _: () = assert!(size_of::<UserDefinedData>() == 120);

impl UserDefinedData {
    /// User data with every byte zero.
    pub const ZERO: Self = Self([0; USER_DEFINED_DATA_SIZE]);

    /// Copies `bytes` to the start of an otherwise zero block; `None` if longer than 120 bytes.
    pub fn from_prefix(bytes: &[u8]) -> Option<Self> {
        let mut data = Self::ZERO;
        data.0.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(data)
    }

    /// User data for a pipe offer: the pipe mode word, then zeros.
    pub fn pipe(message_mode: bool) -> Self {
        let mode = if message_mode {
            PipeType::MESSAGE
        } else {
            PipeType::BYTE
        };
        let mut data = Self::ZERO;
        data.0[..4].copy_from_slice(&mode.0.to_le_bytes());
        data
    }

    /// User data for a hvsocket offer (RS5 parameters, byte-mode pipe), then zeros.
    pub fn hvsock(is_for_guest_accept: bool, is_for_guest_container: bool, silo_id: Uuid) -> Self {
        let params = HvsockUserDefinedParameters {
            pipe_type: U32::new(PipeType::BYTE.0),
            is_for_guest_accept: is_for_guest_accept.into(),
            is_for_guest_container: is_for_guest_container.into(),
            version: U32::new(HvsockParametersVersion::RS5.0),
            silo_id: guid_to_wire(&silo_id),
            padding: [0; 2],
        };
        let mut data = Self::ZERO;
        data.0[..size_of::<HvsockUserDefinedParameters>()].copy_from_slice(params.as_bytes());
        data
    }

    /// The pipe mode word of a named-pipe offer.
    pub fn pipe_type(&self) -> PipeType {
        let (mode, _) = U32::read_from_prefix(&self.0).unwrap_or_default();
        PipeType(mode.get())
    }

    /// The hvsocket parameters at the start of a hvsocket offer's user data.
    pub fn hvsock_params(&self) -> HvsockUserDefinedParameters {
        HvsockUserDefinedParameters::read_from_prefix(&self.0)
            .map(|(params, _)| params)
            .unwrap_or_else(|_| HvsockUserDefinedParameters::new_zeroed())
    }
}

impl Default for UserDefinedData {
    fn default() -> Self {
        Self::ZERO
    }
}

impl fmt::Debug for UserDefinedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Trailing zeros carry no information; keep logs short.
        let used = self.0.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        write!(f, "UserDefinedData(")?;
        for b in &self.0[..used] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Serialize for UserDefinedData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserDefinedData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UserDefinedData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{USER_DEFINED_DATA_SIZE} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                <[u8; USER_DEFINED_DATA_SIZE]>::try_from(v)
                    .map(UserDefinedData)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut data = UserDefinedData::ZERO;
                for (i, b) in data.0.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(data)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Features negotiated by the client when it connects (a u32 on the wire).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureFlags {
    /// The guest may pick the event flag and connection id used to signal the host.
    pub guest_specified_signal_parameters: bool,
    /// The guest may redirect channel interrupts to another VP.
    pub channel_interrupt_redirection: bool,
    /// The guest may change its connection parameters.
    pub modify_connection: bool,
    /// The client identifies itself with a client id.
    pub client_id: bool,
    /// The client supports confidential ring buffers and external memory (hardware-isolated VMs).
    pub confidential_channels: bool,
    #[bits(27)]
    _reserved: u32,
}

impl FeatureFlags {
    /// Every flag this implementation understands.
    pub fn all() -> Self {
        Self::new()
            .with_guest_specified_signal_parameters(true)
            .with_channel_interrupt_redirection(true)
            .with_modify_connection(true)
            .with_client_id(true)
            .with_confidential_channels(true)
    }

    /// True if no flag outside [`FeatureFlags::all`] is set.
    pub fn is_known(self) -> bool {
        self.into_bits() & !Self::all().into_bits() == 0
    }
}

/// Per-offer flags (`chn_flags`, a u16 in the offer), at the bit positions of Linux `hyperv.h`
/// (`VMBUS_CHANNEL_*`) and OpenVMM `vmbus_core::protocol::OfferFlags`.
///
/// The confidential bits reuse 0x2 and 0x4, which older headers named
/// `SERVER_SUPPORTS_TRANSFER_PAGES` / `SERVER_SUPPORTS_GPADLS`; no current host sends those.
#[bitfield(u16)]
#[derive(PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferFlags {
    /// 0x1: the offer is a device interface the guest should enumerate.
    pub enumerate_device_interface: bool,
    /// 0x2: the ring buffer must be in confidential (private) memory.
    pub confidential_ring_buffer: bool,
    /// 0x4: external GPADLs and GPA-direct ranges must be in confidential memory.
    pub confidential_external_memory: bool,
    /// 0x8: reserved here (newer OpenVMM: pinned external memory, not implemented).
    _reserved1: bool,
    /// 0x10: the channel is a named pipe; the user data starts with a [`PipeType`].
    pub named_pipe_mode: bool,
    #[bits(3)]
    _reserved2: u8,
    /// 0x100: the offer loops back to the same partition (defined by Linux, never sent here).
    pub loopback: bool,
    /// 0x200: the offer is a parent of other offers (defined by Linux, never sent here).
    pub parent: bool,
    /// 0x400: the host asks for monitored notification. Guests decide from the offer
    /// message's `monitor_allocated` instead; [`host_offer`] never sets it.
    pub request_monitored_notification: bool,
    #[bits(2)]
    _reserved3: u8,
    /// 0x2000: the offer is a hvsocket endpoint (Linux `VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER`).
    pub tlnpi_provider: bool,
    #[bits(2)]
    _reserved4: u8,
}

impl OfferFlags {
    /// The flags to send to a client that negotiated `features`: without
    /// [`FeatureFlags::confidential_channels`] the confidential bits are cleared (as OpenVMM's
    /// server does when it sends an offer).
    ///
    /// A server must only grant `confidential_channels` when it has private memory to serve
    /// confidential rings from.
    pub fn for_connection(self, features: FeatureFlags) -> Self {
        if features.confidential_channels() {
            self
        } else {
            self.with_confidential_ring_buffer(false)
                .with_confidential_external_memory(false)
        }
    }
}

/// The pipe mode in the first u32 (little-endian) of a named-pipe offer's user data.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PipeType {
    /// Byte-mode pipe (Linux `VMBUS_PIPE_TYPE_BYTE`).
    BYTE = 0,
    /// Message-mode pipe (Linux `VMBUS_PIPE_TYPE_MESSAGE`).
    MESSAGE = 4,
}

/// Version of the hvsocket offer parameters (a little-endian u32 on the wire).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HvsockParametersVersion {
    /// Before Windows 10 RS5: no silo id.
    PRE_RS5 = 0,
    /// Windows 10 RS5 and later: carries a silo id.
    RS5 = 1,
}

/// The start of a hvsocket offer's user data (OpenVMM `HvsockUserDefinedParameters`); the
/// rest of the 120 bytes is zero. Linux reads `is_for_guest_accept` as `user_def[0]` of the
/// pipe union, i.e. byte 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvsockUserDefinedParameters {
    /// Always [`PipeType::BYTE`].
    pub pipe_type: U32,
    /// 1 if the host connects and the guest accepts (`ChannelType::HvSocket::is_connect`).
    pub is_for_guest_accept: u8,
    /// 1 if the connection is for a container in the guest.
    pub is_for_guest_container: u8,
    /// [`HvsockParametersVersion`], unaligned on the wire.
    pub version: U32,
    /// The silo id (wire order), all zero for none.
    pub silo_id: [u8; 16],
    /// Zero.
    pub padding: [u8; 2],
}

const _: () = assert!(size_of::<HvsockUserDefinedParameters>() == 28);

/// Writes a GUID in the Hyper-V wire order (first three fields little-endian).
pub fn guid_to_wire(guid: &Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// Reads a GUID stored in the Hyper-V wire order.
pub fn guid_from_wire(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(bytes)
}

/// The body of a channel offer as the host sends it to the guest (176 bytes): Linux
/// `struct vmbus_channel_offer`, which `OFFER_CHANNEL` carries after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OfferWire {
    /// Interface type GUID (wire order).
    pub interface_id: [u8; 16],
    /// Instance GUID (wire order).
    pub instance_id: [u8; 16],
    /// Windows' `InterruptLatencyIn100nsUnits`; Linux reserves it and OpenVMM sends 0 (the
    /// latency belongs on the monitor page), so [`host_offer`] writes 0.
    pub interrupt_latency: U64,
    /// Interface revision (reserved, 0).
    pub interface_revision: U32,
    /// Server context area size (reserved, 0).
    pub server_context_size: U32,
    /// [`OfferFlags`] bits.
    pub flags: U16,
    /// MMIO space needed, in megabytes.
    pub mmio_megabytes: U16,
    /// Interface-specific data.
    pub user_defined: UserDefinedData,
    /// Subchannel index, 0 for a primary channel.
    pub subchannel_index: U16,
    /// Optional MMIO space, in megabytes.
    pub mmio_megabytes_optional: U16,
}

const _: () = assert!(size_of::<OfferWire>() == 176);

/// An offer as the server holds it: the 176 wire bytes plus the seed settings that steer the
/// server but are not part of them. Built by [`host_offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOffer {
    /// The offer body. Its flags are the channel's full set; send
    /// [`OfferFlags::for_connection`] of them to each client.
    pub wire: OfferWire,
    /// Where the channel goes in the offer sequence, see [`HostOffer::sort_key`].
    pub offer_order: Option<u32>,
    /// Monitored-notification latency asked for by the device. The wire offer does not carry
    /// it: a server with monitor pages puts it on the monitor page and sets
    /// `monitor_allocated` in `OFFER_CHANNEL`; one without them ignores it (and says so).
    pub mnf_interrupt_latency: Option<Duration>,
}

impl HostOffer {
    /// The offer's flags.
    pub fn flags(&self) -> OfferFlags {
        OfferFlags::from_bits(self.wire.flags.get())
    }

    /// The key offers are sent in (OpenVMM's default order): by interface, then `offer_order`
    /// (channels without one last), then instance.
    pub fn sort_key(&self) -> (Uuid, u32, Uuid) {
        (
            guid_from_wire(self.wire.interface_id),
            self.offer_order.unwrap_or(u32::MAX),
            guid_from_wire(self.wire.instance_id),
        )
    }
}

/// Translates a device's offer parameters into the offer the server sends, per
/// [`ChannelType`], as OpenVMM's `vmbus_server` does:
///
/// | channel type | flags | user data |
/// |---|---|---|
/// | `Device { pipe_packets: false }` | — | zero |
/// | `Device { pipe_packets: true }` | `named_pipe_mode` | [`PipeType::MESSAGE`] |
/// | `Interface` | `enumerate_device_interface` | the device's 120 bytes |
/// | `Pipe` | `enumerate_device_interface`, `named_pipe_mode` | [`PipeType`] by mode |
/// | `HvSocket` | `enumerate_device_interface`, `named_pipe_mode`, `tlnpi_provider` | [`HvsockUserDefinedParameters`] |
///
/// Every channel may use a confidential ring (`confidential_ring_buffer`);
/// `confidential_external_memory` follows `allow_confidential_external_memory`. The
/// `interface_name` is informational and stays with the caller; everything else is in the
/// result, on the wire or beside it.
pub fn host_offer(params: &OfferParams) -> HostOffer {
    let mut flags = OfferFlags::new()
        .with_confidential_ring_buffer(true)
        .with_confidential_external_memory(params.allow_confidential_external_memory);
    let user_defined = match params.channel_type {
        ChannelType::Device { pipe_packets } => {
            flags.set_named_pipe_mode(pipe_packets);
            if pipe_packets {
                UserDefinedData::pipe(true)
            } else {
                UserDefinedData::ZERO
            }
        }
        ChannelType::Interface { user_defined } => {
            flags.set_enumerate_device_interface(true);
            user_defined
        }
        ChannelType::Pipe { message_mode } => {
            flags.set_enumerate_device_interface(true);
            flags.set_named_pipe_mode(true);
            UserDefinedData::pipe(message_mode)
        }
        ChannelType::HvSocket {
            is_connect,
            is_for_container,
            silo_id,
        } => {
            flags.set_enumerate_device_interface(true);
            flags.set_named_pipe_mode(true);
            flags.set_tlnpi_provider(true);
            UserDefinedData::hvsock(is_connect, is_for_container, silo_id)
        }
    };
    HostOffer {
        wire: OfferWire {
            interface_id: guid_to_wire(&params.interface_id),
            instance_id: guid_to_wire(&params.instance_id),
            interrupt_latency: U64::new(0),
            interface_revision: U32::new(0),
            server_context_size: U32::new(0),
            flags: U16::new(flags.into_bits()),
            mmio_megabytes: U16::new(params.mmio_megabytes),
            user_defined,
            subchannel_index: U16::new(params.subchannel_index),
            mmio_megabytes_optional: U16::new(params.mmio_megabytes_optional),
        },
        offer_order: params.offer_order,
        mnf_interrupt_latency: params.mnf_interrupt_latency,
    }
}

/// Header of one range in a GPA range list: bytes, then offset into the first page; page
/// numbers follow as u64 words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaRangeHeader {
    /// Length of the range in bytes.
    pub byte_count: U32,
    /// Offset of the range's first byte within its first page.
    pub byte_offset: U32,
}

const _: () = assert!(size_of::<GpaRangeHeader>() == 8);

impl GpaRangeHeader {
    /// The header packed into the u64 word used in GPA range buffers.
    pub fn to_word(self) -> u64 {
        u64::from(self.byte_count.get()) | (u64::from(self.byte_offset.get()) << 32)
    }

    /// The header unpacked from a u64 word of a GPA range buffer.
    pub fn from_word(word: u64) -> Self {
        Self {
            byte_count: U32::new(word as u32),
            byte_offset: U32::new((word >> 32) as u32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_wire_order_swaps_first_three_fields() {
        let g = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        let wire = guid_to_wire(&g);
        assert_eq!(
            wire,
            [
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
        assert_eq!(guid_from_wire(wire), g);
    }

    /// Bit values of Linux `hyperv.h` (`VMBUS_CHANNEL_*`, confidential VMBus series) and
    /// OpenVMM `vmbus_core::protocol::OfferFlags`.
    #[test]
    fn offer_flag_bits_match_linux_and_openvmm() {
        let bit = |f: fn(OfferFlags) -> OfferFlags| f(OfferFlags::new()).into_bits();
        assert_eq!(bit(|f| f.with_enumerate_device_interface(true)), 0x0001);
        assert_eq!(bit(|f| f.with_confidential_ring_buffer(true)), 0x0002);
        assert_eq!(bit(|f| f.with_confidential_external_memory(true)), 0x0004);
        assert_eq!(bit(|f| f.with_named_pipe_mode(true)), 0x0010);
        assert_eq!(bit(|f| f.with_loopback(true)), 0x0100);
        assert_eq!(bit(|f| f.with_parent(true)), 0x0200);
        assert_eq!(bit(|f| f.with_request_monitored_notification(true)), 0x0400);
        assert_eq!(bit(|f| f.with_tlnpi_provider(true)), 0x2000);
        assert_eq!(
            FeatureFlags::new()
                .with_confidential_channels(true)
                .into_bits(),
            0x10
        );
    }

    #[test]
    fn confidential_offer_flags_decode_from_low_bits() {
        let flags = OfferFlags::from_bits(0x0006);
        assert!(flags.confidential_ring_buffer());
        assert!(flags.confidential_external_memory());
        // The old (wrong) positions mean nothing.
        let old = OfferFlags::from_bits(0xc000);
        assert!(!old.confidential_ring_buffer());
        assert!(!old.confidential_external_memory());
    }

    #[test]
    fn connection_without_confidential_channels_gets_no_confidential_bits() {
        let flags = OfferFlags::new()
            .with_enumerate_device_interface(true)
            .with_confidential_ring_buffer(true)
            .with_confidential_external_memory(true);
        assert_eq!(flags.for_connection(FeatureFlags::all()), flags);
        assert_eq!(
            flags.for_connection(FeatureFlags::all().with_confidential_channels(false)),
            OfferFlags::new().with_enumerate_device_interface(true)
        );
    }

    #[test]
    fn unknown_feature_bits_are_detected() {
        assert!(FeatureFlags::all().is_known());
        assert!(!FeatureFlags::from_bits(1 << 31).is_known());
    }

    #[test]
    fn user_data_round_trips_through_postcard() {
        let data = UserDefinedData::from_prefix(b"hello").unwrap();
        let bytes = postcard::to_allocvec(&data).unwrap();
        let back: UserDefinedData = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, data);
        assert!(UserDefinedData::from_prefix(&[0; 121]).is_none());
    }

    #[test]
    fn hvsock_parameters_match_openvmm_layout() {
        use std::mem::offset_of;
        assert_eq!(
            offset_of!(HvsockUserDefinedParameters, is_for_guest_accept),
            4
        );
        assert_eq!(
            offset_of!(HvsockUserDefinedParameters, is_for_guest_container),
            5
        );
        assert_eq!(offset_of!(HvsockUserDefinedParameters, version), 6);
        assert_eq!(offset_of!(HvsockUserDefinedParameters, silo_id), 10);
        assert_eq!(offset_of!(HvsockUserDefinedParameters, padding), 26);
    }

    #[test]
    fn pipe_user_data_puts_mode_first() {
        assert_eq!(&UserDefinedData::pipe(true).0[..4], &[4, 0, 0, 0]);
        assert_eq!(UserDefinedData::pipe(false), UserDefinedData::ZERO);
    }

    #[test]
    fn gpa_range_header_packs_count_low_offset_high() {
        let h = GpaRangeHeader {
            byte_count: U32::new(0x2000),
            byte_offset: U32::new(0x10),
        };
        assert_eq!(h.to_word(), 0x0000_0010_0000_2000);
        assert_eq!(GpaRangeHeader::from_word(h.to_word()), h);
        assert_eq!(h.as_bytes(), &0x0000_0010_0000_2000u64.to_le_bytes());
    }
}

/// Golden bytes for [`host_offer`]: every expected offer is spelled out byte by byte from the
/// Linux `struct vmbus_channel_offer` layout, not computed by the code under test.
#[cfg(test)]
mod offer_translation_tests {
    use super::*;
    use proptest::prelude::*;

    const INTERFACE: &str = "00112233-4455-6677-8899-aabbccddeeff";
    const INSTANCE: &str = "a0a1a2a3-b0b1-c0c1-d0d1-d2d3d4d5d6d7";
    /// The two GUIDs in Hyper-V wire order (first three fields little-endian).
    const INTERFACE_WIRE: [u8; 16] = [
        0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    const INSTANCE_WIRE: [u8; 16] = [
        0xa3, 0xa2, 0xa1, 0xa0, 0xb1, 0xb0, 0xc1, 0xc0, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
        0xd7,
    ];

    fn params(channel_type: ChannelType) -> OfferParams {
        OfferParams {
            interface_name: "test".into(),
            interface_id: Uuid::parse_str(INTERFACE).unwrap(),
            instance_id: Uuid::parse_str(INSTANCE).unwrap(),
            mmio_megabytes: 0x10,
            mmio_megabytes_optional: 0x20,
            channel_type,
            subchannel_index: 3,
            mnf_interrupt_latency: None,
            offer_order: None,
            allow_confidential_external_memory: false,
        }
    }

    /// The 176 bytes of an offer of `params(..)` with `flags` and `user` (zero-padded to 120).
    fn expected(flags: [u8; 2], user: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&INTERFACE_WIRE); // if_type
        v.extend_from_slice(&INSTANCE_WIRE); // if_instance
        v.extend_from_slice(&[0; 16]); // reserved1, reserved2 (latency, revision, context)
        v.extend_from_slice(&flags); // chn_flags
        v.extend_from_slice(&[0x10, 0x00]); // mmio_megabytes
        v.extend_from_slice(user);
        v.resize(52 + 120, 0); // u.std.user_def
        v.extend_from_slice(&[0x03, 0x00]); // sub_channel_index
        v.extend_from_slice(&[0x20, 0x00]); // mmio_megabytes_optional
        assert_eq!(v.len(), 176);
        v
    }

    #[test]
    fn confidential_offer_golden_bytes() {
        let mut p = params(ChannelType::Device {
            pipe_packets: false,
        });
        p.allow_confidential_external_memory = true;
        let offer = host_offer(&p);
        // 0x0006: confidential ring buffer (0x2) and confidential external memory (0x4).
        assert_eq!(offer.wire.as_bytes(), &expected([0x06, 0x00], &[])[..]);
        // A client without confidential channels sees neither bit.
        let plain = offer.flags().for_connection(FeatureFlags::new());
        assert_eq!(plain.into_bits(), 0);
    }

    #[test]
    fn device_offer_golden_bytes() {
        let offer = host_offer(&params(ChannelType::Device {
            pipe_packets: false,
        }));
        assert_eq!(offer.wire.as_bytes(), &expected([0x02, 0x00], &[])[..]);
    }

    #[test]
    fn device_with_pipe_packets_is_a_message_pipe_not_enumerated() {
        let offer = host_offer(&params(ChannelType::Device { pipe_packets: true }));
        // named pipe (0x10) + confidential ring (0x2); pipe mode 4 = message.
        assert_eq!(
            offer.wire.as_bytes(),
            &expected([0x12, 0x00], &[4, 0, 0, 0])[..]
        );
    }

    #[test]
    fn interface_offer_carries_user_data_and_enumerates() {
        let user: Vec<u8> = (1..=120).collect();
        let offer = host_offer(&params(ChannelType::Interface {
            user_defined: UserDefinedData::from_prefix(&user).unwrap(),
        }));
        assert_eq!(offer.wire.as_bytes(), &expected([0x03, 0x00], &user)[..]);
    }

    #[test]
    fn pipe_offers_set_mode_and_flags() {
        let message = host_offer(&params(ChannelType::Pipe { message_mode: true }));
        assert_eq!(
            message.wire.as_bytes(),
            &expected([0x13, 0x00], &[4, 0, 0, 0])[..]
        );
        let byte = host_offer(&params(ChannelType::Pipe {
            message_mode: false,
        }));
        assert_eq!(
            byte.wire.as_bytes(),
            &expected([0x13, 0x00], &[0, 0, 0, 0])[..]
        );
    }

    #[test]
    fn hvsocket_offer_carries_connect_container_and_silo() {
        let offer = host_offer(&params(ChannelType::HvSocket {
            is_connect: true,
            is_for_container: false,
            silo_id: Uuid::parse_str(INSTANCE).unwrap(),
        }));
        let mut user = vec![
            0, 0, 0, 0, // pipe type: byte
            1, // is_for_guest_accept
            0, // is_for_guest_container
            1, 0, 0, 0, // version RS5
        ];
        user.extend_from_slice(&INSTANCE_WIRE); // silo id
        // enumerate (0x1) + confidential ring (0x2) + named pipe (0x10) + tlnpi (0x2000).
        assert_eq!(offer.wire.as_bytes(), &expected([0x13, 0x20], &user)[..]);

        let container = host_offer(&params(ChannelType::HvSocket {
            is_connect: false,
            is_for_container: true,
            silo_id: Uuid::nil(),
        }));
        let params = container.wire.user_defined.hvsock_params();
        assert_eq!(params.is_for_guest_accept, 0);
        assert_eq!(params.is_for_guest_container, 1);
        assert_eq!(params.silo_id, [0; 16]);
    }

    #[test]
    fn offer_order_and_latency_are_kept_beside_the_wire_bytes() {
        let mut p = params(ChannelType::Device {
            pipe_packets: false,
        });
        p.offer_order = Some(7);
        p.mnf_interrupt_latency = Some(Duration::from_micros(100));
        let offer = host_offer(&p);
        assert_eq!(offer.offer_order, Some(7));
        assert_eq!(
            offer.mnf_interrupt_latency,
            Some(Duration::from_micros(100))
        );
        // Neither is on the wire: OpenVMM sends the reserved words as zero and signals
        // monitoring through OFFER_CHANNEL's monitor fields.
        assert_eq!(offer.wire.interrupt_latency.get(), 0);
        assert!(!offer.flags().request_monitored_notification());
    }

    #[test]
    fn offers_sort_by_interface_then_order_then_instance() {
        let offer = |interface: u128, order: Option<u32>, instance: u128| {
            let mut p = params(ChannelType::default());
            p.interface_id = Uuid::from_u128(interface);
            p.instance_id = Uuid::from_u128(instance);
            p.offer_order = order;
            host_offer(&p)
        };
        let mut offers = [
            offer(2, Some(0), 1),
            offer(1, None, 1),
            offer(1, Some(5), 9),
            offer(1, Some(5), 3),
            offer(1, Some(1), 4),
        ];
        offers.sort_by_key(HostOffer::sort_key);
        let order: Vec<_> = offers
            .iter()
            .map(|o| {
                let (i, n, j) = o.sort_key();
                (i.as_u128(), n, j.as_u128())
            })
            .collect();
        assert_eq!(
            order,
            [(1, 1, 4), (1, 5, 3), (1, 5, 9), (1, u32::MAX, 1), (2, 0, 1)]
        );
    }

    fn channel_type() -> impl Strategy<Value = ChannelType> {
        prop_oneof![
            any::<bool>().prop_map(|pipe_packets| ChannelType::Device { pipe_packets }),
            prop::collection::vec(any::<u8>(), 120).prop_map(|b| ChannelType::Interface {
                user_defined: UserDefinedData::from_prefix(&b).unwrap_or_default(),
            }),
            any::<bool>().prop_map(|message_mode| ChannelType::Pipe { message_mode }),
            (any::<bool>(), any::<bool>(), any::<u128>()).prop_map(|(c, k, s)| {
                ChannelType::HvSocket {
                    is_connect: c,
                    is_for_container: k,
                    silo_id: Uuid::from_u128(s),
                }
            }),
        ]
    }

    proptest! {
        /// Every setting of the offer parameters survives translation: decoding the wire
        /// bytes (as a guest would) gives back the ids, sizes and type-specific data, and no
        /// bit outside the ones the table names is ever set.
        #[test]
        fn translation_keeps_every_setting(
            interface in any::<u128>(),
            instance in any::<u128>(),
            mmio in any::<u16>(),
            mmio_optional in any::<u16>(),
            subchannel in any::<u16>(),
            order in any::<Option<u32>>(),
            latency_us in any::<Option<u16>>(),
            external in any::<bool>(),
            channel_type in channel_type(),
        ) {
            let p = OfferParams {
                interface_name: String::new(),
                interface_id: Uuid::from_u128(interface),
                instance_id: Uuid::from_u128(instance),
                mmio_megabytes: mmio,
                mmio_megabytes_optional: mmio_optional,
                channel_type,
                subchannel_index: subchannel,
                mnf_interrupt_latency: latency_us.map(|us| Duration::from_micros(us.into())),
                offer_order: order,
                allow_confidential_external_memory: external,
            };
            let offer = host_offer(&p);
            let wire = OfferWire::read_from_bytes(offer.wire.as_bytes()).unwrap();
            prop_assert_eq!(guid_from_wire(wire.interface_id), p.interface_id);
            prop_assert_eq!(guid_from_wire(wire.instance_id), p.instance_id);
            prop_assert_eq!(wire.mmio_megabytes.get(), mmio);
            prop_assert_eq!(wire.mmio_megabytes_optional.get(), mmio_optional);
            prop_assert_eq!(wire.subchannel_index.get(), subchannel);
            prop_assert_eq!(offer.offer_order, order);
            prop_assert_eq!(offer.mnf_interrupt_latency, p.mnf_interrupt_latency);
            let flags = OfferFlags::from_bits(wire.flags.get());
            prop_assert!(flags.confidential_ring_buffer());
            prop_assert_eq!(flags.confidential_external_memory(), external);
            prop_assert_eq!(wire.flags.get() & !0x2017, 0);
            match p.channel_type {
                ChannelType::Device { pipe_packets } => {
                    prop_assert!(!flags.enumerate_device_interface());
                    prop_assert_eq!(flags.named_pipe_mode(), pipe_packets);
                }
                ChannelType::Interface { user_defined } => {
                    prop_assert!(flags.enumerate_device_interface());
                    prop_assert_eq!(wire.user_defined, user_defined);
                }
                ChannelType::Pipe { message_mode } => {
                    prop_assert!(flags.named_pipe_mode());
                    let mode = if message_mode { PipeType::MESSAGE } else { PipeType::BYTE };
                    prop_assert_eq!(wire.user_defined.pipe_type(), mode);
                }
                ChannelType::HvSocket { is_connect, is_for_container, silo_id } => {
                    prop_assert!(flags.tlnpi_provider() && flags.named_pipe_mode());
                    let h = wire.user_defined.hvsock_params();
                    prop_assert_eq!(h.is_for_guest_accept != 0, is_connect);
                    prop_assert_eq!(h.is_for_guest_container != 0, is_for_container);
                    prop_assert_eq!(guid_from_wire(h.silo_id), silo_id);
                    prop_assert_eq!(h.version.get(), HvsockParametersVersion::RS5.0);
                }
            }
        }
    }
}
