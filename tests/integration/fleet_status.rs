//! `certagent status --fleet` against a real 3-member etcd on loopback: records written with
//! the `certagent::cluster` API (a publish under the lock, reports from hosts that serve the
//! published serial, another one, or are gone, a lock held, an order pending), read back by
//! the real binary as JSON and as text; no `[cluster]` is a configuration error (78); etcd
//! down is a temporary failure (75) within the request timeout, naming the endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::time::{Duration, Instant};

use certagent::cluster::{ClusterConfig, Fleet, FleetKey, HostReport, Pending, Published, seal};
use common::etcd::EtcdCluster;
use common::{Run, run_certagent, toml_list};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(2);
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
/// 2027-01-15T08:00:00Z.
const T0: i64 = 1_800_000_000;

async fn fleet(endpoints: Vec<String>, node: &str) -> Fleet {
    let mut c = ClusterConfig::new(endpoints, "/unused".into());
    c.node = node.to_string();
    c.lease_ttl = TTL;
    c.request_timeout = TIMEOUT;
    Fleet::connect(&c).await.unwrap()
}

fn sealed(name: &str, generation: u64) -> Vec<u8> {
    seal::seal(
        &FleetKey::from_bytes([7; 32]),
        name,
        generation,
        KEY_PEM.as_bytes(),
    )
    .unwrap()
}

fn report(name: &str, generation: u64, serial: &str, error: Option<&str>) -> HostReport {
    HostReport {
        node: String::new(),
        name: name.into(),
        generation: Some(generation),
        serial: Some(serial.into()),
        verified_at: error.is_none().then_some(T0 + 60),
        error: error.map(str::to_string),
    }
}

/// A config with two shared certificates (www, api) and one of the host's own, and a
/// `[cluster]` on `endpoints` when given.
fn write_config(dir: &Path, endpoints: Option<&[String]>) -> PathBuf {
    let cluster = endpoints.map_or(String::new(), |e| {
        format!(
            "[cluster]\nendpoints = {}\nnode = \"viewer\"\nfleet_key_file = \"{d}/fleet.key\"\nlease_ttl = \"2s\"\nrequest_timeout = \"2s\"\n",
            toml_list(e),
            d = dir.display()
        )
    });
    let shared = if endpoints.is_some() {
        "shared = true\n"
    } else {
        ""
    };
    let text = format!(
        "[agent]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n\n{cluster}\n\
         [issuer.le]\nkind = \"acme\"\ndirectory = \"https://acme.test/dir\"\nlisten = \"127.0.0.1:80\"\n\n\
         [certificate.www]\nnames = [\"www.test\"]\nissuer = \"le\"\ncert_file = \"{d}/ssl/www.pem\"\nkey_file = \"{d}/ssl/www.key\"\n{shared}\n\
         [certificate.api]\nnames = [\"api.test\"]\nissuer = \"le\"\ncert_file = \"{d}/ssl/api.pem\"\nkey_file = \"{d}/ssl/api.key\"\n{shared}\n\
         [certificate.own]\nnames = [\"own.test\"]\ncert_file = \"{d}/ssl/own.pem\"\nkey_file = \"{d}/ssl/own.key\"\n",
        d = dir.display()
    );
    std::fs::create_dir_all(dir.join("ssl")).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The real binary, off the runtime's threads (the hosts' lease keep-alives run there).
async fn certagent(config: &Path, args: &[&str]) -> Run {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_certagent(&config, &args, &[])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_the_published_generation_the_lock_and_every_host() {
    let etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), Some(&etcd.endpoints()));

    // web-1 orders and publishes generation 3 of www under the lock, then lets go.
    let web1 = fleet(etcd.endpoints(), "web-1").await;
    let lock = web1.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    // From JSON: the record's later fields have defaults, so the test does not list them.
    let published: Published = serde_json::from_str(
        &serde_json::json!({
            "name": "www",
            "generation": 3,
            "serial": "0c",
            "fullchain_pem": "-----BEGIN CERTIFICATE-----\ngen3\n-----END CERTIFICATE-----\n",
            "sealed_key": base64::engine::general_purpose::STANDARD.encode(sealed("www", 3)),
            "node": "",
            "fencing_token": 0,
            "reason": "expiring",
            "published_at": T0,
        })
        .to_string(),
    )
    .unwrap();
    web1.publish(&lock, published).await.unwrap();
    lock.release(&web1).await.unwrap();
    web1.report(&report("www", 3, "0c", None)).await.unwrap();

    // web-2 still serves generation 2 (its install of 3 failed) and now holds the lock for
    // generation 4, with an order journalled.
    let web2 = fleet(etcd.endpoints(), "web-2").await;
    web2.report(&report(
        "www",
        2,
        "0b",
        Some("the TLS proof of generation 3 failed"),
    ))
    .await
    .unwrap();
    let lock = web2.acquire("www", Duration::ZERO).await.unwrap().unwrap();
    let pending = Pending {
        name: "www".into(),
        generation: 4,
        order_url: Some("https://acme.test/order/9".into()),
        sealed_key: sealed("www", 4),
        node: String::new(),
        fencing_token: 0,
        reason: "key-compromise".into(),
        started_at: T0 + 120,
    };
    web2.journal_pending(&lock, pending).await.unwrap();

    // web-3 reported generation 3 and died: its report stays, stale.
    let web3 = fleet(etcd.endpoints(), "web-3").await;
    web3.report(&report("www", 3, "0c", None)).await.unwrap();
    drop(web3);
    let deadline = Instant::now() + TTL * 10;
    loop {
        let seen = web1.reports(Some("www")).await.unwrap();
        if seen.iter().any(|s| s.report.node == "web-3" && !s.alive) {
            break;
        }
        assert!(Instant::now() < deadline, "web-3 never marked stale");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let run = certagent(&config, &["status", "--fleet", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["node"], "viewer");
    assert_eq!(doc["prefix"], "/certagent");
    assert_eq!(doc["endpoints"], serde_json::json!(etcd.endpoints()));
    let certs = doc["certificates"].as_array().unwrap();
    let names: Vec<&str> = certs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "www"], "the shared ones only: {doc:#}");

    let api = &certs[0];
    assert!(api["published"].is_null(), "{api:#}");
    assert!(api["lock"].is_null(), "{api:#}");
    assert!(api["pending"].is_null(), "{api:#}");
    assert_eq!(api["hosts"], serde_json::json!([]));
    assert_eq!(api["in_sync"], false);

    let www = &certs[1];
    assert_eq!(
        www["published"],
        serde_json::json!({"generation": 3, "serial": "0c", "node": "web-1",
            "published_at": "2027-01-15T08:00:00Z", "reason": "expiring"})
    );
    assert_eq!(www["lock"]["node"], "web-2", "{www:#}");
    assert!(www["lock"]["acquired_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        www["pending"],
        serde_json::json!({"generation": 4, "node": "web-2", "reason": "key-compromise",
            "started_at": "2027-01-15T08:02:00Z", "order_url": "https://acme.test/order/9"})
    );
    assert_eq!(
        www["hosts"],
        serde_json::json!([
            {"node": "web-1", "generation": 3, "serial": "0c", "verified_at": "2027-01-15T08:01:00Z",
             "error": null, "stale": false, "current": true},
            {"node": "web-2", "generation": 2, "serial": "0b", "verified_at": null,
             "error": "the TLS proof of generation 3 failed", "stale": false, "current": false},
            {"node": "web-3", "generation": 3, "serial": "0c", "verified_at": "2027-01-15T08:01:00Z",
             "error": null, "stale": true, "current": true},
        ])
    );
    assert_eq!(www["in_sync"], false, "web-2 serves another serial");

    // The text names the same facts, one line each; NAME filters.
    let run = certagent(&config, &["status", "--fleet", "www"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let text = &run.stdout;
    for want in [
        "fleet: this host is node viewer; etcd http://127.0.0.1:",
        "www: not in sync\n",
        "  published:   generation 3, serial 0c, by web-1 at 2027-01-15T08:00:00Z",
        "  lock:        held by web-2 since ",
        "  pending:     generation 4 (key-compromise) started by web-2 at 2027-01-15T08:02:00Z",
        ", order https://acme.test/order/9\n",
        "  host:        web-1: generation 3, serial 0c, verified 2027-01-15T08:01:00Z",
        "  host:        web-2: generation 2, serial 0b (differs from the published serial), never verified, error: the TLS proof of generation 3 failed\n",
        "  host:        web-3: generation 3, serial 0c, verified 2027-01-15T08:01:00Z",
        "[stale: the host is not alive in etcd; its last report]\n",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    assert!(!text.contains("api"), "www only:\n{text}");
    let web1_line = text.lines().find(|l| l.contains("web-1:")).unwrap();
    assert!(!web1_line.contains("differs") && !web1_line.contains("stale"));

    // Once web-2 lets go of the lock and serves generation 3, www is in sync (web-3 is
    // stale and does not count).
    lock.release(&web2).await.unwrap();
    web2.report(&report("www", 3, "0c", None)).await.unwrap();
    let run = certagent(&config, &["status", "--fleet", "www", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let www = &run.json()["certificates"][0];
    assert!(www["lock"].is_null(), "{www:#}");
    assert_eq!(www["in_sync"], true, "{www:#}");
    let run = certagent(&config, &["status", "--fleet", "www"]).await;
    assert!(run.stdout.contains("www: in sync\n"), "{run:?}");
    assert!(run.stdout.contains("  lock:        free\n"), "{run:?}");

    // A certificate of the host's own has no fleet record.
    let run = certagent(&config, &["status", "--fleet", "own"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("certificate \"own\" is not shared: it is this host's own"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "hint: `certagent status own` shows it; shared certificates (shared = true): api, www"
        ),
        "{run:?}"
    );
}

#[test]
fn without_a_cluster_table_status_fleet_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let run = run_certagent(&config, &["status", "--fleet"], &[]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.contains(
            "certagent: no [cluster] in the configuration: this host is not part of a fleet\n  hint: add [cluster] with endpoints"
        ),
        "{run:?}"
    );
    let run = run_certagent(&config, &["status", "--fleet", "--json"], &[]);
    assert_eq!(run.code, 78, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["schema"], 1);
    assert!(
        doc["error"].as_str().unwrap().starts_with("no [cluster]"),
        "{doc:#}"
    );
    assert!(
        doc["hint"].as_str().unwrap().contains("shared = true"),
        "{doc:#}"
    );
    // The host's own status still works without a fleet.
    assert_eq!(run_certagent(&config, &["status"], &[]).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_status_fleet_is_a_temporary_failure_within_the_request_timeout() {
    let mut etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    let config = write_config(dir.path(), Some(&endpoints));
    let run = certagent(&config, &["status", "--fleet", "--json"]).await;
    assert_eq!(run.code, 0, "reads an empty fleet while etcd runs: {run:?}");
    let doc = run.json();
    let www = &doc["certificates"][1];
    assert_eq!(www["name"], "www", "{doc:#}");
    assert!(
        www["published"].is_null() && www["hosts"] == serde_json::json!([]),
        "{doc:#}"
    );

    etcd.stop_all();
    let started = Instant::now();
    let run = certagent(&config, &["status", "--fleet"]).await;
    let took = started.elapsed();
    assert_eq!(run.code, 75, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "certagent: failed to read the fleet from etcd at {}: ",
            endpoints.join(", ")
        )),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("hint: check that etcd is running and reachable"),
        "{run:?}"
    );
    // Connecting and one read, each bounded by request_timeout (2 s), and the process start.
    assert!(took < TIMEOUT * 2 + Duration::from_secs(2), "took {took:?}");
    let run = certagent(&config, &["status", "--fleet", "--json"]).await;
    assert_eq!(run.code, 75, "{run:?}");
    assert!(
        run.json()["error"]
            .as_str()
            .unwrap()
            .contains(&endpoints[2]),
        "{run:?}"
    );
}

#[test]
fn status_help_shows_the_fleet_flag_with_an_example() {
    let run = run_certagent(
        Path::new("/nonexistent/config.toml"),
        &["status", "--help"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let text = &run.stdout;
    assert!(text.contains("\n      --fleet\n"), "{text}");
    assert!(
        text.contains("  certagent status --fleet www\n      what every host of the fleet serves"),
        "{text}"
    );
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "too long: {line:?}");
    }
}
