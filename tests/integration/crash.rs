//! A process killed (SIGKILL, via compiled-in failpoints) at each step of a re-issue: the old
//! pair stays served, and the next run finishes the job without a second order at the CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{
    Daemon, Env, Pebble, PebbleOpts, run_certagent, spki_of_cert_der, spki_of_key_pem, wait_until,
};

fn setup() -> (Pebble, Env) {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    (pebble, env)
}

fn killed_at(env: &Env, point: &str) {
    let run = run_certagent(
        &env.config,
        &["reissue", "--now", "site"],
        &[("CERTAGENT_FAILPOINT", point)],
    );
    assert_eq!(
        run.code, -1,
        "expected death by SIGKILL at {point}: {run:?}"
    );
    assert!(
        run.stderr
            .contains(&format!("failpoint {point}: killing myself")),
        "{run:?}"
    );
}

fn journal(env: &Env) -> serde_json::Value {
    let text =
        std::fs::read_to_string(env.state_dir().join("certs/site/state.json")).expect("journal");
    serde_json::from_str(&text).expect("journal JSON")
}

fn assert_finished(env: &Env, pebble: &Pebble) {
    let key = std::fs::read_to_string(&env.key_file).expect("key");
    let served = env.served();
    assert_ne!(served, env.initial_leaf);
    assert_eq!(spki_of_cert_der(&served), spki_of_key_pem(&key));
    assert!(journal(env)["pending"].is_null());
    assert!(journal(env)["flip"].is_null());
    let leftovers: Vec<_> = std::fs::read_dir(env.state_dir().join("live/site"))
        .expect("live dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "garbage left behind: {leftovers:?}");
    assert_eq!(
        pebble.orders_created(),
        1,
        "the rerun placed a second order\n{}",
        pebble.log()
    );
}

#[test]
fn killed_after_the_order_was_created_resumes_the_same_order() {
    let (pebble, env) = setup();
    std::fs::remove_file(&env.key_file).expect("delete key");
    killed_at(&env, "after-order-created");
    assert_eq!(pebble.orders_created(), 1);
    let pending = &journal(&env)["pending"];
    let order_url = pending["order_url"]
        .as_str()
        .expect("order URL journalled before the crash")
        .to_string();
    let pending_spki = pending["key_spki_sha256"]
        .as_str()
        .expect("key digest")
        .to_string();
    // Nothing visible changed: the old certificate is still served, no key appeared.
    assert_eq!(env.served(), env.initial_leaf);
    assert!(!env.key_file.exists());
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(
        status["certificates"][0]["pending"]["order_url"],
        order_url.as_str()
    );
    assert_eq!(status["certificates"][0]["action"], "resume");

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert!(run.stderr.contains("resuming ACME order"), "{run:?}");
    assert_finished(&env, &pebble);
    // The key persisted before the crash is the key now in service.
    let key = std::fs::read_to_string(&env.key_file).expect("key");
    let digest = hex_sha256(&spki_of_key_pem(&key));
    assert_eq!(digest, pending_spki);
}

#[test]
fn killed_after_issuance_installs_the_saved_certificate() {
    let (pebble, env) = setup();
    killed_at(&env, "after-issued");
    assert_eq!(journal(&env)["pending"]["issued"], true);
    assert_eq!(env.served(), env.initial_leaf);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_finished(&env, &pebble);
}

#[test]
fn killed_right_after_the_flip_is_finished_by_the_next_run() {
    let (pebble, env) = setup();
    killed_at(&env, "after-flip");
    // The flip is the commit point: files on disk are the new pair (valid and matching), but
    // nginx was not reloaded yet and still serves the old leaf.
    assert!(!journal(&env)["flip"].is_null());
    assert_eq!(env.served(), env.initial_leaf);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("found an interrupted install, finishing it"),
        "{run:?}"
    );
    assert_finished(&env, &pebble);
}

#[test]
fn killed_before_publishing_leaves_only_garbage_that_recovery_removes() {
    let (pebble, env) = setup();
    killed_at(&env, "before-publish");
    assert_eq!(env.served(), env.initial_leaf);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_finished(&env, &pebble);
}

fn hex_sha256(data: &[u8]) -> String {
    use std::fmt::Write;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `reissue --now` that finds interrupted work resumes it, and says so truthfully: the
/// result carries the reason the work began with, as the journal does.
#[test]
fn a_forced_run_that_resumes_reports_the_reason_the_work_began_with() {
    let (pebble, env) = setup();
    // The daemon starts the work for its own reason, and dies at the failpoint.
    let mut daemon = Daemon::start(
        &env.config,
        &env.dir.path().join("daemon.log"),
        &[("CERTAGENT_FAILPOINT", "after-order-created")],
    );
    std::fs::remove_file(&env.key_file).expect("delete key");
    assert!(
        wait_until(Duration::from_secs(20), || !daemon.is_running()),
        "{}",
        daemon.log()
    );
    assert_eq!(journal(&env)["pending"]["reason"], "key-missing");

    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    let result = &run.json()["certificates"][0];
    assert_eq!(result["result"], "installed", "{run:?}");
    assert_eq!(result["reason"], "key-missing", "{run:?}");
    assert_eq!(journal(&env)["last"]["reason"], "key-missing");
    assert_finished(&env, &pebble);
}
