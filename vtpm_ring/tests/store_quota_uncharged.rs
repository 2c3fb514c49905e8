//! A guest cannot use the toolstack's uncharged nodes to exceed its quota (written by the
//! review of wave 9b, which found no defect there).

#![forbid(unsafe_code)]

use vtpm_ring::domain::DomainId;
use vtpm_ring::domain::Host;
use vtpm_ring::store::MAX_NODES_PER_DOMAIN;
use vtpm_ring::store::StoreError;

/// The guest fills its quota, then removes and re-creates the toolstack's nodes, moves
/// its own nodes under them and writes over them: it never ends up with more nodes it
/// created than its quota.
#[test]
fn uncharged_nodes_never_make_room_for_a_guests_own() {
    let host = Host::new();
    let guest = host.create_domain(DomainId(5), 1).unwrap();
    let ts = host.toolstack();
    for i in 0..50 {
        ts.store()
            .write(&format!("/local/domain/5/cfg/{i}"), "x")
            .unwrap();
    }
    let g = guest.store();
    let mut mine = 0;
    while g.write(&format!("own/{mine}"), "x").is_ok() {
        mine += 1;
    }
    assert_eq!(mine + 1, MAX_NODES_PER_DOMAIN);
    // Writing over the toolstack's nodes is allowed and creates nothing.
    for i in 0..50 {
        g.write(&format!("cfg/{i}"), &"y".repeat(100)).unwrap();
    }
    // Removing one of the toolstack's frees nothing of the guest's quota.
    g.rm("cfg/0").unwrap();
    assert!(matches!(g.write("cfg/0", "z"), Err(StoreError::Quota(_))));
    assert!(matches!(
        g.write("cfg/1/child", "z"),
        Err(StoreError::Quota(_))
    ));
    // Its own perms changes move nothing either.
    let perms = g.get_perms("cfg/1").unwrap();
    g.set_perms("cfg/1", perms).unwrap();
    assert!(matches!(g.write("new", "z"), Err(StoreError::Quota(_))));
    // Removing its home (owned, uncharged) and re-creating it is charged.
    g.rm("own").unwrap();
    let mut again = 0;
    while g.write(&format!("own/{again}"), "x").is_ok() {
        again += 1;
    }
    assert_eq!(again + 1, MAX_NODES_PER_DOMAIN);
}
