//! Two guests, each with its own swtpm-backed vTPM instance behind one backend domain: they
//! extend a PCR, read it back, fetch random bytes, and the host is stopped the planned way.
//! Then the same state directory is brought up again and the first guest's NV index, written
//! through its TPM socket's data port, is still there. Needs `swtpm` (`cargo xtask deps`).

#![forbid(unsafe_code)]

use sha2::Digest;
use sha2::Sha256;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;
use vtpm_ring::tpm_command::pcr_digest_sha256;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16];

/// TPM2_NV_DefineSpace(owner, index 0x01500042, 8 bytes, ownerread|ownerwrite), empty auth.
const NV_DEFINE: [u8; 45] = [
    0x80, 0x02, 0, 0, 0, 45, 0, 0, 0x01, 0x2a, 0x40, 0, 0, 1, 0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0,
    0, 0, 0, 0, 0, 14, 0x01, 0x50, 0, 0x42, 0, 0x0b, 0, 0x02, 0, 0x02, 0, 0, 0, 8,
];

/// TPM2_NV_Write(owner, 0x01500042, "persists", offset 0).
fn nv_write() -> Vec<u8> {
    let mut c = vec![
        0x80, 0x02, 0, 0, 0, 43, 0, 0, 0x01, 0x37, 0x40, 0, 0, 1, 0x01, 0x50, 0, 0x42,
    ];
    c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    c.extend_from_slice(&[0, 8]);
    c.extend_from_slice(b"persists");
    c.extend_from_slice(&[0, 0]);
    c
}

/// TPM2_NV_Read(owner, 0x01500042, 8 bytes, offset 0).
fn nv_read() -> Vec<u8> {
    let mut c = vec![
        0x80, 0x02, 0, 0, 0, 35, 0, 0, 0x01, 0x4e, 0x40, 0, 0, 1, 0x01, 0x50, 0, 0x42,
    ];
    c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    c.extend_from_slice(&[0, 8, 0, 0]);
    c
}

/// One command over a TPM socket's data port, as tpm2-tools' `swtpm:` TCTI sends it.
async fn over_socket(port: u16, command: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(command).await?;
    let mut response = vec![0u8; 10];
    s.read_exact(&mut response).await?;
    let size = u32::from_be_bytes([response[2], response[3], response[4], response[5]]);
    response.resize(size as usize, 0);
    s.read_exact(&mut response[10..]).await?;
    Ok(response)
}

fn ok(response: &[u8]) -> Result<(), String> {
    match response_code(response) {
        Some(TpmRc::SUCCESS) => Ok(()),
        rc => Err(format!("TPM answered {rc:?}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state = std::env::temp_dir().join(format!("vtpm-example-{}", std::process::id()));
    let stack = VtpmStack::start(StackConfig::new(&state, 2)).await?;
    for guest in stack.guests() {
        let tpm = guest.frontend();
        let measurement: [u8; 32] = Sha256::digest(format!("kernel of {}", guest.domain())).into();
        ok(&tpm.transmit(&pcr_extend_sha256(16, &measurement)).await?)?;
        let r = tpm.transmit(&pcr_read_sha256(16).ok_or("PCR 16")?).await?;
        ok(&r)?;
        let value = pcr_digest_sha256(&r).ok_or("not a one-PCR read")?;
        let expected: [u8; 32] = Sha256::new()
            .chain_update([0u8; 32])
            .chain_update(measurement)
            .finalize()
            .into();
        assert_eq!(value, expected);
        let random = tpm.transmit(&GET_RANDOM_16).await?;
        ok(&random)?;
        println!(
            "guest {} ({:?}, instance {}, TPM socket {}): PCR16 = {}..., random = {}",
            guest.domain(),
            tpm.protocol(),
            guest.instance(),
            guest.data_addr(),
            hex(&value[..8]),
            hex(&random[12..])
        );
    }
    let port = stack.guests()[0].data_addr().port();
    ok(&over_socket(port, &NV_DEFINE).await?)?;
    ok(&over_socket(port, &nv_write()).await?)?;
    stack.shutdown().await?;

    let stack = VtpmStack::start(StackConfig::new(&state, 2)).await?;
    let r = stack.guests()[0].frontend().transmit(&nv_read()).await?;
    ok(&r)?;
    println!(
        "after a restart, guest {} reads its NV index back: {:?}",
        stack.guests()[0].domain(),
        String::from_utf8_lossy(&r[r.len() - 13..r.len() - 5])
    );
    stack.shutdown().await?;
    std::fs::remove_dir_all(&state)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
