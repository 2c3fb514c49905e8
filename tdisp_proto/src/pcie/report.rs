//! The DEVICE_INTERFACE_REPORT structure, its MMIO ranges, and portioned reads.
//!
//! The report is read with GET_DEVICE_INTERFACE_REPORT requests carrying an offset and a length;
//! each response carries a portion and the number of bytes that remain after it.
//! [`report_portion`] is the responder's half and [`ReportAssembler`] the requester's half.

use super::codec::DecodeError;
use super::codec::Reader;
use bitfield_struct::bitfield;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Largest encoded report this crate accepts: offsets and lengths of portioned reads are u16,
/// so nothing larger can be read back.
pub const MAX_REPORT_SIZE: usize = u16::MAX as usize;

/// Size of one MMIO range entry in bytes.
pub const MMIO_RANGE_SIZE: usize = 16;

/// Size of the fixed part of the report, up to and including `mmio_range_count`.
pub const REPORT_FIXED_SIZE: usize = 16;

/// `interface_info` bits of the report.
#[bitfield(u16)]
#[derive(PartialEq, Eq, Hash)]
pub struct InterfaceInfo {
    /// Firmware updates are not permitted while locked or running.
    pub no_fw_update: bool,
    /// The TDI generates DMA without a PASID.
    pub dma_without_pasid: bool,
    /// The TDI generates DMA with a PASID.
    pub dma_with_pasid: bool,
    /// ATS is supported and enabled.
    pub ats: bool,
    /// PRS is supported and enabled.
    pub prs: bool,
    /// XT mode is enabled.
    pub xt_mode: bool,
    /// Reserved, zero.
    #[bits(10)]
    __: u16,
}

impl InterfaceInfo {
    /// Bits with a defined meaning.
    pub const DEFINED_BITS: u16 = 0x3f;
}

/// `range_attributes` bits of an MMIO range.
#[bitfield(u16)]
#[derive(PartialEq, Eq, Hash)]
pub struct MmioRangeAttributes {
    /// The range holds the MSI-X table.
    pub msix_table: bool,
    /// The range holds the MSI-X pending bit array.
    pub msix_pba: bool,
    /// The range is not TEE memory (may be mapped shared).
    pub non_tee_memory: bool,
    /// The attributes may be changed with SET_MMIO_ATTRIBUTE.
    pub attributes_updatable: bool,
    /// Reserved, zero.
    #[bits(12)]
    __: u16,
}

impl MmioRangeAttributes {
    /// Bits with a defined meaning.
    pub const DEFINED_BITS: u16 = 0xf;
}

/// One MMIO range entry as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MmioRangeWire {
    /// Byte address of the first 4 KiB page, `mmio_reporting_offset` added.
    pub first_page: U64,
    /// Number of 4 KiB pages.
    pub number_of_pages: U32,
    /// [`MmioRangeAttributes`] bits.
    pub range_attributes: U16,
    /// Which BAR (or other range id) the pages belong to.
    pub range_id: U16,
}
const _: () = assert!(size_of::<MmioRangeWire>() == MMIO_RANGE_SIZE);

/// A validated MMIO range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmioRange {
    /// Byte address of the first 4 KiB page, `mmio_reporting_offset` added.
    pub first_page: u64,
    /// Number of 4 KiB pages.
    pub number_of_pages: u32,
    /// Range attributes.
    pub attributes: MmioRangeAttributes,
    /// Which BAR (or other range id) the pages belong to.
    pub range_id: u16,
}

impl MmioRange {
    /// The wire form.
    pub fn to_wire(&self) -> MmioRangeWire {
        MmioRangeWire {
            first_page: self.first_page.into(),
            number_of_pages: self.number_of_pages.into(),
            range_attributes: self.attributes.into_bits().into(),
            range_id: self.range_id.into(),
        }
    }

    /// Validates the wire form (reserved attribute bits must be zero).
    pub fn from_wire(wire: &MmioRangeWire) -> Result<Self, DecodeError> {
        let attributes = wire.range_attributes.get();
        if attributes & !MmioRangeAttributes::DEFINED_BITS != 0 {
            return Err(DecodeError::ReservedBits("range_attributes"));
        }
        Ok(Self {
            first_page: wire.first_page.get(),
            number_of_pages: wire.number_of_pages.get(),
            attributes: MmioRangeAttributes::from_bits(attributes),
            range_id: wire.range_id.get(),
        })
    }
}

/// The fixed 16-byte head of the report as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReportFixedWire {
    /// [`InterfaceInfo`] bits.
    pub interface_info: U16,
    /// Reserved, zero.
    pub reserved: U16,
    /// MSI-X message control register of the TDI.
    pub msi_x_message_control: U16,
    /// LN requester control register.
    pub lnr_control: U16,
    /// TPH control register.
    pub tph_control: U32,
    /// Number of MMIO range entries that follow.
    pub mmio_range_count: U32,
}
const _: () = assert!(size_of::<ReportFixedWire>() == REPORT_FIXED_SIZE);

/// A decoded DEVICE_INTERFACE_REPORT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInterfaceReport {
    /// Interface information bits.
    pub interface_info: InterfaceInfo,
    /// MSI-X message control register of the TDI.
    pub msi_x_message_control: u16,
    /// LN requester control register.
    pub lnr_control: u16,
    /// TPH control register.
    pub tph_control: u32,
    /// The MMIO ranges of the TDI.
    pub mmio_ranges: Vec<MmioRange>,
    /// Device-specific information, opaque to TDISP.
    pub device_specific_info: Vec<u8>,
}

impl DeviceInterfaceReport {
    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        REPORT_FIXED_SIZE
            + self.mmio_ranges.len() * MMIO_RANGE_SIZE
            + 4
            + self.device_specific_info.len()
    }

    /// Appends the encoded report to `out`.
    ///
    /// Counts that do not fit their u32 fields saturate; [`Self::decode`] would then reject the
    /// bytes, and a report that large exceeds [`MAX_REPORT_SIZE`] anyway.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let fixed = ReportFixedWire {
            interface_info: self.interface_info.into_bits().into(),
            reserved: 0.into(),
            msi_x_message_control: self.msi_x_message_control.into(),
            lnr_control: self.lnr_control.into(),
            tph_control: self.tph_control.into(),
            mmio_range_count: saturating_u32(self.mmio_ranges.len()).into(),
        };
        out.extend_from_slice(fixed.as_bytes());
        for range in &self.mmio_ranges {
            out.extend_from_slice(range.to_wire().as_bytes());
        }
        out.extend_from_slice(&saturating_u32(self.device_specific_info.len()).to_le_bytes());
        out.extend_from_slice(&self.device_specific_info);
    }

    /// The encoded report as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a whole report; counts must agree exactly with the bytes present.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_REPORT_SIZE {
            return Err(DecodeError::TooLarge {
                field: "device interface report",
                len: bytes.len() as u64,
                max: MAX_REPORT_SIZE as u64,
            });
        }
        let mut reader = Reader::new(bytes);
        let fixed: ReportFixedWire = reader.read()?;
        let interface_info = fixed.interface_info.get();
        if interface_info & !InterfaceInfo::DEFINED_BITS != 0 {
            return Err(DecodeError::ReservedBits("interface_info"));
        }
        if fixed.reserved.get() != 0 {
            return Err(DecodeError::ReservedBits("report reserved"));
        }
        // Check the count against the bytes before allocating anything for it.
        let count = fixed.mmio_range_count.get();
        let available = (bytes.len() - REPORT_FIXED_SIZE) / MMIO_RANGE_SIZE;
        let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
        if count_usize > available {
            return Err(DecodeError::CountMismatch {
                field: "mmio_range_count",
                claimed: count.into(),
                actual: available as u64,
            });
        }
        let mut mmio_ranges = Vec::with_capacity(count_usize);
        for _ in 0..count_usize {
            let wire: MmioRangeWire = reader.read()?;
            mmio_ranges.push(MmioRange::from_wire(&wire)?);
        }
        let info_len: U32 = reader.read()?;
        let info_len = info_len.get();
        let rest = reader.rest();
        if u64::from(info_len) != rest.len() as u64 {
            return Err(DecodeError::CountMismatch {
                field: "device_specific_info_len",
                claimed: info_len.into(),
                actual: rest.len() as u64,
            });
        }
        Ok(Self {
            interface_info: InterfaceInfo::from_bits(interface_info),
            msi_x_message_control: fixed.msi_x_message_control.get(),
            lnr_control: fixed.lnr_control.get(),
            tph_control: fixed.tph_control.get(),
            mmio_ranges,
            device_specific_info: rest.to_vec(),
        })
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Errors of portioned report reads.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortionError {
    /// The requested offset lies beyond the end of the report.
    #[error("offset {offset} beyond report of {len} bytes")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u16,
        /// Report length.
        len: usize,
    },
    /// A zero-length portion was requested or received while bytes remain.
    #[error("zero-length portion with {remainder} bytes remaining")]
    EmptyPortion {
        /// Bytes still remaining.
        remainder: usize,
    },
    /// A response's portion and remainder disagree with earlier responses.
    #[error("portion inconsistent with earlier responses: expected total {expected}, got {got}")]
    Inconsistent {
        /// The total the earlier responses implied.
        expected: usize,
        /// The total this response implies.
        got: usize,
    },
    /// The report is larger than [`MAX_REPORT_SIZE`].
    #[error("report of {0} bytes exceeds the maximum")]
    TooLarge(usize),
    /// More portions arrived after the report was complete.
    #[error("portion received after the report was complete")]
    AlreadyComplete,
}

/// Responder half of a portioned read: the portion of `report` at `offset` of at most `length`
/// bytes (and at most `max_portion`, the responder's own buffer limit), plus the remainder
/// length after it.
pub fn report_portion(
    report: &[u8],
    offset: u16,
    length: u16,
    max_portion: u16,
) -> Result<(&[u8], u16), PortionError> {
    if report.len() > MAX_REPORT_SIZE {
        return Err(PortionError::TooLarge(report.len()));
    }
    let start = usize::from(offset);
    let tail = report.get(start..).ok_or(PortionError::OffsetOutOfRange {
        offset,
        len: report.len(),
    })?;
    let take = usize::from(length.min(max_portion)).min(tail.len());
    if take == 0 && !tail.is_empty() {
        return Err(PortionError::EmptyPortion {
            remainder: tail.len(),
        });
    }
    let (portion, after) = tail.split_at(take);
    // Both fit in u16: the whole report is at most MAX_REPORT_SIZE.
    let remainder = u16::try_from(after.len()).map_err(|_| PortionError::TooLarge(report.len()))?;
    Ok((portion, remainder))
}

/// Requester half of a portioned read: feed each response, ask for the next offset, and take
/// the whole report once the remainder reaches zero.
#[derive(Debug, Clone, Default)]
pub struct ReportAssembler {
    bytes: Vec<u8>,
    expected_total: Option<usize>,
}

impl ReportAssembler {
    /// An empty assembler: the first request is for offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The offset for the next GET_DEVICE_INTERFACE_REPORT, or `None` once complete.
    pub fn next_offset(&self) -> Option<u16> {
        if self.is_complete() {
            None
        } else {
            u16::try_from(self.bytes.len()).ok()
        }
    }

    /// Whether the last portion has arrived.
    pub fn is_complete(&self) -> bool {
        self.expected_total == Some(self.bytes.len())
    }

    /// Adds one response's portion and remainder. The sum `received + portion + remainder`
    /// must stay the same across responses; a hostile device cannot make us loop forever or
    /// grow past [`MAX_REPORT_SIZE`].
    pub fn push(&mut self, portion: &[u8], remainder: u16) -> Result<(), PortionError> {
        if self.is_complete() {
            return Err(PortionError::AlreadyComplete);
        }
        let total = self.bytes.len() + portion.len() + usize::from(remainder);
        if total > MAX_REPORT_SIZE {
            return Err(PortionError::TooLarge(total));
        }
        if let Some(expected) = self.expected_total
            && expected != total
        {
            return Err(PortionError::Inconsistent {
                expected,
                got: total,
            });
        }
        if portion.is_empty() && remainder != 0 {
            return Err(PortionError::EmptyPortion {
                remainder: remainder.into(),
            });
        }
        self.expected_total = Some(total);
        self.bytes.extend_from_slice(portion);
        Ok(())
    }

    /// The complete report bytes, or `None` if portions are still missing.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.is_complete().then_some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portion_is_limited_by_request_and_responder_buffer() {
        let report = [7u8; 100];
        assert_eq!(
            report_portion(&report, 0, 30, 64).unwrap(),
            (&report[..30], 70)
        );
        assert_eq!(
            report_portion(&report, 90, 30, 64).unwrap(),
            (&report[90..], 0)
        );
        assert_eq!(
            report_portion(&report, 10, 100, 20).unwrap(),
            (&report[10..30], 70)
        );
        assert_eq!(
            report_portion(&report, 100, 5, 5).unwrap(),
            (&report[100..], 0)
        );
    }

    #[test]
    fn portion_rejects_offsets_past_the_end_and_empty_reads() {
        let report = [0u8; 10];
        assert!(matches!(
            report_portion(&report, 11, 1, 1),
            Err(PortionError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            report_portion(&report, 0, 0, 64),
            Err(PortionError::EmptyPortion { remainder: 10 })
        );
    }

    #[test]
    fn assembler_rejects_a_device_that_changes_the_total() {
        let mut assembler = ReportAssembler::new();
        assembler.push(&[1, 2], 4).unwrap();
        assert_eq!(assembler.next_offset(), Some(2));
        assert_eq!(
            assembler.push(&[3, 4], 10),
            Err(PortionError::Inconsistent {
                expected: 6,
                got: 14
            })
        );
        // The failed push kept the earlier state.
        assert_eq!(assembler.next_offset(), Some(2));
    }

    #[test]
    fn assembler_rejects_empty_portions_and_pushes_after_completion() {
        let mut assembler = ReportAssembler::new();
        assert_eq!(
            assembler.push(&[], 3),
            Err(PortionError::EmptyPortion { remainder: 3 })
        );
        assembler.push(&[1, 2, 3], 0).unwrap();
        assert!(assembler.is_complete());
        assert_eq!(assembler.push(&[4], 0), Err(PortionError::AlreadyComplete));
        assert_eq!(assembler.finish(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn assembler_caps_the_total_size() {
        let mut assembler = ReportAssembler::new();
        assembler.push(&[0; 16], u16::MAX - 16).unwrap();
        let mut assembler2 = ReportAssembler::new();
        assert!(matches!(
            assembler2.push(&[0; 16], u16::MAX),
            Err(PortionError::TooLarge(_))
        ));
        assert!(!assembler.is_complete());
    }

    #[test]
    fn report_with_huge_range_count_fails_without_allocating() {
        let mut bytes = DeviceInterfaceReport::default().to_bytes();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            DeviceInterfaceReport::decode(&bytes),
            Err(DecodeError::CountMismatch { .. })
        ));
    }

    #[test]
    fn reserved_interface_info_and_attribute_bits_are_rejected() {
        let report = DeviceInterfaceReport {
            mmio_ranges: vec![MmioRange {
                first_page: 0,
                number_of_pages: 1,
                attributes: MmioRangeAttributes::new(),
                range_id: 0,
            }],
            ..Default::default()
        };
        let wire = report.to_bytes();
        let mut info = wire.clone();
        info[0] = 0x40;
        assert_eq!(
            DeviceInterfaceReport::decode(&info),
            Err(DecodeError::ReservedBits("interface_info"))
        );
        let mut attributes = wire;
        attributes[16 + 12] = 0x10;
        assert_eq!(
            DeviceInterfaceReport::decode(&attributes),
            Err(DecodeError::ReservedBits("range_attributes"))
        );
    }
}
