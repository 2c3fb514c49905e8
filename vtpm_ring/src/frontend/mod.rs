//! The frontend: a guest's vTPM device, offering what a `/dev/tpm0` user sees.
//!
//! [`Frontend::connect`] runs the store handshake with the backend (negotiating v1 or v2),
//! then [`Frontend::transmit`] sends one command and returns its response, one at a time.
//! [`Frontend::set_locality`] chooses the locality (v2 only: v1 has none on the wire) and
//! [`Frontend::cancel`] asks to cancel the command under way. Unlike Linux's driver, an
//! oversize or inconsistent response is an error, never silently truncated. Every wait on the
//! backend is bounded by [`FrontendConfig::timeout`]. By default v2 uses the single shared
//! page of Linux xen-tpmfront and mini-os ([`FrontendConfig::extra_pages`] = 0).
//!
//! With [`FrontendConfig::control`] (and a backend that offers it), [`Frontend::control`]
//! sends swtpm control operations over the ring (the TPM's power and its established flag),
//! and v1 gets a locality: [`Frontend::set_locality`] then reaches the backend as a control
//! request before the next command. This is what a frontend standing in for swtpm toward QEMU
//! needs ([`crate::qemu`]).
//!
//! This module holds the settings, the errors and the exchanges on the ring; `bus` the
//! handshake that connects and closes a device and the shared pages, released however a
//! frontend ends.

mod bus;

use bus::Granted;

use crate::deadline;
use crate::domain::Domain;
use crate::domain::DomainError;
use crate::domain::DomainId;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::CtrlResult;
use crate::engine::ctrl;
use crate::engine::ctrl::CtrlError;
use crate::event::EventChannel;
use crate::event::EventError;
use crate::event::Signal;
use crate::grant::GrantAccess;
use crate::grant::GrantError;
use crate::grant::GrantRef;
use crate::page::OwnPage;
use crate::protocol::PacketKind;
use crate::protocol::ProtocolVersion;
use crate::protocol::Protocols;
use crate::protocol::RingError;
use crate::protocol::v1;
use crate::protocol::v2::V2Page;
use crate::protocol::v2::V2State;
use crate::store::StoreError;
use crate::store::StoreHandle;
use crate::tpm_header::TpmHeader;
use crate::xenbus::XenbusState;
use crate::xenbus::frontend_dir;
use crate::xenbus::keys;
use crate::xenbus::read_state;
use crate::xenbus::write_state;
use futures::FutureExt;
use futures::StreamExt;
use futures::pin_mut;
use futures::select_biased;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::time::Duration;
use thiserror::Error;
// Fair (first come, first served): with futures' lock a caller sending commands back to back
// retook the lock before the caller it had just woken could run, and starved it.
use tokio::sync::Mutex;
use zerocopy::little_endian::U32;
use zerocopy::little_endian::U64;

/// Frontend settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Device handle (`device/vtpm/<handle>`).
    pub handle: u32,
    /// Protocol versions the frontend is willing to use.
    pub protocols: Protocols,
    /// v2 extra pages beyond the shared page. The default, 0, is the layout Linux
    /// xen-tpmfront and mini-os use: packets up to 4088 bytes, starting at offset 8 of the one
    /// shared page. Multi-page packets are an explicit option (1 lets a 4 KiB command fit);
    /// the backend accepts up to [`BackendConfig::max_extra_pages`](crate::backend::BackendConfig).
    pub extra_pages: u8,
    /// How long to wait for the backend (each handshake step, each command); past it the
    /// call fails with [`FrontendError::Timeout`]. Longer than the backend's own processing
    /// timeout by default, so a slow engine shows as the backend's TPM_RC_FAILURE and only a
    /// silent backend as a timeout. `None` waits forever.
    pub timeout: Option<Duration>,
    /// Ask for `feature-vtpm-control`: control operations on the ring.
    pub control: bool,
}

/// Default [`FrontendConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            handle: 0,
            protocols: Protocols::default(),
            extra_pages: 0,
            timeout: Some(DEFAULT_TIMEOUT),
            control: false,
        }
    }
}

/// Frontend errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrontendError {
    /// A store operation failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A grant operation failed.
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    /// The event channel failed or closed.
    #[error("event channel: {0}")]
    Event(#[from] EventError),
    /// The shared layout failed.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// No memory for the shared pages.
    #[error("domain: {0}")]
    Domain(#[from] DomainError),
    /// Frontend and backend share no protocol version.
    #[error("no protocol version in common with the backend")]
    NoCommonProtocol,
    /// The backend closed instead of connecting.
    #[error("backend refused the connection (state {0:?})")]
    BackendRefused(XenbusState),
    /// The toolstack removed the device (its backend directory is gone).
    #[error("the device was removed")]
    DeviceRemoved,
    /// The store connection ended while waiting.
    #[error("store watch ended")]
    WatchEnded,
    /// The command does not fit the shared pages.
    #[error("command of {len} bytes exceeds {capacity}")]
    CommandTooLarge {
        /// Command length.
        len: usize,
        /// Capacity.
        capacity: usize,
    },
    /// The backend's response is larger than the shared pages or inconsistent.
    #[error("malformed response from the backend")]
    BadResponse,
    /// The call stopped waiting for the command's answer. On v2 the backend acknowledged the
    /// cancel with nothing under way (the engine was asked to stop the command). v1 has no
    /// cancel on the wire: the command may still run to its end, and its late answer is
    /// drained before the next command.
    #[error("command canceled")]
    Canceled,
    /// The backend did not answer in time. A command that timed out is canceled; the next
    /// call first waits (within the timeout again) for the backend to finish with it.
    #[error("the backend did not answer in time")]
    Timeout,
    /// Locality out of range (0..=4).
    #[error("locality {0} out of range")]
    BadLocality(u8),
    /// Control operations need `feature-vtpm-control` on both sides.
    #[error("control operations were not negotiated with the backend")]
    NoControl,
    /// The backend's reply to a control operation does not parse.
    #[error("malformed control reply from the backend: {0}")]
    BadControlReply(#[from] CtrlError),
}

enum Transport {
    V1 {
        ring: OwnPage,
        data: Vec<OwnPage>,
        entries: v1::Ring,
    },
    V2(V2Page<OwnPage>),
}

struct IoState {
    v1: V1State,
    /// Bounds each command by [`FrontendConfig::timeout`], with one timer for the device.
    watchdog: deadline::Watchdog,
}

struct V1State {
    /// A canceled (or abandoned) command's response has not arrived yet.
    outstanding: bool,
    /// With control: the locality the backend last acknowledged (it starts at 0); `None`
    /// from the moment a SET_LOCALITY goes out until it is acknowledged, since one that
    /// failed or timed out may still have been applied.
    locality: Option<u8>,
    /// The last request's number (see [`v1`]: every request is numbered, with or without
    /// control, so the backend never takes a command equal to its last response for a
    /// spurious doorbell).
    number: u8,
}

impl Default for V1State {
    fn default() -> Self {
        Self {
            outstanding: false,
            locality: Some(0),
            number: 0,
        }
    }
}

/// A connected vTPM frontend.
pub struct Frontend {
    store: StoreHandle,
    dir: String,
    backend_dir: String,
    version: ProtocolVersion,
    control: bool,
    event: EventChannel,
    transport: Transport,
    /// Declared after the event channel and the transport, so that a frontend dropped
    /// without `close` releases its pages last.
    granted: Granted,
    io: Mutex<IoState>,
    locality: AtomicU8,
    in_flight: AtomicBool,
    /// Held by a cancel from its look at [`Self::in_flight`] to its mark (v2's SUBMIT to
    /// CANCEL, v1's cancel signal), and by a submit while it publishes its command: otherwise
    /// the command looked at could end and the next caller's be submitted in between, and the
    /// mark would cancel that one. Held for a few stores, never across an await.
    submit: std::sync::Mutex<()>,
    timeout: Option<Duration>,
    cancel: Signal,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("dir", &self.dir)
            .field("version", &self.version)
            .finish()
    }
}

impl Frontend {
    /// The protocol version in use.
    pub fn protocol(&self) -> ProtocolVersion {
        self.version
    }

    /// Largest command (and response) the shared pages hold.
    pub fn max_packet(&self) -> usize {
        match &self.transport {
            Transport::V1 { .. } => v1::MAX_PACKET,
            Transport::V2(page) => page.capacity(),
        }
    }

    /// Whether control operations were negotiated ([`FrontendConfig::control`]).
    pub fn has_control(&self) -> bool {
        self.control
    }

    /// Whether a locality reaches the TPM: v2 carries it with each command, v1 only as a
    /// control request before the next command, which needs `feature-vtpm-control`.
    pub fn carries_locality(&self) -> bool {
        self.version == ProtocolVersion::V2 || self.control
    }

    /// Whether a cancel reaches the TPM: only v2's, which marks the shared page. On v1 (with
    /// or without control) [`Frontend::cancel`] only ends the wait, and the command runs to
    /// its end.
    pub fn carries_cancel(&self) -> bool {
        self.version == ProtocolVersion::V2
    }

    /// Sets the locality of the following commands (0..=4). v2 carries it with each command;
    /// v1 carries it only with control negotiated (as a SET_LOCALITY control request before
    /// the next command); without control, v1 has locality 0 only, and any other is refused
    /// ([`FrontendError::NoControl`]).
    pub fn set_locality(&self, locality: u8) -> Result<(), FrontendError> {
        if locality > 4 {
            return Err(FrontendError::BadLocality(locality));
        }
        // Nothing would carry it: the TPM would run the next commands at locality 0.
        if locality != 0 && !self.carries_locality() {
            return Err(FrontendError::NoControl);
        }
        self.locality.store(locality, Ordering::Relaxed);
        Ok(())
    }

    /// Asks to cancel the command under way, if any. The pending [`Frontend::transmit`] then
    /// returns the response (the backend finished anyway) or [`FrontendError::Canceled`]
    /// (which on v1 only means the call stopped waiting: see there).
    pub fn cancel(&self) -> Result<(), FrontendError> {
        self.cancel_between(|| ())
    }

    /// [`Self::cancel`], running `between` after the look at the command in flight and before
    /// the mark: the window a test fills with another caller's command.
    fn cancel_between(&self, between: impl FnOnce()) -> Result<(), FrontendError> {
        let _submit = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.in_flight.load(Ordering::Acquire) {
            return Ok(());
        }
        between();
        match &self.transport {
            // Only a submitted command can be canceled (see `cancel_submitted`).
            Transport::V2(page) => {
                if page.cancel_submitted()? {
                    self.event.notify()?;
                }
            }
            Transport::V1 { .. } => self.cancel.raise(),
        }
        Ok(())
    }

    /// Sends one command and returns its response. Calls are serialized.
    pub async fn transmit(&self, command: &[u8]) -> Result<Vec<u8>, FrontendError> {
        let mut io = self.io.lock().await;
        if self.control && self.version == ProtocolVersion::V1 {
            let wanted = self.locality.load(Ordering::Relaxed);
            if io.v1.locality != Some(wanted)
                && let Err(rc) = self.set_v1_locality(&mut io, wanted).await?
            {
                tracing::warn!(?rc, wanted, "backend refused the locality");
                return Err(FrontendError::BadLocality(wanted));
            }
        }
        let response = self
            .exchange(&mut io, PacketKind::TPM_COMMAND, command)
            .await?;
        if !TpmHeader::read_from_prefix_checked(&response) {
            return Err(FrontendError::BadResponse);
        }
        Ok(response)
    }

    /// Sends one swtpm control operation over the ring (needs `feature-vtpm-control`) and
    /// returns its reply: `Ok(Err(rc))` is the engine's (or the backend's) own refusal, with
    /// swtpm's result code. Serialized with [`Self::transmit`].
    ///
    /// A SET_LOCALITY the backend acknowledges (v1; v2's backend refuses it, the locality
    /// being the page's) is the locality of the following commands, as if set with
    /// [`Self::set_locality`].
    pub async fn control(
        &self,
        op: &ControlOp,
    ) -> Result<Result<ControlReply, CtrlResult>, FrontendError> {
        let mut io = self.io.lock().await;
        match *op {
            ControlOp::SetLocality(locality) if self.version == ProtocolVersion::V1 => {
                let reply = self.set_v1_locality(&mut io, locality).await?;
                if reply.is_ok() {
                    self.locality.store(locality, Ordering::Relaxed);
                }
                Ok(reply)
            }
            _ => self.control_locked(&mut io, op).await,
        }
    }

    /// v1: SET_LOCALITY over the ring, the backend's locality tracked. It is unknown while
    /// the request is out, so one that fails or times out (and that the backend may still
    /// apply) makes the next command send its own again.
    async fn set_v1_locality(
        &self,
        io: &mut IoState,
        locality: u8,
    ) -> Result<Result<ControlReply, CtrlResult>, FrontendError> {
        io.v1.locality = None;
        let reply = self
            .control_locked(io, &ControlOp::SetLocality(locality))
            .await?;
        if reply.is_ok() {
            io.v1.locality = Some(locality);
        }
        Ok(reply)
    }

    async fn control_locked(
        &self,
        io: &mut IoState,
        op: &ControlOp,
    ) -> Result<Result<ControlReply, CtrlResult>, FrontendError> {
        if !self.control {
            return Err(FrontendError::NoControl);
        }
        let reply = self
            .exchange(io, PacketKind::CONTROL, &ctrl::encode_request(op))
            .await?;
        Ok(ctrl::decode_reply(op.cmd(), &reply)?)
    }

    /// One request/response exchange on the ring, within the timeout.
    async fn exchange(
        &self,
        io: &mut IoState,
        kind: PacketKind,
        packet: &[u8],
    ) -> Result<Vec<u8>, FrontendError> {
        let IoState { v1, watchdog } = io;
        if packet.len() > self.max_packet() {
            return Err(FrontendError::CommandTooLarge {
                len: packet.len(),
                capacity: self.max_packet(),
            });
        }
        let exchange = async {
            match &self.transport {
                Transport::V2(page) => self.transmit_v2(page, kind, packet).await,
                Transport::V1 {
                    ring,
                    data,
                    entries,
                } => {
                    self.transmit_v1(v1, ring, data, entries, kind, packet)
                        .await
                }
            }
        };
        let result = match watchdog.within(exchange).await {
            Ok(r) => r,
            Err(deadline::Elapsed) => {
                tracing::warn!(dir = self.dir, "vTPM backend did not answer in time");
                if self.in_flight.load(Ordering::Acquire) {
                    self.abandon();
                }
                Err(FrontendError::Timeout)
            }
        };
        self.in_flight.store(false, Ordering::Release);
        result
    }

    /// Gives up on the command under way after a timeout. v2 asks the backend to cancel it;
    /// v1 has no cancel and remembers the answer is still owed. Either way the next command
    /// first waits for the backend to be done with this one.
    fn abandon(&self) {
        if let Transport::V2(page) = &self.transport {
            let canceled = match page.cancel_submitted() {
                Ok(true) => self.event.notify().map_err(FrontendError::from),
                // Answered just now: nothing left to cancel.
                Ok(false) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = canceled {
                tracing::warn!(error = %e, "cancel after timeout not sent");
            }
        }
    }

    async fn transmit_v2(
        &self,
        page: &V2Page<OwnPage>,
        kind: PacketKind,
        command: &[u8],
    ) -> Result<Vec<u8>, FrontendError> {
        // An earlier, abandoned command may still be under way: let it end first.
        while matches!(page.state()?, V2State::SUBMIT | V2State::CANCEL) {
            self.event.wait().await?;
        }
        page.write_request(command, self.locality.load(Ordering::Relaxed), kind)?;
        {
            let _submit = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            self.in_flight.store(true, Ordering::Release);
            page.set_state(V2State::SUBMIT)?;
        }
        self.event.notify()?;
        loop {
            match page.state()? {
                V2State::FINISH => break,
                V2State::IDLE => return Err(FrontendError::Canceled),
                _ => self.event.wait().await?,
            }
        }
        match page.read_packet() {
            Ok((response, _)) => Ok(response),
            Err(RingError::TooLarge { .. }) => Err(FrontendError::BadResponse),
            Err(e) => Err(e.into()),
        }
    }

    async fn transmit_v1(
        &self,
        io: &mut V1State,
        ring: &OwnPage,
        data: &[OwnPage],
        entries: &v1::Ring,
        kind: PacketKind,
        command: &[u8],
    ) -> Result<Vec<u8>, FrontendError> {
        if io.outstanding {
            // Strict request/response: the abandoned command's answer comes first.
            self.event.wait().await?;
            io.outstanding = false;
        } else if self.event.try_take() {
            // A notification while nothing was outstanding answers nothing. Left pending, it
            // would end the wait below at once: the pages still hold this command, which
            // would come back as its own response, and every later answer one behind.
            tracing::debug!(
                dir = self.dir,
                "stray notification from the backend dropped"
            );
        }
        let by_ref = |r: u32| {
            entries
                .iter()
                .position(|e| e.gref.get() == r)
                .and_then(|i| data.get(i).cloned())
                .ok_or(RingError::Inconsistent("unknown reference"))
        };
        io.number = v1::next_request_number(io.number);
        v1::write_tag(ring, kind, io.number)?;
        v1::write_packet(ring, entries, command, by_ref)?;
        io.outstanding = true;
        {
            let _submit = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
            // A cancel meant for an earlier command (raised after it was answered) is
            // dropped here, and one that comes later is meant for this one.
            self.cancel.reset();
            self.in_flight.store(true, Ordering::Release);
        }
        self.event.notify()?;
        let answered = {
            let ev = self.event.wait().fuse();
            let canceled = self.cancel.wait().fuse();
            pin_mut!(ev, canceled);
            select_biased! {
                r = ev => { r?; true }
                () = canceled => false,
            }
        };
        if !answered {
            return Err(FrontendError::Canceled);
        }
        io.outstanding = false;
        let snapshot = v1::read_ring(ring)?;
        let len = v1::packet_len(&snapshot).map_err(|_| FrontendError::BadResponse)?;
        Ok(v1::read_packet(&snapshot, len, by_ref)?)
    }
}

#[cfg(test)]
mod tests;
