//! The fleet's etcd mechanics against a real 3-member etcd cluster on loopback: the lease
//! lock and its fencing token, a paused holder's late publish refused, pending work read by a
//! successor, watches across compaction, one member down, all members down, host reports,
//! and no private key in an etcd dump.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use certagent::cluster::{
    ClusterConfig, FENCED, Fleet, FleetKey, HostReport, Pending, Published, PublishedEvent, seal,
};
use common::etcd::{EtcdCluster, Gate};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(2);
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

fn config(endpoints: Vec<String>, node: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(endpoints, "/unused".into());
    c.node = node.to_string();
    c.lease_ttl = TTL;
    c.request_timeout = TIMEOUT;
    c
}

async fn fleet(endpoints: Vec<String>, node: &str) -> Fleet {
    Fleet::connect(&config(endpoints, node)).await.unwrap()
}

fn fleet_key() -> FleetKey {
    FleetKey::from_bytes([42; 32])
}

fn record(name: &str, generation: u64) -> Published {
    Published {
        name: name.into(),
        generation,
        serial: format!("{generation:02x}"),
        fullchain_pem: format!(
            "-----BEGIN CERTIFICATE-----\ngen{generation}\n-----END CERTIFICATE-----\n"
        ),
        sealed_key: seal::seal(&fleet_key(), name, generation, KEY_PEM.as_bytes()).unwrap(),
        node: String::new(),
        fencing_token: 0,
        reason: "expiring".into(),
        published_at: 1_800_000_000,
        compromised_spki: None,
    }
}

fn pending(name: &str, generation: u64, order_url: Option<&str>) -> Pending {
    Pending {
        name: name.into(),
        generation,
        order_url: order_url.map(str::to_string),
        sealed_key: seal::seal(&fleet_key(), name, generation, KEY_PEM.as_bytes()).unwrap(),
        node: String::new(),
        fencing_token: 0,
        reason: "expiring".into(),
        started_at: 1_800_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_contend_for_one_lock_and_the_second_gets_it_after_release() {
    let etcd = EtcdCluster::start(3);
    let a = fleet(etcd.endpoints(), "web-1").await;
    let b = fleet(etcd.endpoints(), "web-2").await;
    let held = a
        .acquire("www", Duration::ZERO)
        .await
        .unwrap()
        .expect("web-1 takes the free lock");
    assert_eq!(a.lock_holder("www").await.unwrap().unwrap().node, "web-1");
    assert!(
        b.acquire("www", Duration::ZERO).await.unwrap().is_none(),
        "web-2 must not get a held lock"
    );

    let waiting = tokio::spawn(async move {
        let lock = b.acquire("www", Duration::from_secs(20)).await.unwrap();
        (b, lock)
    });
    // web-2 is in line once it holds a lease of its own (web-1's is the other one).
    let in_line = common::wait_until(Duration::from_secs(10), || {
        let out = etcd.etcdctl(&["lease", "list"]);
        String::from_utf8_lossy(&out.stdout).contains("found 2 leases")
    });
    assert!(in_line, "web-2 never started waiting for the lock");
    let first_token = held.token();
    held.release(&a).await.unwrap();
    let (b, lock) = waiting.await.unwrap();
    let lock = lock.expect("web-2 gets the lock once web-1 released it");
    assert!(
        lock.token() > first_token,
        "fencing tokens grow: {} then {}",
        first_token,
        lock.token()
    );
    assert_eq!(b.lock_holder("www").await.unwrap().unwrap().node, "web-2");
    b.publish(&lock, record("www", 1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_and_its_late_publish_is_refused() {
    let etcd = EtcdCluster::start(3);
    let gate = Gate::new(etcd.members[0].client_port);
    let stale = fleet(vec![gate.endpoint()], "web-1").await;
    let successor = fleet(etcd.endpoints(), "web-2").await;
    let old = stale.acquire("www", Duration::ZERO).await.unwrap().unwrap();

    gate.close(); // web-1 is paused: nothing it sends reaches etcd, its lease runs out
    let started = Instant::now();
    let new = successor
        .acquire("www", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("web-2 takes the lock once web-1's lease expired");
    assert!(
        started.elapsed() >= TTL / 2,
        "taken only after the lease ran out"
    );
    assert!(new.token() > old.token());
    successor.publish(&new, record("www", 2)).await.unwrap();

    gate.open(); // web-1 wakes up and carries on as if it still held the lock
    assert!(
        tokio::time::timeout(TTL * 3, old.lost()).await.is_ok(),
        "web-1 learns that its lease is gone"
    );
    let err = stale
        .publish(&old, record("www", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("failed to publish \"www\" generation 1: "),
        "{err}"
    );
    assert!(err.contains(FENCED), "{err}");
    let err = stale
        .journal_pending(&old, pending("www", 1, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(FENCED), "{err}");
    old.release(&stale).await.unwrap();

    let (published, _) = successor.published("www").await.unwrap();
    let published = published.unwrap();
    assert_eq!(
        (published.generation, published.node.as_str()),
        (2, "web-2")
    );
    assert_eq!(published.fencing_token, new.token());
    assert_eq!(
        successor.lock_holder("www").await.unwrap().unwrap().node,
        "web-2",
        "the stale holder's release must not delete its successor's lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_resumes_the_pending_order_its_predecessor_journalled() {
    let etcd = EtcdCluster::start(3);
    let first = fleet(etcd.endpoints(), "web-1").await;
    let lock = first.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    first
        .journal_pending(&lock, pending("www", 7, None))
        .await
        .unwrap();
    let url = "https://ca.test/order/123";
    first
        .journal_pending(&lock, pending("www", 7, Some(url)))
        .await
        .unwrap();
    drop(lock); // web-1 dies mid-order: no release, its lease expires
    drop(first);

    let second = fleet(etcd.endpoints(), "web-2").await;
    let lock = second
        .acquire("www", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("web-2 gets the lock after web-1's lease expired");
    let work = second
        .pending("www")
        .await
        .unwrap()
        .expect("the pending record survives its writer");
    assert_eq!(work.order_url.as_deref(), Some(url));
    assert_eq!((work.node.as_str(), work.generation), ("web-1", 7));
    let key = seal::open(&fleet_key(), "www", work.generation, &work.sealed_key).unwrap();
    assert_eq!(&key[..], KEY_PEM.as_bytes());

    second.publish(&lock, record("www", 7)).await.unwrap();
    assert!(
        second.pending("www").await.unwrap().is_none(),
        "publishing ends the pending work"
    );
}

async fn next_event(watch: &mut certagent::cluster::PublishedWatch<'_>) -> PublishedEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_publish_and_resyncs_after_a_compaction() {
    let etcd = EtcdCluster::start(3);
    let holder = fleet(etcd.endpoints(), "web-1").await;
    let host = fleet(etcd.endpoints(), "web-2").await;
    let (current, revision) = host.published("www").await.unwrap();
    assert!(current.is_none());
    let mut watch = host.watch_published("www", revision).unwrap();

    let lock = holder
        .acquire("www", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    for generation in 1..=3 {
        holder
            .publish(&lock, record("www", generation))
            .await
            .unwrap();
    }
    for generation in 1..=3 {
        match next_event(&mut watch).await {
            PublishedEvent::Published { record, .. } => assert_eq!(record.generation, generation),
            other => panic!("expected generation {generation}, got {other:?}"),
        }
    }

    // The host is away (its watch resumes later from what it saw) while two more are
    // published and the history is compacted past its revision.
    let seen = watch.seen();
    drop(watch);
    holder.publish(&lock, record("www", 4)).await.unwrap();
    holder.publish(&lock, record("www", 5)).await.unwrap();
    let compacted = etcd.compact_now();
    assert!(compacted > seen + 1);
    let mut watch = host.watch_published("www", seen).unwrap();
    match next_event(&mut watch).await {
        PublishedEvent::Resynced { record, revision } => {
            assert_eq!(record.unwrap().generation, 5);
            assert!(revision >= compacted);
        }
        other => panic!("expected a resync after the compaction, got {other:?}"),
    }
    holder.publish(&lock, record("www", 6)).await.unwrap();
    match next_event(&mut watch).await {
        PublishedEvent::Published { record, .. } => assert_eq!(record.generation, 6),
        other => panic!("expected generation 6 after the resync, got {other:?}"),
    }
}

/// Index of the member that leads the cluster now.
fn leader(etcd: &EtcdCluster) -> usize {
    let out = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses = doc.as_array().unwrap();
    let leader = statuses[0]["Status"]["leader"].as_u64().unwrap();
    let endpoint = statuses
        .iter()
        .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .unwrap()["Endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    etcd.members
        .iter()
        .position(|m| m.client_port == port)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_of_three_down_changes_nothing() {
    let mut etcd = EtcdCluster::start(3);
    let a = fleet(etcd.endpoints(), "web-1").await;
    let b = fleet(etcd.endpoints(), "web-2").await;
    let (_, revision) = b.published("www").await.unwrap();
    let mut watch = b.watch_published("www", revision).unwrap();
    let lock = a.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    a.publish(&lock, record("www", 1)).await.unwrap();
    assert!(
        matches!(next_event(&mut watch).await, PublishedEvent::Published { record, .. } if record.generation == 1)
    );

    etcd.kill_member(leader(&etcd)); // the leader, the hardest one to lose
    // Writes may fail while the two survivors elect a new leader: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = a.publish(&lock, record("www", 2)).await {
        assert!(
            Instant::now() < deadline,
            "publish never worked with one member down: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .unwrap()
        {
            Ok(event) => break event,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await, // resumes
        }
    };
    assert!(
        matches!(&event, PublishedEvent::Published { record, .. } if record.generation == 2),
        "{event:?}"
    );
    lock.release(&a).await.unwrap();
    let lock = b
        .acquire("www", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the lock works with two members");
    b.publish(&lock, record("www", 3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_down_operations_fail_quickly_and_say_why() {
    let mut etcd = EtcdCluster::start(3);
    let a = fleet(etcd.endpoints(), "web-1").await;
    let lock = a.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    let (_, revision) = a.published("www").await.unwrap();
    etcd.stop_all();

    let bound = TIMEOUT * 2 + Duration::from_secs(1);
    let started = Instant::now();
    let err = tokio::time::timeout(bound, a.publish(&lock, record("www", 1)))
        .await
        .expect("publish returns")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to publish \"www\" generation 1: "),
        "{err}"
    );
    let err = tokio::time::timeout(bound, a.acquire("api", Duration::from_secs(1)))
        .await
        .expect("acquire returns")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to take a lease to lock \"api\": "),
        "{err}"
    );
    let err = tokio::time::timeout(bound, a.published("www"))
        .await
        .expect("read returns")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to read \"/certagent/certs/www/published\" from etcd: "),
        "{err}"
    );
    let mut watch = a.watch_published("www", revision).unwrap();
    let err = tokio::time::timeout(bound, watch.next())
        .await
        .expect("watch returns")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to watch \"www\" in etcd: "),
        "{err}"
    );
    assert!(
        format!("{err:?}").contains("etcdctl endpoint health")
            || err.to_string().contains("stream ended"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < bound * 4,
        "took {:?}",
        started.elapsed()
    );
    // The stopped cluster is also a lost lease for the holder, as far as it can know.
    assert!(
        tokio::time::timeout(TTL * 3, lock.lost()).await.is_ok(),
        "the holder learns it lost the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_s_report_stays_marked_stale() {
    let etcd = EtcdCluster::start(3);
    let viewer = fleet(etcd.endpoints(), "web-1").await;
    let host = fleet(etcd.endpoints(), "web-2").await;
    let report = HostReport {
        node: "ignored".into(),
        name: "www".into(),
        generation: Some(3),
        serial: Some("0a".into()),
        verified_at: Some(1_800_000_000),
        error: None,
    };
    host.report(&report).await.unwrap();
    let seen = viewer.reports(Some("www")).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].alive);
    assert_eq!(
        (seen[0].report.node.as_str(), seen[0].report.generation),
        ("web-2", Some(3))
    );

    drop(host); // the host dies: its liveness lease is no longer renewed
    let deadline = Instant::now() + TTL * 10;
    loop {
        let seen = viewer.reports(Some("www")).await.unwrap();
        assert_eq!(seen.len(), 1, "the report stays");
        if !seen[0].alive {
            break;
        }
        assert!(Instant::now() < deadline, "web-2 never marked stale");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(viewer.reports(Some("api")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_is_readable_in_an_etcd_dump() {
    let etcd = EtcdCluster::start(3);
    let a = fleet(etcd.endpoints(), "web-1").await;
    let lock = a.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    a.journal_pending(&lock, pending("www", 2, Some("https://ca.test/order/1")))
        .await
        .unwrap();
    a.publish(&lock, record("www", 1)).await.unwrap();
    a.acquire("api", Duration::ZERO)
        .await
        .unwrap()
        .map(|l| async move {
            a.journal_pending(&l, pending("api", 1, None))
                .await
                .unwrap();
        })
        .unwrap()
        .await;

    let out = etcd.etcdctl(&["get", "--prefix", "/certagent"]);
    assert!(out.status.success());
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("BEGIN CERTIFICATE"),
        "the dump holds the records:\n{dump}"
    );
    assert!(dump.contains("/certagent/certs/api/pending"), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key in the clear:\n{dump}"
    );
    assert!(
        !dump.contains("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"),
        "{dump}"
    );
}
