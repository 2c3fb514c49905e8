//! Each guest's TPM is its own and comes back after a restart of the whole host.

use super::arg;
use super::extended;
use super::stack;
use super::text;
use super::tool;
use super::tool_status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nv_and_persistent_keys_survive_a_manager_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = dir.path();
    let (data, back, primary) = (arg(d, "data"), arg(d, "back"), arg(d, "primary.ctx"));
    std::fs::write(&data, b"kept across restarts").unwrap();
    let name_before = {
        let stack = stack(&state, 2).await;
        let guest = &stack.guests()[1];
        tool(
            guest,
            &[
                "tpm2_nvdefine",
                "0x1500017",
                "-C",
                "o",
                "-s",
                "20",
                "-a",
                "ownerread|ownerwrite",
            ],
        )
        .await;
        tool(
            guest,
            &["tpm2_nvwrite", "0x1500017", "-C", "o", "-i", &data],
        )
        .await;
        tool(
            guest,
            &["tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", &primary],
        )
        .await;
        tool(
            guest,
            &["tpm2_evictcontrol", "-C", "o", "-c", &primary, "0x81000005"],
        )
        .await;
        let name = text(&tool(guest, &["tpm2_readpublic", "-c", "0x81000005"]).await);
        stack.shutdown().await.unwrap();
        name
    };
    let stack = stack(&state, 2).await;
    let guest = &stack.guests()[1];
    tool(
        guest,
        &[
            "tpm2_nvread",
            "0x1500017",
            "-C",
            "o",
            "-s",
            "20",
            "-o",
            &back,
        ],
    )
    .await;
    assert_eq!(std::fs::read(&back).unwrap(), b"kept across restarts");
    let name_after = text(&tool(guest, &["tpm2_readpublic", "-c", "0x81000005"]).await);
    assert_eq!(name_before, name_after);
    // The other guest's TPM got its own state back, not this one's.
    let other = tool_status(
        &stack.guests()[0],
        &["tpm2_nvread", "0x1500017", "-C", "o", "-s", "20"],
    )
    .await;
    assert!(!other.status.success());
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_never_see_each_others_pcrs_or_nv() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(&dir.path().join("state"), 2).await;
    let (a, b) = (&stack.guests()[0], &stack.guests()[1]);
    let digest = [0x11; 32];
    let hex: String = digest.iter().map(|x| format!("{x:02x}")).collect();
    tool(a, &["tpm2_pcrextend", &format!("16:sha256={hex}")]).await;
    let expected: String = extended(&digest)
        .iter()
        .map(|x| format!("{x:02X}"))
        .collect();
    let zero = "0".repeat(64);
    assert!(text(&tool(a, &["tpm2_pcrread", "sha256:16"]).await).contains(&expected));
    let b_pcr = text(&tool(b, &["tpm2_pcrread", "sha256:16"]).await);
    assert!(b_pcr.contains(&format!("16: 0x{zero}")), "{b_pcr}");

    let d = dir.path();
    let (da, db, back) = (arg(d, "a"), arg(d, "b"), arg(d, "back"));
    std::fs::write(&da, b"AAAA").unwrap();
    std::fs::write(&db, b"BBBB").unwrap();
    let define = [
        "tpm2_nvdefine",
        "0x1500018",
        "-C",
        "o",
        "-s",
        "4",
        "-a",
        "ownerread|ownerwrite",
    ];
    tool(a, &define).await;
    tool(a, &["tpm2_nvwrite", "0x1500018", "-C", "o", "-i", &da]).await;
    // B does not have A's index ...
    let read = [
        "tpm2_nvread",
        "0x1500018",
        "-C",
        "o",
        "-s",
        "4",
        "-o",
        &back,
    ];
    assert!(!tool_status(b, &read).await.status.success());
    // ... and defines its own under the same handle, which leaves A's alone.
    tool(b, &define).await;
    tool(b, &["tpm2_nvwrite", "0x1500018", "-C", "o", "-i", &db]).await;
    tool(a, &read).await;
    assert_eq!(std::fs::read(&back).unwrap(), b"AAAA");
    tool(b, &read).await;
    assert_eq!(std::fs::read(&back).unwrap(), b"BBBB");
    stack.shutdown().await.unwrap();
}
