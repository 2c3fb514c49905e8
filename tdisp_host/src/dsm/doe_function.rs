//! The device end of a DOE mailbox at register level (PCIe 6.1 sections 6.30 and 7.9.24).
//!
//! [`DoeFunction`] emulates the DOE extended capability of one function: the requester writes a
//! data object one dword at a time into the Write Data Mailbox and sets Go; the function is
//! Busy while it works, then sets Data Object Ready (or Error) and hands the response out one
//! dword per Read Data Mailbox read, moving on at each write of that register. Abort empties
//! both mailboxes and clears Busy, Error and Data Object Ready at any point, in the middle of
//! an object included. The whole object goes to a whole-object handler (a [`DoeMailbox`], such
//! as [`super::EmulatedDsm`]): the register layer only moves dwords and keeps state.
//!
//! Time is a [`Clock`]: a function can take `latency` to answer (or never answer), so a test
//! can drive the requester's 1 s timeout without waiting for it.

use crate::tsm::clock::Clock;
use crate::tsm::clock::SystemClock;
use crate::tsm::doe::DoeMailbox;
use crate::tsm::doe::DoeRegisters;
use crate::tsm::doe::MAX_DOE_OBJECT_SIZE;
use crate::tsm::doe::regs;
use std::time::Duration;

/// Most dwords the write mailbox holds; more sets Error.
const MAX_DWORDS: usize = MAX_DOE_OBJECT_SIZE / 4;

/// Where the function is in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Taking request dwords.
    Idle,
    /// Working on an object; the outcome shows at `ready_at` (never, if `None`).
    Busy {
        ready_at: Option<Duration>,
        outcome: Option<Vec<u32>>,
    },
    /// Handing out the response, `next` is the dword the read mailbox shows.
    Ready { response: Vec<u32>, next: usize },
    /// The object could not be processed (or the mailbox was misused); only Abort clears it.
    Error,
}

/// An emulated DOE capability in front of a whole-object handler.
pub struct DoeFunction<H> {
    handler: H,
    clock: Box<dyn Clock>,
    version: u8,
    latency: Option<Duration>,
    request: Vec<u32>,
    state: State,
    objects: u64,
    aborts: u64,
}

impl<H> std::fmt::Debug for DoeFunction<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoeFunction")
            .field("version", &self.version)
            .field("latency", &self.latency)
            .field("state", &self.state)
            .field("objects", &self.objects)
            .field("aborts", &self.aborts)
            .finish_non_exhaustive()
    }
}

impl<H: DoeMailbox> DoeFunction<H> {
    /// A version 2 DOE capability answering at once.
    pub fn new(handler: H) -> Self {
        Self::with_clock(handler, Box::new(SystemClock::new()), 2)
    }

    /// A DOE capability of `version` whose latency is measured on `clock`.
    pub fn with_clock(handler: H, clock: Box<dyn Clock>, version: u8) -> Self {
        Self {
            handler,
            clock,
            version: version & 0xf,
            latency: Some(Duration::ZERO),
            request: Vec::new(),
            state: State::Idle,
            objects: 0,
            aborts: 0,
        }
    }

    /// How long the function takes to answer from Go; `None`: it never answers.
    pub fn set_latency(&mut self, latency: Option<Duration>) {
        self.latency = latency;
    }

    /// The whole-object handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Objects processed (Go with a well-formed object) so far.
    pub fn objects(&self) -> u64 {
        self.objects
    }

    /// Aborts received so far.
    pub fn aborts(&self) -> u64 {
        self.aborts
    }

    /// Settles a finished piece of work into Ready or Error.
    fn settle(&mut self) {
        if let State::Busy {
            ready_at: Some(at),
            outcome,
        } = &mut self.state
            && self.clock.now() >= *at
        {
            self.state = match outcome.take() {
                Some(response) if !response.is_empty() => State::Ready { response, next: 0 },
                _ => State::Error,
            };
        }
    }

    fn status(&mut self) -> u32 {
        self.settle();
        match self.state {
            State::Idle => 0,
            State::Busy { .. } => regs::STATUS_BUSY,
            State::Ready { .. } => regs::STATUS_DATA_OBJECT_READY,
            State::Error => regs::STATUS_ERROR,
        }
    }

    fn abort(&mut self) {
        self.aborts += 1;
        self.request.clear();
        self.state = State::Idle;
    }

    /// Go: processes the object in the write mailbox.
    fn go(&mut self) {
        if self.state != State::Idle {
            self.state = State::Error;
            return;
        }
        let request = std::mem::take(&mut self.request);
        let outcome = self.process(&request);
        self.state = State::Busy {
            ready_at: self.latency.map(|l| self.clock.now().saturating_add(l)),
            outcome,
        };
        self.settle();
    }

    /// The response dwords, or `None` for Error. The header's length must match what was
    /// written: a short or padded object is an error, not a guess.
    fn process(&mut self, request: &[u32]) -> Option<Vec<u32>> {
        let length = match request.get(1)? & 0x3_ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        if length != request.len() {
            tracing::debug!(
                length,
                written = request.len(),
                "DOE object length mismatch"
            );
            return None;
        }
        self.objects += 1;
        let bytes: Vec<u8> = request.iter().flat_map(|d| d.to_le_bytes()).collect();
        let response = self.handler.exchange(&bytes).ok()?;
        if !response.len().is_multiple_of(4) || response.len() > MAX_DOE_OBJECT_SIZE {
            return None;
        }
        Some(
            response
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

impl<H: DoeMailbox> DoeRegisters for DoeFunction<H> {
    fn read(&mut self, offset: u16) -> u32 {
        match offset {
            regs::HEADER => regs::CAPABILITY_ID | (u32::from(self.version) << 16),
            regs::STATUS => self.status(),
            regs::READ_MAILBOX => {
                self.settle();
                match &self.state {
                    State::Ready { response, next } => response.get(*next).copied().unwrap_or(0),
                    _ => 0,
                }
            }
            // Capabilities: no interrupt; Control reads back 0 (Abort and Go are write-only
            // triggers); the Write Data Mailbox reads as 0; nothing else is implemented.
            _ => 0,
        }
    }

    fn write(&mut self, offset: u16, value: u32) {
        match offset {
            regs::CONTROL if value & regs::CONTROL_ABORT != 0 => self.abort(),
            regs::CONTROL if value & regs::CONTROL_GO != 0 => self.go(),
            regs::WRITE_MAILBOX => {
                self.settle();
                match self.state {
                    State::Idle if self.request.len() < MAX_DWORDS => self.request.push(value),
                    // Writing while busy or with a response pending, or past the largest
                    // object, is a misuse the requester must abort out of.
                    State::Idle | State::Busy { .. } | State::Ready { .. } => {
                        self.request.clear();
                        self.state = State::Error;
                    }
                    State::Error => {}
                }
            }
            regs::READ_MAILBOX => {
                self.settle();
                if let State::Ready { response, next } = &mut self.state {
                    *next += 1;
                    if *next >= response.len() {
                        self.state = State::Idle;
                    }
                }
            }
            _ => {}
        }
    }
}
