//! Fleets with real parts (issue 16): three certagent daemons sharing one certificate through
//! a 3-member etcd, each with its own nginx, Pebble validating http-01 for real through a
//! round-robin balancer in front of the three hosts. Every scenario counts Pebble's orders.
//! The rig is `tests/common/fleet.rs`; its own checks are in `fleet_selftest.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use common::fleet::{CERT, FleetRig, LEASE_TTL};
use common::{Run, cert_serial_hex, pem_to_der, run_certagent, spki_of_cert_der, spki_of_key_pem};

/// Bound on one trigger's way to every host (an order at Pebble takes about a second).
const SETTLE: Duration = Duration::from_secs(45);

/// A rig whose three daemons run and serve their first fleet certificate: exactly one order
/// for three hosts that all started with a wrong certificate. Returns the leaf.
fn issued_rig() -> (FleetRig, Vec<u8>) {
    let mut rig = FleetRig::start();
    rig.start_daemons_then_validate();
    let initial: Vec<&[u8]> = rig
        .hosts
        .iter()
        .map(|h| h.initial_leaf.as_slice())
        .collect();
    let leaf = rig.wait_all_serve_one_leaf(&initial, SETTLE);
    let published = rig.wait_settled(SETTLE);
    assert_eq!(published.serial, cert_serial_hex(&leaf));
    assert_eq!(rig.orders(), 1, "{}", rig.diagnostics());
    (rig, leaf)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Every host's key file holds the key of `leaf`.
fn assert_keys_match(rig: &FleetRig, leaf: &[u8]) {
    for h in &rig.hosts {
        let key = std::fs::read_to_string(&h.key_file).unwrap();
        assert_eq!(
            spki_of_key_pem(&key),
            spki_of_cert_der(leaf),
            "{}: the key file is not the served leaf's",
            h.node
        );
    }
}

/// Every PEM private key on the hosts: the key files and whatever the state directories hold
/// (generations, a pending key), as `(where, PEM)`.
fn private_key_pems(rig: &FleetRig) -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Ok(text) = std::fs::read_to_string(&path)
                && text.contains("PRIVATE KEY-----")
            {
                out.push((path.display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    for h in &rig.hosts {
        walk(&h.state_dir(), &mut out);
        if let Ok(text) = std::fs::read_to_string(&h.key_file) {
            out.push((h.key_file.display().to_string(), text));
        }
    }
    out
}

/// No private key of any host, in PEM or as base64 of its DER (whole or per PEM line), in
/// what etcd holds now.
fn assert_no_private_key_in_etcd(rig: &FleetRig) {
    let dump = rig.etcd_dump();
    assert!(dump.contains("/fleet/certs/www/published"), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a PEM private key in etcd:\n{dump}"
    );
    let keys = private_key_pems(rig);
    assert!(keys.len() >= 3, "{keys:?}");
    for (place, pem) in keys {
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem_to_der(&pem));
        assert!(!dump.contains(&b64), "the key of {place} is in etcd");
        for line in pem
            .lines()
            .filter(|l| l.len() >= 32 && !l.starts_with("-----"))
        {
            assert!(!dump.contains(line), "a line of {place} is in etcd");
        }
    }
}

/// `certagent reissue --now www` on a host, in the background (it waits for the daemon).
fn reissue_in_background(config: PathBuf) -> JoinHandle<Run> {
    std::thread::spawn(move || run_certagent(&config, &["reissue", "--now", CERT], &[]))
}

#[test]
fn first_issuance_heal_reissue_and_compromise_with_one_order_each() {
    let (rig, l1) = issued_rig();
    assert!(
        rig.balancer.accepted() >= 1,
        "Pebble validated without the balancer"
    );
    assert_keys_match(&rig, &l1);
    assert_no_private_key_in_etcd(&rig);

    // Key deleted on h1: healed from the published generation, no order, same leaf.
    let h1 = &rig.hosts[1];
    std::fs::remove_file(&h1.key_file).unwrap();
    let healed = common::wait_until(SETTLE, || {
        std::fs::read_to_string(&h1.key_file)
            .is_ok_and(|k| spki_of_key_pem(&k) == spki_of_cert_der(&l1))
    });
    assert!(healed, "h1's key was not restored\n{}", rig.diagnostics());
    assert_eq!(rig.wait_all_serve_one_leaf(&[], SETTLE), l1);
    rig.wait_settled(SETTLE);
    assert_eq!(rig.orders(), 1, "{}", rig.diagnostics());

    // An operator's re-issue on h2: one order, every host serves the new leaf.
    let run = rig.hosts[2].certagent(&["reissue", "--now", CERT]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.diagnostics());
    let l2 = rig.wait_all_serve_one_leaf(&[&l1], SETTLE);
    let published = rig.wait_settled(SETTLE);
    assert_eq!(published.serial, cert_serial_hex(&l2));
    assert_eq!(rig.orders(), 2, "{}", rig.diagnostics());
    assert_keys_match(&rig, &l2);
    // The http-01 tokens are removed afterwards, from every webroot and from etcd.
    let cleaned = common::wait_until(SETTLE, || {
        rig.hosts.iter().all(|h| h.tokens().is_empty())
            && !rig.etcd_dump().contains("/fleet/challenges/")
    });
    assert!(cleaned, "tokens left behind\n{}", rig.diagnostics());
    // Validation reached more than one host over the two orders (round robin).
    assert!(
        rig.balancer.backends_reached() >= 2,
        "{:?}",
        rig.balancer.counts()
    );

    // A compromise flag on h0: a new key everywhere, the old serial revoked once.
    let h0 = &rig.hosts[0];
    let digest2 = sha256_hex(&spki_of_cert_der(&l2));
    std::fs::write(h0.compromised_dir().join(CERT), "compromised\n").unwrap();
    let l3 = rig.wait_all_serve_one_leaf(&[&l1, &l2], SETTLE);
    assert_ne!(spki_of_cert_der(&l3), spki_of_cert_der(&l2), "same key");
    rig.wait_settled(SETTLE);
    assert_eq!(rig.orders(), 3, "{}", rig.diagnostics());
    assert_keys_match(&rig, &l3);
    let serial2 = cert_serial_hex(&l2);
    let revoked = common::wait_until(SETTLE, || {
        rig.pebble
            .cert_status(&serial2)
            .is_some_and(|s| s["Status"] == "Revoked" && s["Reason"] == 1)
    });
    assert!(revoked, "{serial2} not revoked\n{}", rig.diagnostics());
    // Every daemon has handled every file change (the flag included) before counting.
    for h in &rig.hosts {
        h.daemon().quiesce(&h.config);
    }
    let revocations: usize = rig
        .hosts
        .iter()
        .map(|h| h.log().matches("event=revoked").count())
        .sum();
    assert_eq!(revocations, 1, "{}", rig.diagnostics());
    assert_no_private_key_in_etcd(&rig);
    // Nothing of the three orders' http-01 bookkeeping stays in etcd (acknowledgements
    // included: they live as long as the host does, so they would pile up order by order).
    let cleaned = common::wait_until(SETTLE, || {
        let dump = rig.etcd_dump();
        !dump.contains("/fleet/challenges/") && !dump.contains("/fleet/acks/")
    });
    assert!(
        cleaned,
        "http-01 bookkeeping left in etcd\n{}",
        rig.diagnostics()
    );
    // The compromised key is remembered on every host, not only where the flag was.
    for h in &rig.hosts {
        let memory =
            std::fs::read_to_string(h.state_dir().join("compromised-keys")).unwrap_or_default();
        assert!(
            memory.lines().any(|l| l == digest2),
            "{} does not remember the compromised key: {memory:?}",
            h.node
        );
    }
}

/// `reissue --now` on host `i`, returned once Pebble's validation request waits in the
/// balancer (the order is in flight): the CLI, the leaf every host served before, and the
/// orders placed so far. Pebble 2.4.0 reuses a valid authorization 1 time in 100 even with
/// `PEBBLE_AUTHZREUSE=0` (`rand.Intn(100) > percent` in wfe.go): such an order needs no
/// validation and completes at once; it is let settle and the re-issue asked for again.
fn reissue_held_at_validation(
    rig: &FleetRig,
    i: usize,
    mut serving: Vec<u8>,
) -> (JoinHandle<Run>, Vec<u8>, usize) {
    for _ in 0..4 {
        rig.balancer.hold();
        let validations = rig.balancer.accepted();
        let cli = reissue_in_background(rig.hosts[i].config.clone());
        let moved = common::wait_until(SETTLE, || rig.balancer.waiting() >= 1 || cli.is_finished());
        assert!(moved, "no validation started\n{}", rig.diagnostics());
        if rig.balancer.waiting() >= 1 {
            return (cli, serving, rig.orders());
        }
        // Done without asking the balancer: only a reused authorization does that.
        let run = cli.join().unwrap();
        rig.balancer.release();
        assert_eq!(run.code, 0, "{}\n{}", run.stderr, rig.diagnostics());
        assert_eq!(
            rig.balancer.accepted(),
            validations,
            "{}",
            rig.diagnostics()
        );
        serving = rig.wait_all_serve_one_leaf(&[&serving], SETTLE);
        rig.wait_settled(SETTLE);
    }
    panic!("every order reused an authorization\n{}", rig.diagnostics());
}

#[test]
fn sigkill_of_the_host_that_started_a_reissue_then_restart_makes_one_order() {
    let (mut rig, l1) = issued_rig();
    let (cli, l1, orders) = reissue_held_at_validation(&rig, 0, l1);
    // The pending key is journalled in etcd, sealed.
    assert!(rig.etcd_dump().contains("/fleet/certs/www/pending"));
    assert_no_private_key_in_etcd(&rig);
    rig.hosts[0].kill_daemon();
    rig.balancer.release();
    let _ = cli.join().unwrap(); // its daemon died under it: any answer will do
    rig.hosts[0].restart_daemon();
    let l2 = rig.wait_all_serve_one_leaf(&[&l1], SETTLE);
    let published = rig.wait_settled(SETTLE);
    assert_eq!(published.serial, cert_serial_hex(&l2));
    assert_eq!(rig.orders(), orders, "{}", rig.diagnostics());
    assert_keys_match(&rig, &l2);
}

/// h1 starts a re-issue; once Pebble's validation is in flight (held at the balancer), h1's
/// daemon is stopped and the validation let through; returns when h1's lease has run out,
/// with the CLI still waiting on h1, the leaf served before, and the orders placed so far.
fn stop_the_holder_past_its_lease(
    rig: &mut FleetRig,
    serving: Vec<u8>,
) -> (JoinHandle<Run>, Vec<u8>, usize) {
    let (cli, serving, orders) = reissue_held_at_validation(rig, 1, serving);
    assert_eq!(rig.lock_holder().as_deref(), Some("h1"));
    rig.hosts[1].pause_daemon();
    rig.balancer.release();
    // Its lease runs out: the lock is free (or another host's).
    let expired = common::wait_until(LEASE_TTL * 5, || rig.lock_holder().as_deref() != Some("h1"));
    assert!(
        expired,
        "h1 kept the lock while stopped\n{}",
        rig.diagnostics()
    );
    (cli, serving, orders)
}

/// Every host serves one new leaf, published and proven, and no order was placed after the
/// one in flight (`orders` in all).
fn settled_on_one_more_order(rig: &FleetRig, old: &[u8], orders: usize) {
    let l2 = rig.wait_all_serve_one_leaf(&[old], SETTLE);
    let published = rig.wait_settled(SETTLE);
    assert_eq!(published.serial, cert_serial_hex(&l2));
    assert_eq!(rig.orders(), orders, "{}", rig.diagnostics());
    assert_keys_match(rig, &l2);
}

#[test]
fn sigstop_of_the_lock_holder_mid_order_until_its_lease_expires_makes_one_order() {
    let (mut rig, l1) = issued_rig();
    let (cli, l1, orders) = stop_the_holder_past_its_lease(&mut rig, l1);
    // Another host is asked meanwhile: it resumes h1's order instead of ordering again.
    let run = rig.hosts[2].certagent(&["reissue", "--now", CERT]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.diagnostics());
    rig.hosts[1].resume_daemon();
    let _ = cli.join().unwrap(); // refused or answered by h2's publish: outcomes below
    settled_on_one_more_order(&rig, &l1, orders);
}

#[test]
fn a_holder_stopped_past_its_lease_then_continued_publishes_once() {
    let (mut rig, l1) = issued_rig();
    let (cli, l1, orders) = stop_the_holder_past_its_lease(&mut rig, l1);
    // It wakes up holding an order it obtained under a lock it no longer has.
    rig.hosts[1].resume_daemon();
    let run = cli.join().unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.diagnostics());
    settled_on_one_more_order(&rig, &l1, orders);
}

#[test]
fn one_etcd_member_down_changes_nothing_and_all_down_keeps_serving_and_healing() {
    let (mut rig, l1) = issued_rig();

    // One member of three killed: once the two others have a leader (an election when it
    // was the leader), a re-issue works as before.
    rig.etcd.kill_member(0);
    assert!(
        rig.etcd.wait_leader(Duration::from_secs(20)),
        "{}",
        rig.diagnostics()
    );
    let run = rig.hosts[0].certagent(&["reissue", "--now", CERT]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.diagnostics());
    let l2 = rig.wait_all_serve_one_leaf(&[&l1], SETTLE);
    let published = rig.wait_settled(SETTLE);
    assert_eq!(published.serial, cert_serial_hex(&l2));
    assert_eq!(rig.orders(), 2, "{}", rig.diagnostics());

    // All of etcd down: the hosts keep serving, a lost key is healed from the local copy.
    rig.etcd.stop_all();
    let h1 = &rig.hosts[1];
    std::fs::remove_file(&h1.key_file).unwrap();
    let healed = common::wait_until(SETTLE, || {
        std::fs::read_to_string(&h1.key_file)
            .is_ok_and(|k| spki_of_key_pem(&k) == spki_of_cert_der(&l2))
    });
    assert!(healed, "h1's key was not restored\n{}", rig.diagnostics());
    assert_eq!(rig.wait_all_serve_one_leaf(&[], SETTLE), l2);

    // A shared certificate is not ordered alone: the re-issue fails, clearly.
    let run = rig.hosts[2].certagent(&["reissue", "--now", CERT]);
    assert!(matches!(run.code, 2 | 75), "{run:?}");
    assert!(run.stderr.contains("etcd is unreachable"), "{run:?}");
    assert_eq!(rig.orders(), 2, "{}", rig.diagnostics());
    for h in &rig.hosts {
        assert_eq!(h.served().as_deref(), Some(l2.as_slice()), "{}", h.node);
    }
}

#[test]
fn a_host_that_cannot_install_a_generation_reports_it_and_tries_again_once_it_can() {
    let (rig, l1) = issued_rig();
    // h2's nginx configuration breaks: its config test refuses whatever is installed.
    let conf = rig.hosts[2].nginx.conf_path().to_path_buf();
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good}\nthis is not an nginx directive;\n")).unwrap();
    let run = rig.hosts[0].certagent(&["reissue", "--now", CERT]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.diagnostics());
    let published = rig.published().expect("published");
    let reported = common::wait_until(SETTLE, || {
        rig.report(2).is_some_and(|r| r.error.is_some())
            && (0..2).all(|i| {
                rig.report(i)
                    .is_some_and(|r| r.serial.as_deref() == Some(published.serial.as_str()))
            })
    });
    assert!(
        reported,
        "h2 did not report its failure\n{}",
        rig.diagnostics()
    );
    assert_eq!(
        rig.hosts[2].served().as_deref(),
        Some(l1.as_slice()),
        "h2 keeps serving the old leaf"
    );
    // The fleet view shows it.
    let status = rig.hosts[1].certagent(&["status", "--fleet", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    let cert = &doc["certificates"][0];
    assert_eq!(cert["in_sync"], false, "{doc}");
    let h2 = cert["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["node"] == "h2")
        .unwrap_or_else(|| panic!("no h2 in {doc}"));
    assert_eq!(h2["current"], false, "{doc}");
    assert!(h2["error"].as_str().is_some_and(|e| !e.is_empty()), "{doc}");
    // Repaired: h2 tries the generation again by itself (no order) and the fleet settles.
    std::fs::write(&conf, good).unwrap();
    let settled = rig.wait_settled(SETTLE);
    assert_eq!(settled.serial, published.serial);
    assert_eq!(rig.orders(), 2, "{}", rig.diagnostics());
}
