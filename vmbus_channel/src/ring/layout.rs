//! Byte layout of a VMBus ring: the control page and the packet framing.
//!
//! Each direction is one ring: a 4 KiB control page, then the data pages. Indices in the
//! control page are byte offsets into the data area. A packet is a 16-byte
//! [`PacketDescriptor`], the payload padded to 8 bytes, then an 8-byte [`PacketFooter`].

use open_enum::open_enum;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Size of the control page at the start of each ring.
pub const CONTROL_PAGE_SIZE: usize = 4096;

/// The control page of one ring direction.
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ControlPage {
    /// Byte offset where the writer puts the next packet (owned by the writer).
    pub write_index: U32,
    /// Byte offset of the next packet the reader consumes (owned by the reader).
    pub read_index: U32,
    /// Non-zero when the reader does not want interrupts (it is polling).
    pub interrupt_mask: U32,
    /// Bytes the blocked writer needs free before it wants an interrupt (0 = not blocked).
    pub pending_send_size: U32,
    /// Reserved.
    pub reserved: [U32; 12],
    /// Feature bits; [`FEATURE_PENDING_SEND_SIZE`] says pending-send-size is honoured.
    pub feature_bits: U32,
    /// Rest of the page.
    pub reserved2: [u8; CONTROL_PAGE_SIZE - 68],
}

const _: () = assert!(size_of::<ControlPage>() == CONTROL_PAGE_SIZE);

/// Feature bit: the reader checks `pending_send_size` and signals the writer.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// A u32 word of the control page that the ring code touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWord {
    /// Word 0: the write index.
    WriteIndex,
    /// Word 1: the read index.
    ReadIndex,
    /// Word 2: the interrupt mask.
    InterruptMask,
    /// Word 3: the pending send size.
    PendingSendSize,
    /// Word 16: the feature bits.
    FeatureBits,
}

impl ControlWord {
    /// Byte offset of the word within the control page.
    pub const fn offset(self) -> usize {
        match self {
            Self::WriteIndex => 0,
            Self::ReadIndex => 4,
            Self::InterruptMask => 8,
            Self::PendingSendSize => 12,
            Self::FeatureBits => 64,
        }
    }
}

/// Packet types carried in [`PacketDescriptor::packet_type`].
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// Data carried in the ring.
    IN_BAND = 6,
    /// Data in a transfer-page set (ranges within a set shared earlier).
    TRANSFER_PAGES = 7,
    /// Data in guest pages named by GPA ranges in the packet.
    GPA_DIRECT = 9,
    /// Completion of an earlier request (same transaction id).
    COMPLETION = 0xb,
}

/// Descriptor flag: the sender wants a completion packet.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// The 16-byte header of every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketDescriptor {
    /// One of [`PacketType`].
    pub packet_type: U16,
    /// Offset of the payload from the packet start, in 8-byte units.
    pub data_offset8: U16,
    /// Total packet length without the footer, in 8-byte units.
    pub length8: U16,
    /// [`FLAG_COMPLETION_REQUESTED`] or 0.
    pub flags: U16,
    /// Matches a completion to its request.
    pub transaction_id: U64,
}

const _: () = assert!(size_of::<PacketDescriptor>() == 16);

/// The 8 bytes after each packet: the ring offset where the packet started.
///
/// Linux writes this as one u64 with the offset in the upper half, which is the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketFooter {
    /// Reserved, 0.
    pub reserved: U32,
    /// Ring offset of the packet's descriptor.
    pub offset: U32,
}

const _: () = assert!(size_of::<PacketFooter>() == 8);

/// Follows the descriptor of a GPA-direct packet; `range_count` GPA ranges follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaDirectHeader {
    /// Reserved, 0.
    pub reserved: U32,
    /// Number of GPA ranges.
    pub range_count: U32,
}

const _: () = assert!(size_of::<GpaDirectHeader>() == 8);

/// Follows the descriptor of a transfer-pages packet; `range_count` [`TransferPageRange`]s
/// follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TransferPageHeader {
    /// The transfer page set the ranges refer to.
    pub transfer_page_set_id: U16,
    /// Whether the sender owns the set.
    pub sender_owns_set: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Number of ranges.
    pub range_count: U32,
}

const _: () = assert!(size_of::<TransferPageHeader>() == 8);

/// One range of a transfer-pages packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TransferPageRange {
    /// Length in bytes.
    pub byte_count: U32,
    /// Offset within the transfer page set.
    pub byte_offset: U32,
}

const _: () = assert!(size_of::<TransferPageRange>() == 8);

/// Size of [`PacketDescriptor`].
pub const DESCRIPTOR_SIZE: usize = size_of::<PacketDescriptor>();
/// Size of [`PacketFooter`].
pub const FOOTER_SIZE: usize = size_of::<PacketFooter>();
/// Largest packet length (without footer) a descriptor can express.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * 8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn control_page_offsets_match_reference() {
        assert_eq!(offset_of!(ControlPage, write_index), 0);
        assert_eq!(offset_of!(ControlPage, read_index), 4);
        assert_eq!(offset_of!(ControlPage, interrupt_mask), 8);
        assert_eq!(offset_of!(ControlPage, pending_send_size), 12);
        assert_eq!(offset_of!(ControlPage, feature_bits), 16 * 4);
        for (word, field) in [
            (
                ControlWord::WriteIndex,
                offset_of!(ControlPage, write_index),
            ),
            (ControlWord::ReadIndex, offset_of!(ControlPage, read_index)),
            (
                ControlWord::InterruptMask,
                offset_of!(ControlPage, interrupt_mask),
            ),
            (
                ControlWord::PendingSendSize,
                offset_of!(ControlPage, pending_send_size),
            ),
            (
                ControlWord::FeatureBits,
                offset_of!(ControlPage, feature_bits),
            ),
        ] {
            assert_eq!(word.offset(), field);
        }
    }

    #[test]
    fn descriptor_fields_sit_where_linux_expects_them() {
        let d = PacketDescriptor {
            packet_type: U16::new(PacketType::GPA_DIRECT.0),
            data_offset8: U16::new(3),
            length8: U16::new(5),
            flags: U16::new(FLAG_COMPLETION_REQUESTED),
            transaction_id: U64::new(0x0102_0304_0506_0708),
        };
        assert_eq!(
            d.as_bytes(),
            &[9, 0, 3, 0, 5, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(offset_of!(PacketDescriptor, transaction_id), 8);
    }

    #[test]
    fn footer_matches_linux_u64_with_offset_in_upper_half() {
        let f = PacketFooter {
            reserved: U32::new(0),
            offset: U32::new(0x1234),
        };
        assert_eq!(f.as_bytes(), &(0x1234u64 << 32).to_le_bytes());
    }

    #[test]
    fn packet_type_codes_match_reference() {
        assert_eq!(PacketType::IN_BAND.0, 6);
        assert_eq!(PacketType::TRANSFER_PAGES.0, 7);
        assert_eq!(PacketType::GPA_DIRECT.0, 9);
        assert_eq!(PacketType::COMPLETION.0, 0xb);
    }
}
