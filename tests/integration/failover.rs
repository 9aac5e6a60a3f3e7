//! Issuer failover (`issuer = ["dead", "pebble"]`): the first issuer an ACME directory on a
//! loopback port nothing listens on, the second a real Pebble. With `failover_after = "0s"`
//! one `reissue --now` moves on to Pebble and says so; with a long `failover_after` it fails
//! naming the first and never asks the second; a killed run resumes its order at the issuer
//! the journal says it belongs to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Daemon, Env, Pebble, PebbleOpts, spki_of_cert_der, spki_of_key_pem, wait_until};

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn setup(failover_after: &str) -> (Pebble, Env) {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    write(&env, &pebble, failover_after);
    (pebble, env)
}

fn write(env: &Env, pebble: &Pebble, failover_after: &str) {
    let dead = format!(
        "[issuer.dead]\nkind = \"acme\"\ndirectory = \"https://127.0.0.1:{port}/dir\"\nca_bundle = \"{bundle}\"\nwebroot = \"{webroot}\"\ntimeout = \"5s\"\n",
        port = dead_port(),
        bundle = pebble.ca_bundle().display(),
        webroot = env.nginx.webroot().display(),
    );
    env.write_config(
        &format!("issuer = [\"dead\", \"pebble\"]\nfailover_after = \"{failover_after}\""),
        &format!("{dead}\n{}", pebble.issuer_table()),
    );
}

fn journal(env: &Env) -> serde_json::Value {
    let text =
        std::fs::read_to_string(env.state_dir().join("certs/site/state.json")).expect("journal");
    serde_json::from_str(&text).expect("journal JSON")
}

/// nginx serves a leaf Pebble issued (it knows the serial) for the key file.
fn assert_pebble_serves_key_file(env: &Env, pebble: &Pebble) {
    let served = env.served();
    assert_ne!(served, env.initial_leaf, "nginx still serves the old leaf");
    let key = std::fs::read_to_string(&env.key_file).expect("key file");
    assert_eq!(spki_of_cert_der(&served), spki_of_key_pem(&key));
    let serial = common::cert_serial_hex(&served);
    assert!(
        pebble.cert_status(&serial).is_some(),
        "Pebble does not know serial {serial}\n{}",
        pebble.log()
    );
}

#[test]
fn with_failover_after_0s_one_reissue_moves_on_to_the_second_issuer_and_names_it() {
    let (pebble, env) = setup("0s");
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "installed", "{run:?}");
    assert_eq!(doc["certificates"][0]["issuer"], "pebble", "{run:?}");
    // WARN, with the first issuer's error, before the second is asked.
    assert!(
        run.stderr.contains("warning: issuer \"dead\" has failed for 0s (failed to obtain a certificate for \"site\" from issuer \"dead\""),
        "{run:?}"
    );
    assert!(run.stderr.contains("; trying \"pebble\""), "{run:?}");
    assert_pebble_serves_key_file(&env, &pebble);
    assert_eq!(pebble.orders_created(), 1);
    // Back to the first issuer for the next renewal.
    assert!(journal(&env)["failover"].is_null(), "{}", journal(&env));

    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["certificates"][0]["issuer"], "pebble");
    let text = env.certagent(&["status"]);
    assert!(
        text.stdout.contains("issued by:   issuer \"pebble\""),
        "{text:?}"
    );
    // A certificate from the failover issuer is from a configured issuer: nothing to do.
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn with_a_long_failover_after_the_reissue_fails_at_the_first_issuer_and_leaves_the_second_alone() {
    let (pebble, env) = setup("7d");
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    let error = doc["certificates"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("from issuer \"dead\""), "{run:?}");
    assert!(!run.stderr.contains("trying"), "{run:?}");
    assert_eq!(pebble.orders_created(), 0, "{}", pebble.log());
    assert_eq!(env.served(), env.initial_leaf);
    // The journal knows since when the first issuer fails.
    let j = journal(&env);
    assert_eq!(j["failover"]["issuer"], "dead", "{j}");
    assert!(j["failover"]["failing_since"].is_i64(), "{j}");
}

#[test]
#[cfg(feature = "failpoints")]
fn a_killed_run_resumes_its_order_at_the_issuer_it_was_placed_with() {
    let (pebble, env) = setup("0s");
    let run = common::run_certagent(
        &env.config,
        &["reissue", "--now", "site"],
        &[("CERTAGENT_FAILPOINT", "after-order-created")],
    );
    assert_eq!(run.code, -1, "expected death by SIGKILL: {run:?}");
    assert_eq!(pebble.orders_created(), 1);
    let j = journal(&env);
    assert_eq!(j["pending"]["issuer"], "pebble", "{j}");
    assert!(j["pending"]["order_url"].is_string(), "{j}");
    // Now a fresh choice would start with "dead" and keep at it for a week: the order in
    // flight is resumed where it was placed instead, and no second one is placed.
    write(&env, &pebble, "7d");
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert_eq!(run.json()["certificates"][0]["issuer"], "pebble", "{run:?}");
    assert_eq!(pebble.orders_created(), 1, "{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
}

#[test]
fn the_daemon_retries_no_later_than_failover_after_and_then_moves_on() {
    let (pebble, env) = setup("3s");
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    std::fs::remove_file(&env.key_file).unwrap();
    // The first attempt fails at "dead"; the backoff (a minute for the first retry) is cut
    // to when failover_after is over, and that retry moves on to Pebble.
    daemon.wait_log("issuer \"dead\" has failed for", Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&env.key_file).is_ok()
                && spki_of_cert_der(&env.served())
                    == spki_of_key_pem(&std::fs::read_to_string(&env.key_file).unwrap())
        }),
        "not healed:\n{}\n{}",
        daemon.log(),
        pebble.log()
    );
    daemon.wait_log("event=installed", Duration::from_secs(10));
    let log = daemon.log();
    assert!(log.contains("; trying \"pebble\""), "{log}");
    assert_eq!(pebble.orders_created(), 1);
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(
        status.json()["certificates"][0]["issuer"],
        "pebble",
        "{status:?}"
    );
}

#[test]
fn a_compromised_key_is_revoked_at_the_issuer_its_certificate_came_from() {
    let (pebble, env) = setup("0s");
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let serial = common::cert_serial_hex(&env.served());
    // The replacement fails over to Pebble again; the old leaf is revoked at Pebble, which
    // issued it, not at the first issuer of the list.
    let run = env.certagent(&["reissue", "--now", "site", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    let status = pebble.cert_status(&serial);
    assert!(
        status
            .as_ref()
            .is_some_and(|s| s["Status"] == "Revoked" && s["Reason"] == 1),
        "{status:?}\n{run:?}"
    );
    assert_pebble_serves_key_file(&env, &pebble);
}
