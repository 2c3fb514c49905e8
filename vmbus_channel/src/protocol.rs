//! VMBus control-protocol types that the bus API carries: GPADL ids, user-defined offer data,
//! feature and offer flags, and the wire layout of a channel offer.
//!
//! GUIDs are `uuid::Uuid`; where they hit the wire they use the Hyper-V mixed-endian order
//! (first three fields little-endian), see [`guid_to_wire`].

use bitfield_struct::bitfield;
use serde::Deserialize;
use serde::Serialize;
use std::fmt;
use uuid::Uuid;
use zerocopy::FromBytes;
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
/// Pipe channels use the first 4 bytes for the pipe mode and leave 112 bytes to the user.
#[derive(Copy, Clone, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct UserDefinedData(pub [u8; USER_DEFINED_DATA_SIZE]);

const _: () = assert!(size_of::<UserDefinedData>() == 120);

/// Pipe mode value (first u32 of the user data) for byte-mode pipes.
pub const PIPE_TYPE_BYTE: u32 = 0;
/// Pipe mode value (first u32 of the user data) for message-mode pipes.
pub const PIPE_TYPE_MESSAGE: u32 = 4;

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
            PIPE_TYPE_MESSAGE
        } else {
            PIPE_TYPE_BYTE
        };
        let mut data = Self::ZERO;
        data.0[..4].copy_from_slice(&mode.to_le_bytes());
        data
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

/// Per-offer flags (a u16 in the offer message).
#[bitfield(u16)]
#[derive(PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferFlags {
    /// The offer is a device interface the guest should enumerate.
    pub enumerate_device_interface: bool,
    /// The server accepts transfer-page packets.
    pub server_supports_transfer_pages: bool,
    /// The server accepts GPADLs.
    pub server_supports_gpadls: bool,
    _reserved1: bool,
    /// The channel is a pipe in message mode.
    pub named_pipe_mode: bool,
    #[bits(3)]
    _reserved2: u8,
    /// The offer loops back to the same partition.
    pub loopback: bool,
    /// The offer is a parent of other offers.
    pub parent: bool,
    /// Interrupts for this channel go through monitor pages.
    pub request_monitored_notification: bool,
    #[bits(2)]
    _reserved3: u8,
    /// The offer is a hvsocket provider.
    pub tlnpi_provider: bool,
    /// The ring buffer must be in confidential (private) memory.
    pub confidential_ring_buffer: bool,
    /// External GPADLs and GPA-direct ranges may be in confidential memory.
    pub confidential_external_memory: bool,
}

/// Writes a GUID in the Hyper-V wire order (first three fields little-endian).
pub fn guid_to_wire(guid: &Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// Reads a GUID stored in the Hyper-V wire order.
pub fn guid_from_wire(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(bytes)
}

/// The body of a channel offer as the host sends it to the guest (176 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OfferWire {
    /// Interface type GUID (wire order).
    pub interface_id: [u8; 16],
    /// Instance GUID (wire order).
    pub instance_id: [u8; 16],
    /// Monitor-page interrupt latency in 100 ns units (0 = no monitor page).
    pub interrupt_latency: U64,
    /// Interface revision (unused, 0).
    pub interface_revision: U32,
    /// Server context area size (unused, 0).
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

    #[test]
    fn offer_flag_bits_match_wire_positions() {
        assert_eq!(
            OfferFlags::new().with_named_pipe_mode(true).into_bits(),
            0x10
        );
        assert_eq!(
            OfferFlags::new()
                .with_confidential_ring_buffer(true)
                .into_bits(),
            0x4000
        );
        assert_eq!(
            OfferFlags::new()
                .with_confidential_external_memory(true)
                .into_bits(),
            0x8000
        );
        assert_eq!(
            FeatureFlags::new()
                .with_confidential_channels(true)
                .into_bits(),
            0x10
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
