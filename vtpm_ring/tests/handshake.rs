//! End-to-end: store handshake, protocol negotiation, TPM commands through frontend ->
//! backend -> manager -> swtpm, close and reopen, several domains at once. The ring runs on
//! the test's thread and each step settles explicitly (`support/one_thread.rs`).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

#[path = "support/one_thread.rs"]
mod one_thread;

use one_thread::Harness;
use sha2::Digest;
use sha2::Sha256;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::read_state;

const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16];

fn frontend_config(protocols: Protocols) -> FrontendConfig {
    FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    }
}

fn get_random(t: &mut Harness, front: &Frontend) -> Vec<u8> {
    let r = t.run(front.transmit(&GET_RANDOM_16)).unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 16);
    r
}

/// TPM2_PCR_Extend of SHA-256 `[byte; 32]` into `pcr`, with an empty password session.
fn pcr_extend(pcr: u8, byte: u8) -> Vec<u8> {
    let mut c = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82, 0, 0, 0, pcr];
    c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
    c.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
    c.extend_from_slice(&[byte; 32]);
    c[5] = u8::try_from(c.len()).unwrap();
    c
}

/// TPM2_PCR_Read of SHA-256 PCR 15.
const PCR_READ_15: [u8; 20] = [
    0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0, 0x80, 0,
];

mod negotiation {
    use super::*;

    fn negotiate(back: Protocols, front: Protocols) -> Result<ProtocolVersion, FrontendError> {
        let config = BackendConfig {
            protocols: back,
            ..BackendConfig::default()
        };
        let mut t = Harness::start(config, &[5]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        t.bed.add_device(guest.id(), 0, 5).unwrap();
        let f = t.run(Frontend::connect(&guest, frontend_config(front)))?;
        get_random(&mut t, &f);
        Ok(f.protocol())
    }

    #[test]
    fn both_v2_use_v2() {
        assert_eq!(
            negotiate(Protocols::default(), Protocols::default()).unwrap(),
            ProtocolVersion::V2
        );
    }

    #[test]
    fn old_frontend_gets_v1() {
        assert_eq!(
            negotiate(Protocols::default(), Protocols::V1_ONLY).unwrap(),
            ProtocolVersion::V1
        );
    }

    #[test]
    fn old_backend_gets_v1() {
        assert_eq!(
            negotiate(Protocols::V1_ONLY, Protocols::default()).unwrap(),
            ProtocolVersion::V1
        );
    }

    #[test]
    fn v2_only_backend_refuses_v1_only_frontend() {
        assert_eq!(
            negotiate(Protocols::V2_ONLY, Protocols::V1_ONLY).unwrap_err(),
            FrontendError::BackendRefused(XenbusState::CLOSED)
        );
    }
}

mod lifecycle {
    use super::*;

    fn close_and_reopen(protocols: Protocols) {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        t.bed.add_device(guest.id(), 0, 1).unwrap();
        let store = t.bed.backend.store();
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        for round in 0..3 {
            let f = t
                .run(Frontend::connect(&guest, frontend_config(protocols)))
                .unwrap();
            assert_eq!(read_state(&store, &bdir), XenbusState::CONNECTED);
            let a = get_random(&mut t, &f);
            let b = get_random(&mut t, &f);
            assert_ne!(a, b, "round {round}: random bytes repeat");
            t.run(f.close()).unwrap();
        }
        let stats = t.bed.stats.snapshot();
        assert_eq!(stats.connects, 3);
        assert_eq!(stats.disconnects, 3);
        assert_eq!(stats.requests, 6);
        // Every grant was revoked: the guest's pages are all free again.
        let mut pages = Vec::new();
        while let Ok(p) = guest.alloc_page() {
            pages.push(p);
        }
        assert_eq!(pages.len(), guest.pages());
    }

    #[test]
    fn v2_close_and_reopen() {
        close_and_reopen(Protocols::V2_ONLY);
    }

    #[test]
    fn v1_close_and_reopen() {
        close_and_reopen(Protocols::V1_ONLY);
    }

    #[test]
    fn large_commands_span_pages_in_both_protocols() {
        let mut t = Harness::start(BackendConfig::default(), &[1, 2]);
        let g1 = t.bed.add_guest(DomainId(2)).unwrap();
        let g2 = t.bed.add_guest(DomainId(3)).unwrap();
        t.bed.add_device(g1.id(), 0, 1).unwrap();
        t.bed.add_device(g2.id(), 0, 2).unwrap();
        let v1 = t
            .run(Frontend::connect(&g1, frontend_config(Protocols::V1_ONLY)))
            .unwrap();
        // Multi-page v2 packets are an explicit option: one extra page holds 4 KiB.
        let v2_config = FrontendConfig {
            extra_pages: 1,
            ..frontend_config(Protocols::V2_ONLY)
        };
        let v2 = t.run(Frontend::connect(&g2, v2_config)).unwrap();
        // A 4 KiB command swtpm does not implement: it must arrive whole (swtpm answers
        // TPM_RC_COMMAND_CODE, not TPM_RC_COMMAND_SIZE).
        let mut big = vec![0u8; 4096];
        big[..10].copy_from_slice(&[0x80, 0x01, 0, 0, 0x10, 0x00, 0x20, 0, 0, 0]);
        for f in [&v1, &v2] {
            let r = t.run(f.transmit(&big)).unwrap();
            assert_eq!(response_code(&r), Some(TpmRc::COMMAND_CODE));
        }
        let s = t.bed.stats.snapshot();
        assert_eq!((s.requests, s.malformed), (2, 0));
    }

    #[test]
    fn v2_defaults_to_the_single_shared_page_linux_and_mini_os_use() {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        t.bed.add_device(guest.id(), 0, 1).unwrap();
        let front = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        assert_eq!(front.protocol(), ProtocolVersion::V2);
        // nr_extra_pages = 0: the packet starts at offset 8 of the one shared page.
        assert_eq!(front.max_packet(), vtpm_ring::page::PAGE_SIZE - 8);
        get_random(&mut t, &front);
        // A command that needs a second page is refused before it reaches the ring.
        let big = vec![0u8; front.max_packet() + 1];
        assert!(matches!(
            t.run(front.transmit(&big)),
            Err(FrontendError::CommandTooLarge { .. })
        ));
        assert_eq!(t.bed.stats.snapshot().requests, 1);
    }

    #[test]
    fn removed_device_ends_its_backend_and_can_be_recreated() {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        let dev = t.bed.add_device(guest.id(), 0, 1).unwrap();
        let f = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        get_random(&mut t, &f);
        t.run(f.close()).unwrap();
        t.bed.remove_device(&dev).unwrap();
        t.settle();
        t.bed.add_device(guest.id(), 0, 1).unwrap();
        let f = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        get_random(&mut t, &f);
    }
}

mod multi_domain {
    use super::*;

    #[test]
    fn several_guests_each_reach_their_own_instance() {
        let instances = [10, 11, 12, 13];
        let mut t = Harness::start(BackendConfig::default(), &instances);
        let mut fronts = Vec::new();
        for (i, inst) in instances.iter().enumerate() {
            let guest = t.bed.add_guest(DomainId(2 + i as u16)).unwrap();
            t.bed.add_device(guest.id(), 0, *inst).unwrap();
            let protocols = if i % 2 == 0 {
                Protocols::V1_ONLY
            } else {
                Protocols::V2_ONLY
            };
            fronts.push(
                t.run(Frontend::connect(&guest, frontend_config(protocols)))
                    .unwrap(),
            );
        }
        // The update counter before: swtpm's own start-up counts too.
        let counter = |r: &[u8]| u32::from_be_bytes([r[10], r[11], r[12], r[13]]);
        let before: Vec<u32> = fronts
            .iter()
            .map(|f| counter(&t.run(f.transmit(&PCR_READ_15)).unwrap()))
            .collect();
        // PCR_Extend PCR 15 on each instance a different number of times, all guests at once
        // (not PCR 16: swtpm, as the reference TPM, does not count the debug PCR's updates).
        let jobs = fronts.iter().enumerate().map(|(i, f)| async move {
            for n in 0..=i {
                let r = f.transmit(&pcr_extend(15, n as u8)).await.unwrap();
                assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
            }
        });
        t.run(futures::future::join_all(jobs));
        // PCR_Read PCR 15: the update counter moved by that instance's extends, and the value
        // is the chain of exactly its own digests.
        for (i, f) in fronts.iter().enumerate() {
            let r = t.run(f.transmit(&PCR_READ_15)).unwrap();
            assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
            assert_eq!((counter(&r) - before[i]) as usize, i + 1);
            let expected = (0..=i).fold([0u8; 32], |pcr, n| {
                let mut h = Sha256::new();
                h.update(pcr);
                h.update([n as u8; 32]);
                h.finalize().into()
            });
            // Header, counter, the selection (count, hash, size, 3 bytes), digest count, size.
            assert_eq!(r.len(), 10 + 4 + 10 + 4 + 2 + 32);
            assert_eq!(r[30..], expected, "instance {}", instances[i]);
        }
    }

    #[test]
    fn second_device_on_a_connected_instance_is_refused() {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let g1 = t.bed.add_guest(DomainId(2)).unwrap();
        let g2 = t.bed.add_guest(DomainId(3)).unwrap();
        t.bed.add_device(g1.id(), 0, 1).unwrap();
        let f = t
            .run(Frontend::connect(&g1, FrontendConfig::default()))
            .unwrap();
        t.bed.add_device(g2.id(), 0, 1).unwrap();
        let err = t
            .run(Frontend::connect(&g2, FrontendConfig::default()))
            .unwrap_err();
        assert_eq!(err, FrontendError::BackendRefused(XenbusState::CLOSED));
        // The first guest keeps its TPM.
        get_random(&mut t, &f);
    }

    #[test]
    fn locality_reaches_the_engine_in_v2() {
        let mut t = Harness::start(BackendConfig::default(), &[1]);
        let guest = t.bed.add_guest(DomainId(2)).unwrap();
        t.bed.add_device(guest.id(), 0, 1).unwrap();
        let f = t
            .run(Frontend::connect(&guest, FrontendConfig::default()))
            .unwrap();
        // The PC Client profile lets only localities 1-3 extend PCR 20: swtpm's answer says
        // which locality the command ran at.
        f.set_locality(3).unwrap();
        get_random(&mut t, &f);
        let r = t.run(f.transmit(&pcr_extend(20, 1))).unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
        f.set_locality(0).unwrap();
        get_random(&mut t, &f);
        let r = t.run(f.transmit(&pcr_extend(20, 1))).unwrap();
        assert_eq!(response_code(&r), Some(TpmRc::LOCALITY));
        assert!(f.set_locality(5).is_err());
    }
}
