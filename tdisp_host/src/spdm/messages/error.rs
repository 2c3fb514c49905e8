//! ERROR responses (ResponseNotReady included) and RESPOND_IF_READY.

use super::*;

/// ERROR response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// SPDMVersion of the error (1.0 before VERSION is known).
    pub version: u8,
    /// ErrorCode.
    pub code: SpdmErrorCode,
    /// ErrorData.
    pub data: u8,
    /// ExtendedErrorData.
    pub extended: Vec<u8>,
}

/// ExtendedErrorData of ResponseNotReady.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ResponseNotReady {
    /// The responder needs 2^rdt_exponent microseconds.
    pub rdt_exponent: u8,
    /// The request code being processed.
    pub request_code: u8,
    /// The token to echo in RESPOND_IF_READY.
    pub token: u8,
    /// RDTM multiplier for the worst case.
    pub rdtm: u8,
}
const _: () = assert!(size_of::<ResponseNotReady>() == 4);

impl ErrorResponse {
    /// An error without extended data.
    pub fn new(version: u8, code: SpdmErrorCode, data: u8) -> Self {
        Self {
            version,
            code,
            data,
            extended: Vec::new(),
        }
    }

    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Header::with_params(self.version, SpdmCode::ERROR, self.code.0, self.data)
            .as_bytes()
            .to_vec();
        out.extend_from_slice(&self.extended);
        out
    }

    /// Decodes an ERROR response of any SPDM 1.x version.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = reader.fixed::<Header>()?;
        if header.code != SpdmCode::ERROR {
            return Err(CodecError::UnexpectedCode {
                found: header.code.0,
                expected: SpdmCode::ERROR.0,
            });
        }
        if header.version >> 4 != 1 {
            return Err(invalid("SPDMVersion", header.version));
        }
        let extended = reader.rest().to_vec();
        if header.param1 == SpdmErrorCode::RESPONSE_NOT_READY.0
            && extended.len() != size_of::<ResponseNotReady>()
        {
            return Err(invalid(
                "ResponseNotReady data length",
                extended.len() as u64,
            ));
        }
        Ok(Self {
            version: header.version,
            code: SpdmErrorCode(header.param1),
            data: header.param2,
            extended,
        })
    }

    /// The ResponseNotReady data, when this is that error.
    pub fn not_ready(&self) -> Option<ResponseNotReady> {
        if self.code != SpdmErrorCode::RESPONSE_NOT_READY {
            return None;
        }
        ResponseNotReady::read_from_bytes(&self.extended).ok()
    }
}

/// RESPOND_IF_READY request: ask again for the response to `request_code` with `token`.
pub fn respond_if_ready(request_code: u8, token: u8) -> Vec<u8> {
    Header::with_params(
        SPDM_VERSION_1_2,
        SpdmCode::RESPOND_IF_READY,
        request_code,
        token,
    )
    .as_bytes()
    .to_vec()
}
