//! An opened channel's two rings plus its signals: async send and receive for either end.
//!
//! The host and the guest build the same [`RingChannel`] from the ring GPADL; they only
//! disagree on which half is incoming. A corrupt ring fails this channel's operations and
//! nothing else.
//!
//! Receiving is peek, then commit ([`RingChannel::peek`], [`RingChannel::commit`]): the
//! packet is copied once into a buffer the channel keeps and lent out in place, so the
//! steady-state receive path neither allocates nor zero-fills, and a packet is consumed only
//! once it has been handled. [`RingChannel::recv`] is the convenience form that returns an
//! owned copy (and so allocates).

use crate::gpadl::Gpadl;
use crate::gpadl::GpadlError;
use crate::interrupt::Event;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemory;
use crate::ring::IncomingPacket;
use crate::ring::IncomingRing;
use crate::ring::OutgoingPacket;
use crate::ring::OutgoingRing;
use crate::ring::PacketView;
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
    /// restore) continues where they stopped, with packets peeked but not committed still
    /// to read. The host side attaches its writer with [`OutgoingRing::attach_host`] (feature
    /// bit set, stale pending-send request cleared), which is why a restored host must build
    /// its channel again through this function.
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
        let outgoing = PagedRingMem::new(mem.clone(), outgoing)?;
        let outgoing = match side {
            Side::Host => OutgoingRing::attach_host(outgoing)?,
            Side::Guest => OutgoingRing::new(outgoing)?,
        };
        Ok(Self {
            incoming: IncomingRing::new(PagedRingMem::new(mem.clone(), incoming)?)?,
            outgoing,
            signal_peer,
            event,
        })
    }

    /// The event the peer signals (new packets or freed space).
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Lends the next packet in place if one is ready, without consuming it.
    ///
    /// The view stays valid until the next call that takes `&mut self`; until
    /// [`RingChannel::commit`], peeking again returns the same packet.
    pub fn try_peek(&mut self) -> Result<Option<PacketView<'_>>, ChannelError> {
        Ok(self.incoming.peek()?)
    }

    /// Waits for the next packet and lends it in place, without consuming it.
    pub async fn peek(&mut self) -> Result<PacketView<'_>, ChannelError> {
        let peeked = loop {
            if let Some(peeked) = self.incoming.fill()? {
                break peeked;
            }
            // The event is sticky: a signal between the attempt and the wait is not lost.
            self.event.wait().await;
        };
        Ok(self.incoming.view(peeked))
    }

    /// The packet peeked and not yet committed, if any.
    pub fn peeked(&self) -> Option<PacketView<'_>> {
        self.incoming.peeked()
    }

    /// Consumes the peeked packet (frees its ring space), signalling the peer if it waits for
    /// that space. Does nothing if no packet is peeked.
    pub fn commit(&mut self) -> Result<(), ChannelError> {
        if self.incoming.commit()? {
            self.signal_peer.deliver();
        }
        Ok(())
    }

    /// Copies the next packet into `packet` (reusing its buffer) and consumes it; false if
    /// the ring is empty.
    pub fn try_recv_into(&mut self, packet: &mut IncomingPacket) -> Result<bool, ChannelError> {
        let Some(view) = self.try_peek()? else {
            return Ok(false);
        };
        view.copy_into(packet);
        self.commit()?;
        Ok(true)
    }

    /// Reads a packet into a new owned [`IncomingPacket`] if one is ready and consumes it.
    pub fn try_recv(&mut self) -> Result<Option<IncomingPacket>, ChannelError> {
        let mut packet = IncomingPacket::default();
        Ok(self.try_recv_into(&mut packet)?.then_some(packet))
    }

    /// Waits for the next packet, returns an owned copy and consumes it.
    pub async fn recv(&mut self) -> Result<IncomingPacket, ChannelError> {
        let packet = self.peek().await?.to_packet();
        self.commit()?;
        Ok(packet)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpadl::build_request;
    use crate::memory::PAGE_SIZE;
    use crate::protocol::GpadlId;
    use crate::ring::ControlWord;
    use crate::ring::RingMem;
    use futures::FutureExt;

    /// A ring GPADL over pages 0..8: guest-to-host ring in pages 0..4, host-to-guest in 4..8,
    /// both initialized by the guest as Linux does.
    struct Rings {
        mem: GuestMemory,
        gpadl: Gpadl,
        guest_to_host: PagedRingMem,
        host_to_guest: PagedRingMem,
        /// Signalled by the host (the guest's interrupt).
        guest_event: Event,
    }

    const RING_OFFSET: u32 = 4;

    impl Rings {
        fn new() -> Self {
            let mem = GuestMemory::new(16 * PAGE_SIZE).unwrap();
            let pfns: Vec<u64> = (0..8).collect();
            let request = build_request(GpadlId(1), [(0, 8 * PAGE_SIZE as u32, &pfns[..])]);
            let gpadl = Gpadl::new(&request, &mem).unwrap();
            let guest_to_host = PagedRingMem::new(mem.clone(), &pfns[..4]).unwrap();
            let host_to_guest = PagedRingMem::new(mem.clone(), &pfns[4..]).unwrap();
            guest_to_host.initialize().unwrap();
            host_to_guest.initialize().unwrap();
            Self {
                mem,
                gpadl,
                guest_to_host,
                host_to_guest,
                guest_event: Event::new(),
            }
        }

        /// The host end, attached (again) as after an open or a restore.
        fn host(&self) -> RingChannel {
            RingChannel::new(
                Side::Host,
                &self.mem,
                &self.gpadl,
                RING_OFFSET,
                Interrupt::from_event(self.guest_event.clone()),
                Event::new(),
            )
            .unwrap()
        }

        fn guest(&self) -> RingChannel {
            RingChannel::new(
                Side::Guest,
                &self.mem,
                &self.gpadl,
                RING_OFFSET,
                Interrupt::null(),
                self.guest_event.clone(),
            )
            .unwrap()
        }
    }

    fn send_now(channel: &mut RingChannel, tid: u64, payload: &[u8]) {
        channel
            .send(&OutgoingPacket::in_band(tid, true, &[payload]))
            .now_or_never()
            .expect("ring has room")
            .unwrap();
    }

    #[test]
    fn host_attach_touches_only_the_host_to_guest_ring_control() {
        let rings = Rings::new();
        rings
            .host_to_guest
            .store_control(ControlWord::FeatureBits, 0)
            .unwrap();
        rings
            .host_to_guest
            .store_control(ControlWord::PendingSendSize, 512)
            .unwrap();
        rings
            .guest_to_host
            .store_control(ControlWord::PendingSendSize, 256)
            .unwrap();
        let _host = rings.host();
        let h2g = &rings.host_to_guest;
        assert_eq!(h2g.load_control(ControlWord::FeatureBits).unwrap(), 1);
        assert_eq!(h2g.load_control(ControlWord::PendingSendSize).unwrap(), 0);
        // The guest's own request on its ring is kept.
        assert_eq!(
            rings
                .guest_to_host
                .load_control(ControlWord::PendingSendSize)
                .unwrap(),
            256
        );
    }

    #[test]
    fn request_read_but_not_answered_survives_reattach() {
        let rings = Rings::new();
        let mut guest = rings.guest();
        let mut host = rings.host();
        send_now(&mut guest, 7, b"request");
        let view = host.try_peek().unwrap().unwrap();
        assert_eq!(view.transaction_id, 7);
        // The device stops before answering; the host side is saved and restored.
        drop(host);
        let mut host = rings.host();
        let view = host.try_peek().unwrap().unwrap();
        assert_eq!(
            (view.transaction_id, &view.data()[..7]),
            (7, &b"request"[..])
        );
        host.send(&OutgoingPacket::completion(7, &[b"answer"]))
            .now_or_never()
            .unwrap()
            .unwrap();
        host.commit().unwrap();
        assert!(host.try_peek().unwrap().is_none());
        let reply = guest.try_recv().unwrap().unwrap();
        assert_eq!(&reply.data()[..6], b"answer");
    }

    #[test]
    fn guest_blocked_on_a_full_ring_is_woken_by_the_restored_host() {
        let rings = Rings::new();
        let mut guest = rings.guest();
        let big = vec![0x11u8; 4000];
        let mut sent = 0u64;
        // Fill the guest-to-host ring (3 data pages) until the guest would block.
        loop {
            let payload = [big.as_slice()];
            let packet = OutgoingPacket::in_band(sent, false, &payload);
            if guest.send(&packet).now_or_never().is_none() {
                break;
            }
            sent += 1;
        }
        assert_eq!(sent, 3);
        assert!(!rings.guest_event.try_wait());
        // Restore: the host attaches while the guest waits with its request set.
        let mut host = rings.host();
        assert_eq!(host.try_peek().unwrap().unwrap().transaction_id, 0);
        host.commit().unwrap();
        assert!(rings.guest_event.try_wait(), "the commit wakes the guest");
        // The guest's retry now fits.
        send_now(&mut guest, 9, &big);
    }

    #[test]
    fn async_peek_waits_for_a_packet_and_lends_it_in_place() {
        let rings = Rings::new();
        let mut guest = rings.guest();
        let host_event = Event::new();
        let mut host = RingChannel::new(
            Side::Host,
            &rings.mem,
            &rings.gpadl,
            RING_OFFSET,
            Interrupt::null(),
            host_event.clone(),
        )
        .unwrap();
        assert!(
            host.peek().now_or_never().is_none(),
            "empty ring: peek waits"
        );
        send_now(&mut guest, 1, b"one");
        host_event.signal();
        let first = host.peek().now_or_never().unwrap().unwrap().data().as_ptr();
        host.commit().unwrap();
        send_now(&mut guest, 2, b"two");
        let view = host.peek().now_or_never().unwrap().unwrap();
        assert_eq!(&view.data()[..3], b"two");
        assert_eq!(view.data().as_ptr(), first, "one buffer, reused");
        assert_eq!(host.peeked().unwrap().transaction_id, 2);
        host.commit().unwrap();
        assert!(host.peeked().is_none());
    }

    #[test]
    fn recv_into_reuses_the_callers_packet() {
        let rings = Rings::new();
        let mut guest = rings.guest();
        let mut host = rings.host();
        let mut packet = IncomingPacket::default();
        assert!(!host.try_recv_into(&mut packet).unwrap());
        send_now(&mut guest, 4, b"four");
        assert!(host.try_recv_into(&mut packet).unwrap());
        assert_eq!(
            (packet.transaction_id, &packet.data()[..4]),
            (4, &b"four"[..])
        );
        assert!(host.try_peek().unwrap().is_none());
    }
}
