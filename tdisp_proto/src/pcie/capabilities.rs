//! GET_TDISP_CAPABILITIES / TDISP_CAPABILITIES bodies, LOCK_INTERFACE flags and the
//! request-supported bitmap.

use super::codec::DecodeError;
use super::header::TdispMessageType;
use bitfield_struct::bitfield;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;
use zerocopy::little_endian::U32;

/// Flags of LOCK_INTERFACE_REQUEST (and of `lock_interface_flags_supported`).
#[bitfield(u16)]
#[derive(PartialEq, Eq, Hash)]
pub struct LockInterfaceFlags {
    /// The device must not accept firmware updates while the TDI is locked or running.
    pub no_fw_update: bool,
    /// The system cache line size is 128 bytes (else 64).
    pub system_cache_line_size: bool,
    /// Lock the MSI-X table and PBA.
    pub lock_msix: bool,
    /// Peer-to-peer streams may be bound.
    pub bind_p2p: bool,
    /// All ATS-translated requests are redirected to the root complex.
    pub all_request_redirect: bool,
    /// Reserved, zero.
    #[bits(11)]
    __: u16,
}

impl LockInterfaceFlags {
    /// Bits with a defined meaning; the rest are reserved.
    pub const DEFINED_BITS: u16 = 0x1f;

    /// Parses a flags word, rejecting reserved bits.
    pub fn from_wire(bits: u16, field: &'static str) -> Result<Self, DecodeError> {
        if bits & !Self::DEFINED_BITS != 0 {
            return Err(DecodeError::ReservedBits(field));
        }
        Ok(Self::from_bits(bits))
    }
}

/// The 128-bit `req_msg_supported` bitmap: bit `code - 0x80` is set when the device supports
/// request `code` (so GET_TDISP_VERSION, 0x81, is bit 1 of byte 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RequestBitmap(pub [u8; 16]);

impl RequestBitmap {
    fn position(code: TdispMessageType) -> Option<(usize, u8)> {
        let bit = usize::from(code.0.checked_sub(0x80)?);
        Some((bit / 8, 1 << (bit % 8)))
    }

    /// A bitmap with exactly the given requests set (non-request codes are ignored).
    pub fn from_requests(codes: impl IntoIterator<Item = TdispMessageType>) -> Self {
        let mut map = Self::default();
        for code in codes {
            map.set(code);
        }
        map
    }

    /// Marks `code` as supported; codes below 0x80 are not requests and are ignored.
    pub fn set(&mut self, code: TdispMessageType) {
        if let Some((byte, mask)) = Self::position(code)
            && let Some(slot) = self.0.get_mut(byte)
        {
            *slot |= mask;
        }
    }

    /// Whether `code` is marked as supported.
    pub fn supports(&self, code: TdispMessageType) -> bool {
        Self::position(code)
            .and_then(|(byte, mask)| self.0.get(byte).map(|b| b & mask != 0))
            .unwrap_or(false)
    }

    /// The supported request codes, ascending.
    pub fn requests(&self) -> impl Iterator<Item = TdispMessageType> + '_ {
        (0x80..=0xffu8)
            .map(TdispMessageType)
            .filter(|&code| self.supports(code))
    }
}

/// DSM capability flags (`dsm_caps`).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct DsmCaps {
    /// The device supports XT mode.
    pub xt_mode_supported: bool,
    /// Reserved.
    #[bits(31)]
    __: u32,
}

/// The 28-byte TDISP_CAPABILITIES body as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CapabilitiesWire {
    /// DSM capability flags.
    pub dsm_caps: U32,
    /// Supported requests bitmap.
    pub req_msg_supported: [u8; 16],
    /// LOCK_INTERFACE flags the device honours.
    pub lock_interface_flags_supported: U16,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Number of address bits the device can generate.
    pub dev_addr_width: u8,
    /// Outstanding requests the device accepts for this TDI.
    pub num_req_this: u8,
    /// Outstanding requests the device accepts across all its TDIs.
    pub num_req_all: u8,
}
const _: () = assert!(size_of::<CapabilitiesWire>() == 28);

/// A decoded TDISP_CAPABILITIES body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// DSM capability flags. Bits other than XT mode are kept as received.
    pub dsm_caps: DsmCaps,
    /// Which requests the device supports.
    pub req_msg_supported: RequestBitmap,
    /// LOCK_INTERFACE flags the device honours.
    pub lock_interface_flags_supported: LockInterfaceFlags,
    /// Number of address bits the device can generate.
    pub dev_addr_width: u8,
    /// Outstanding requests the device accepts for this TDI.
    pub num_req_this: u8,
    /// Outstanding requests the device accepts across all its TDIs.
    pub num_req_all: u8,
}

impl Capabilities {
    /// The wire form.
    pub fn to_wire(&self) -> CapabilitiesWire {
        CapabilitiesWire {
            dsm_caps: self.dsm_caps.into_bits().into(),
            req_msg_supported: self.req_msg_supported.0,
            lock_interface_flags_supported: self.lock_interface_flags_supported.into_bits().into(),
            reserved: [0; 3],
            dev_addr_width: self.dev_addr_width,
            num_req_this: self.num_req_this,
            num_req_all: self.num_req_all,
        }
    }

    /// Validates the wire form.
    pub fn from_wire(wire: &CapabilitiesWire) -> Result<Self, DecodeError> {
        if wire.reserved != [0; 3] {
            return Err(DecodeError::ReservedBits("capabilities reserved"));
        }
        Ok(Self {
            dsm_caps: DsmCaps::from_bits(wire.dsm_caps.get()),
            req_msg_supported: RequestBitmap(wire.req_msg_supported),
            lock_interface_flags_supported: LockInterfaceFlags::from_wire(
                wire.lock_interface_flags_supported.get(),
                "lock_interface_flags_supported",
            )?,
            dev_addr_width: wire.dev_addr_width,
            num_req_this: wire.num_req_this,
            num_req_all: wire.num_req_all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bitmap_bit_is_code_minus_0x80() {
        let map = RequestBitmap::from_requests([
            TdispMessageType::GET_TDISP_VERSION,
            TdispMessageType::SET_TDISP_CONFIG_REQUEST,
        ]);
        assert_eq!(map.0[0], 0b0000_0010);
        assert_eq!(map.0[1], 0b0001_0000);
        assert!(map.supports(TdispMessageType::GET_TDISP_VERSION));
        assert!(!map.supports(TdispMessageType::GET_TDISP_CAPABILITIES));
        assert_eq!(
            map.requests().collect::<Vec<_>>(),
            vec![
                TdispMessageType::GET_TDISP_VERSION,
                TdispMessageType::SET_TDISP_CONFIG_REQUEST
            ]
        );
    }

    #[test]
    fn response_codes_are_not_in_the_bitmap() {
        let mut map = RequestBitmap::default();
        map.set(TdispMessageType::TDISP_ERROR);
        assert_eq!(map, RequestBitmap::default());
        assert!(!map.supports(TdispMessageType::TDISP_VERSION));
    }

    #[test]
    fn lock_flags_reject_reserved_bits() {
        assert!(LockInterfaceFlags::from_wire(0x1f, "flags").is_ok());
        assert_eq!(
            LockInterfaceFlags::from_wire(0x40, "flags"),
            Err(DecodeError::ReservedBits("flags"))
        );
    }
}
