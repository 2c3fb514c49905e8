//! Shared driver: a real backend, a raw (hostile) frontend whose shared pages and event
//! channel the fuzzer controls, everything polled deterministically on one thread.

use arbitrary::Arbitrary;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::page::PAGE_SIZE;
use vtpm_ring::page::PageIo;
use vtpm_ring::protocol::PacketKind;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::RawFrontend;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::read_state;

/// TPM2_Startup(CLEAR).
const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
/// TPM2_GetRandom(8).
pub const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

/// What the hostile frontend does.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Write bytes into one of its shared pages.
    Write {
        page: u8,
        offset: u16,
        data: Vec<u8>,
    },
    /// Write one little-endian u32 (lengths, sizes, refs).
    Word { page: u8, offset: u16, value: u32 },
    /// Set the v2 state byte.
    State(u8),
    /// Ring the doorbell.
    Notify,
    /// Let the backend and manager run until they stall.
    Run,
    /// Submit a well-formed GetRandom the protocol's way and notify.
    Valid,
    /// Submit these bytes as a control request, tagged the protocol's way, and notify (a
    /// shortcut to the control path; raw writes can tag requests too).
    Control(Vec<u8>),
}

/// The running system.
pub struct Harness {
    pool: LocalPool,
    bed: Testbed,
    pub raw: RawFrontend,
    pub version: ProtocolVersion,
    /// `feature-vtpm-control` negotiated.
    pub control: bool,
    /// v1 with control: the last request number used.
    number: u8,
    state_of_backend: Box<dyn Fn() -> XenbusState>,
}

impl Harness {
    pub fn new(version: ProtocolVersion, control: bool) -> Harness {
        let (bed, run) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let raw = RawFrontend::publish_with(&guest, version, control).unwrap();
        let mut pool = LocalPool::new();
        pool.spawner().spawn_local(run).unwrap();
        pool.run_until_stalled();
        let store = bed.backend.store();
        let dir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        let state_of_backend = Box::new(move || read_state(&store, &dir));
        assert_eq!(state_of_backend(), XenbusState::CONNECTED);
        Harness {
            pool,
            bed,
            raw,
            version,
            control,
            number: 0,
            state_of_backend,
        }
    }

    pub fn run(&mut self) {
        self.pool.run_until_stalled();
    }

    fn page(&self, index: u8) -> &vtpm_ring::page::OwnPage {
        &self.raw.pages[usize::from(index) % self.raw.pages.len()]
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { page, offset, data } => {
                let offset = usize::from(*offset) % PAGE_SIZE;
                let len = data.len().min(PAGE_SIZE - offset);
                self.page(*page).write(offset, &data[..len]).unwrap();
            }
            Op::Word {
                page,
                offset,
                value,
            } => {
                let offset = usize::from(*offset) % (PAGE_SIZE - 3);
                self.page(*page)
                    .write(offset, &value.to_le_bytes())
                    .unwrap();
            }
            Op::State(s) => self.raw.pages[0].store_u8(4, *s).unwrap(),
            Op::Notify => {
                let _ = self.raw.event.notify();
            }
            Op::Run => self.run(),
            Op::Valid => {
                self.submit(PacketKind::TPM_COMMAND, &GET_RANDOM_8);
            }
            Op::Control(bytes) => {
                let len = bytes.len().min(PAGE_SIZE - 12);
                self.submit(PacketKind::CONTROL, &bytes[..len]);
            }
        }
    }

    /// Writes a request of `kind` (restoring the layout it needs) and notifies. `packet` fits
    /// one page.
    fn submit(&mut self, kind: PacketKind, packet: &[u8]) {
        let shared = &self.raw.pages[0];
        match self.version {
            ProtocolVersion::V2 => {
                // Packet offset is fixed at connect time: 8 + 4 * 1 extra page.
                shared.write(12, packet).unwrap();
                shared
                    .write(0, &(packet.len() as u32).to_le_bytes())
                    .unwrap();
                shared.write(5, &[0, kind.0]).unwrap();
                shared.store_u8(4, 1).unwrap();
            }
            ProtocolVersion::V1 => {
                for (i, g) in self.raw.grants.iter().skip(1).enumerate() {
                    shared.write(i * 16 + 8, &g.0.to_le_bytes()).unwrap();
                    let size = if i == 0 { packet.len() as u16 } else { 0 };
                    shared.write(i * 16 + 14, &size.to_le_bytes()).unwrap();
                }
                // Numbered, as our frontend always is: a number that differs from the
                // field's current value and from the harness's own last request. The
                // backend may still have taken another one (the fuzzer's, rung and then
                // overwritten); `submit_answered` asks again with a fresh number then.
                let mut tag = [0u8; 2];
                shared.read(12, &mut tag).unwrap();
                let mut number = vtpm_ring::protocol::v1::next_request_number(tag[1]);
                if number == self.number {
                    number = vtpm_ring::protocol::v1::next_request_number(number);
                }
                self.number = number;
                shared.write(12, &[kind.0, self.number]).unwrap();
                self.raw.pages[1].write(0, packet).unwrap();
            }
        }
        let _ = self.raw.event.notify();
    }

    /// Submits and runs; on v1, once more if it went unanswered: numbering ignores a doorbell
    /// whose number the backend took last, and the fuzzer can have rung with the number
    /// chosen here and then overwritten the field. One more number cannot be that one too.
    fn submit_answered(&mut self, kind: PacketKind, packet: &[u8]) {
        self.submit(kind, packet);
        self.run();
        if self.version == ProtocolVersion::V1 && self.packet_in_pages() == packet {
            self.submit(kind, packet);
            self.run();
        }
    }

    /// The bytes of the packet in the shared pages, as the frontend would read them.
    fn packet_in_pages(&self) -> Vec<u8> {
        let shared = &self.raw.pages[0];
        match self.version {
            ProtocolVersion::V2 => {
                let mut len = [0u8; 4];
                shared.read(0, &mut len).unwrap();
                let len = (u32::from_le_bytes(len) as usize).min(PAGE_SIZE - 12);
                let mut r = vec![0u8; len];
                shared.read(12, &mut r).unwrap();
                r
            }
            ProtocolVersion::V1 => {
                let mut size = [0u8; 2];
                shared.read(14, &mut size).unwrap();
                let len = usize::from(u16::from_le_bytes(size)).min(PAGE_SIZE);
                let mut r = vec![0u8; len];
                self.raw.pages[1].read(0, &mut r).unwrap();
                r
            }
        }
    }

    /// Liveness: after any history, a well-formed request is answered with success; and a
    /// doorbell after that exchange announces nothing (the backend never takes its own
    /// response for a command).
    pub fn check_still_serves(&mut self) {
        self.run();
        assert_eq!((self.state_of_backend)(), XenbusState::CONNECTED);
        if self.control {
            // The fuzzer may have stopped or shut the TPM down through the ring: power it on
            // again the same way, as a VMM would after a reset.
            const INIT: [u8; 8] = [0, 0, 0, 2, 0, 0, 0, 1];
            self.submit_answered(PacketKind::CONTROL, &INIT);
            assert_eq!(
                self.packet_in_pages(),
                [0, 0, 0, 0],
                "INIT through the ring failed"
            );
            self.submit(PacketKind::TPM_COMMAND, &STARTUP_CLEAR);
            self.run();
        }
        self.submit_answered(PacketKind::TPM_COMMAND, &GET_RANDOM_8);
        if self.version == ProtocolVersion::V2 {
            let state = self.raw.pages[0].load_u8(4).unwrap();
            assert_eq!(state, 2, "backend did not FINISH");
        }
        let response = self.packet_in_pages();
        assert_eq!(
            response.len(),
            10 + 2 + 8,
            "unexpected response {response:02x?}"
        );
        assert_eq!(
            &response[6..10],
            &[0, 0, 0, 0],
            "GetRandom failed: {response:02x?}"
        );

        let requests = self.bed.stats.snapshot().requests;
        let _ = self.raw.event.notify();
        self.run();
        assert_eq!(
            self.bed.stats.snapshot().requests,
            requests,
            "a spurious doorbell reached the engine"
        );
        assert_eq!(
            self.packet_in_pages(),
            response,
            "the response was overwritten"
        );
    }
}
