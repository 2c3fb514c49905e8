//! The backend's counters: what every device's connection did, read as one snapshot.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Counters of what the backend did (all devices).
#[derive(Debug, Default)]
pub struct BackendStats {
    pub(super) devices: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) failed_connects: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) cancels: AtomicU64,
    pub(super) cancel_acks: AtomicU64,
    pub(super) controls: AtomicU64,
}

/// A copy of [`BackendStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Devices being served now (a gauge: each holds its instance until its directory goes).
    pub devices: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections torn down.
    pub disconnects: u64,
    /// Connection attempts refused (bad refs, ports, protocols).
    pub failed_connects: u64,
    /// Requests forwarded to the manager.
    pub requests: u64,
    /// Malformed requests answered with a TPM error by the backend itself.
    pub malformed: u64,
    /// Requests that could not even be answered (no writable page).
    pub dropped: u64,
    /// Cancels forwarded for a command under way.
    pub cancels: u64,
    /// Cancels acknowledged with IDLE.
    pub cancel_acks: u64,
    /// Control requests received on the ring (forwarded or answered by the backend).
    pub controls: u64,
}

impl BackendStats {
    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            devices: g(&self.devices),
            connects: g(&self.connects),
            disconnects: g(&self.disconnects),
            failed_connects: g(&self.failed_connects),
            requests: g(&self.requests),
            malformed: g(&self.malformed),
            dropped: g(&self.dropped),
            cancels: g(&self.cancels),
            cancel_acks: g(&self.cancel_acks),
            controls: g(&self.controls),
        }
    }

    pub(super) fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}
