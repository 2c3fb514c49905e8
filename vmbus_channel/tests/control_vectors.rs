//! Golden vectors for the control protocol: each `tests/vectors/*.bin` was packed by
//! `gen_vectors.py` from Linux `hyperv.h` struct layouts (and OpenVMM's for the 6.0 forms).
//! Every file must decode to the expected message with the expected fields and re-encode to
//! the same bytes.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::PathBuf;
use uuid::Uuid;
use vmbus_channel::control::ConnectionState;
use vmbus_channel::control::Message;
use vmbus_channel::control::TargetInfo;
use vmbus_channel::control::Version;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::protocol::guid_from_wire;

fn vector(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "vectors", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes `name`, runs `check` on the message and checks the re-encoding.
fn check(name: &str, check: impl FnOnce(&Message<'_>)) {
    let bytes = vector(&format!("{name}.bin"));
    let message = Message::parse(&bytes).unwrap();
    check(&message);
    assert_eq!(message.encode().as_bytes(), &bytes[..], "{name} re-encodes");
}

const ENDPOINT: Uuid = Uuid::from_u128(0x11111111_2222_3333_4444_555555555555);
const SERVICE: Uuid = Uuid::from_u128(0x66666666_7777_8888_9999_aaaaaaaaaaaa);

#[test]
fn every_message_has_a_vector() {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "vectors"]
        .iter()
        .collect();
    let count = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "bin")
        })
        .count();
    assert_eq!(count, 25);
}

#[test]
fn offers() {
    check("offer_channel", |m| {
        let Message::OfferChannel(o) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            guid_from_wire(o.offer.interface_id),
            Uuid::parse_str("f8615163-df3e-46c5-913f-f2d2f965ed0e").unwrap()
        );
        assert_eq!(
            guid_from_wire(o.offer.instance_id),
            Uuid::from_u128(0x00112233_4455_6677_8899_aabbccddeeff)
        );
        assert_eq!(o.offer.flags.get(), 3);
        assert_eq!(o.offer.mmio_megabytes.get(), 16);
        assert_eq!(o.offer.user_defined.0[0], 1);
        assert_eq!(o.offer.user_defined.0[119], 120);
        assert_eq!(o.offer.subchannel_index.get(), 2);
        assert_eq!(o.channel_id.get(), 7);
        assert_eq!(o.is_dedicated.get(), 1);
        assert_eq!(o.connection_id.get(), 0x2007);
    });
    check("rescind_channel_offer", |m| {
        assert!(matches!(m, Message::RescindChannelOffer(b) if b.channel_id.get() == 7));
    });
    check("request_offers", |m| {
        assert!(matches!(m, Message::RequestOffers));
    });
    check("all_offers_delivered", |m| {
        assert!(matches!(m, Message::AllOffersDelivered));
    });
    check("rel_id_released", |m| {
        assert!(matches!(m, Message::RelIdReleased(b) if b.channel_id.get() == 7));
    });
}

#[test]
fn channels() {
    check("open_channel", |m| {
        let Message::OpenChannel(o) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (
                o.channel_id.get(),
                o.open_id.get(),
                o.ring_buffer_gpadl_id.get(),
                o.target_vp.get(),
                o.downstream_ring_buffer_page_offset.get()
            ),
            (7, 0x11, 0x22, 3, 9)
        );
        assert_eq!(o.user_data.0[5], 6);
    });
    check("open_channel2", |m| {
        let Message::OpenChannel2(o) = m else {
            panic!("{m:?}")
        };
        assert_eq!(o.base.channel_id.get(), 7);
        assert_eq!(
            (o.connection_id.get(), o.event_flag.get(), o.flags.get()),
            (0x2007, 7, 1)
        );
    });
    check("open_channel_result", |m| {
        assert!(
            matches!(m, Message::OpenResult(r) if r.channel_id.get() == 7 && r.open_id.get() == 0x11 && r.status.get() == 0)
        );
    });
    check("close_channel", |m| {
        assert!(matches!(m, Message::CloseChannel(b) if b.channel_id.get() == 7));
    });
    check("modify_channel", |m| {
        assert!(
            matches!(m, Message::ModifyChannel(b) if b.channel_id.get() == 7 && b.target_vp.get() == 5)
        );
    });
    check("modify_channel_response", |m| {
        assert!(
            matches!(m, Message::ModifyChannelResponse(b) if b.channel_id.get() == 7 && b.status.get() == 0)
        );
    });
}

#[test]
fn gpadls() {
    check("gpadl_header", |m| {
        let Message::GpadlHeader(h, words) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (
                h.channel_id.get(),
                h.gpadl_id.get(),
                h.len.get(),
                h.count.get()
            ),
            (7, 0x22, 24, 1)
        );
        let words: Vec<u64> = words.iter().map(|w| w.get()).collect();
        // byte_count in the low half, byte_offset in the high half, then the page numbers.
        assert_eq!(words, [2 * 4096, 0x100, 0x101]);
    });
    check("gpadl_body", |m| {
        let Message::GpadlBody(b, words) = m else {
            panic!("{m:?}")
        };
        assert_eq!((b.message_number.get(), b.gpadl_id.get()), (1, 0x22));
        let words: Vec<u64> = words.iter().map(|w| w.get()).collect();
        assert_eq!(words, [0x102, 0x103, 0x104]);
    });
    check("gpadl_created", |m| {
        assert!(
            matches!(m, Message::GpadlCreated(b) if b.channel_id.get() == 7 && b.gpadl_id.get() == 0x22 && b.status.get() == 0)
        );
    });
    check("gpadl_teardown", |m| {
        assert!(
            matches!(m, Message::GpadlTeardown(b) if b.channel_id.get() == 7 && b.gpadl_id.get() == 0x22)
        );
    });
    check("gpadl_torndown", |m| {
        assert!(matches!(m, Message::GpadlTorndown(b) if b.gpadl_id.get() == 0x22));
    });
}

#[test]
fn connection() {
    check("initiate_contact", |m| {
        let Message::InitiateContact(c) = m else {
            panic!("{m:?}")
        };
        assert_eq!(Version(c.version_requested.get()), Version::WIN8_1);
        assert_eq!(c.interrupt_page_or_target_info.get(), 0x5000);
        assert_eq!(c.parent_to_child_monitor_page_gpa.get(), 0x6000);
        assert_eq!(c.child_to_parent_monitor_page_gpa.get(), 0x7000);
    });
    check("initiate_contact2", |m| {
        let Message::InitiateContact2(c) = m else {
            panic!("{m:?}")
        };
        assert_eq!(Version(c.base.version_requested.get()), Version::COPPER);
        assert_eq!(c.base.target_message_vp.get(), 1);
        let info = TargetInfo::from_bits(c.base.interrupt_page_or_target_info.get());
        assert_eq!(info.sint(), 2);
        let features = FeatureFlags::from_bits(info.feature_flags());
        assert!(features.confidential_channels());
        assert_eq!(
            guid_from_wire(c.client_id),
            Uuid::from_u128(0xc0ffee00_0000_0000_0000_000000000001)
        );
    });
    check("version_response", |m| {
        let Message::VersionResponse(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.version_supported, 1);
        assert_eq!(
            ConnectionState(r.connection_state),
            ConnectionState::SUCCESSFUL
        );
        assert_eq!(r.selected_version_or_connection_id.get(), 4);
    });
    check("version_response2", |m| {
        let Message::VersionResponse2(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.base.selected_version_or_connection_id.get(), 4);
        assert!(FeatureFlags::from_bits(r.supported_features.get()).confidential_channels());
    });
    check("unload", |m| assert!(matches!(m, Message::Unload)));
    check("unload_complete", |m| {
        assert!(matches!(m, Message::UnloadComplete));
    });
}

#[test]
fn hvsocket() {
    check("tl_connect_request", |m| {
        let Message::TlConnectRequest(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(guid_from_wire(r.endpoint_id), ENDPOINT);
        assert_eq!(guid_from_wire(r.service_id), SERVICE);
    });
    check("tl_connect_request2", |m| {
        let Message::TlConnectRequest2(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(guid_from_wire(r.base.service_id), SERVICE);
        assert_eq!(
            guid_from_wire(r.silo_id),
            Uuid::from_u128(0xbbbbbbbb_cccc_dddd_eeee_ffffffffffff)
        );
    });
    check("tl_connect_result", |m| {
        let Message::TlConnectResult(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(guid_from_wire(r.endpoint_id), ENDPOINT);
        assert_eq!(
            r.status.get(),
            vmbus_channel::control::STATUS_CONNECTION_REFUSED
        );
    });
}
