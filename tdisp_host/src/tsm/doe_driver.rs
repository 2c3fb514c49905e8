//! The TSM's DOE driver: whole-object exchanges carried out on the DOE registers, the way the
//! PCIe 6.1 section 6.30.2 requester does it.
//!
//! One exchange: make sure the mailbox is idle (abort whatever a previous, abandoned exchange
//! left: Busy, Error or an unread response), write the request one dword at a time into the
//! Write Data Mailbox, set Go, poll Status until Data Object Ready (or Error, or the 1 s
//! timeout), then read the response one dword at a time from the Read Data Mailbox, writing
//! the register after each dword to move on. Every failure ends with an abort so the next
//! exchange starts from an idle mailbox.
//!
//! ```
//! use std::time::Duration;
//! use tdisp_host::dsm::{DoeFunction, DsmConfig, EmulatedDsm};
//! use tdisp_host::tsm::{DoeMailbox, MailboxError, ManualClock, RegisterMailbox};
//! use tdisp_proto::framing::doe::{DoeObject, DoeObjectType};
//!
//! let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101))?;
//! let clock = ManualClock::new();
//! let mut function = DoeFunction::with_clock(dsm, Box::new(clock.clone()), 2);
//! function.set_latency(None); // a device that never answers
//! let mut mailbox = RegisterMailbox::new(function, Box::new(clock.clone())).ok_or("no DOE")?;
//! assert_eq!(mailbox.discovery_version(), 2);
//!
//! let mut discovery = Vec::new();
//! DoeObject::new(DoeObjectType::DISCOVERY, &[0, 2, 0, 0]).encode(&mut discovery);
//! assert_eq!(mailbox.exchange(&discovery), Err(MailboxError::Timeout));
//! assert!(clock.sleeps().iter().sum::<Duration>() >= Duration::from_secs(1));
//!
//! // The driver aborted; once the device answers again, so does the mailbox.
//! mailbox.registers().set_latency(Some(Duration::ZERO));
//! let answer = mailbox.exchange(&discovery)?;
//! assert_eq!(DoeObject::decode(&answer)?.object_type, DoeObjectType::DISCOVERY);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::clock::Clock;
use super::doe::DoeMailbox;
use super::doe::DoeRegisters;
use super::doe::MAX_DOE_OBJECT_SIZE;
use super::doe::MailboxError;
use super::doe::regs;
use std::time::Duration;

/// How long the device may take to answer, and to finish an abort (PCIe 6.1: 1 second).
pub const DOE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often Status is polled while the device works.
pub const DOE_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// A [`DoeMailbox`] that drives a function's [`DoeRegisters`].
pub struct RegisterMailbox<R> {
    registers: R,
    clock: Box<dyn Clock>,
    timeout: Duration,
    discovery_version: u8,
}

impl<R: DoeRegisters> std::fmt::Debug for RegisterMailbox<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterMailbox")
            .field("timeout", &self.timeout)
            .field("discovery_version", &self.discovery_version)
            .finish_non_exhaustive()
    }
}

impl<R: DoeRegisters> RegisterMailbox<R> {
    /// A driver for `registers`, waiting on `clock`. Reads the capability header once: its
    /// version decides the discovery version (2 from capability version 2 on, else 0).
    /// `None` if the registers are not a DOE capability.
    pub fn new(mut registers: R, clock: Box<dyn Clock>) -> Option<Self> {
        let header = registers.read(regs::HEADER);
        if header & 0xffff != regs::CAPABILITY_ID {
            tracing::warn!(header, "not a DOE capability");
            return None;
        }
        let discovery_version = if regs::header_version(header) >= 2 {
            2
        } else {
            0
        };
        Some(Self {
            registers,
            clock,
            timeout: DOE_TIMEOUT,
            discovery_version,
        })
    }

    /// The registers (to inspect the device in tests).
    pub fn registers(&mut self) -> &mut R {
        &mut self.registers
    }

    fn status(&mut self) -> u32 {
        self.registers.read(regs::STATUS)
    }

    /// Polls Status until `done` holds, for at most the timeout.
    fn wait(&mut self, done: impl Fn(u32) -> bool) -> Result<u32, MailboxError> {
        let start = self.clock.now();
        loop {
            let status = self.status();
            if done(status) {
                return Ok(status);
            }
            if self.clock.now().saturating_sub(start) >= self.timeout {
                return Err(MailboxError::Timeout);
            }
            self.clock.sleep(DOE_POLL_INTERVAL);
        }
    }

    /// Aborts and waits for the mailbox to be idle: not busy, no error, nothing to read.
    pub fn abort(&mut self) -> Result<(), MailboxError> {
        self.registers.write(regs::CONTROL, regs::CONTROL_ABORT);
        let idle = |s: u32| {
            s & (regs::STATUS_BUSY | regs::STATUS_ERROR | regs::STATUS_DATA_OBJECT_READY) == 0
        };
        self.wait(idle).map(drop).map_err(|_| {
            tracing::error!("DOE mailbox did not recover from an abort");
            MailboxError::Unavailable
        })
    }

    /// An idle mailbox to start from: waits out Busy, aborts an error or a stale response.
    fn make_idle(&mut self) -> Result<(), MailboxError> {
        let Ok(status) = self.wait(|s| s & regs::STATUS_BUSY == 0) else {
            return self.abort();
        };
        if status & (regs::STATUS_ERROR | regs::STATUS_DATA_OBJECT_READY) != 0 {
            tracing::debug!(status, "DOE mailbox not idle; aborting first");
            return self.abort();
        }
        Ok(())
    }

    fn read_dword(&mut self) -> u32 {
        let value = self.registers.read(regs::READ_MAILBOX);
        self.registers.write(regs::READ_MAILBOX, 0);
        value
    }

    /// The whole exchange; on failure the caller aborts.
    fn exchange_inner(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        self.make_idle()?;
        for dword in request.chunks(4) {
            let mut bytes = [0u8; 4];
            bytes[..dword.len()].copy_from_slice(dword);
            self.registers
                .write(regs::WRITE_MAILBOX, u32::from_le_bytes(bytes));
        }
        self.registers.write(regs::CONTROL, regs::CONTROL_GO);
        let status = self.wait(|s| {
            s & regs::STATUS_ERROR != 0
                || (s & regs::STATUS_BUSY == 0 && s & regs::STATUS_DATA_OBJECT_READY != 0)
        })?;
        if status & regs::STATUS_ERROR != 0 {
            return Err(MailboxError::DeviceError("DOE Error set"));
        }
        let first = self.read_dword();
        let second = self.read_dword();
        // The 18-bit length counts dwords, header included; 0 means 2^18.
        let length = match second & 0x3_ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        let bytes = length.saturating_mul(4);
        if length < 2 || bytes > MAX_DOE_OBJECT_SIZE {
            return Err(MailboxError::TooLarge(bytes));
        }
        let mut response = Vec::with_capacity(bytes);
        response.extend_from_slice(&first.to_le_bytes());
        response.extend_from_slice(&second.to_le_bytes());
        for _ in 2..length {
            if self.status() & regs::STATUS_DATA_OBJECT_READY == 0 {
                return Err(MailboxError::DeviceError(
                    "response shorter than its length",
                ));
            }
            let dword = self.read_dword();
            response.extend_from_slice(&dword.to_le_bytes());
        }
        if self.status() & regs::STATUS_DATA_OBJECT_READY != 0 {
            return Err(MailboxError::DeviceError("response longer than its length"));
        }
        Ok(response)
    }
}

impl<R: DoeRegisters> DoeMailbox for RegisterMailbox<R> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        if request.len() > MAX_DOE_OBJECT_SIZE {
            return Err(MailboxError::TooLarge(request.len()));
        }
        if !request.len().is_multiple_of(4) || request.len() < 8 {
            return Err(MailboxError::DeviceError(
                "request is not a whole DOE object",
            ));
        }
        match self.exchange_inner(request) {
            Ok(response) => Ok(response),
            Err(error) => {
                tracing::warn!(%error, "DOE exchange failed; aborting");
                self.abort()?;
                Err(error)
            }
        }
    }

    fn discovery_version(&self) -> u8 {
        self.discovery_version
    }
}
