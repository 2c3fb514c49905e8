//! Establishing a session: KEY_EXCHANGE/KEY_EXCHANGE_RSP and FINISH/FINISH_RSP.

use super::*;

/// KEY_EXCHANGE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// Param1: measurement summary hash type (0 none, 1 TCB, 0xFF all).
    pub measurement_summary_hash_type: u8,
    /// Param2: slot of the responder's certificate chain.
    pub slot: u8,
    /// ReqSessionID.
    pub req_session_id: u16,
    /// SessionPolicy.
    pub session_policy: u8,
    /// RandomData.
    pub random: [u8; NONCE_SIZE],
    /// ExchangeData: the requester's secp384r1 public key, X || Y.
    pub exchange_data: [u8; DHE_SIZE],
    /// OpaqueData.
    pub opaque: Vec<u8>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct KeyExchangeWire {
    header: Header,
    session_id: U16,
    policy_or_mut_auth: u8,
    reserved_or_slot: u8,
    random: [u8; NONCE_SIZE],
}
const _: () = assert!(size_of::<KeyExchangeWire>() == 40);

/// Measurement summary hash types of KEY_EXCHANGE param1.
const MEASUREMENT_SUMMARY_NONE: u8 = 0;

impl KeyExchange {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = KeyExchangeWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::KEY_EXCHANGE,
                self.measurement_summary_hash_type,
                self.slot,
            ),
            session_id: self.req_session_id.into(),
            policy_or_mut_auth: self.session_policy,
            reserved_or_slot: 0,
            random: self.random,
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.exchange_data);
        put_opaque(&mut out, &self.opaque);
        out
    }

    /// Decodes and validates the request.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<KeyExchangeWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::KEY_EXCHANGE,
        )?;
        match wire.header.param1 {
            MEASUREMENT_SUMMARY_NONE | 1 | 0xff => {}
            other => return Err(invalid("Param1 (measurement summary hash type)", other)),
        }
        if wire.header.param2 > 7 && wire.header.param2 != 0xff {
            return Err(invalid("SlotID", wire.header.param2));
        }
        let exchange_data = reader.array::<DHE_SIZE>()?;
        let opaque = reader.opaque()?.to_vec();
        reader.finish()?;
        Ok(Self {
            measurement_summary_hash_type: wire.header.param1,
            slot: wire.header.param2,
            req_session_id: wire.session_id.get(),
            session_policy: wire.policy_or_mut_auth,
            random: wire.random,
            exchange_data,
            opaque,
        })
    }
}

/// KEY_EXCHANGE_RSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchangeRsp {
    /// Param1: heartbeat period.
    pub heartbeat_period: u8,
    /// RspSessionID.
    pub rsp_session_id: u16,
    /// MutAuthRequested.
    pub mut_auth_requested: u8,
    /// ReqSlotIDParam.
    pub req_slot: u8,
    /// RandomData.
    pub random: [u8; NONCE_SIZE],
    /// ExchangeData: the responder's secp384r1 public key, X || Y.
    pub exchange_data: [u8; DHE_SIZE],
    /// MeasurementSummaryHash, present when the request asked for one.
    pub measurement_summary_hash: Option<[u8; HASH_SIZE]>,
    /// OpaqueData.
    pub opaque: Vec<u8>,
    /// Signature over the transcript up to the opaque data.
    pub signature: [u8; SIGNATURE_SIZE],
    /// ResponderVerifyData (HMAC with the responder's finished key).
    pub verify_data: [u8; HASH_SIZE],
}

/// Where the parts of a KEY_EXCHANGE_RSP end, for the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyExchangeRspSplit {
    /// Bytes before the signature.
    pub before_signature: usize,
    /// Bytes before the verify data.
    pub before_verify_data: usize,
}

impl KeyExchangeRsp {
    /// Encodes the bytes before the signature (what the signature covers).
    pub fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = KeyExchangeWire {
            header: Header::with_params(
                SPDM_VERSION_1_2,
                SpdmCode::KEY_EXCHANGE_RSP,
                self.heartbeat_period,
                0,
            ),
            session_id: self.rsp_session_id.into(),
            policy_or_mut_auth: self.mut_auth_requested,
            reserved_or_slot: self.req_slot,
            random: self.random,
        }
        .as_bytes()
        .to_vec();
        out.extend_from_slice(&self.exchange_data);
        if let Some(hash) = &self.measurement_summary_hash {
            out.extend_from_slice(hash);
        }
        put_opaque(&mut out, &self.opaque);
        out
    }

    /// Encodes the whole response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_unsigned();
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.verify_data);
        out
    }

    /// Decodes and validates the response; `with_summary_hash` says whether the request asked
    /// for a measurement summary hash.
    pub fn decode(
        bytes: &[u8],
        with_summary_hash: bool,
    ) -> Result<(Self, KeyExchangeRspSplit), CodecError> {
        let mut reader = Reader::new(bytes);
        let wire = reader.fixed::<KeyExchangeWire>()?;
        expect_header(
            &mut Reader::new(wire.header.as_bytes()),
            SPDM_VERSION_1_2,
            SpdmCode::KEY_EXCHANGE_RSP,
        )?;
        let exchange_data = reader.array::<DHE_SIZE>()?;
        let measurement_summary_hash = if with_summary_hash {
            Some(reader.array::<HASH_SIZE>()?)
        } else {
            None
        };
        let opaque = reader.opaque()?.to_vec();
        let before_signature = reader.offset();
        let signature = reader.array::<SIGNATURE_SIZE>()?;
        let before_verify_data = reader.offset();
        let verify_data = reader.array::<HASH_SIZE>()?;
        reader.finish()?;
        Ok((
            Self {
                heartbeat_period: wire.header.param1,
                rsp_session_id: wire.session_id.get(),
                mut_auth_requested: wire.policy_or_mut_auth,
                req_slot: wire.reserved_or_slot,
                random: wire.random,
                exchange_data,
                measurement_summary_hash,
                opaque,
                signature,
                verify_data,
            },
            KeyExchangeRspSplit {
                before_signature,
                before_verify_data,
            },
        ))
    }
}

/// FINISH request without mutual authentication: the header and RequesterVerifyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// RequesterVerifyData (HMAC with the requester's finished key).
    pub verify_data: [u8; HASH_SIZE],
}

/// The FINISH header without a signature, the part RequesterVerifyData covers.
pub fn finish_header() -> Header {
    Header::new(SPDM_VERSION_1_2, SpdmCode::FINISH)
}

impl Finish {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = finish_header().as_bytes().to_vec();
        out.extend_from_slice(&self.verify_data);
        out
    }

    /// Decodes and validates the request; a signature (mutual authentication) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut reader = Reader::new(bytes);
        let header = expect_header(&mut reader, SPDM_VERSION_1_2, SpdmCode::FINISH)?;
        if header.param1 != 0 {
            return Err(invalid("Param1 (signature included)", header.param1));
        }
        let verify_data = reader.array::<HASH_SIZE>()?;
        reader.finish()?;
        Ok(Self { verify_data })
    }
}

/// END_SESSION attribute bit: keep the negotiated state cached.
pub const END_SESSION_PRESERVE_STATE: u8 = 1;
