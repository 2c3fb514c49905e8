//! The backend's reset policy: each connection gets a TPM that was just powered on.
//!
//! A vTPM instance outlives the connections to it (a guest reboots, reconnects, or the
//! toolstack hands the instance to the next guest), but a machine's TPM is reset at every
//! boot: its PCRs start from zero and nothing of the previous boot's sessions or transient
//! objects remains. So, through the engine's control operations:
//! - before a frontend is told Connected, the backend sends `Init` (dropping any saved
//!   volatile state) and then, by default, `TPM2_Startup(CLEAR)`, as a machine's firmware
//!   does; a TPM that cannot be reset is not offered to the guest (the connection is
//!   refused with the reason in the device's `error` node);
//! - after the frontend disconnects (or the device is removed), the backend sends `Stop`, so
//!   the instance executes nothing until the next connection's `Init`. The manager keeps an
//!   instance's frames in order, so a command the guest abandoned runs before that `Stop`
//!   (which waits for it, up to the processing timeout) and the next `Init` after both: a
//!   late command never lands on the next boot.
//!
//! Persistent state (NV indices, persistent keys, hierarchy seeds) is the engine's and
//! survives, as it survives a reboot.

use super::BackendConfig;
use super::BackendError;
use crate::deadline;
use crate::engine::ControlOp;
use crate::manager::MuxClient;
use crate::tpm_header::TpmRc;
use crate::tpm_header::response_code;

/// How a connection's TPM is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// `Init` and `TPM2_Startup(CLEAR)` before connecting, `Stop` after: the guest finds a
    /// started TPM, as firmware leaves it.
    #[default]
    PowerCycle,
    /// `Init` before connecting and `Stop` after, but no `TPM2_Startup`: the guest's own
    /// firmware or kernel sends it, as on hardware with a TPM-aware boot loader.
    PowerCycleGuestStartup,
}

/// TPM2_Startup(TPM_SU_CLEAR).
const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];

/// Powers `instance` on for a new connection, each step within the processing timeout.
pub(super) async fn power_on(
    client: &MuxClient,
    instance: u32,
    config: &BackendConfig,
    reset: ResetPolicy,
) -> Result<(), BackendError> {
    let timeout = config.processing_timeout;
    let init = ControlOp::Init {
        delete_volatile: true,
    };
    deadline::within(timeout, client.control(instance, init))
        .await
        .map_err(|_| BackendError::ResetTimeout)?
        .map_err(BackendError::Reset)?;
    if reset == ResetPolicy::PowerCycle {
        let response =
            deadline::within(timeout, client.command(instance, STARTUP_CLEAR.to_vec(), 0))
                .await
                .map_err(|_| BackendError::ResetTimeout)?
                .map_err(BackendError::Reset)?;
        // INITIALIZE: the engine starts up by itself on Init (swtpm's startup-clear flag).
        match response_code(&response) {
            Some(TpmRc::SUCCESS | TpmRc::INITIALIZE) => {}
            rc => return Err(BackendError::Startup(rc)),
        }
    }
    tracing::debug!(instance, policy = ?reset, "vTPM powered on");
    Ok(())
}

/// Powers `instance` off after its connection ended. A failure is only logged: the next
/// connection's `Init` resets the TPM anyway.
pub(super) async fn power_off(client: &MuxClient, instance: u32, config: &BackendConfig) {
    match deadline::within(
        config.processing_timeout,
        client.control(instance, ControlOp::Stop),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(instance, "vTPM stopped"),
        Ok(Err(e)) => tracing::warn!(instance, error = %e, "vTPM stop failed"),
        Err(deadline::Elapsed) => tracing::warn!(instance, "vTPM stop timed out"),
    }
}
