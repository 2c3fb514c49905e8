//! End-to-end: store handshake, protocol negotiation, TPM commands through frontend ->
//! backend -> manager -> in-process engine, close and reopen, several domains at once.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use std::future::Future;
use std::time::Duration;
use vtpm_ring::backend::BackendConfig;
use vtpm_ring::domain::DomainId;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::frontend::FrontendConfig;
use vtpm_ring::frontend::FrontendError;
use vtpm_ring::protocol::ProtocolVersion;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::testbed::Testbed;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;
use vtpm_ring::xenbus::XenbusState;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::read_state;

const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16];

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("bounded wait expired")
}

fn start(config: BackendConfig, instances: &[u32]) -> Testbed {
    let (bed, run) = Testbed::new(config, instances).unwrap();
    tokio::spawn(run);
    bed
}

fn frontend_config(protocols: Protocols) -> FrontendConfig {
    FrontendConfig {
        protocols,
        ..FrontendConfig::default()
    }
}

async fn get_random(front: &Frontend) -> Vec<u8> {
    let r = within(front.transmit(&GET_RANDOM_16)).await.unwrap();
    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
    assert_eq!(r.len(), 10 + 2 + 16);
    r
}

mod negotiation {
    use super::*;

    async fn negotiate(
        back: Protocols,
        front: Protocols,
    ) -> Result<ProtocolVersion, FrontendError> {
        let bed = start(
            BackendConfig {
                protocols: back,
                ..BackendConfig::default()
            },
            &[5],
        );
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 5).unwrap();
        let f = within(Frontend::connect(&guest, frontend_config(front))).await?;
        get_random(&f).await;
        Ok(f.protocol())
    }

    #[tokio::test]
    async fn both_v2_use_v2() {
        assert_eq!(
            negotiate(Protocols::default(), Protocols::default())
                .await
                .unwrap(),
            ProtocolVersion::V2
        );
    }

    #[tokio::test]
    async fn old_frontend_gets_v1() {
        assert_eq!(
            negotiate(Protocols::default(), Protocols::V1_ONLY)
                .await
                .unwrap(),
            ProtocolVersion::V1
        );
    }

    #[tokio::test]
    async fn old_backend_gets_v1() {
        assert_eq!(
            negotiate(Protocols::V1_ONLY, Protocols::default())
                .await
                .unwrap(),
            ProtocolVersion::V1
        );
    }

    #[tokio::test]
    async fn v2_only_backend_refuses_v1_only_frontend() {
        assert_eq!(
            negotiate(Protocols::V2_ONLY, Protocols::V1_ONLY)
                .await
                .unwrap_err(),
            FrontendError::BackendRefused(XenbusState::CLOSED)
        );
    }
}

mod lifecycle {
    use super::*;

    async fn close_and_reopen(protocols: Protocols) {
        let bed = start(BackendConfig::default(), &[1]);
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let store = bed.backend.store();
        let bdir = backend_dir(BACKEND_DOMAIN, guest.id(), 0);
        for round in 0..3 {
            let f = within(Frontend::connect(&guest, frontend_config(protocols)))
                .await
                .unwrap();
            assert_eq!(read_state(&store, &bdir), XenbusState::CONNECTED);
            let a = get_random(&f).await;
            let b = get_random(&f).await;
            assert_ne!(a, b, "round {round}: random bytes repeat");
            within(f.close()).await.unwrap();
        }
        let stats = bed.stats.snapshot();
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

    #[tokio::test]
    async fn v2_close_and_reopen() {
        close_and_reopen(Protocols::V2_ONLY).await;
    }

    #[tokio::test]
    async fn v1_close_and_reopen() {
        close_and_reopen(Protocols::V1_ONLY).await;
    }

    #[tokio::test]
    async fn large_commands_span_pages_in_both_protocols() {
        let bed = start(BackendConfig::default(), &[1, 2]);
        let g1 = bed.add_guest(DomainId(2)).unwrap();
        let g2 = bed.add_guest(DomainId(3)).unwrap();
        bed.add_device(g1.id(), 0, 1).unwrap();
        bed.add_device(g2.id(), 0, 2).unwrap();
        let v1 = within(Frontend::connect(&g1, frontend_config(Protocols::V1_ONLY)))
            .await
            .unwrap();
        // Multi-page v2 packets are an explicit option: one extra page holds 4 KiB.
        let v2_config = FrontendConfig {
            extra_pages: 1,
            ..frontend_config(Protocols::V2_ONLY)
        };
        let v2 = within(Frontend::connect(&g2, v2_config)).await.unwrap();
        // A 4 KiB command the engine does not implement: it must arrive whole (the engine
        // answers TPM_RC_COMMAND_CODE, not TPM_RC_COMMAND_SIZE).
        let mut big = vec![0u8; 4096];
        big[..10].copy_from_slice(&[0x80, 0x01, 0, 0, 0x10, 0x00, 0x20, 0, 0, 0]);
        for f in [&v1, &v2] {
            let r = within(f.transmit(&big)).await.unwrap();
            assert_eq!(response_code(&r), Some(TpmRc::COMMAND_CODE));
        }
        assert_eq!(bed.stats.snapshot().malformed, 0);
    }

    #[tokio::test]
    async fn v2_defaults_to_the_single_shared_page_linux_and_mini_os_use() {
        let bed = start(BackendConfig::default(), &[1]);
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let front = within(Frontend::connect(&guest, FrontendConfig::default()))
            .await
            .unwrap();
        assert_eq!(front.protocol(), ProtocolVersion::V2);
        // nr_extra_pages = 0: the packet starts at offset 8 of the one shared page.
        assert_eq!(front.max_packet(), vtpm_ring::page::PAGE_SIZE - 8);
        get_random(&front).await;
        // A command that needs a second page is refused before it reaches the ring.
        let big = vec![0u8; front.max_packet() + 1];
        assert!(matches!(
            within(front.transmit(&big)).await,
            Err(FrontendError::CommandTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn removed_device_ends_its_backend_and_can_be_recreated() {
        let bed = start(BackendConfig::default(), &[1]);
        let guest = bed.add_guest(DomainId(2)).unwrap();
        let dev = bed.add_device(guest.id(), 0, 1).unwrap();
        let f = within(Frontend::connect(&guest, FrontendConfig::default()))
            .await
            .unwrap();
        get_random(&f).await;
        within(f.close()).await.unwrap();
        bed.remove_device(&dev).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let f = within(Frontend::connect(&guest, FrontendConfig::default()))
            .await
            .unwrap();
        get_random(&f).await;
    }
}

mod multi_domain {
    use super::*;

    #[tokio::test]
    async fn several_guests_each_reach_their_own_instance() {
        let instances = [10, 11, 12, 13];
        let bed = start(BackendConfig::default(), &instances);
        let mut fronts = Vec::new();
        for (i, inst) in instances.iter().enumerate() {
            let guest = bed.add_guest(DomainId(2 + i as u16)).unwrap();
            bed.add_device(guest.id(), 0, *inst).unwrap();
            let protocols = if i % 2 == 0 {
                Protocols::V1_ONLY
            } else {
                Protocols::V2_ONLY
            };
            fronts.push(
                within(Frontend::connect(&guest, frontend_config(protocols)))
                    .await
                    .unwrap(),
            );
        }
        // PCR_Extend PCR 16 on each instance a different number of times, concurrently.
        let extend = |n: u8| {
            let mut c = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82, 0, 0, 0, 16];
            c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
            c.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
            c.extend_from_slice(&[n; 32]);
            let len = c.len() as u8;
            c[5] = len;
            c
        };
        let jobs = fronts.iter().enumerate().map(|(i, f)| {
            let extend = &extend;
            async move {
                for n in 0..=i {
                    let r = f.transmit(&extend(n as u8)).await.unwrap();
                    assert_eq!(response_code(&r), Some(TpmRc::SUCCESS));
                }
            }
        });
        within(futures::future::join_all(jobs)).await;
        // PCR_Read PCR 16: the update counter equals that instance's extends.
        let read = [
            0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0, 0, 1,
        ];
        for (i, f) in fronts.iter().enumerate() {
            let r = within(f.transmit(&read)).await.unwrap();
            let counter = u32::from_be_bytes([r[10], r[11], r[12], r[13]]);
            assert_eq!(counter as usize, i + 1);
        }
    }

    #[tokio::test]
    async fn second_device_on_a_connected_instance_is_refused() {
        let bed = start(BackendConfig::default(), &[1]);
        let g1 = bed.add_guest(DomainId(2)).unwrap();
        let g2 = bed.add_guest(DomainId(3)).unwrap();
        bed.add_device(g1.id(), 0, 1).unwrap();
        let _f = within(Frontend::connect(&g1, FrontendConfig::default()))
            .await
            .unwrap();
        bed.add_device(g2.id(), 0, 1).unwrap();
        let err = within(Frontend::connect(&g2, FrontendConfig::default()))
            .await
            .unwrap_err();
        assert_eq!(err, FrontendError::BackendRefused(XenbusState::CLOSED));
    }

    #[tokio::test]
    async fn locality_reaches_the_engine_in_v2() {
        let bed = start(BackendConfig::default(), &[1]);
        let guest = bed.add_guest(DomainId(2)).unwrap();
        bed.add_device(guest.id(), 0, 1).unwrap();
        let f = within(Frontend::connect(&guest, FrontendConfig::default()))
            .await
            .unwrap();
        f.set_locality(3).unwrap();
        get_random(&f).await;
        assert_eq!(bed.engines[&1].last_locality(), 3);
        f.set_locality(0).unwrap();
        get_random(&f).await;
        assert_eq!(bed.engines[&1].last_locality(), 0);
        assert!(f.set_locality(5).is_err());
    }
}
