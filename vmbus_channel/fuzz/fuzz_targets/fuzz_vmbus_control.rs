//! The server's control-message handler against a hostile guest and unpredictable devices:
//! arbitrary message bytes (mostly well-formed headers with arbitrary bodies, so the fuzzer
//! reaches the state machine rather than the parser), device answers in any order with any
//! outcome, revokes and reoffers. Never a panic, every invariant after every step, and after
//! the guest unloads and the devices answer, nothing is left open or held.

#![forbid(unsafe_code)]
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::control::Message;
use vmbus_channel::control::MessageBuf;
use vmbus_channel::protocol::host_offer;
use vmbus_channel::server::channels::Connection;
use vmbus_channel::server::channels::ControlState;
use vmbus_channel::server::channels::DeviceAction;
use vmbus_channel::server::channels::DeviceResult;
use vmbus_channel::server::channels::OfferId;
use vmbus_channel::server::channels::Output;

#[derive(Debug, Arbitrary)]
enum Step {
    /// A message with this type code and body (the body is cut to fit 240 bytes).
    Message {
        message_type: u8,
        body: Vec<u8>,
    },
    /// Raw bytes.
    Raw(Vec<u8>),
    /// The device answers its oldest (or newest) request.
    Answer {
        newest: bool,
        accept: bool,
        status: i32,
    },
    Revoke(u8),
    Reoffer(u8),
}

struct Sim {
    state: ControlState,
    queue: VecDeque<(OfferId, u64, DeviceAction)>,
    offers: [Option<OfferId>; 4],
}

impl Sim {
    fn apply(&mut self, out: Vec<Output>) {
        for o in out {
            if let Output::Device {
                offer,
                generation,
                action,
            } = o
            {
                self.queue.push_back((offer, generation, action));
            }
        }
        if let Err(e) = self.state.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }

    fn offer(&mut self, i: u8) {
        let params = OfferParams {
            interface_id: Uuid::from_u128(7),
            instance_id: Uuid::from_u128(u128::from(i)),
            subchannel_index: u16::from(i % 2),
            ..Default::default()
        };
        let mut out = Vec::new();
        if let Ok((id, _)) = self
            .state
            .offer(params.key(), host_offer(&params), &mut out)
        {
            self.offers[usize::from(i) % 4] = Some(id);
        }
        self.apply(out);
    }

    fn guest(&mut self, bytes: &[u8]) {
        let mut out = Vec::new();
        self.state.handle_guest_message(bytes, &mut out);
        self.apply(out);
    }

    fn answer(&mut self, newest: bool, accept: bool, status: i32) -> bool {
        let next = if newest {
            self.queue.pop_back()
        } else {
            self.queue.pop_front()
        };
        let Some((offer, generation, action)) = next else {
            return false;
        };
        let result = match action {
            DeviceAction::Open { .. } => DeviceResult::Opened(accept),
            DeviceAction::Close => DeviceResult::Closed,
            DeviceAction::Gpadl(r) => DeviceResult::GpadlCreated(r.id, accept),
            DeviceAction::TeardownGpadl(id) => DeviceResult::GpadlTornDown(id),
            DeviceAction::Modify(_) => DeviceResult::Modified(status),
        };
        let mut out = Vec::new();
        self.state.device_done(offer, generation, result, &mut out);
        self.apply(out);
        true
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut sim = Sim {
        state: ControlState::new(true),
        queue: VecDeque::new(),
        offers: [None; 4],
    };
    for i in 0..3 {
        sim.offer(i);
    }
    for step in steps.into_iter().take(256) {
        match step {
            Step::Message { message_type, body } => {
                let mut m = u32::from(message_type % 26).to_le_bytes().to_vec();
                m.extend_from_slice(&[0; 4]);
                m.extend_from_slice(&body);
                m.truncate(240);
                sim.guest(&m);
            }
            Step::Raw(bytes) => sim.guest(&bytes),
            Step::Answer {
                newest,
                accept,
                status,
            } => {
                sim.answer(newest, accept, status);
            }
            Step::Revoke(i) => {
                if let Some(offer) = sim.offers[usize::from(i) % 4] {
                    let mut out = Vec::new();
                    sim.state.revoke(offer, &mut out);
                    sim.apply(out);
                }
            }
            Step::Reoffer(i) => sim.offer(i % 4),
        }
    }
    // Converge.
    while sim.answer(false, true, 0) {}
    if sim.state.connection() != Connection::Disconnected {
        let unload: MessageBuf = Message::Unload.encode();
        sim.guest(unload.as_bytes());
        while sim.answer(false, true, 0) {}
    }
    assert_eq!(sim.state.connection(), Connection::Disconnected);
    assert_eq!(sim.state.gpadl_count(), 0);
});
