//! VENDOR_DEFINED_REQUEST/RESPONSE, the envelope of PCI-SIG protocols such as TDISP.

use super::*;

/// VENDOR_DEFINED_REQUEST or VENDOR_DEFINED_RESPONSE, for any standards body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorDefined {
    /// Request or response.
    pub code: SpdmCode,
    /// StandardID (3 = PCI-SIG).
    pub standard_id: u16,
    /// VendorID bytes.
    pub vendor_id: Vec<u8>,
    /// The vendor payload.
    pub payload: Vec<u8>,
}

impl VendorDefined {
    /// Encodes the message; fails when the vendor id or payload exceeds its length field.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let vendor_len = u8::try_from(self.vendor_id.len())
            .map_err(|_| invalid("Len (vendor id)", self.vendor_id.len() as u64))?;
        let payload_len = u16::try_from(self.payload.len())
            .map_err(|_| invalid("ReqLength", self.payload.len() as u64))?;
        let mut out = Header::new(SPDM_VERSION_1_2, self.code).as_bytes().to_vec();
        out.extend_from_slice(&self.standard_id.to_le_bytes());
        out.push(vendor_len);
        out.extend_from_slice(&self.vendor_id);
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes and validates a vendor-defined message of `code`.
    pub fn decode(bytes: &[u8], code: SpdmCode) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, code)?;
        if header.param1 != 0 || header.param2 != 0 {
            return Err(invalid("Param1/Param2", header.param1));
        }
        let standard_id = reader.u16()?;
        let [vendor_len] = reader.array::<1>()?;
        let vendor_id = reader.take(vendor_len.into())?.to_vec();
        let payload_len = reader.u16()?;
        let payload = reader.take(payload_len.into())?.to_vec();
        reader.finish()?;
        Ok(Self {
            code,
            standard_id,
            vendor_id,
            payload,
        })
    }
}
