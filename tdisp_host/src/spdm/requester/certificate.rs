//! Certificate retrieval: the slot's digest from GET_DIGESTS, the chain read portion by
//! portion with GET_CERTIFICATE, checked against that digest and validated against the
//! configured root.

use super::SpdmError;
use super::SpdmRequester;
use super::codec;
use crate::spdm::cert;
use crate::spdm::cert::ValidatedChain;
use crate::spdm::codes::*;
use crate::spdm::crypto;
use crate::spdm::messages::*;
use crate::spdm::transport::decode_padded;
use crate::tsm::doe::DoeMailbox;
use zerocopy::IntoBytes;

/// Bytes asked per GET_CERTIFICATE.
const CERTIFICATE_PORTION: u16 = 1024;
/// Largest chain the requester reads (the slot length field is 16 bits).
const MAX_CHAIN: usize = u16::MAX as usize;

impl SpdmRequester {
    pub(super) fn read_chain(
        &mut self,
        mailbox: &mut dyn DoeMailbox,
    ) -> Result<ValidatedChain, SpdmError> {
        let request = Header::new(SPDM_VERSION_1_2, SpdmCode::GET_DIGESTS)
            .as_bytes()
            .to_vec();
        let response = self.plain(mailbox, &request)?;
        let (digests, _) = decode_padded(&response, Digests::decode).map_err(codec("DIGESTS"))?;
        let slot = self.config.slot;
        if digests.slot_mask & (1 << slot) == 0 {
            return Err(SpdmError::Negotiation("the configured slot is empty"));
        }
        let position = (digests.slot_mask & ((1u8 << slot) - 1)).count_ones() as usize;
        let digest = digests
            .digests
            .get(position)
            .copied()
            .ok_or(SpdmError::Negotiation("digest missing"))?;

        let mut chain = Vec::new();
        loop {
            let offset = u16::try_from(chain.len())
                .map_err(|_| SpdmError::Negotiation("certificate chain too long"))?;
            let request = GetCertificate {
                slot,
                offset,
                length: CERTIFICATE_PORTION,
            }
            .encode();
            let response = self.plain(mailbox, &request)?;
            let (portion, _) =
                decode_padded(&response, Certificate::decode).map_err(codec("CERTIFICATE"))?;
            if portion.slot != slot
                || portion.portion.len() > usize::from(CERTIFICATE_PORTION)
                || (portion.portion.is_empty() && portion.remainder_length != 0)
            {
                return Err(SpdmError::Negotiation("inconsistent CERTIFICATE portion"));
            }
            chain.extend_from_slice(&portion.portion);
            if chain.len() + usize::from(portion.remainder_length) > MAX_CHAIN {
                return Err(SpdmError::Negotiation("certificate chain too long"));
            }
            if portion.remainder_length == 0 {
                break;
            }
        }
        if crypto::hash(&chain) != digest {
            return Err(SpdmError::Negotiation(
                "certificate chain does not match its digest",
            ));
        }
        Ok(cert::validate_slot(&chain, &self.config.root_der)?)
    }
}
