//! Step 3's guest half: extend PCRs, quote them with an attestation key, and have stock
//! `tpm2_checkquote` verify the quote against PCR values recomputed here.
//!
//! The TPM is reached through tpm2-tools' `swtpm:` TCTI, which is what the vTPM frontend serves
//! for a guest's TPM. The tools keep no resource manager between invocations, so every tool that
//! leaves transient objects or sessions behind is followed by `tpm2_flushcontext`.

use anyhow::Context;
use anyhow::bail;
use sha2::Digest as _;
use sha2::Sha384;
use std::path::Path;
use std::process::Command;

/// The SHA-384 bank: launch digests are SHA-384, so they extend without re-hashing.
pub(crate) const BANK: &str = "sha384";

/// Where a TPM answers tpm2-tools' `swtpm:` TCTI (data port; control port is the next one).
#[derive(Debug, Clone)]
pub(crate) struct TpmEndpoint {
    /// Loopback host.
    pub(crate) host: String,
    /// Data port.
    pub(crate) port: u16,
}

impl TpmEndpoint {
    pub(crate) fn tcti(&self) -> String {
        format!("swtpm:host={},port={}", self.host, self.port)
    }
}

/// One PCR extend the guest makes.
#[derive(Debug, Clone)]
pub(crate) struct Extend {
    /// PCR index.
    pub(crate) pcr: u32,
    /// The SHA-384 digest extended into it.
    pub(crate) digest: [u8; 48],
}

/// What the quote step proves.
#[derive(Debug, Clone)]
pub(crate) struct QuoteEvidence {
    /// `(pcr, value)` as recomputed here from the extended digests, in PCR order.
    pub(crate) expected: Vec<(u32, [u8; 48])>,
}

/// The value of a PCR that started at zero after one extend with `digest`.
pub(crate) fn extended_once(digest: &[u8; 48]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update([0u8; 48]);
    h.update(digest);
    h.finalize().into()
}

fn tool(
    endpoint: &TpmEndpoint,
    dir: &Path,
    program: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", endpoint.tcti())
        .output()
        .with_context(|| format!("starting {program} (is tpm2-tools installed?)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Reads PCRs of the SHA-384 bank with `tpm2_pcrread -o` (raw values, in selection order).
fn read_pcrs(
    endpoint: &TpmEndpoint,
    dir: &Path,
    pcrs: &[u32],
) -> anyhow::Result<Vec<(u32, [u8; 48])>> {
    let list = pcr_list(pcrs);
    tool(endpoint, dir, "tpm2_pcrread", &[&list, "-o", "pcrread.bin"])?;
    let raw = std::fs::read(dir.join("pcrread.bin")).context("reading tpm2_pcrread output")?;
    if raw.len() != 48 * pcrs.len() {
        bail!(
            "tpm2_pcrread wrote {} bytes for {} PCRs",
            raw.len(),
            pcrs.len()
        );
    }
    Ok(pcrs
        .iter()
        .zip(raw.chunks_exact(48))
        .map(|(pcr, v)| {
            let mut value = [0; 48];
            value.copy_from_slice(v);
            (*pcr, value)
        })
        .collect())
}

fn pcr_list(pcrs: &[u32]) -> String {
    let ids: Vec<String> = pcrs.iter().map(u32::to_string).collect();
    format!("{BANK}:{}", ids.join(","))
}

/// Extends `extends` into a freshly reset TPM, quotes them with a new attestation key under a
/// fresh nonce, and verifies the quote with `tpm2_checkquote` against the recomputed values.
pub(crate) fn extend_and_quote(
    endpoint: &TpmEndpoint,
    dir: &Path,
    extends: &[Extend],
) -> anyhow::Result<QuoteEvidence> {
    let mut pcrs: Vec<u32> = extends.iter().map(|e| e.pcr).collect();
    pcrs.sort_unstable();
    pcrs.dedup();
    if pcrs.len() != extends.len() {
        bail!("each PCR is extended once in the demo");
    }
    let before = read_pcrs(endpoint, dir, &pcrs)?;
    if let Some((pcr, _)) = before.iter().find(|(_, v)| v.iter().any(|b| *b != 0)) {
        bail!("PCR {pcr} is not zero before the guest's extends: the TPM was not reset");
    }
    for e in extends {
        let arg = format!("{}:{BANK}={}", e.pcr, hex::encode(e.digest));
        tool(endpoint, dir, "tpm2_pcrextend", &[&arg])?;
    }
    let expected: Vec<(u32, [u8; 48])> = pcrs
        .iter()
        .filter_map(|pcr| extends.iter().find(|e| e.pcr == *pcr))
        .map(|e| (e.pcr, extended_once(&e.digest)))
        .collect();

    // An attestation key under the endorsement hierarchy, as a guest's attestation agent makes it.
    tool(
        endpoint,
        dir,
        "tpm2_createek",
        &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
    )?;
    tool(endpoint, dir, "tpm2_flushcontext", &["-t"])?;
    tool(
        endpoint,
        dir,
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", BANK, "-s", "ecdsa", "-u", "ak.pub",
            "-f", "pem", "-n", "ak.name",
        ],
    )?;
    tool(endpoint, dir, "tpm2_flushcontext", &["-t"])?;
    tool(endpoint, dir, "tpm2_flushcontext", &["-s"])?;

    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no entropy for the nonce: {e}"))?;
    let nonce = hex::encode(nonce);
    let list = pcr_list(&pcrs);
    tool(
        endpoint,
        dir,
        "tpm2_quote",
        &[
            "-c",
            "ak.ctx",
            "-l",
            &list,
            "-q",
            &nonce,
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
            "-g",
            BANK,
        ],
    )?;
    tool(endpoint, dir, "tpm2_flushcontext", &["-t"])?;

    // The verifier trusts only its own arithmetic: the PCR file it checks is the recomputation.
    let mine: Vec<u8> = expected
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    std::fs::write(dir.join("expected.pcrs"), mine).context("writing expected PCRs")?;
    tool(
        endpoint,
        dir,
        "tpm2_checkquote",
        &[
            "-u",
            "ak.pub",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-f",
            "expected.pcrs",
            "-g",
            BANK,
            "-q",
            &nonce,
            "-l",
            &list,
        ],
    )
    .context("tpm2_checkquote refused the quote against the recomputed PCR values")?;

    let read_back = read_pcrs(endpoint, dir, &pcrs)?;
    if read_back != expected {
        bail!("the TPM's PCR values differ from the recomputation");
    }
    Ok(QuoteEvidence { expected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::Child;
    use std::process::Stdio;
    use std::time::Duration;
    use std::time::Instant;

    /// A bare swtpm on two consecutive free loopback ports, killed on drop.
    struct Swtpm {
        child: Child,
        port: u16,
        _dir: tempdir::Dir,
    }

    mod tempdir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port_pair() -> u16 {
        loop {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = a.local_addr().unwrap().port();
            if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                return port;
            }
        }
    }

    fn swtpm(tag: &str) -> Swtpm {
        let dir = std::env::temp_dir().join(format!("xtask-quote-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", dir.join("state").display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Swtpm {
            child,
            port,
            _dir: tempdir::Dir(dir),
        }
    }

    #[test]
    fn quote_verifies_against_recomputed_pcrs_and_a_used_tpm_is_refused() {
        let tpm = swtpm("ok");
        let endpoint = TpmEndpoint {
            host: "127.0.0.1".into(),
            port: tpm.port,
        };
        let work = tempdir::Dir(tpm._dir.0.join("work"));
        std::fs::create_dir_all(&work.0).unwrap();
        let extends = [
            Extend {
                pcr: 12,
                digest: Sha384::digest(b"report").into(),
            },
            Extend {
                pcr: 11,
                digest: Sha384::digest(b"launch").into(),
            },
        ];
        let evidence = extend_and_quote(&endpoint, &work.0, &extends).unwrap();
        assert_eq!(evidence.expected[0].0, 11);
        assert_eq!(evidence.expected[0].1, extended_once(&extends[1].digest));
        // And the TPM itself reports exactly those values.
        let read = read_pcrs(&endpoint, &work.0, &[11, 12]).unwrap();
        assert_eq!(read, evidence.expected);
        // The same TPM again: its PCRs are no longer zero, so the recomputation cannot hold.
        let err = extend_and_quote(&endpoint, &work.0, &extends).unwrap_err();
        assert!(format!("{err:#}").contains("not reset"), "{err:#}");
    }
}
