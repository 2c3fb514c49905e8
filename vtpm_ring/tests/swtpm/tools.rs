//! Stock tpm2-tools sessions against a guest's vTPM socket, through the whole ring.

use super::arg;
use super::extended;
use super::stack;
use super::text;
use super::tool;
use super::tool_status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getrandom_returns_the_bytes_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let out = tool(&stack.guests()[0], &["tpm2_getrandom", "--hex", "8"]).await;
    let hex = text(&out);
    assert_eq!(hex.trim().len(), 16, "{hex:?}");
    assert!(hex.trim().chars().all(|c| c.is_ascii_hexdigit()));
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcrread_shows_what_pcrextend_added() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), 1).await;
    let guest = &stack.guests()[0];
    let digest = [0x5a; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    tool(guest, &["tpm2_pcrextend", &format!("16:sha256={hex}")]).await;
    let out = text(&tool(guest, &["tpm2_pcrread", "sha256:16"]).await);
    let expected: String = extended(&digest)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(out.contains(&format!("16: 0x{expected}")), "{out}");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_and_loaded_signs_and_the_signature_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(&dir.path().join("state"), 1).await;
    let guest = &stack.guests()[0];
    let d = dir.path();
    std::fs::write(d.join("msg"), b"measured boot log").unwrap();
    std::fs::write(d.join("other"), b"something else").unwrap();
    let (primary, public, private, key, sig) = (
        arg(d, "primary.ctx"),
        arg(d, "key.pub"),
        arg(d, "key.priv"),
        arg(d, "key.ctx"),
        arg(d, "sig"),
    );
    // No resource manager sits in front of the TPM (as with swtpm itself), so transient
    // objects the tools leave loaded are flushed between steps.
    let flush = ["tpm2_flushcontext", "-t"];
    tool(
        guest,
        &["tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", &primary],
    )
    .await;
    tool(guest, &flush).await;
    tool(
        guest,
        &[
            "tpm2_create",
            "-C",
            &primary,
            "-G",
            "ecc",
            "-u",
            &public,
            "-r",
            &private,
        ],
    )
    .await;
    tool(guest, &flush).await;
    tool(
        guest,
        &[
            "tpm2_load",
            "-C",
            &primary,
            "-u",
            &public,
            "-r",
            &private,
            "-c",
            &key,
        ],
    )
    .await;
    tool(guest, &flush).await;
    let msg = arg(d, "msg");
    tool(
        guest,
        &["tpm2_sign", "-c", &key, "-g", "sha256", "-o", &sig, &msg],
    )
    .await;
    tool(
        guest,
        &[
            "tpm2_verifysignature",
            "-c",
            &key,
            "-g",
            "sha256",
            "-s",
            &sig,
            "-m",
            &msg,
        ],
    )
    .await;
    // The same signature over other data does not verify: the check above means something.
    let other = arg(d, "other");
    let forged = tool_status(
        guest,
        &[
            "tpm2_verifysignature",
            "-c",
            &key,
            "-g",
            "sha256",
            "-s",
            &sig,
            "-m",
            &other,
        ],
    )
    .await;
    assert!(!forged.status.success());
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvread_returns_what_nvwrite_stored() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(&dir.path().join("state"), 1).await;
    let guest = &stack.guests()[0];
    let data = arg(dir.path(), "data");
    let back = arg(dir.path(), "back");
    std::fs::write(&data, b"0123456789abcdef").unwrap();
    tool(
        guest,
        &[
            "tpm2_nvdefine",
            "0x1500016",
            "-C",
            "o",
            "-s",
            "16",
            "-a",
            "ownerread|ownerwrite",
        ],
    )
    .await;
    tool(
        guest,
        &["tpm2_nvwrite", "0x1500016", "-C", "o", "-i", &data],
    )
    .await;
    tool(
        guest,
        &[
            "tpm2_nvread",
            "0x1500016",
            "-C",
            "o",
            "-s",
            "16",
            "-o",
            &back,
        ],
    )
    .await;
    assert_eq!(std::fs::read(&back).unwrap(), b"0123456789abcdef");
    stack.shutdown().await.unwrap();
}
