//! ACME profiles end to end: Pebble 2.4.0 behind the test front (`tests/common/front.rs`),
//! which advertises Let's Encrypt's profiles and refuses an order whose profile's lifetime is
//! not the one Pebble was started with; certagent and nginx for real. The profile is ordered
//! when offered, warned about or refused (`profile_required`) when not, recorded with the
//! install, and a changed profile re-issues once — not again and again when the CA does not
//! offer it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Daemon, Env, Front, FrontOpts, FrontProfile, Pebble, PebbleOpts, cert_validity};

const DAYS_45: u64 = 45 * 86_400;

fn issuer_at(directory: &str, ca_bundle: &std::path::Path, pebble: &Pebble, extra: &str) -> String {
    format!(
        "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{directory}\"\nca_bundle = \"{}\"\nlisten = \"127.0.0.1:{}\"\ntimeout = \"60s\"\n{extra}\n",
        ca_bundle.display(),
        pebble.http_port()
    )
}

/// Pebble issuing 45-day certificates (tlsserver's lifetime) behind a front advertising
/// classic, tlsserver and shortlived.
fn tlsserver_ca() -> (Pebble, Front) {
    let pebble = Pebble::start(PebbleOpts {
        validity_period_secs: Some(DAYS_45),
        ..PebbleOpts::default()
    });
    let front = Front::start(
        &pebble,
        FrontOpts {
            profiles: FrontProfile::lets_encrypt(),
            ..FrontOpts::default()
        },
    );
    (pebble, front)
}

fn through_front(pebble: &Pebble, front: &Front) -> String {
    issuer_at(&front.directory_url(), &front.ca_bundle(), pebble, "")
}

fn lifetime(der: &[u8]) -> i64 {
    let (not_before, not_after) = cert_validity(der);
    not_after.duration_since(not_before).unwrap().as_secs() as i64
}

#[test]
fn a_preferred_profile_the_ca_offers_is_ordered_and_shows_in_the_result_and_status() {
    let (pebble, front) = tlsserver_ca();
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "issuer = \"pebble\"\nprofile = \"tlsserver\"",
        &through_front(&pebble, &front),
    );
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", front.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["profile"], "tlsserver", "{doc}");
    assert_eq!(front.profiles_seen(), [Some("tlsserver".to_string())]);
    let served = env.served();
    assert!(
        (lifetime(&served) - DAYS_45 as i64).abs() <= 60,
        "lifetime {}",
        lifetime(&served)
    );
    assert!(env.serves_key_file());

    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.json()["certificates"][0]["profile"], "tlsserver");
    let text = env.certagent(&["status"]);
    assert!(
        text.stdout.contains("  profile:     tlsserver\n"),
        "{text:?}"
    );
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    // A dry run orders under the profile too, and says so.
    let run = env.certagent(&["reissue", "--dry-run", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["certificates"][0]["profile"], "tlsserver");
    assert_eq!(front.profiles_seen().len(), 2);
    assert_eq!(env.served(), served);
}

#[test]
fn a_preferred_profile_the_ca_does_not_offer_is_warned_about_and_issued_without() {
    // Debian's Pebble itself: no profiles in its directory.
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "issuer = \"pebble\"\nprofile = \"tlsserver\"",
        &issuer_at(&pebble.directory_url(), pebble.ca_bundle(), &pebble, ""),
    );
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "installed");
    assert_eq!(doc["certificates"][0]["profile"], serde_json::Value::Null);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("event=profile-not-offered"))
        .unwrap_or_else(|| panic!("no warning: {run:?}"));
    assert!(warning.starts_with("certagent: warning: "), "{warning}");
    assert!(warning.contains("offers none"), "{warning}");
    assert!(warning.contains("\"tlsserver\""), "{warning}");
    assert_ne!(env.served(), env.initial_leaf);

    // Behind the front: the warning names what it offers.
    let (pebble, front) = tlsserver_ca();
    env.write_config(
        "issuer = \"pebble\"\nprofile = \"custom\"",
        &through_front(&pebble, &front),
    );
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", front.log());
    assert_eq!(
        run.json()["certificates"][0]["profile"],
        serde_json::Value::Null
    );
    assert!(
        run.stderr
            .contains("the CA offers only \"classic\", \"shortlived\", \"tlsserver\""),
        "{run:?}"
    );
    // Ordered without a profile.
    assert_eq!(front.profiles_seen(), [None]);
    // Asked for and not granted is no reason to ask again.
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn a_required_profile_the_ca_does_not_offer_fails_and_changes_nothing() {
    let (pebble, front) = tlsserver_ca();
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "issuer = \"pebble\"\nprofile = \"custom\"\nprofile_required = true",
        &through_front(&pebble, &front),
    );
    let files = |env: &Env| {
        (
            std::fs::read(&env.cert_file).unwrap(),
            std::fs::read(&env.key_file).unwrap(),
            std::fs::symlink_metadata(&env.cert_file)
                .unwrap()
                .modified()
                .unwrap(),
        )
    };
    let before = files(&env);
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(
            "ACME profile \"custom\" is required, and the CA of issuer \"pebble\" offers only \"classic\", \"shortlived\", \"tlsserver\""
        ),
        "{doc}"
    );
    assert_eq!(doc["certificates"][0]["profile"], serde_json::Value::Null);
    assert_eq!(doc["changed"], false);
    assert!(front.profiles_seen().is_empty(), "{}", front.log());
    assert_eq!(pebble.orders_created(), 0);
    assert_eq!(env.served(), env.initial_leaf);
    assert!(files(&env) == before, "the served files changed");

    // Pebble alone offers none: said so.
    let pebble = Pebble::start(PebbleOpts::default());
    env.write_config(
        "issuer = \"pebble\"\nprofile = \"tlsserver\"\nprofile_required = true",
        &issuer_at(&pebble.directory_url(), pebble.ca_bundle(), &pebble, ""),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "ACME profile \"tlsserver\" is required, and the CA of issuer \"pebble\" offers none"
        ),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn a_changed_profile_is_reissued_once_and_not_again_when_the_ca_does_not_offer_it() {
    let (pebble, front) = tlsserver_ca();
    let env = Env::new(&["a.test"], None);
    let issuer = through_front(&pebble, &front);
    env.write_config("issuer = \"pebble\"", &issuer);
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.json()["certificates"][0]["profile"],
        serde_json::Value::Null
    );
    assert_eq!(env.certagent(&["check"]).code, 0);

    // A profile configured: check says so, the daemon re-issues under it.
    env.write_config("issuer = \"pebble\"\nprofile = \"tlsserver\"", &issuer);
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    let doc = check.json();
    assert_eq!(doc["certificates"][0]["reason"], "profile-changed", "{doc}");
    assert_eq!(doc["certificates"][0]["action"], "reissue", "{doc}");
    assert!(
        doc["certificates"][0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("ordered under no ACME profile; the configuration asks for \"tlsserver\""),
        "{doc}"
    );
    let old = env.served();
    let mut daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=installed", Duration::from_secs(30));
    assert!(
        daemon.log().contains("reason=profile-changed"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    assert_ne!(env.served(), old);
    assert_eq!(front.profiles_seen(), [None, Some("tlsserver".to_string())]);
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(
        status["certificates"][0]["profile"], "tlsserver",
        "{status}"
    );
    assert_eq!(env.certagent(&["check"]).code, 0);

    // A profile the CA does not offer: one re-issue (under the CA's default), then healthy;
    // what was asked for is recorded, so the same configuration does not ask again.
    env.write_config("issuer = \"pebble\"\nprofile = \"custom\"", &issuer);
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(check.json()["certificates"][0]["reason"], "profile-changed");
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.json()["certificates"][0]["profile"],
        serde_json::Value::Null
    );
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let doc = check.json();
    assert_eq!(doc["certificates"][0]["action"], "none", "{doc}");
    assert!(doc["certificates"][0]["next_check"].is_string(), "{doc}");
    assert_eq!(
        front.profiles_seen(),
        [None, Some("tlsserver".to_string()), None]
    );
    // Removing the profile is no reason either.
    env.write_config("issuer = \"pebble\"", &issuer);
    assert_eq!(env.certagent(&["check"]).code, 0);
}
