//! Known answers for the SPDM 1.2 key schedule and signature prefix, derived independently by
//! `tests/data/spdm_kat.py` (Python hashlib/hmac and `cryptography`, written from DSP0274).

#![forbid(unsafe_code)]

use p384::ecdsa::VerifyingKey;
use sha2::Digest;
use sha2::Sha384;
use tdisp_host::spdm::crypto;
use tdisp_host::spdm::crypto::KeySchedule;

#[expect(clippy::unwrap_used, reason = "test constants")]
fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn sha(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

fn schedule() -> KeySchedule {
    let dhe: Vec<u8> = (1..=48).collect();
    KeySchedule::new(&dhe, &sha(b"TH1 transcript"))
}

#[test]
fn finished_keys_match_the_independent_derivation() {
    let schedule = schedule();
    assert_eq!(
        schedule.request_finished_key().to_vec(),
        h(
            "f2191dc4d2729e6cea43de97b8b1280f55ac223aa7f00fdcb014a3e25f98b98c82a7a4eef156229a0589f25aa14cbcb3"
        )
    );
    assert_eq!(
        schedule.response_finished_key().to_vec(),
        h(
            "7760e0c96424d363978545220d7e04c53d4e6b0278c0580af63a92065e47575444f3da9a30d6b26b9f7d862bf65c0514"
        )
    );
}

#[test]
fn handshake_keys_match_the_independent_derivation() {
    let keys = schedule().handshake_keys();
    assert_eq!(
        keys.request.key().to_vec(),
        h("6eff1ff6d9089cc1421dd885e4530ac5e99bee9f249d146301783837bd0f7452")
    );
    assert_eq!(keys.request.iv().to_vec(), h("0c47bed44361f8eb799ce773"));
    assert_eq!(
        keys.response.key().to_vec(),
        h("3b2d623e316efa6cde7fe25447ac97535ecf60d6193bccf6cd6dc0530109f547")
    );
    assert_eq!(keys.response.iv().to_vec(), h("9eb1e94836ee17710703fa47"));
}

#[test]
fn application_keys_match_the_independent_derivation() {
    let keys = schedule().application_keys(&sha(b"TH2 transcript"));
    assert_eq!(
        keys.request.key().to_vec(),
        h("f366b42c9a288b0fd32630b1fda74e28da8a1ccbd695d196a1600a6ff27d2819")
    );
    assert_eq!(keys.request.iv().to_vec(), h("88697d602e8cbb174d339c32"));
    assert_eq!(
        keys.response.key().to_vec(),
        h("35f830328645d5e8a40cd95a02917208c0d2765ca4539573cb5d629a709b0eb7")
    );
    assert_eq!(keys.response.iv().to_vec(), h("aecdcb8589c1f9f68f840afc"));
}

const PUBLIC_KEY: &str = "04fbf96095915eb587390f850ec95b35f618ae121c72a70808ad8f9f4c261b602b63541743e395f7c778e52bb28c18dc83016a6ff3f72c9368326ad50a3bd148a53cd2213bb480e4730ad019db87ae100995ec65df011e19811a15dc9ddfc9ab3c";
const SIGNATURE: &str = "3508534fa9a667761ebc4a86c7933720102794e88af54ddb0f0ee7838bd2a8e736277db56f2b2933e4d42006acc36b58190f3b84824f79f994216410da3aba2bbd9261dafbd99313e382322a27a499eaac6c6a5379b9f4bb65128c24084e753a";

#[test]
fn a_signature_made_by_the_independent_signer_verifies_under_its_context_only() {
    let key = VerifyingKey::from_sec1_bytes(&h(PUBLIC_KEY)).unwrap();
    let signature: [u8; 96] = h(SIGNATURE).try_into().unwrap();
    let th1 = sha(b"TH1 transcript");
    crypto::verify(&key, crypto::context::KEY_EXCHANGE_RSP, &th1, &signature).unwrap();
    assert!(crypto::verify(&key, crypto::context::MEASUREMENTS, &th1, &signature).is_err());
    assert!(
        crypto::verify(
            &key,
            crypto::context::KEY_EXCHANGE_RSP,
            &sha(b"other"),
            &signature
        )
        .is_err()
    );
}
