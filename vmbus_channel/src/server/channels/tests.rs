//! The state machine against hostile guests: each refusal named in the issue, then a
//! property test over arbitrary message sequences that must neither panic, nor break an
//! invariant, nor leave anything behind after an unload.

use super::*;
use crate::bus::OfferParams;
use crate::control::GpadlBody;
use crate::control::GpadlHeader;
use crate::control::InitiateContact;
use crate::control::MessageType;
use crate::protocol::host_offer;
use proptest::prelude::*;
use std::collections::VecDeque;
use zerocopy::little_endian::U64;

/// The state machine with a scripted device: device requests queue up and are answered
/// when the test says so.
struct Sim {
    state: ControlState,
    to_guest: VecDeque<Vec<u8>>,
    device_queue: VecDeque<(OfferId, u64, DeviceAction)>,
    accept: bool,
}

impl Sim {
    fn new() -> Self {
        Self {
            state: ControlState::new(false),
            to_guest: VecDeque::new(),
            device_queue: VecDeque::new(),
            accept: true,
        }
    }

    fn apply(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Guest(m) => self.to_guest.push_back(m.as_bytes().to_vec()),
                Output::Device {
                    offer,
                    generation,
                    action,
                } => self.device_queue.push_back((offer, generation, action)),
                Output::ClearHostEvent(_) => {}
            }
        }
        self.state.check_invariants().unwrap();
    }

    fn offer(&mut self, instance: u128) -> OfferId {
        let params = OfferParams {
            interface_id: Uuid::from_u128(0xabc),
            instance_id: Uuid::from_u128(instance),
            ..Default::default()
        };
        let mut out = Vec::new();
        let (id, _) = self
            .state
            .offer(params.key(), host_offer(&params), &mut out)
            .unwrap();
        self.apply(out);
        id
    }

    fn guest(&mut self, m: &Message<'_>) {
        self.guest_bytes(m.encode().as_bytes());
    }

    fn guest_bytes(&mut self, bytes: &[u8]) {
        let mut out = Vec::new();
        self.state.handle_guest_message(bytes, &mut out);
        self.apply(out);
    }

    /// Answers the oldest device request.
    fn answer_one(&mut self) -> bool {
        let Some((offer, generation, action)) = self.device_queue.pop_front() else {
            return false;
        };
        let result = match action {
            DeviceAction::Open { .. } => DeviceResult::Opened(self.accept),
            DeviceAction::Close => DeviceResult::Closed,
            DeviceAction::Gpadl(r) => DeviceResult::GpadlCreated(r.id, self.accept),
            DeviceAction::TeardownGpadl(id) => DeviceResult::GpadlTornDown(id),
            DeviceAction::Modify(_) => DeviceResult::Modified(0),
        };
        let mut out = Vec::new();
        self.state.device_done(offer, generation, result, &mut out);
        self.apply(out);
        true
    }

    fn answer_all(&mut self) {
        while self.answer_one() {}
    }

    fn take(&mut self) -> Vec<Vec<u8>> {
        self.to_guest.drain(..).collect()
    }

    fn types(&mut self) -> Vec<MessageType> {
        self.take()
            .iter()
            .map(|m| Message::parse(m).unwrap().message_type())
            .collect()
    }

    fn connect(&mut self) {
        self.guest(&Message::InitiateContact(InitiateContact {
            version_requested: Version::IRON.0.into(),
            target_message_vp: 0.into(),
            interrupt_page_or_target_info: 2.into(),
            parent_to_child_monitor_page_gpa: 0.into(),
            child_to_parent_monitor_page_gpa: 0.into(),
        }));
        self.guest(&Message::RequestOffers);
        self.take();
    }

    fn gpadl(&mut self, channel_id: u32, id: u32, pfns: &[u64]) {
        let request =
            crate::gpadl::build_request(GpadlId(id), [(0, (pfns.len() * 4096) as u32, pfns)]);
        for m in control::gpadl::GpadlMessages::new(channel_id, &request).unwrap() {
            self.guest_bytes(m.as_bytes());
        }
    }

    fn open(&mut self, channel_id: u32, gpadl: u32) {
        self.guest(&Message::OpenChannel(control::OpenChannel {
            channel_id: channel_id.into(),
            open_id: 9.into(),
            ring_buffer_gpadl_id: gpadl.into(),
            target_vp: 0.into(),
            downstream_ring_buffer_page_offset: 2.into(),
            user_data: UserDefinedDataZero::ZERO,
        }));
    }

    fn status_of(&mut self, message_type: MessageType) -> Option<u32> {
        let offset = match message_type {
            MessageType::GPADL_CREATED | MessageType::OPEN_CHANNEL_RESULT => 16,
            MessageType::MODIFY_CHANNEL_RESPONSE => 12,
            _ => return None,
        };
        self.take().iter().find_map(|m| {
            (u32::from_le_bytes(m[..4].try_into().unwrap()) == message_type.0)
                .then(|| u32::from_le_bytes(m[offset..offset + 4].try_into().unwrap()))
        })
    }
}

use crate::protocol::UserDefinedData as UserDefinedDataZero;
use uuid::Uuid;

const FAILED: u32 = control::STATUS_UNSUCCESSFUL.cast_unsigned();

fn connected_with_channel() -> (Sim, OfferId, u32) {
    let mut sim = Sim::new();
    let offer = sim.offer(1);
    sim.connect();
    let channel_id = sim.state.channel_id(offer).unwrap();
    (sim, offer, channel_id)
}

#[test]
fn channel_opens_and_closes_through_the_table() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2, 3, 4]);
    sim.answer_all();
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(0));
    sim.open(ch, 1);
    assert!(matches!(
        sim.state.channel_state(offer),
        Some(ChannelState::Opening(_))
    ));
    sim.answer_all();
    assert_eq!(sim.status_of(MessageType::OPEN_CHANNEL_RESULT), Some(0));
    sim.guest(&Message::CloseChannel(ChannelIdBody {
        channel_id: ch.into(),
    }));
    assert!(matches!(
        sim.state.channel_state(offer),
        Some(ChannelState::Closing(_))
    ));
    sim.answer_all();
    assert_eq!(sim.state.channel_state(offer), Some(&ChannelState::Closed));
}

#[test]
fn unknown_channel_id_is_refused_everywhere() {
    let (mut sim, _, _) = connected_with_channel();
    sim.gpadl(999, 1, &[1]);
    sim.open(999, 1);
    sim.guest(&Message::CloseChannel(ChannelIdBody {
        channel_id: 999.into(),
    }));
    sim.guest(&Message::ModifyChannel(control::ModifyChannel {
        channel_id: 999.into(),
        target_vp: 1.into(),
    }));
    sim.guest(&Message::RelIdReleased(ChannelIdBody {
        channel_id: 999.into(),
    }));
    sim.guest(&Message::GpadlTeardown(control::GpadlTeardown {
        channel_id: 999.into(),
        gpadl_id: 1.into(),
    }));
    assert!(sim.device_queue.is_empty(), "nothing reached a device");
    assert_eq!(sim.state.gpadl_count(), 0);
}

#[test]
fn duplicate_gpadl_id_fails_only_the_newcomer() {
    let (mut sim, _, ch) = connected_with_channel();
    sim.gpadl(ch, 7, &[1, 2]);
    sim.answer_all();
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(0));
    sim.gpadl(ch, 7, &[3]);
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(FAILED));
    assert_eq!(sim.state.gpadl_count(), 1);
    // The first is intact: it can be torn down.
    sim.guest(&Message::GpadlTeardown(control::GpadlTeardown {
        channel_id: ch.into(),
        gpadl_id: 7.into(),
    }));
    sim.answer_all();
    assert_eq!(sim.types(), [MessageType::GPADL_TORNDOWN]);
    assert_eq!(sim.state.gpadl_count(), 0);
}

#[test]
fn gpadl_body_without_header_is_dropped() {
    let (mut sim, _, _) = connected_with_channel();
    let words = [U64::new(5); 3];
    sim.guest(&Message::GpadlBody(
        GpadlBody {
            message_number: 1.into(),
            gpadl_id: 3.into(),
        },
        &words,
    ));
    assert!(sim.take().is_empty());
    assert_eq!(sim.state.gpadl_count(), 0);
}

#[test]
fn open_of_an_unaccepted_gpadl_is_refused() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2, 3, 4]);
    // The device has not answered the GPADL yet.
    sim.open(ch, 1);
    assert_eq!(
        sim.status_of(MessageType::OPEN_CHANNEL_RESULT),
        Some(FAILED)
    );
    assert_eq!(sim.state.channel_state(offer), Some(&ChannelState::Closed));
    // Nor a GPADL the device rejected.
    sim.accept = false;
    sim.answer_all();
    sim.take();
    sim.open(ch, 1);
    assert_eq!(
        sim.status_of(MessageType::OPEN_CHANNEL_RESULT),
        Some(FAILED)
    );
}

#[test]
fn counts_too_large_for_the_message_are_refused() {
    let (mut sim, _, ch) = connected_with_channel();
    let header = |len: u16, count: u16| GpadlHeader {
        channel_id: ch.into(),
        gpadl_id: 4.into(),
        len: len.into(),
        count: count.into(),
    };
    // Announces 100 words but the header is not full.
    sim.guest(&Message::GpadlHeader(
        header(800, 1),
        &[U64::new(4096), U64::new(1)],
    ));
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(FAILED));
    // Carries more words than it announces.
    sim.guest(&Message::GpadlHeader(
        header(8, 1),
        &[U64::new(4096), U64::new(1)],
    ));
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(FAILED));
    // Five ranges announced, one present.
    sim.guest(&Message::GpadlHeader(
        header(16, 5),
        &[U64::new(4096), U64::new(1)],
    ));
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(FAILED));
    // A body that carries more than remains.
    let full = [U64::new(0); GpadlHeader::MAX_WORDS];
    sim.guest(&Message::GpadlHeader(header(30 * 8, 1), &full));
    let body = [U64::new(0); 5];
    sim.guest(&Message::GpadlBody(
        GpadlBody {
            message_number: 1.into(),
            gpadl_id: 4.into(),
        },
        &body,
    ));
    assert_eq!(sim.status_of(MessageType::GPADL_CREATED), Some(FAILED));
    assert_eq!(sim.state.gpadl_count(), 0);
    assert!(sim.device_queue.is_empty());
}

#[test]
fn gpadls_are_bounded() {
    let (mut sim, _, ch) = connected_with_channel();
    // Headers that promise bodies and never send them.
    let full = [U64::new(0); GpadlHeader::MAX_WORDS];
    for id in 0..(MAX_GPADLS as u32 + 10) {
        sim.guest(&Message::GpadlHeader(
            GpadlHeader {
                channel_id: ch.into(),
                gpadl_id: id.into(),
                len: 4000.into(),
                count: 1.into(),
            },
            &full,
        ));
    }
    assert_eq!(sim.state.gpadl_count(), MAX_GPADLS);
    // Unload releases them all.
    sim.guest(&Message::Unload);
    assert_eq!(sim.state.gpadl_count(), 0);
    assert_eq!(sim.state.connection(), Connection::Disconnected);
}

#[test]
fn messages_out_of_order_are_refused_without_effect() {
    let mut sim = Sim::new();
    let offer = sim.offer(1);
    let ch = sim.state.channel_id(offer).unwrap();
    // Before contact.
    sim.guest(&Message::RequestOffers);
    sim.open(ch, 1);
    sim.gpadl(ch, 1, &[1]);
    assert!(sim.take().is_empty());
    sim.connect();
    // Offers twice.
    sim.guest(&Message::RequestOffers);
    assert!(sim.take().is_empty());
    // Close and modify of a channel that is not open; release of one not revoked.
    sim.guest(&Message::CloseChannel(ChannelIdBody {
        channel_id: ch.into(),
    }));
    sim.guest(&Message::ModifyChannel(control::ModifyChannel {
        channel_id: ch.into(),
        target_vp: 2.into(),
    }));
    assert_eq!(
        sim.status_of(MessageType::MODIFY_CHANNEL_RESPONSE),
        Some(FAILED)
    );
    sim.guest(&Message::RelIdReleased(ChannelIdBody {
        channel_id: ch.into(),
    }));
    // Host-to-guest messages sent by the guest.
    sim.guest(&Message::AllOffersDelivered);
    sim.guest(&Message::UnloadComplete);
    assert!(sim.device_queue.is_empty());
    assert_eq!(sim.state.channel_state(offer), Some(&ChannelState::Closed));
    // A second contact is refused; the connection stays.
    sim.connect();
    assert!(matches!(
        sim.state.connection(),
        Connection::Connected {
            offers_sent: true,
            ..
        }
    ));
}

#[test]
fn unload_during_an_open_closes_after_the_device_answers() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2, 3, 4]);
    sim.answer_all();
    sim.take();
    sim.open(ch, 1);
    sim.guest(&Message::Unload);
    // The open is still with the device: not unloaded yet.
    assert_eq!(sim.state.connection(), Connection::Unloading);
    assert!(sim.take().is_empty());
    sim.answer_all();
    // No OPEN_CHANNEL_RESULT: the guest left. Closed, released, then UNLOAD_COMPLETE.
    assert_eq!(sim.types(), [MessageType::UNLOAD_COMPLETE]);
    assert_eq!(sim.state.channel_state(offer), Some(&ChannelState::Closed));
    assert_eq!(sim.state.gpadl_count(), 0);
}

#[test]
fn revoke_then_release_then_reoffer_gets_a_new_id() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2, 3, 4]);
    sim.answer_all();
    sim.open(ch, 1);
    sim.answer_all();
    sim.take();
    let mut out = Vec::new();
    sim.state.revoke(offer, &mut out);
    sim.apply(out);
    assert_eq!(sim.types(), [MessageType::RESCIND_CHANNEL_OFFER]);
    // The device comes back before the guest released the old id.
    let again = sim.offer(1);
    assert_eq!(again, offer);
    assert_eq!(
        sim.state.channel_state(offer),
        Some(&ChannelState::Reoffered)
    );
    // The guest tears down the GPADL of the revoked channel (answered at once), closes
    // (no-op), releases: the new offer follows with a fresh id.
    sim.guest(&Message::GpadlTeardown(control::GpadlTeardown {
        channel_id: ch.into(),
        gpadl_id: 1.into(),
    }));
    sim.guest(&Message::RelIdReleased(ChannelIdBody {
        channel_id: ch.into(),
    }));
    let types = sim.types();
    assert_eq!(
        types,
        [MessageType::GPADL_TORNDOWN, MessageType::OFFER_CHANNEL]
    );
    assert_ne!(sim.state.channel_id(offer), Some(ch));
}

#[test]
fn stale_answer_from_a_revoked_device_is_ignored() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2]);
    let (o, generation, _) = sim.device_queue.pop_front().unwrap();
    let mut out = Vec::new();
    sim.state.revoke(offer, &mut out);
    sim.apply(out);
    sim.offer(1);
    let mut out = Vec::new();
    sim.state.device_done(
        o,
        generation,
        DeviceResult::GpadlCreated(GpadlId(1), true),
        &mut out,
    );
    sim.apply(out);
    assert_eq!(
        sim.state.channel_state(offer),
        Some(&ChannelState::Reoffered)
    );
}

#[test]
fn save_keeps_pending_requests_and_restore_asks_again() {
    let (mut sim, offer, ch) = connected_with_channel();
    sim.gpadl(ch, 1, &[1, 2, 3, 4]);
    sim.answer_all();
    sim.open(ch, 1);
    sim.answer_all();
    // A GPADL the device has not answered.
    sim.gpadl(ch, 2, &[9]);
    sim.take();
    let saved = sim.state.save();
    let mut restored = ControlState::restore(saved, false);
    assert!(restored.restore_pending());
    let params = OfferParams {
        interface_id: Uuid::from_u128(0xabc),
        instance_id: Uuid::from_u128(1),
        ..Default::default()
    };
    let mut out = Vec::new();
    let (new_offer, _) = restored
        .offer(params.key(), host_offer(&params), &mut out)
        .unwrap();
    assert!(out.is_empty(), "a restored offer is not sent again");
    let r = restored.restore_channel(new_offer, true, &mut out).unwrap();
    assert!(r.open.is_some());
    assert_eq!(
        r.gpadls.iter().map(|g| g.accepted).collect::<Vec<_>>(),
        [true, false]
    );
    assert!(matches!(
        out.as_slice(),
        [Output::Device {
            action: DeviceAction::Gpadl(g),
            ..
        }] if g.id == GpadlId(2)
    ));
    assert!(!restored.restore_pending());
    let _ = offer;
}

/// OPEN_CHANNEL's 6.0 form: the guest's connection id and event flag are used only when
/// the guest negotiated `guest_specified_signal_parameters`.
#[test]
fn guest_signal_parameters_need_the_feature() {
    for with_feature in [true, false] {
        let mut sim = Sim::new();
        let offer = sim.offer(1);
        let features = if with_feature {
            FeatureFlags::new().with_guest_specified_signal_parameters(true)
        } else {
            FeatureFlags::new()
        };
        sim.guest(&Message::InitiateContact2(control::InitiateContact2 {
            base: InitiateContact {
                version_requested: Version::COPPER.0.into(),
                target_message_vp: 0.into(),
                interrupt_page_or_target_info: control::TargetInfo::new()
                    .with_sint(2)
                    .with_feature_flags(features.into_bits())
                    .into_bits()
                    .into(),
                parent_to_child_monitor_page_gpa: 0.into(),
                child_to_parent_monitor_page_gpa: 0.into(),
            },
            client_id: [0; 16],
        }));
        sim.guest(&Message::RequestOffers);
        let ch = sim.state.channel_id(offer).unwrap();
        sim.gpadl(ch, 1, &[1, 2, 3, 4]);
        sim.answer_all();
        sim.take();
        sim.guest(&Message::OpenChannel2(control::OpenChannel2 {
            base: control::OpenChannel {
                channel_id: ch.into(),
                open_id: 1.into(),
                ring_buffer_gpadl_id: 1.into(),
                target_vp: 0.into(),
                downstream_ring_buffer_page_offset: 2.into(),
                user_data: UserDefinedDataZero::ZERO,
            },
            connection_id: 0x1234.into(),
            event_flag: 77.into(),
            flags: 0.into(),
        }));
        let Some((_, _, DeviceAction::Open { open_data, .. })) = sim.device_queue.pop_front()
        else {
            panic!("no open request")
        };
        if with_feature {
            assert_eq!(
                (open_data.connection_id, open_data.event_flag),
                (0x1234, 77)
            );
        } else {
            assert_eq!(open_data.event_flag, ch as u16);
            assert_ne!(open_data.connection_id, 0x1234);
        }
    }
}

#[test]
fn hvsocket_connect_is_refused_with_the_protocol_status() {
    let (mut sim, _, _) = connected_with_channel();
    sim.guest(&Message::TlConnectRequest(control::TlConnectRequest {
        endpoint_id: [1; 16],
        service_id: [2; 16],
    }));
    let out = sim.take();
    let [m] = out.as_slice() else {
        panic!("{out:?}")
    };
    let Ok(Message::TlConnectResult(r)) = Message::parse(m) else {
        panic!("{m:?}")
    };
    assert_eq!((r.endpoint_id, r.service_id), ([1; 16], [2; 16]));
    assert_eq!(r.status.get(), control::STATUS_CONNECTION_REFUSED);
}

/// One step of a hostile guest or an unpredictable device.
#[derive(Debug, Clone)]
enum Step {
    Raw(Vec<u8>),
    Contact(u32),
    RequestOffers,
    Gpadl {
        channel: u32,
        id: u32,
        pages: u8,
    },
    Header {
        channel: u32,
        id: u32,
        len: u16,
        count: u16,
        words: u8,
    },
    Body {
        id: u32,
        words: u8,
    },
    Open {
        channel: u32,
        gpadl: u32,
    },
    Close(u32),
    Modify(u32),
    Teardown {
        channel: u32,
        id: u32,
    },
    Release(u32),
    Unload,
    Answer {
        accept: bool,
    },
    Revoke(u8),
    Reoffer(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let ch = 0u32..5;
    let id = 0u32..4;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Step::Raw),
        prop_oneof![
            Just(Version::WIN8_1.0),
            Just(Version::COPPER.0),
            any::<u32>()
        ]
        .prop_map(Step::Contact),
        Just(Step::RequestOffers),
        (ch.clone(), id.clone(), 1u8..40).prop_map(|(channel, id, pages)| Step::Gpadl {
            channel,
            id,
            pages
        }),
        (ch.clone(), id.clone(), any::<u16>(), any::<u16>(), 0u8..30).prop_map(
            |(channel, id, len, count, words)| Step::Header {
                channel,
                id,
                len,
                count,
                words
            }
        ),
        (id.clone(), 0u8..30).prop_map(|(id, words)| Step::Body { id, words }),
        (ch.clone(), id.clone()).prop_map(|(channel, gpadl)| Step::Open { channel, gpadl }),
        ch.clone().prop_map(Step::Close),
        ch.clone().prop_map(Step::Modify),
        (ch.clone(), id).prop_map(|(channel, id)| Step::Teardown { channel, id }),
        ch.prop_map(Step::Release),
        Just(Step::Unload),
        any::<bool>().prop_map(|accept| Step::Answer { accept }),
        any::<bool>().prop_map(|accept| Step::Answer { accept }),
        any::<bool>().prop_map(|accept| Step::Answer { accept }),
        (0u8..3).prop_map(Step::Revoke),
        (0u8..3).prop_map(Step::Reoffer),
    ]
}

fn run_step(sim: &mut Sim, offers: &mut [Option<OfferId>], step: Step) {
    match step {
        Step::Raw(bytes) => sim.guest_bytes(&bytes),
        Step::Contact(version) => sim.guest(&Message::InitiateContact(InitiateContact {
            version_requested: version.into(),
            target_message_vp: 0.into(),
            interrupt_page_or_target_info: (2u64 | (0x1f << 32)).into(),
            parent_to_child_monitor_page_gpa: 0.into(),
            child_to_parent_monitor_page_gpa: 0.into(),
        })),
        Step::RequestOffers => sim.guest(&Message::RequestOffers),
        Step::Gpadl { channel, id, pages } => {
            let pfns: Vec<u64> = (1..=u64::from(pages)).collect();
            sim.gpadl(channel, id, &pfns);
        }
        Step::Header {
            channel,
            id,
            len,
            count,
            words,
        } => {
            let w = vec![U64::new(4096); usize::from(words)];
            sim.guest(&Message::GpadlHeader(
                GpadlHeader {
                    channel_id: channel.into(),
                    gpadl_id: id.into(),
                    len: len.into(),
                    count: count.into(),
                },
                &w,
            ));
        }
        Step::Body { id, words } => {
            let w = vec![U64::new(1); usize::from(words)];
            sim.guest(&Message::GpadlBody(
                GpadlBody {
                    message_number: 0.into(),
                    gpadl_id: id.into(),
                },
                &w,
            ));
        }
        Step::Open { channel, gpadl } => sim.open(channel, gpadl),
        Step::Close(channel) => sim.guest(&Message::CloseChannel(ChannelIdBody {
            channel_id: channel.into(),
        })),
        Step::Modify(channel) => sim.guest(&Message::ModifyChannel(control::ModifyChannel {
            channel_id: channel.into(),
            target_vp: 1.into(),
        })),
        Step::Teardown { channel, id } => {
            sim.guest(&Message::GpadlTeardown(control::GpadlTeardown {
                channel_id: channel.into(),
                gpadl_id: id.into(),
            }));
        }
        Step::Release(channel) => sim.guest(&Message::RelIdReleased(ChannelIdBody {
            channel_id: channel.into(),
        })),
        Step::Unload => sim.guest(&Message::Unload),
        Step::Answer { accept } => {
            sim.accept = accept;
            sim.answer_one();
        }
        Step::Revoke(i) => {
            if let Some(Some(offer)) = offers.get(usize::from(i)) {
                let mut out = Vec::new();
                sim.state.revoke(*offer, &mut out);
                sim.apply(out);
            }
        }
        Step::Reoffer(i) => {
            let params = OfferParams {
                interface_id: Uuid::from_u128(0xabc),
                instance_id: Uuid::from_u128(u128::from(i)),
                ..Default::default()
            };
            let mut out = Vec::new();
            if let Ok((id, _)) = sim.state.offer(params.key(), host_offer(&params), &mut out)
                && let Some(slot) = offers.get_mut(usize::from(i))
            {
                *slot = Some(id);
            }
            sim.apply(out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a guest sends and however the devices answer: no panic, every invariant
    /// after every step, and once the guest unloads and the devices answer everything, the
    /// connection is closed with no GPADL or open channel left.
    #[test]
    fn hostile_sequences_converge_after_unload(steps in prop::collection::vec(step(), 0..80)) {
        let mut sim = Sim::new();
        let mut offers: Vec<Option<OfferId>> = (0..3).map(|i| Some(sim.offer(i))).collect();
        for s in steps {
            run_step(&mut sim, &mut offers, s);
        }
        // Converge: answer everything, connect if needed, unload, answer everything.
        sim.accept = true;
        sim.answer_all();
        if sim.state.connection() != Connection::Disconnected {
            sim.guest(&Message::Unload);
            sim.answer_all();
        }
        prop_assert_eq!(sim.state.connection(), Connection::Disconnected);
        prop_assert_eq!(sim.state.gpadl_count(), 0);
        prop_assert!(sim.state.channels().all(|(_, _, s)| *s == ChannelState::Closed));
    }
}
