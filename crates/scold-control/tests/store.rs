//! The coordinator's store, the same checks on both back ends: one redb file, and a real
//! etcd (Debian `etcd-server`) as coordinator replicas share it. Then what only the
//! shared store needs: a fenced writer is stopped once another replica leads.

use scold_control::etcd::{Compare, Etcd, Op};
use scold_control::store::{
    Batch, EventRecord, Fence, Health, NodeRecord, Pool, Store, StoreError,
};
use scold_proto::control::NodeInfo;
use scold_proto::identity::Role;
use scold_proto::state::{Event, TargetState};
use scold_testkit::EtcdCluster;
use std::time::Duration;

fn event(i: u64) -> EventRecord {
    EventRecord {
        at_ms: i,
        subject: if i.is_multiple_of(2) {
            "web"
        } else {
            "proxy/p1"
        }
        .into(),
        event: if i.is_multiple_of(3) {
            "phase"
        } else {
            "registered"
        }
        .into(),
        detail: format!("#{i}"),
        phase: None,
    }
}

/// Writes a target, a node and events through `open()`, opens the store again, and
/// checks what it reads back; then bounded retention and the audit log's filters.
fn same_behaviour(open: &dyn Fn() -> Store) {
    let mut st = TargetState::default();
    st.apply(
        1,
        Event::Alarm {
            proxies: vec!["p1".into()],
        },
    );
    let node = NodeRecord {
        role: Role::Proxy,
        name: "p1".into(),
        info: NodeInfo::default(),
        health: Health::Up,
        last_seen_ms: Some(5),
        attacked_until_ms: None,
        pool: Pool::Member,
        runtime: false,
    };
    // A proxy added at run time and removed: its pool state is durable too.
    let added = NodeRecord {
        name: "p3".into(),
        health: Health::Down,
        last_seen_ms: None,
        pool: Pool::Removed,
        runtime: true,
        ..node.clone()
    };
    {
        let s = open();
        let seqs = s
            .commit(Batch {
                targets: vec![("web", &st)],
                nodes: vec![&node, &added],
                events: (0..3).map(event).collect(),
                target_configs: Vec::new(),
                removed_targets: Vec::new(),
            })
            .unwrap();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
    // A target added at run time: its configuration is kept until it is removed.
    let example: scold_control::config::Config =
        toml::from_str(scold_control::config::EXAMPLE_CONFIG).unwrap();
    let mut mail = example.targets[0].clone();
    mail.name = "mail".into();
    open()
        .commit(Batch {
            target_configs: vec![("mail", Some(&mail))],
            targets: vec![("mail", &TargetState::default())],
            ..Default::default()
        })
        .unwrap();
    assert!(open().targets().unwrap().contains_key("mail"));
    let kept = open().target_configs().unwrap();
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["mail"], "{kept:?}");
    assert_eq!(format!("{:?}", kept["mail"]), format!("{mail:?}"));
    open()
        .commit(Batch {
            target_configs: vec![("mail", None)],
            removed_targets: vec!["mail"],
            ..Default::default()
        })
        .unwrap();
    assert!(open().target_configs().unwrap().is_empty());
    assert!(!open().targets().unwrap().contains_key("mail"));
    let s = open().keep_events(10);
    assert_eq!(s.targets().unwrap().get("web"), Some(&st));
    assert_eq!(s.nodes().unwrap(), vec![node, added]);
    let ev = s.events(2).unwrap();
    assert_eq!(ev.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![2, 3]);
    // A commit of nothing writes nothing.
    assert!(s.commit(Batch::default()).unwrap().is_empty());
    for i in 3..25u64 {
        s.commit(Batch {
            events: vec![event(i)],
            ..Default::default()
        })
        .unwrap();
    }
    let all = s.events(1000).unwrap();
    assert_eq!(all.len(), 10, "{all:?}");
    assert_eq!(all.first().unwrap().1.detail, "#15");
    assert_eq!(all.last().unwrap().1.detail, "#24");
    assert_eq!(all.last().unwrap().0, 25, "sequence numbers go on");
    let web_phases = s
        .events_where(1000, |e| e.subject == "web" && e.event == "phase")
        .unwrap();
    let details: Vec<&str> = web_phases.iter().map(|(_, e)| e.detail.as_str()).collect();
    assert_eq!(details, ["#18", "#24"]);
    let newest_two = s.events_where(2, |e| e.subject == "proxy/p1").unwrap();
    let details: Vec<&str> = newest_two.iter().map(|(_, e)| e.detail.as_str()).collect();
    assert_eq!(details, ["#21", "#23"]);
}

#[test]
fn redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    same_behaviour(&|| Store::open(&path).unwrap());
}

#[test]
fn etcd_store() {
    let cluster = EtcdCluster::start(1);
    let clients = cluster.clients();
    same_behaviour(&|| {
        Store::etcd(
            Etcd::new(clients.clone(), Duration::from_secs(5)),
            "/scold-test/",
            None,
        )
        .unwrap()
    });
    // Many events: the audit log is read back page by page, newest first.
    let s = Store::etcd(
        Etcd::new(clients.clone(), Duration::from_secs(5)),
        "/scold-many/",
        None,
    )
    .unwrap();
    for chunk in 0..12u64 {
        s.commit(Batch {
            events: (chunk * 100..chunk * 100 + 100).map(event).collect(),
            ..Default::default()
        })
        .unwrap();
    }
    let all = s.events(5000).unwrap();
    assert_eq!(all.len(), 1200);
    assert!(all.windows(2).all(|w| w[0].0 + 1 == w[1].0), "in order");
    assert_eq!(s.events(1).unwrap()[0].1.detail, "#1199");
}

#[test]
fn a_deposed_leader_writes_nothing() {
    let cluster = EtcdCluster::start(1);
    let etcd = || Etcd::new(cluster.clients(), Duration::from_secs(5));
    let key = b"/scold-fence/leader".to_vec();
    // Replica A leads: its leader key, on a lease.
    let a = etcd();
    let lease = a.lease_grant(5).unwrap();
    let won = a
        .txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::Put {
                key: key.clone(),
                value: b"a".to_vec(),
                lease,
            }],
            &[],
        )
        .unwrap();
    assert!(won.succeeded);
    let fence = Fence {
        key: key.clone(),
        create_revision: won.revision,
    };
    let store_a = Store::etcd(a, "/scold-fence/", Some(fence.clone())).unwrap();
    store_a
        .commit(Batch {
            events: vec![event(1)],
            ..Default::default()
        })
        .unwrap();
    // A's lease ends (it was cut off); B takes the lead with a key of its own.
    let b = etcd();
    b.lease_revoke(lease).unwrap();
    let won_b = b
        .txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::Put {
                key: key.clone(),
                value: b"b".to_vec(),
                lease: 0,
            }],
            &[],
        )
        .unwrap();
    assert!(won_b.succeeded, "B could not take the lead");
    let store_b = Store::etcd(
        b,
        "/scold-fence/",
        Some(Fence {
            key: key.clone(),
            create_revision: won_b.revision,
        }),
    )
    .unwrap();
    // A, deposed, can write nothing; B can.
    let err = store_a
        .commit(Batch {
            events: vec![event(2)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Deposed), "{err}");
    store_b
        .commit(Batch {
            events: vec![event(3)],
            ..Default::default()
        })
        .unwrap();
    let details: Vec<String> = store_b
        .events(10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.detail)
        .collect();
    assert_eq!(details, ["#1", "#3"]);
}

#[test]
fn an_unreachable_etcd_is_a_clear_error() {
    let port = scold_testkit::free_port();
    let e = Store::etcd(
        Etcd::new(
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
            Duration::from_secs(1),
        ),
        "/scold/",
        None,
    )
    .err()
    .expect("a store without etcd")
    .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}
