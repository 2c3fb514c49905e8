//! End-to-end tests of the in-process VMBus: devices offered through `ParentBus`, a guest
//! client opening them and exchanging packets, GPADLs, revoke, confidential offers and
//! save/restore of the server.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "test code")]

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use uuid::Uuid;
use vmbus_channel::bus::OfferParams;
use vmbus_channel::client::VmbusClient;
use vmbus_channel::device::DeviceContext;
use vmbus_channel::device::DeviceError;
use vmbus_channel::device::DeviceRunner;
use vmbus_channel::device::SimpleVmbusDevice;
use vmbus_channel::device::offer_device;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::FeatureFlags;
use vmbus_channel::ring::IncomingPacket;
use vmbus_channel::server::VmbusServer;

const MEM_PAGES: usize = 256;

/// Replies with the request prefixed by the device's tag and a running count.
struct Echo {
    tag: u8,
    handled: Arc<AtomicUsize>,
}

fn echo(tag: u8) -> Echo {
    Echo {
        tag,
        handled: Arc::new(AtomicUsize::new(0)),
    }
}

fn interface(tag: u8) -> Uuid {
    Uuid::from_u128(0xec40_0000 + u128::from(tag))
}

#[async_trait]
impl SimpleVmbusDevice for Echo {
    fn offer(&self) -> OfferParams {
        OfferParams {
            interface_name: format!("echo{}", self.tag),
            interface_id: interface(self.tag),
            instance_id: Uuid::from_u128(u128::from(self.tag)),
            ..Default::default()
        }
    }

    async fn handle_packet(
        &mut self,
        _ctx: &DeviceContext<'_>,
        packet: &IncomingPacket,
    ) -> Result<Option<Vec<u8>>, DeviceError> {
        let n = self.handled.fetch_add(1, Ordering::SeqCst) as u8;
        let len = usize::from(packet.data()[0]);
        let mut reply = vec![self.tag, n];
        reply.extend_from_slice(&packet.data()[1..=len]);
        Ok(Some(reply))
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = vec![body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn memory() -> GuestMemory {
    GuestMemory::new(MEM_PAGES * PAGE_SIZE).unwrap()
}

fn spawn_server(mem: &GuestMemory, private: Option<GuestMemory>) -> VmbusServer {
    let (server, runner) = VmbusServer::new(mem.clone(), private);
    tokio::spawn(runner.run());
    server
}

async fn spawn_device(
    server: &VmbusServer,
    dev: Echo,
) -> tokio::task::JoinHandle<DeviceRunner<Echo>> {
    let runner = offer_device(server, dev).await.unwrap();
    tokio::spawn(runner.run())
}

mod packets {
    use super::*;

    #[tokio::test]
    async fn request_gets_completion_from_device() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let _dev = spawn_device(&server, echo(1)).await;
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        assert!(!client.feature_flags().confidential_channels());
        let offer = client.find_offer(interface(1)).unwrap();
        assert_eq!(offer.key.instance_id, Uuid::from_u128(1));
        let mut ch = client.open(&offer, 2).await.unwrap();
        for i in 0..50u8 {
            let reply = ch.request(&framed(&[i; 3])).await.unwrap();
            assert_eq!(&reply.data()[..5], &[1, i, i, i, i]);
        }
        ch.close().await.unwrap();
    }

    #[tokio::test]
    async fn writer_blocked_on_full_ring_resumes_when_device_drains() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let dev = echo(2);
        let handled = dev.handled.clone();
        let _dev = spawn_device(&server, dev).await;
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer = client.find_offer(interface(2)).unwrap();
        let mut ch = client.open(&offer, 1).await.unwrap();
        // 100 one-way 1000-byte packets through 4 KiB rings: the guest must wait for the
        // device to drain its ring (pending send size + signal) many times. Replies are
        // 32 bytes each, so they all fit the other ring without being read.
        let mut body = vec![0u8; 1000];
        for i in 0..100u8 {
            body[1] = i;
            ch.send(&body).await.unwrap();
        }
        for i in 0..100usize {
            let p = ch.recv().await.unwrap();
            assert_eq!(&p.data()[..2], &[2, i as u8]);
        }
        assert_eq!(handled.load(Ordering::SeqCst), 100);
    }
}

mod control {
    use super::*;

    #[tokio::test]
    async fn gpadl_outside_memory_is_rejected_and_channel_still_works() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let _dev = spawn_device(&server, echo(3)).await;
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer = client.find_offer(interface(3)).unwrap();
        assert!(
            client
                .create_gpadl(offer.channel_id, &[MEM_PAGES as u64])
                .await
                .is_err()
        );
        assert!(
            client
                .create_gpadl(offer.channel_id, &[1 << 52])
                .await
                .is_err()
        );
        let id = client
            .create_gpadl(offer.channel_id, &[5, 6])
            .await
            .unwrap();
        let mut ch = client.open(&offer, 1).await.unwrap();
        assert_eq!(
            ch.request(&framed(b"ok")).await.unwrap().data()[2..4],
            *b"ok"
        );
        client.teardown_gpadl(offer.channel_id, id).await.unwrap();
        assert_eq!(ch.modify_target_vp(3).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn channel_cannot_be_opened_twice_and_reopens_after_close() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let _dev = spawn_device(&server, echo(4)).await;
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer = client.find_offer(interface(4)).unwrap();
        let ch = client.open(&offer, 1).await.unwrap();
        assert!(client.open(&offer, 1).await.is_err(), "double open");
        ch.close().await.unwrap();
        // Closed and torn down: it can be opened again.
        let mut ch = client.open(&offer, 1).await.unwrap();
        ch.request(&framed(b"again")).await.unwrap();
    }

    #[tokio::test]
    async fn revoked_offer_disappears() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let runner = offer_device(&server, echo(5)).await.unwrap();
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        assert!(client.find_offer(interface(5)).is_some());
        let dev = runner.revoke().await;
        assert_eq!(dev.tag, 5);
        assert!(client.find_offer(interface(5)).is_none());
    }

    #[tokio::test]
    async fn confidential_offer_puts_ring_in_private_memory() {
        let shared = memory();
        let private = memory();
        let server = spawn_server(&shared, Some(private.clone()));
        let _dev = spawn_device(&server, echo(6)).await;
        let client = VmbusClient::connect(
            &server,
            shared.clone(),
            Some(private.clone()),
            16..128,
            FeatureFlags::all(),
        )
        .await
        .unwrap();
        assert!(client.feature_flags().confidential_channels());
        let offer = client.find_offer(interface(6)).unwrap();
        assert!(offer.flags.confidential_ring_buffer());
        assert!(!offer.flags.confidential_external_memory());
        let mut ch = client.open(&offer, 1).await.unwrap();
        assert!(ch.uses_confidential_ring());
        let reply = ch.request(&framed(b"secret")).await.unwrap();
        assert_eq!(&reply.data()[2..8], b"secret");
        let mut all = vec![0; MEM_PAGES * PAGE_SIZE];
        shared.read_at(0, &mut all).unwrap();
        assert!(
            all.iter().all(|&b| b == 0),
            "nothing leaked to shared memory"
        );
        private.read_at(0, &mut all).unwrap();
        assert!(all.windows(6).any(|w| w == b"secret"));
    }

    #[tokio::test]
    async fn client_without_confidential_feature_uses_shared_rings() {
        let shared = memory();
        let private = memory();
        let server = spawn_server(&shared, Some(private.clone()));
        let _dev = spawn_device(&server, echo(7)).await;
        let client =
            VmbusClient::connect(&server, shared, Some(private), 16..128, FeatureFlags::new())
                .await
                .unwrap();
        let offer = client.find_offer(interface(7)).unwrap();
        let mut ch = client.open(&offer, 1).await.unwrap();
        assert!(!ch.uses_confidential_ring());
        ch.request(&framed(b"plain")).await.unwrap();
    }
}

mod hostile_guest {
    use super::*;

    #[tokio::test]
    async fn corrupt_ring_stops_only_its_own_channel() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let _a = spawn_device(&server, echo(20)).await;
        let _b = spawn_device(&server, echo(21)).await;
        let client = VmbusClient::connect(&server, mem.clone(), None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer_a = client.find_offer(interface(20)).unwrap();
        let offer_b = client.find_offer(interface(21)).unwrap();
        // Channel A's rings are the client's first allocation: its guest-to-host control
        // page is pfn 16.
        let mut a = client.open(&offer_a, 1).await.unwrap();
        let mut b = client.open(&offer_b, 1).await.unwrap();
        a.request(&framed(b"a")).await.unwrap();

        // The guest scribbles a write index far beyond the ring and rings the doorbell.
        mem.store_u32(16 * PAGE_SIZE as u64, 0x0100_0000).unwrap();
        a.signal_host();

        // B is unaffected.
        let reply = b.request(&framed(b"b")).await.unwrap();
        assert_eq!(&reply.data()[..3], &[21, 0, b'b']);
        // A gets no answer any more (its device stopped reading that ring)...
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(50), a.recv()).await;
        assert!(stalled.is_err());
        // ...but its control path still works: the guest can close it.
        a.close().await.unwrap();
    }
}

mod save_restore {
    use super::*;

    #[tokio::test]
    async fn three_channels_survive_save_and_restore_with_nothing_lost() {
        let mem = memory();
        let (server, runner) = VmbusServer::new(mem.clone(), None);
        let server_task = tokio::spawn(runner.run());
        let mut devices = Vec::new();
        for tag in 10..13 {
            let runner = offer_device(&server, echo(tag)).await.unwrap();
            devices.push((runner.stop_handle(), tokio::spawn(runner.run())));
        }
        let client = VmbusClient::connect(&server, mem.clone(), None, 16..200, FeatureFlags::all())
            .await
            .unwrap();
        let mut channels = Vec::new();
        let mut extra_gpadls = Vec::new();
        for tag in 10..13 {
            let offer = client.find_offer(interface(tag)).unwrap();
            let mut ch = client.open(&offer, 2).await.unwrap();
            let pfn = client.alloc_pages(1).unwrap();
            extra_gpadls.push(client.create_gpadl(offer.channel_id, &[pfn]).await.unwrap());
            let reply = ch.request(&framed(b"before")).await.unwrap();
            assert_eq!(reply.data()[..2], [tag, 0]);
            channels.push(ch);
        }

        // Stop the host side: the devices and the server pause (nothing is revoked), the
        // state is saved, then they go away; guest memory stays.
        for (stop, _) in &devices {
            stop.stop().await;
        }
        server.stop();
        let saved = server.save().unwrap();
        server_task.abort();
        drop(devices);
        drop(server);

        // While the host is down the guest keeps queueing requests in the rings.
        for ch in &mut channels {
            ch.send(&framed(b"during")).await.unwrap();
        }

        let (server2, runner2) = VmbusServer::restore(mem.clone(), None, &saved).unwrap();
        tokio::spawn(runner2.run());
        let mut handles = Vec::new();
        for tag in 10..13 {
            let dev = echo(tag);
            // The device kept its own state (its counter) across servicing.
            dev.handled.store(1, Ordering::SeqCst);
            let mut runner = offer_device(&server2, dev).await.unwrap();
            runner.restore().await.unwrap();
            assert!(runner.is_open());
            handles.push(tokio::spawn(runner.run()));
        }
        client.reattach(&server2).unwrap();

        for (i, ch) in channels.iter_mut().enumerate() {
            let tag = 10 + i as u8;
            // The packet queued during servicing is answered first...
            let queued = ch.recv().await.unwrap();
            assert_eq!(
                &queued.data()[..8],
                &[tag, 1, b'd', b'u', b'r', b'i', b'n', b'g']
            );
            // ...then new traffic continues.
            let reply = ch.request(&framed(b"after")).await.unwrap();
            assert_eq!(&reply.data()[..7], &[tag, 2, b'a', b'f', b't', b'e', b'r']);
        }
        // The extra GPADLs were restored too: tearing them down works.
        for (i, id) in extra_gpadls.into_iter().enumerate() {
            let offer = channels[i].offer().clone();
            client.teardown_gpadl(offer.channel_id, id).await.unwrap();
        }
        for ch in channels {
            ch.close().await.unwrap();
        }
    }

    #[tokio::test]
    async fn restore_without_saved_channel_is_refused() {
        let mem = memory();
        let (server, runner) = VmbusServer::new(mem.clone(), None);
        tokio::spawn(runner.run());
        let saved = server.save().unwrap();
        let (server2, runner2) = VmbusServer::restore(mem, None, &saved).unwrap();
        tokio::spawn(runner2.run());
        let mut device = offer_device(&server2, echo(30)).await.unwrap();
        assert!(device.restore().await.is_err());
    }

    #[test]
    fn corrupt_saved_state_is_an_error() {
        let mem = memory();
        assert!(VmbusServer::restore(mem.clone(), None, &[0xff; 7]).is_err());
        assert!(VmbusServer::restore(mem, None, &[]).is_err());
    }
}

mod lifetime {
    use super::*;

    #[tokio::test]
    async fn dropping_the_server_ends_the_runner_and_the_guest_sees_the_host_gone() {
        let mem = memory();
        let (server, runner) = VmbusServer::new(mem.clone(), None);
        let runner = tokio::spawn(runner.run());
        let device = spawn_device(&server, echo(40)).await;
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer = client.find_offer(interface(40)).unwrap();
        let mut ch = client.open(&offer, 1).await.unwrap();
        ch.request(&framed(b"x")).await.unwrap();
        drop(server);
        // The runner returns on its own...
        tokio::time::timeout(std::time::Duration::from_secs(5), runner)
            .await
            .expect("runner returns")
            .unwrap();
        // ...and so does the device runner (the bus dropped its channel); a control request
        // fails instead of waiting forever.
        let device = tokio::time::timeout(std::time::Duration::from_secs(5), device)
            .await
            .expect("device returns")
            .unwrap();
        assert!(device.is_open());
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.create_gpadl(offer.channel_id, &[100]),
        )
        .await
        .expect("request fails");
        assert!(matches!(
            err,
            Err(vmbus_channel::client::ClientError::Port(
                vmbus_channel::port::PortError::Disconnected
            ))
        ));
    }
}

mod monitor_pages {
    use super::*;

    /// Monitor pages are not implemented, so no offer asks for monitored notification, even
    /// when the device asks for a latency.
    #[tokio::test]
    async fn monitored_notification_is_never_advertised() {
        struct Mnf;
        #[async_trait]
        impl SimpleVmbusDevice for Mnf {
            fn offer(&self) -> OfferParams {
                OfferParams {
                    interface_id: interface(50),
                    mnf_interrupt_latency: Some(std::time::Duration::from_micros(100)),
                    ..Default::default()
                }
            }
            async fn handle_packet(
                &mut self,
                _ctx: &DeviceContext<'_>,
                _packet: &IncomingPacket,
            ) -> Result<Option<Vec<u8>>, DeviceError> {
                Ok(None)
            }
        }
        let mem = memory();
        let server = spawn_server(&mem, None);
        let _runner = offer_device(&server, Mnf).await.unwrap();
        let client = VmbusClient::connect(&server, mem, None, 16..128, FeatureFlags::all())
            .await
            .unwrap();
        let offer = client.find_offer(interface(50)).unwrap();
        assert!(!offer.flags.request_monitored_notification());
    }
}

mod unload {
    use super::*;
    use std::sync::Mutex;
    use vmbus_channel::control::MessageBuf;
    use vmbus_channel::interrupt::Interrupt;
    use vmbus_channel::port::MessagePort;
    use vmbus_channel::port::PortError;

    /// The guest's port, recording the type of every message the guest posts.
    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn MessagePort>,
        sent: Mutex<Vec<u32>>,
    }

    impl MessagePort for Recording {
        fn post_message(&self, message: &[u8]) -> Result<(), PortError> {
            self.sent
                .lock()
                .unwrap()
                .push(u32::from_le_bytes(message[..4].try_into().unwrap()));
            self.inner.post_message(message)
        }
        fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
            self.inner.poll_ready(cx)
        }
        fn try_recv(&self) -> Option<MessageBuf> {
            self.inner.try_recv()
        }
        fn signal_event(&self, id: u32) {
            self.inner.signal_event(id);
        }
        fn set_event_handler(&self, id: u32, handler: Option<Interrupt>) {
            self.inner.set_event_handler(id, handler);
        }
    }

    /// A rescind that arrived while the guest was idle is released before UNLOAD goes out,
    /// and nothing follows UNLOAD.
    #[tokio::test]
    async fn rescind_pending_at_unload_is_released_first() {
        let mem = memory();
        let server = spawn_server(&mem, None);
        let runner = offer_device(&server, echo(60)).await.unwrap();
        let port = Arc::new(Recording {
            inner: server.guest_port().unwrap(),
            sent: Mutex::new(Vec::new()),
        });
        let client =
            VmbusClient::connect_port(port.clone(), mem, None, 16..128, FeatureFlags::all())
                .await
                .unwrap();
        assert!(client.find_offer(interface(60)).is_some());
        // The device leaves while the guest does nothing: the rescind waits in the port.
        runner.revoke().await;
        client.unload().await.unwrap();
        let sent = port.sent.lock().unwrap().clone();
        // ..., REL_ID_RELEASED (13), UNLOAD (16) and nothing after.
        assert_eq!(&sent[sent.len() - 2..], &[13, 16], "{sent:?}");
        assert_eq!(server.control_state().channel_count(), 0);
    }
}
