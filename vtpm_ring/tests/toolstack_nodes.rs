//! Nodes the toolstack creates in a domain's directories count against no quota of that
//! domain's: a backend configured for many devices still writes its own keys.

#![forbid(unsafe_code)]

use uuid::Uuid;
use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::testbed::BACKEND_DOMAIN;
use vtpm_ring::xenbus::VtpmDevice;
use vtpm_ring::xenbus::backend_dir;
use vtpm_ring::xenbus::create_device;

/// 112 devices: the toolstack (dom0) creates 9 nodes per device in the backend's home, all
/// owned by the backend domain (dom0's creations inherit the parent's owner), more than the
/// backend's 1000-node quota. Charged to it, they left no room for the backend's own first
/// write of a key of its own device (`feature-protocol-v2`, which every device task writes
/// first): refused with `Quota`, the backend could serve none of the devices.
#[test]
fn a_backend_writes_its_own_keys_with_many_devices_configured() {
    let host = Host::new();
    let backend = host.create_domain(BACKEND_DOMAIN, 1).unwrap();
    for i in 0..112u16 {
        let guest = host.create_domain(DomainId(2 + i), 1).unwrap();
        create_device(
            &host.toolstack(),
            &VtpmDevice {
                backend: BACKEND_DOMAIN,
                frontend: guest.id(),
                handle: 0,
                instance: u32::from(i) + 1,
                uuid: Uuid::from_u128(u128::from(i) + 1),
            },
        )
        .unwrap();
    }
    let bdir = backend_dir(BACKEND_DOMAIN, DomainId(2), 0);
    let wrote = backend
        .store()
        .write_in_place(&format!("{bdir}/feature-protocol-v2"), "1");
    assert_eq!(
        wrote,
        Ok(()),
        "the backend cannot write its own device's key"
    );
}
