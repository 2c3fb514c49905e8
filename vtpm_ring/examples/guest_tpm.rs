//! Two guests, one on protocol v1 and one on v2, each with its own vTPM instance behind one
//! backend domain: they extend a PCR, read it back, fetch random bytes and close. Runs on
//! `futures`' single-threaded executor: the library needs no runtime.

use futures::future::Either;
use sha2::Digest;
use sha2::Sha256;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

/// TPM2_PCR_Extend(pcr, sha256 digest) with the empty password session.
fn pcr_extend(pcr: u8, digest: &[u8; 32]) -> Vec<u8> {
    let mut c = vec![0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82, 0, 0, 0, pcr];
    c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
    c.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
    c.extend_from_slice(digest);
    c
}

/// TPM2_PCR_Read of one sha256 PCR below 24.
fn pcr_read(pcr: u8) -> Vec<u8> {
    let mut select = [0u8; 3];
    select[usize::from(pcr / 8)] = 1 << (pcr % 8);
    let mut c = vec![
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3,
    ];
    c.extend_from_slice(&select);
    c
}

const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (bed, backend) = Testbed::new(BackendConfig::default(), &[100, 200])?;
    let guests = [
        (bed.add_guest(DomainId(2))?, 100, Protocols::V1_ONLY),
        (bed.add_guest(DomainId(3))?, 200, Protocols::V2_ONLY),
    ];
    for (guest, instance, _) in &guests {
        bed.add_device(guest.id(), 0, *instance)?;
    }
    let work = async {
        for (guest, instance, protocols) in &guests {
            let config = FrontendConfig {
                protocols: *protocols,
                ..FrontendConfig::default()
            };
            let tpm = Frontend::connect(guest, config).await?;
            let measurement: [u8; 32] = Sha256::digest(format!("kernel of {}", guest.id())).into();
            let r = tpm.transmit(&pcr_extend(16, &measurement)).await?;
            assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
            let r = tpm.transmit(&pcr_read(16)).await?;
            assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
            // Response: header, update counter, selection (4 + 6 bytes), count, size, digest.
            let value = r.get(r.len() - 32..).ok_or("short PCR_Read response")?;
            let expected: [u8; 32] = Sha256::new()
                .chain_update([0u8; 32])
                .chain_update(measurement)
                .finalize()
                .into();
            assert_eq!(value, expected);
            let random = tpm.transmit(&GET_RANDOM_16).await?;
            assert_eq!(random.len(), 28);
            println!(
                "guest {} ({:?}, instance {instance}): PCR16 = {}..., random = {}",
                guest.id(),
                tpm.protocol(),
                hex(&value[..8]),
                hex(&random[12..])
            );
            tpm.close().await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    futures::pin_mut!(work, backend);
    match futures::executor::block_on(futures::future::select(work, backend)) {
        Either::Left((result, _)) => result?,
        Either::Right(_) => return Err("backend stopped".into()),
    }
    let stats = bed.stats.snapshot();
    assert_eq!(
        (stats.connects, stats.disconnects, stats.requests),
        (2, 2, 6)
    );
    println!("backend: {stats:?}");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
