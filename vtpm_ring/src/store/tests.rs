//! The store's rules, tried from the domains' side: permissions, ownership, quotas, the
//! tree's operations and paths (the watches' tests are beside them, in `watch`).

use super::*;
use crate::domain::Host;

/// A host with domains 1 and 2: the host, dom0's store, domain 1's and domain 2's.
pub(in crate::store) fn setup() -> (Host, StoreHandle, StoreHandle, StoreHandle) {
    let host = Host::new();
    let a = host.create_domain(DomainId(1), 1).unwrap();
    let b = host.create_domain(DomainId(2), 1).unwrap();
    (
        host.clone(),
        host.toolstack().store().clone(),
        a.store(),
        b.store(),
    )
}

mod permissions {
    use super::*;

    #[test]
    fn domain_writes_its_own_home() {
        let (_, _, a, _) = setup();
        a.write("device/x", "1").unwrap();
        assert_eq!(a.read("/local/domain/1/device/x").unwrap(), "1");
    }

    #[test]
    fn guest_cannot_write_or_read_another_domains_keys() {
        let (_, _, a, b) = setup();
        a.write("secret", "s").unwrap();
        assert!(matches!(
            b.write("/local/domain/1/secret", "x"),
            Err(StoreError::PermissionDenied { .. })
        ));
        assert!(matches!(
            b.write("/local/domain/1/new", "x"),
            Err(StoreError::PermissionDenied { .. })
        ));
        assert!(matches!(
            b.read("/local/domain/1/secret"),
            Err(StoreError::PermissionDenied { .. })
        ));
        assert!(matches!(
            b.rm("/local/domain/1/secret"),
            Err(StoreError::PermissionDenied { .. })
        ));
        assert_eq!(a.read("secret").unwrap(), "s");
    }

    #[test]
    fn an_in_place_write_never_brings_a_removed_directory_back() {
        let (_, _, a, b) = setup();
        a.write("device/vtpm/0/state", "1").unwrap();
        // Updates and new keys in a directory that exists.
        a.write_in_place("device/vtpm/0/state", "2").unwrap();
        a.write_in_place("device/vtpm/0/error", "e").unwrap();
        assert_eq!(a.read("device/vtpm/0/state").unwrap(), "2");
        a.rm("device/vtpm/0").unwrap();
        assert!(matches!(
            a.write_in_place("device/vtpm/0/state", "6"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(a.try_read("device/vtpm/0").unwrap(), None);
        assert_eq!(a.try_read("device/vtpm").unwrap(), Some(String::new()));
        // Another domain learns no more than from a plain write.
        assert!(matches!(
            b.write_in_place("/local/domain/1/device/vtpm/0/state", "6"),
            Err(StoreError::PermissionDenied { .. })
        ));
    }

    #[test]
    fn guest_cannot_create_outside_its_home() {
        let (_, _, a, _) = setup();
        assert!(a.write("/tool/x", "1").is_err());
        assert!(a.write("/local/domain/7/x", "1").is_err());
    }

    #[test]
    fn read_grant_allows_read_not_write() {
        let (_, _, a, b) = setup();
        a.write("shared", "v").unwrap();
        a.set_perms(
            "shared",
            Perms::private(DomainId(1)).with(DomainId(2), Perm::Read),
        )
        .unwrap();
        assert_eq!(b.read("/local/domain/1/shared").unwrap(), "v");
        assert!(b.write("/local/domain/1/shared", "w").is_err());
    }

    #[test]
    fn only_owner_changes_permissions() {
        let (_, _, a, b) = setup();
        a.write("n", "v").unwrap();
        a.set_perms(
            "n",
            Perms::private(DomainId(1)).with(DomainId(2), Perm::Read),
        )
        .unwrap();
        assert!(
            b.set_perms("/local/domain/1/n", Perms::private(DomainId(2)))
                .is_err()
        );
    }

    #[test]
    fn only_dom0_changes_a_nodes_owner() {
        let (_, dom0, a, _) = setup();
        a.write("n", "v").unwrap();
        assert!(matches!(
            a.set_perms("n", Perms::private(DomainId(2))),
            Err(StoreError::PermissionDenied { .. })
        ));
        assert_eq!(a.get_perms("n").unwrap().owner, DomainId(1));
        // The owner still changes who else may access it.
        a.set_perms(
            "n",
            Perms::private(DomainId(1)).with(DomainId(2), Perm::Read),
        )
        .unwrap();
        dom0.set_perms("/local/domain/1/n", Perms::private(DomainId(2)))
            .unwrap();
        assert_eq!(
            dom0.get_perms("/local/domain/1/n").unwrap().owner,
            DomainId(2)
        );
    }

    #[test]
    fn giving_nodes_away_does_not_escape_the_quota() {
        let (_, _, a, _) = setup();
        let mut created = 0;
        for i in 0..2 * MAX_NODES_PER_DOMAIN {
            let node = format!("flood/{i}");
            if a.write(&node, "x").is_err() {
                break;
            }
            created += 1;
            // Hand the node to domain 2 while keeping full access to it.
            let _ = a.set_perms(
                &node,
                Perms::private(DomainId(2)).with(DomainId(1), Perm::Both),
            );
        }
        assert!(created < MAX_NODES_PER_DOMAIN, "created {created} nodes");
    }

    #[test]
    fn children_inherit_permissions_with_creator_as_owner() {
        let (_, dom0, _, b) = setup();
        dom0.write("/shared/dir", "").unwrap();
        dom0.set_perms(
            "/shared/dir",
            Perms::private(DomainId(1)).with(DomainId(2), Perm::Write),
        )
        .unwrap();
        b.write("/shared/dir/child", "c").unwrap();
        let perms = b.get_perms("/shared/dir/child").unwrap();
        assert_eq!(perms.owner, DomainId(2));
    }

    #[test]
    fn a_guest_cannot_tell_a_private_node_from_a_missing_one() {
        let (_, _, a, b) = setup();
        a.write("secret", "s").unwrap();
        let there = "/local/domain/1/secret";
        let absent = "/local/domain/1/absent";
        type Probe<'a> = (&'a str, &'a dyn Fn(&str) -> StoreError);
        let ops: [Probe<'_>; 6] = [
            ("read", &|p| b.read(p).unwrap_err()),
            ("write", &|p| b.write(p, "x").unwrap_err()),
            ("remove", &|p| b.rm(p).unwrap_err()),
            ("list", &|p| b.directory(p).unwrap_err()),
            ("read permissions of", &|p| b.get_perms(p).unwrap_err()),
            ("change permissions of", &|p| {
                b.set_perms(p, Perms::private(DomainId(2))).unwrap_err()
            }),
        ];
        for (op, f) in ops {
            let (e1, e2) = (f(there), f(absent));
            assert!(
                matches!(&e1, StoreError::PermissionDenied { op: o, .. } if *o == op),
                "{e1:?}"
            );
            assert_eq!(
                e1.to_string().replace(there, "P"),
                e2.to_string().replace(absent, "P"),
                "{op}"
            );
        }
        // Where it may look, a missing node is reported missing.
        assert_eq!(
            a.read("absent"),
            Err(StoreError::NotFound(absent.to_string()))
        );
        assert_eq!(b.try_read("absent"), Ok(None));
    }

    #[test]
    fn an_access_list_longer_than_the_quota_is_refused() {
        let (_, dom0, a, _) = setup();
        a.write("node", "").unwrap();
        let mut perms = Perms::private(DomainId(1));
        for d in 2..2 + MAX_PERMS_PER_NODE {
            perms = perms.with(DomainId(u16::try_from(d).unwrap()), Perm::Read);
        }
        a.set_perms("node", perms.clone()).unwrap();
        let long = perms.with(DomainId(99), Perm::Read);
        let refused = Err(StoreError::TooManyPerms(MAX_PERMS_PER_NODE + 1));
        assert_eq!(a.set_perms("node", long.clone()), refused);
        assert_eq!(dom0.set_perms("/local/domain/1/node", long), refused);
        assert_eq!(a.get_perms("node").unwrap().acl.len(), MAX_PERMS_PER_NODE);
    }

    #[test]
    fn charged_counts_follow_creates_removals_and_owner_changes() {
        let (_, dom0, a, b) = setup();
        let scan = |d: DomainId| {
            let state = dom0.store.lock();
            let counted = state.charged_to(d);
            let scanned = state
                .nodes
                .values()
                .filter(|n| n.charged && n.perms.owner == d)
                .count();
            (counted, scanned)
        };
        let check = || {
            for d in [DomainId::DOM0, DomainId(1), DomainId(2)] {
                let (counted, scanned) = scan(d);
                assert_eq!(counted, scanned, "{d}");
            }
        };
        check();
        a.write("x/y/z", "1").unwrap();
        check();
        dom0.write("/local/domain/1/x/dom0", "").unwrap();
        check();
        dom0.set_perms("/local/domain/1/x/y", Perms::private(DomainId(2)))
            .unwrap();
        check();
        b.write("/local/domain/1/x/y/b", "").unwrap();
        check();
        a.rm("x").unwrap();
        check();
        // Only the home is left, the toolstack's: charged to nobody.
        assert_eq!(scan(DomainId(1)).0, 0);
        assert_eq!(scan(DomainId(2)).0, 0);
    }

    #[test]
    fn the_toolstacks_nodes_leave_a_domain_its_whole_quota() {
        let (_, dom0, a, _) = setup();
        for i in 0..2 * MAX_NODES_PER_DOMAIN {
            dom0.write(&format!("/local/domain/1/config/{i}"), "x")
                .unwrap();
        }
        assert_eq!(a.read("config/0").unwrap(), "x");
        let mut created = 0;
        while a.write(&format!("own/{created}"), "x").is_ok() {
            created += 1;
        }
        // "own" itself is one of the domain's nodes.
        assert_eq!(created + 1, MAX_NODES_PER_DOMAIN);
        // Removing and re-creating the toolstack's nodes is the domain's doing: charged.
        a.rm("own").unwrap();
        a.rm("config/0").unwrap();
        a.write("config/0", "y").unwrap();
        let state = dom0.store.lock();
        assert_eq!(state.charged_to(DomainId(1)), 1);
    }

    #[test]
    fn quotas_are_per_domain_and_set_by_the_toolstack() {
        let (host, _, a, b) = setup();
        let toolstack = host.toolstack();
        let raised = StoreQuota {
            nodes: 2 * MAX_NODES_PER_DOMAIN,
            watches: 2 * MAX_WATCHES_PER_DOMAIN,
        };
        toolstack.set_store_quota(DomainId(1), raised).unwrap();
        assert_eq!(toolstack.store_quota(DomainId(1)), raised);
        assert_eq!(toolstack.store_quota(DomainId(2)), StoreQuota::default());
        for (domain, store, quota) in [(1, &a, raised), (2, &b, StoreQuota::default())] {
            let held: Vec<Watch> = (0..quota.watches)
                .map(|_| store.watch("").unwrap())
                .collect();
            assert!(matches!(store.watch(""), Err(StoreError::Quota(d)) if d == DomainId(domain)));
            drop(held);
            // The home is the toolstack's: every node of the quota is the domain's.
            for i in 0..quota.nodes {
                store.write(&format!("n{i}"), "").unwrap();
            }
            assert_eq!(
                store.write("one-more", ""),
                Err(StoreError::Quota(DomainId(domain)))
            );
        }
        assert_eq!(
            toolstack.set_store_quota(DomainId::DOM0, raised),
            Err(crate::domain::DomainError::Reserved(DomainId::DOM0))
        );
    }

    #[test]
    fn node_quota_stops_a_flooding_guest() {
        let (_, _, a, _) = setup();
        let mut last = Ok(());
        for i in 0..=MAX_NODES_PER_DOMAIN {
            last = a.write(&format!("flood/{i}"), "x");
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(StoreError::Quota(DomainId(1))));
    }
}

mod tree {
    use super::*;

    #[test]
    fn directory_lists_children_only() {
        let (_, _, a, _) = setup();
        a.write("d/x", "1").unwrap();
        a.write("d/y/z", "2").unwrap();
        assert_eq!(a.directory("d").unwrap(), vec!["x", "y"]);
    }

    #[test]
    fn rm_removes_subtree() {
        let (_, _, a, _) = setup();
        a.write("d/x/y", "1").unwrap();
        a.rm("d/x").unwrap();
        assert_eq!(a.try_read("d/x/y").unwrap(), None);
        assert_eq!(a.directory("d").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_bad_value_is_quoted_in_part_however_long_or_strange() {
        let (_, _, a, _) = setup();
        for (value, quoted) in [
            ("x".to_string(), "\"x\""),
            ("\u{1}".repeat(MAX_VALUE_LEN), "\"\\u{1}\\u{1}"),
            ("y".repeat(MAX_VALUE_LEN), "\"yyyy"),
        ] {
            a.write("n", &value).unwrap();
            let e = a.read_num::<u32>("n").unwrap_err();
            let text = e.to_string();
            assert!(text.contains(quoted), "{text}");
            assert!(text.contains(&format!("({} bytes)", value.len())), "{text}");
            assert!(text.len() < 512, "{} bytes of error text", text.len());
        }
    }

    #[test]
    fn invalid_paths_are_refused() {
        let (_, dom0, a, _) = setup();
        // "//" is no path: it once trimmed to "", below nothing, which every watch matched.
        for p in ["//", "///", "/local//domain", "a//", "//local/domain/1"] {
            assert!(
                matches!(a.resolve(p), Err(StoreError::InvalidPath(_))),
                "{p:?} resolved to {:?}",
                a.resolve(p)
            );
            assert!(dom0.watch(p).is_err(), "{p:?} watched");
        }
        assert_eq!(a.resolve("").as_deref(), Ok("/local/domain/1"));
        assert_eq!(a.resolve("dev/").as_deref(), Ok("/local/domain/1/dev"));
        assert_eq!(dom0.resolve("/").as_deref(), Ok("/"));
        assert!(a.write("a//b", "1").is_err());
        assert!(a.write("a/b c", "1").is_err());
        assert!(a.write(&"x".repeat(MAX_PATH_LEN + 1), "1").is_err());
        assert!(a.write("ok", &"v".repeat(MAX_VALUE_LEN + 1)).is_err());
    }
}
