//! The body shared by VDM_REQUEST, VDM_RESPONSE and vendor-specific extended error data:
//! registry id, vendor id length, vendor id, vendor data.

use super::codec::DecodeError;
use super::codec::Reader;

/// Registry ids naming who assigned a vendor id.
pub mod registry {
    /// PCI-SIG vendor ids.
    pub const PCI_SIG: u8 = 0x00;
    /// CXL vendor ids.
    pub const CXL: u8 = 0x01;
}

/// Largest vendor-defined body this crate accepts (registry id, length byte, vendor id and
/// data). Generous for vendor messages, small enough to bound allocations.
pub const MAX_VDM_SIZE: usize = 4096;

/// A vendor-defined body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorDefinedBody {
    /// Which registry assigned `vendor_id` (see [`registry`]).
    pub registry_id: u8,
    /// The vendor id, at most 255 bytes (2 bytes for PCI-SIG ids).
    pub vendor_id: Vec<u8>,
    /// Vendor data.
    pub data: Vec<u8>,
}

impl VendorDefinedBody {
    /// Appends the encoded body to `out`. A vendor id longer than 255 bytes is truncated to
    /// 255 so that the length byte stays truthful.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let id = self.vendor_id.get(..255).unwrap_or(&self.vendor_id);
        out.push(self.registry_id);
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.data);
    }

    /// Decodes a body occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_VDM_SIZE {
            return Err(DecodeError::TooLarge {
                field: "vendor-defined body",
                len: bytes.len() as u64,
                max: MAX_VDM_SIZE as u64,
            });
        }
        let mut reader = Reader::new(bytes);
        let registry_id = reader.u8()?;
        let id_len = reader.u8()?;
        let vendor_id = reader.take(usize::from(id_len))?.to_vec();
        let data = reader.rest().to_vec();
        Ok(Self {
            registry_id,
            vendor_id,
            data,
        })
    }
}
