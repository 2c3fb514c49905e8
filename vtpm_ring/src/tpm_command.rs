//! The few TPM 2.0 commands a vTPM's user sends to see it work, built byte for byte, and
//! readers for their responses.
//!
//! Layouts are TCG TPM 2.0 Library Part 3 (big-endian; any TPM, swtpm included, accepts
//! them): TPM2_GetRandom, TPM2_PCR_Extend of one SHA-256 digest under the empty password
//! session (`TPM_RS_PW`), TPM2_PCR_Read of one SHA-256 PCR, and TPM2_ReadClock. This is not a
//! TPM software stack: anything beyond these is tpm2-tss's or tpm2-tools' job.
//!
//! ```
//! use vtpm_ring::tpm_command::{get_random, random_bytes};
//! assert_eq!(get_random(8), [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8]);
//! // What a TPM answers: header, then a TPM2B of the random bytes.
//! let response = [0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 0, 2, 0xab, 0xcd];
//! assert_eq!(random_bytes(&response), Some(&[0xab, 0xcd][..]));
//! ```

use crate::tpm_header::TPM_HEADER_SIZE;
use crate::tpm_header::TpmCc;
use crate::tpm_header::TpmHeader;
use crate::tpm_header::TpmRc;
use crate::tpm_header::TpmSt;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// `TPM_ALG_SHA256`.
const SHA256: u16 = 0x000b;
/// `TPM_RS_PW`: the empty password session.
const RS_PW: u32 = 0x4000_0009;
/// PCRs a TPM 2.0 has in a bank (three bytes of selection).
pub const PCR_COUNT: u8 = 24;

/// A command: `tag`, the size, `cc`, then `body`.
pub fn command(tag: TpmSt, cc: TpmCc, body: &[u8]) -> Vec<u8> {
    let header = TpmHeader {
        tag: tag.0.into(),
        size: u32::try_from(TPM_HEADER_SIZE + body.len())
            .unwrap_or(u32::MAX)
            .into(),
        code: cc.0.into(),
    };
    [header.as_bytes(), body].concat()
}

/// TPM2_GetRandom of `bytes` bytes (a TPM returns at most a digest's worth at a time).
pub fn get_random(bytes: u16) -> Vec<u8> {
    command(TpmSt::NO_SESSIONS, TpmCc::GET_RANDOM, &bytes.to_be_bytes())
}

/// TPM2_ReadClock.
pub fn read_clock() -> Vec<u8> {
    command(TpmSt::NO_SESSIONS, TpmCc::READ_CLOCK, &[])
}

/// TPM2_PCR_Extend of PCR `pcr` with one SHA-256 `digest`, authorised by the empty password.
pub fn pcr_extend_sha256(pcr: u8, digest: &[u8; 32]) -> Vec<u8> {
    let mut body = u32::from(pcr).to_be_bytes().to_vec();
    // The authorisation area: its size, then TPM_RS_PW, no nonce, continueSession, no hmac.
    body.extend_from_slice(&9u32.to_be_bytes());
    body.extend_from_slice(&RS_PW.to_be_bytes());
    body.extend_from_slice(&[0, 0, 1, 0, 0]);
    // TPML_DIGEST_VALUES with one SHA-256 value.
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&SHA256.to_be_bytes());
    body.extend_from_slice(digest);
    command(TpmSt::SESSIONS, TpmCc::PCR_EXTEND, &body)
}

/// TPM2_PCR_Read of PCR `pcr` (below [`PCR_COUNT`]) in the SHA-256 bank; `None` for a PCR a
/// TPM 2.0 does not have.
pub fn pcr_read_sha256(pcr: u8) -> Option<Vec<u8>> {
    if pcr >= PCR_COUNT {
        return None;
    }
    let mut select = [0u8; 3];
    select[usize::from(pcr / 8)] = 1 << (pcr % 8);
    // TPML_PCR_SELECTION with one selection: SHA-256, three bytes of bitmap.
    let mut body = 1u32.to_be_bytes().to_vec();
    body.extend_from_slice(&SHA256.to_be_bytes());
    body.push(3);
    body.extend_from_slice(&select);
    Some(command(TpmSt::NO_SESSIONS, TpmCc::PCR_READ, &body))
}

/// The bytes a successful TPM2_GetRandom response carries; `None` for a failure or a
/// response whose TPM2B does not fill it exactly.
pub fn random_bytes(response: &[u8]) -> Option<&[u8]> {
    let body = success_body(response)?;
    let (size, rest) = body.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == rest.len()).then_some(rest)
}

/// The one digest of a successful TPM2_PCR_Read of one SHA-256 PCR; `None` for a failure,
/// a response about other or more PCRs, or one that does not parse exactly.
pub fn pcr_digest_sha256(response: &[u8]) -> Option<[u8; 32]> {
    let body = success_body(response)?;
    // pcrUpdateCounter, then TPML_PCR_SELECTION (one selection), then TPML_DIGEST.
    let (_counter, rest) = body.split_first_chunk::<4>()?;
    let (selections, rest) = rest.split_first_chunk::<4>()?;
    if u32::from_be_bytes(*selections) != 1 {
        return None;
    }
    let (alg, rest) = rest.split_first_chunk::<2>()?;
    let (select_len, rest) = rest.split_first()?;
    let select = rest.get(..usize::from(*select_len))?;
    let rest = rest.get(usize::from(*select_len)..)?;
    if u16::from_be_bytes(*alg) != SHA256 || select.iter().map(|b| b.count_ones()).sum::<u32>() != 1
    {
        return None;
    }
    let (digests, rest) = rest.split_first_chunk::<4>()?;
    let (size, rest) = rest.split_first_chunk::<2>()?;
    if u32::from_be_bytes(*digests) != 1 || u16::from_be_bytes(*size) != 32 {
        return None;
    }
    rest.try_into().ok()
}

/// What follows the header of a successful response whose size field is its length.
fn success_body(response: &[u8]) -> Option<&[u8]> {
    let (header, body) = TpmHeader::read_from_prefix(response).ok()?;
    let whole = usize::try_from(header.size.get()).ok()? == response.len();
    (TpmRc(header.code.get()) == TpmRc::SUCCESS && whole).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_match_their_part_3_bytes() {
        assert_eq!(
            get_random(32),
            [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 32]
        );
        assert_eq!(read_clock(), [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x81]);
        let extend = pcr_extend_sha256(16, &[0xaa; 32]);
        assert_eq!(
            extend[..33],
            [
                0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82, // header
                0, 0, 0, 16, // pcrHandle
                0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 1, 0, 0, // TPM_RS_PW, continueSession
                0, 0, 0, 1, 0, 0x0b, // one SHA-256 value
            ][..33]
        );
        assert_eq!(extend.len(), 65);
        assert_eq!(extend[33..], [0xaa; 32]);
        assert_eq!(
            pcr_read_sha256(9).unwrap(),
            [
                0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0, 2, 0
            ]
        );
        assert_eq!(pcr_read_sha256(PCR_COUNT), None);
    }

    fn response(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0x80, 0x01];
        r.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(body);
        r
    }

    fn pcr_response(select: [u8; 3], digests: u32, size: u16) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 7, 0, 0, 0, 1, 0, 0x0b, 3];
        b.extend_from_slice(&select);
        b.extend_from_slice(&digests.to_be_bytes());
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(&[0x5a; 32]);
        response(&b)
    }

    #[test]
    fn a_one_pcr_read_gives_its_digest_and_anything_else_none() {
        assert_eq!(
            pcr_digest_sha256(&pcr_response([0, 2, 0], 1, 32)),
            Some([0x5a; 32])
        );
        assert_eq!(pcr_digest_sha256(&pcr_response([0, 3, 0], 1, 32)), None);
        assert_eq!(pcr_digest_sha256(&pcr_response([0, 2, 0], 2, 32)), None);
        assert_eq!(pcr_digest_sha256(&pcr_response([0, 2, 0], 1, 20)), None);
        let mut longer = pcr_response([0, 2, 0], 1, 32);
        longer.push(0);
        assert_eq!(pcr_digest_sha256(&longer), None);
        let mut failed = pcr_response([0, 2, 0], 1, 32);
        failed[9] = 1;
        assert_eq!(pcr_digest_sha256(&failed), None);
    }

    #[test]
    fn random_bytes_need_an_exact_tpm2b() {
        assert_eq!(random_bytes(&response(&[0, 1, 7])), Some(&[7][..]));
        assert_eq!(random_bytes(&response(&[0, 2, 7])), None);
        assert_eq!(random_bytes(&response(&[0])), None);
        assert_eq!(random_bytes(&[0x80, 0x01, 0, 0]), None);
    }

    proptest::proptest! {
        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = random_bytes(&bytes);
            let _ = pcr_digest_sha256(&bytes);
        }
    }
}
