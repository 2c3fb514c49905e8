//! A bounded record of what the guest asked for and what it did to the TDI, for diagnostics.
//!
//! The newest entries are kept; older ones are dropped and counted. [`HistorySnapshot`] is the
//! serde form (versioned, encoded as JSON by [`HistorySnapshot::to_json`] or with any serde
//! format).

use serde::Deserialize;
use serde::Serialize;
use std::collections::VecDeque;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;

/// Version of the snapshot format.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Entries kept by [`History::default`].
pub const DEFAULT_HISTORY_CAPACITY: usize = 64;

/// One guest call with its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestCall {
    /// Protocol negotiation.
    Negotiate(TdispGuestProtocolType),
    /// Lock device resources.
    Lock,
    /// Start the TDI.
    Start,
    /// Attestation report.
    Report(TdispReportType),
    /// Unbind.
    Unbind(TdispGuestUnbindReason),
}

/// Why the device was unbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnbindCause {
    /// The guest asked for it.
    Guest(TdispGuestUnbindReason),
    /// A call arrived in a state that does not allow it.
    WrongState,
    /// The device failed to carry out a call.
    DeviceFailure,
    /// The guest asked for a report of type `Invalid`.
    InvalidReportType,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the machine's life, from 0; gaps never occur, dropped entries are older.
    pub seq: u64,
    /// The call.
    pub call: GuestCall,
    /// State before the call.
    pub from: TdispTdiState,
    /// State after the call.
    pub to: TdispTdiState,
    /// The call's result.
    pub result: Result<(), TdispGuestOperationError>,
    /// Whether and why the call unbound the device.
    pub unbind: Option<UnbindCause>,
}

/// A bounded history: at most `capacity` newest entries.
#[derive(Debug, Clone)]
pub struct History {
    capacity: usize,
    entries: VecDeque<HistoryEntry>,
    next_seq: u64,
    dropped: u64,
}

impl Default for History {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_CAPACITY)
    }
}

impl History {
    /// An empty history keeping `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            entries: VecDeque::with_capacity(capacity),
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Records one call, dropping the oldest entry when full.
    pub fn record(
        &mut self,
        call: GuestCall,
        from: TdispTdiState,
        to: TdispTdiState,
        result: Result<(), TdispGuestOperationError>,
        unbind: Option<UnbindCause>,
    ) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.entries.push_back(HistoryEntry {
            seq: self.next_seq,
            call,
            from,
            to,
            result,
            unbind,
        });
        self.next_seq = self.next_seq.saturating_add(1);
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.entries.iter()
    }

    /// The newest entry.
    pub fn last(&self) -> Option<&HistoryEntry> {
        self.entries.back()
    }

    /// Entries dropped to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The serde form.
    pub fn snapshot(&self) -> HistorySnapshot {
        HistorySnapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            capacity: self.capacity,
            dropped: self.dropped,
            entries: self.entries.iter().cloned().collect(),
        }
    }
}

/// The serializable form of a [`History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySnapshot {
    /// [`SNAPSHOT_FORMAT_VERSION`].
    pub format_version: u32,
    /// Entries kept at most.
    pub capacity: usize,
    /// Entries dropped so far.
    pub dropped: u64,
    /// The kept entries, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl HistorySnapshot {
    /// The snapshot as JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_lock(history: &mut History) {
        history.record(
            GuestCall::Lock,
            TdispTdiState::Unlocked,
            TdispTdiState::Locked,
            Ok(()),
            None,
        );
    }

    #[test]
    fn history_keeps_the_newest_entries_and_counts_the_dropped() {
        let mut history = History::new(3);
        for _ in 0..5 {
            record_lock(&mut history);
        }
        let seqs: Vec<u64> = history.entries().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(history.dropped(), 2);
    }

    #[test]
    fn zero_capacity_still_keeps_the_last_entry() {
        let mut history = History::new(0);
        record_lock(&mut history);
        record_lock(&mut history);
        assert_eq!(history.last().map(|e| e.seq), Some(1));
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut history = History::new(4);
        record_lock(&mut history);
        history.record(
            GuestCall::Start,
            TdispTdiState::Unlocked,
            TdispTdiState::Unlocked,
            Err(TdispGuestOperationError::InvalidDeviceState),
            Some(UnbindCause::WrongState),
        );
        let snapshot = history.snapshot();
        let json = snapshot.to_json().unwrap();
        let back: HistorySnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
        assert!(json.contains("WrongState"));
    }
}
