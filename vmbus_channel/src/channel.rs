//! An opened channel's two rings plus its signals: async send and receive for either end.
//!
//! The host and the guest build the same [`RingChannel`] from the ring GPADL; they only
//! disagree on which half is incoming. A corrupt ring fails this channel's operations and
//! nothing else.

use crate::gpadl::Gpadl;
use crate::gpadl::GpadlError;
use crate::interrupt::Event;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::ring::IncomingPacket;
use crate::ring::IncomingRing;
use crate::ring::OutgoingPacket;
use crate::ring::OutgoingRing;
use crate::ring::PagedRingMem;
use crate::ring::RingError;
use crate::ring::RingMemError;
use crate::ring::TryWriteError;

/// A channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The ring GPADL cannot hold the rings.
    #[error("bad ring GPADL")]
    Gpadl(#[from] GpadlError),
    /// The ring pages are unusable.
    #[error("bad ring memory")]
    RingMem(#[from] RingMemError),
    /// A ring failed (the peer corrupted it).
    #[error("ring failed")]
    Ring(#[from] RingError),
    /// The packet can never fit the ring.
    #[error("packet of {0} bytes is too large for the ring")]
    TooLarge(usize),
}

/// Which end of the channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host (device) end: reads the first ring of the GPADL, writes the second.
    Host,
    /// The guest end: writes the first ring, reads the second.
    Guest,
}

/// Both rings of an open channel, with the signal to the peer and the event the peer signals.
#[derive(Debug)]
pub struct RingChannel {
    incoming: IncomingRing<PagedRingMem>,
    outgoing: OutgoingRing<PagedRingMem>,
    signal_peer: Interrupt,
    event: Event,
}

impl RingChannel {
    /// Attaches to the rings in `gpadl` (the host-to-guest ring starts `ring_offset` pages in).
    ///
    /// Indices are taken from the control pages, so attaching to rings in use (after a
    /// restore) continues where they stopped.
    pub fn new(
        side: Side,
        mem: &GuestMemory,
        gpadl: &Gpadl,
        ring_offset: u32,
        signal_peer: Interrupt,
        event: Event,
    ) -> Result<Self, ChannelError> {
        let (guest_to_host, host_to_guest) = gpadl.ring_pages(ring_offset)?;
        let (incoming, outgoing) = match side {
            Side::Host => (guest_to_host, host_to_guest),
            Side::Guest => (host_to_guest, guest_to_host),
        };
        Ok(Self {
            incoming: IncomingRing::new(PagedRingMem::new(mem.clone(), incoming)?)?,
            outgoing: OutgoingRing::new(PagedRingMem::new(mem.clone(), outgoing)?)?,
            signal_peer,
            event,
        })
    }

    /// The event the peer signals (new packets or freed space).
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Reads a packet if one is ready, signalling the peer if it waits for space.
    pub fn try_recv(&mut self) -> Result<Option<IncomingPacket>, ChannelError> {
        match self.incoming.try_read()? {
            Some((packet, signal)) => {
                if signal {
                    self.signal_peer.deliver();
                }
                Ok(Some(packet))
            }
            None => Ok(None),
        }
    }

    /// Waits for the next packet.
    pub async fn recv(&mut self) -> Result<IncomingPacket, ChannelError> {
        loop {
            if let Some(packet) = self.try_recv()? {
                return Ok(packet);
            }
            self.event.wait().await;
        }
    }

    /// Writes a packet, waiting for space if the ring is full.
    pub async fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        loop {
            match self.outgoing.try_write(packet) {
                Ok(outcome) => {
                    if outcome.signal_peer {
                        self.signal_peer.deliver();
                    }
                    return Ok(());
                }
                // The reader signals once it frees what we asked for; the event is sticky,
                // so a signal between the attempt and the wait is not lost.
                Err(TryWriteError::Full { .. }) => self.event.wait().await,
                Err(TryWriteError::TooLarge(n)) => return Err(ChannelError::TooLarge(n)),
                Err(TryWriteError::Ring(err)) => return Err(err.into()),
            }
        }
    }

    /// Replaces the interrupt used to signal the peer (after the peer was restored).
    pub fn set_signal_peer(&mut self, signal_peer: Interrupt) {
        self.signal_peer = signal_peer;
    }
}
