//! Step 3's host half: the vTPM split driver in front of a real swtpm, served to the guest's
//! tools as a TPM socket.
//!
//! `vtpm_ring::stack::VtpmStack` is what `vtpmctl run` starts: a backend domain and a guest
//! domain, the guest's frontend connected over the ring, the backend multiplexing onto the
//! manager, and one swtpm process per instance with its own state directory. The guest's
//! frontend is served on loopback in the protocol tpm2-tools' `swtpm:` TCTI speaks, so the
//! guest half ([`super::quote`]) uses stock tools through the whole ring.

use super::quote::TpmEndpoint;
use anyhow::Context;
use std::path::PathBuf;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;

/// A running vTPM for one guest.
pub(crate) struct Vtpm {
    runtime: tokio::runtime::Runtime,
    stack: VtpmStack,
    /// Where the guest's tools reach it.
    pub(crate) endpoint: TpmEndpoint,
}

impl Vtpm {
    /// Starts one guest's vTPM with its state under `state_dir`.
    pub(crate) fn start(state_dir: PathBuf) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the vTPM runtime")?;
        let stack = runtime
            .block_on(VtpmStack::start(StackConfig::new(&state_dir, 1)))
            .context("starting the vTPM stack (backend, manager, swtpm)")?;
        let guest = stack.guests().first().context("the stack has no guest")?;
        let addr = guest.data_addr();
        Ok(Self {
            endpoint: TpmEndpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            runtime,
            stack,
        })
    }

    /// Instance and engine state, for the report.
    pub(crate) fn describe(&self) -> String {
        let status = self.runtime.block_on(self.stack.status());
        status
            .iter()
            .map(|s| {
                format!(
                    "guest dom{} ring {} -> instance {} swtpm pid {} ({:?})",
                    s.domain,
                    s.protocol,
                    s.engine.instance,
                    s.engine.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    s.engine.state
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Closes the frontend and stops swtpm the planned way (state saved).
    pub(crate) fn shut_down(self) -> anyhow::Result<String> {
        self.runtime
            .block_on(self.stack.shutdown())
            .context("shutting the vTPM down")?;
        Ok(
            "vTPM frontend closed, swtpm stopped the planned way (state stored, then SHUTDOWN)"
                .into(),
        )
    }

    /// Keeps serving until Ctrl-C (for `--keep`).
    pub(crate) fn serve_until_interrupted(self, work: &std::path::Path) -> anyhow::Result<String> {
        self.runtime
            .block_on(async {
                // Listening before saying so: a Ctrl-C right after the message must still
                // stop swtpm the planned way, not kill the demo.
                let mut interrupt =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
                println!(
                    "vTPM kept: TPM2TOOLS_TCTI=\"{}\" tpm2_pcrread sha384:11,12   (quote files in {}; Ctrl-C to stop)",
                    self.endpoint.tcti(),
                    work.display()
                );
                interrupt.recv().await;
                Ok::<_, std::io::Error>(())
            })
            .context("waiting for Ctrl-C")?;
        self.shut_down()
    }
}
