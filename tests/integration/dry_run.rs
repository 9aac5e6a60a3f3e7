//! `reissue --dry-run` against real Pebble and nginx: a certificate is ordered, validated,
//! issued and checked, then thrown away; the served certificate, the files, the generations
//! and the journal stay as they were. With `staging_directory` the order goes to a second
//! Pebble, on an account of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::SystemTime;

use common::{Daemon, Env, Pebble, PebbleOpts, cert_serial_hex};

/// Everything a dry run must leave alone: the served leaf, the configured files (bytes and
/// modification times, through the links), the generations and the journal (SHA-256 of
/// contents, so that a difference prints short).
#[derive(Debug, PartialEq)]
struct Host {
    served: String,
    files: Vec<(String, SystemTime)>,
    generations: Vec<String>,
    journal: Option<String>,
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

fn host(env: &Env) -> Host {
    let file = |p: &Path| {
        (
            digest(&std::fs::read(p).unwrap()),
            std::fs::metadata(p).unwrap().modified().unwrap(),
        )
    };
    let live = env.state_dir().join("live/site");
    let mut generations: Vec<String> = match std::fs::read_dir(&live) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gen-"))
            .collect(),
        Err(_) => Vec::new(),
    };
    generations.sort();
    Host {
        served: digest(&env.served()),
        files: vec![file(&env.cert_file), file(&env.key_file)],
        generations,
        journal: std::fs::read(env.state_dir().join("certs/site/state.json"))
            .ok()
            .map(|j| digest(&j)),
    }
}

#[test]
fn a_dry_run_issues_and_discards_changing_nothing_on_the_host() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let before = host(&env);
    assert_eq!(before.generations.len(), 2, "{before:?}");
    let orders = pebble.orders_created();

    let run = env.certagent(&["reissue", "--dry-run", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    let doc = run.json();
    assert_eq!(doc["changed"], false, "{doc}");
    assert_eq!(doc["dry_run"], true, "{doc}");
    let r = &doc["certificates"][0];
    assert_eq!(r["result"], "issued", "{doc}");
    assert_eq!(r["changed"], false);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["generation"], serde_json::Value::Null);
    // A new certificate from Pebble, not the one in service.
    let serial = r["serial"].as_str().unwrap();
    assert_ne!(serial, cert_serial_hex(&env.served()));
    assert!(
        pebble.cert_status(serial).is_some(),
        "not Pebble's: {serial}"
    );
    assert_eq!(pebble.orders_created(), orders + 1);

    assert_eq!(host(&env), before, "the dry run changed the host");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(
        status["certificates"][0]["pending"],
        serde_json::Value::Null
    );

    // In words, too; and beside a running daemon, which holds the lock every other command
    // waits for: a dry run needs none.
    let _daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    let run = env.certagent(&["reissue", "--dry-run", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("site: dry run: issued serial ")
            && run.stdout.contains("nothing changed"),
        "{run:?}"
    );
    assert_eq!(pebble.orders_created(), orders + 2);
    // The daemon journals its own look at the CA (CRL, ARI); the rest is as it was, and
    // nothing is pending.
    let after = host(&env);
    assert_eq!(
        (after.served, after.files, after.generations),
        (before.served, before.files, before.generations)
    );
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(
        status["certificates"][0]["pending"],
        serde_json::Value::Null
    );
    assert_eq!(status["daemon"]["running"], true, "{status}");
}

#[test]
fn a_dry_run_whose_validation_fails_reports_the_cas_problem_and_changes_nothing() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    // A webroot nothing serves: Pebble's validation finds no one on its http-01 port.
    let webroot = env.dir.path().join("unserved");
    std::fs::create_dir_all(&webroot).unwrap();
    env.write_config(
        "issuer = \"pebble\"",
        &format!(
            "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nwebroot = \"{}\"\ntimeout = \"60s\"\n",
            pebble.directory_url(),
            pebble.ca_bundle().display(),
            webroot.display()
        ),
    );
    let before = host(&env);
    let run = env.certagent(&["reissue", "--dry-run", "site", "--json"]);
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["changed"], false, "{doc}");
    let r = &doc["certificates"][0];
    assert_eq!(r["result"], "failed", "{doc}");
    assert_eq!(
        r["problem"]["type"], "urn:ietf:params:acme:error:connection",
        "{doc}"
    );
    let error = r["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "dry run: failed to obtain a certificate for \"site\" from issuer \"pebble\": "
        ) && error.contains("the CA answered connection"),
        "{error}"
    );
    assert_eq!(pebble.orders_created(), 1);
    assert_eq!(host(&env), before, "the failed dry run changed the host");
    assert_eq!(env.certagent(&["check"]).code, 0);
}

#[test]
fn a_dry_run_orders_from_the_staging_directory_on_an_account_of_its_own() {
    let production = Pebble::start(PebbleOpts::default());
    // Both Pebbles validate http-01 against the same responder port.
    let staging = Pebble::start(PebbleOpts {
        http_port: Some(production.http_port()),
        ..PebbleOpts::default()
    });
    let env = Env::new(&["a.test"], None);
    let bundle = env.dir.path().join("both-cas.pem");
    std::fs::write(
        &bundle,
        [production.ca_bundle(), staging.ca_bundle()]
            .map(|p| std::fs::read_to_string(p).unwrap())
            .join("\n"),
    )
    .unwrap();
    env.write_config(
        "issuer = \"pebble\"",
        &format!(
            "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nstaging_directory = \"{}\"\nca_bundle = \"{}\"\nlisten = \"127.0.0.1:{}\"\ntimeout = \"60s\"\n",
            production.directory_url(),
            staging.directory_url(),
            bundle.display(),
            production.http_port()
        ),
    );
    let before = host(&env);
    let run = env.certagent(&["reissue", "--dry-run", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", staging.log());
    let serial = run.json()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        (staging.orders_created(), production.orders_created()),
        (1, 0)
    );
    assert!(staging.cert_status(&serial).is_some());
    assert!(production.cert_status(&serial).is_none());
    assert_eq!(host(&env), before);
    // The staging account is apart; production has none yet.
    let acme = env.state_dir();
    assert!(acme.join("acme-staging/pebble/account.json").is_file());
    assert!(!acme.join("acme/pebble/account.json").exists());

    // The real thing goes to production.
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        (staging.orders_created(), production.orders_created()),
        (1, 1)
    );
    assert!(
        production
            .cert_status(&cert_serial_hex(&env.served()))
            .is_some()
    );
}

#[test]
fn a_dry_run_works_with_the_embedded_ca_and_is_refused_for_a_manual_one() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let before = host(&env);
    let run = env.certagent(&["reissue", "--dry-run", "--all", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["certificates"][0]["result"], "issued");
    assert_eq!(host(&env), before);

    env.write_config(
        "issuer = \"ca\"",
        "[issuer.ca]\nkind = \"manual\"\nremind_every = \"1h\"\n",
    );
    let run = env.certagent(&["reissue", "--dry-run", "site"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stderr.contains(
            "--dry-run is not supported for certificate \"site\" (issuer \"ca\"): a manual CA is a human"
        ),
        "{run:?}"
    );
    assert_eq!(host(&env), before);
}
