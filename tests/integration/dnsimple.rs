//! DNSimple as the CA (Let's Encrypt bought and issued through its API; DNSimple makes the
//! key) and as the DNS for ACME dns-01 — against an in-process fake of DNSimple's API, and a
//! real Pebble resolving through challtestsrv for dns-01.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{
    Env, FakeDnsimple, FakeDnsimpleOpts, Pebble, PebbleOpts, san_dns_names, spki_of_cert_der,
    spki_of_key_pem,
};

fn dnsimple_issuer(env: &Env, fake: &FakeDnsimple, extra: &str) -> String {
    let token = env.dir.path().join("dnsimple.token");
    std::fs::write(&token, format!("{}\n", fake.token())).unwrap();
    format!(
        "[issuer.dns]\nkind = \"dnsimple\"\ndomain = \"a.test\"\napi_url = \"{}\"\ntoken_file = \"{}\"\n{extra}\n",
        fake.base_url(),
        token.display()
    )
}

fn purchases(fake: &FakeDnsimple) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/certificates/letsencrypt "))
        .count()
}

#[test]
fn a_certificate_bought_through_dnsimple_is_installed_with_its_key() {
    let fake = FakeDnsimple::start(FakeDnsimpleOpts::default());
    let mut env = Env::new(&["a.test"], None);
    env.names = vec!["a.test".into(), "www.a.test".into()];
    env.write_config("issuer = \"dns\"", &dnsimple_issuer(&env, &fake, ""));
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", fake.log());
    let issued = fake.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(env.served(), issued[0].cert_der);
    // DNSimple's key is the key in service (and DNSimple has a copy: see the README).
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    assert_eq!(spki_of_key_pem(&key), spki_of_cert_der(&issued[0].cert_der));
    assert_eq!(san_dns_names(&env.served()), vec!["a.test", "www.a.test"]);
    let reqs = fake.requests().join("\n");
    assert!(reqs.contains("GET /v2/whoami -> 200"), "{reqs}");
    assert!(
        fake.recorded()
            .iter()
            .any(|r| r.body.contains("\"name\":\"www\"")),
        "{reqs}"
    );
    // The token never shows up in what certagent prints.
    assert!(!run.stderr.contains(fake.token()) && !run.stdout.contains(fake.token()));
}

#[test]
fn slow_issuance_is_pending_and_resumes_without_buying_twice() {
    // Issuance takes more polls than one run's timeout allows.
    let fake = FakeDnsimple::start(FakeDnsimpleOpts {
        polls_until_issued: 6,
        ..FakeDnsimpleOpts::default()
    });
    let mut env = Env::new(&["a.test"], None);
    env.names = vec!["a.test".into(), "www.a.test".into()];
    env.write_config(
        "issuer = \"dns\"",
        &dnsimple_issuer(&env, &fake, "timeout = \"1s\""),
    );
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 75, "{run:?}\n{}", fake.log());
    assert!(
        run.json()["certificates"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("DNSimple is still issuing"),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
    let journal = std::fs::read_to_string(env.state_dir().join("certs/site/state.json")).unwrap();
    assert!(journal.contains("dnsimple:certificate:"), "{journal}");

    // Later runs keep polling the same certificate until it is issued.
    let mut run = env.certagent(&["reissue", "--now", "site"]);
    for _ in 0..5 {
        if run.code != 75 {
            break;
        }
        run = env.certagent(&["reissue", "--now", "site"]);
    }
    assert_eq!(run.code, 0, "{run:?}\n{}", fake.log());
    assert_eq!(purchases(&fake), 1, "bought twice:\n{}", fake.log());
    assert_eq!(env.served(), fake.issued()[0].cert_der);
}

#[test]
fn dnsimple_errors_are_reported_and_nothing_is_installed() {
    let fake = FakeDnsimple::start(FakeDnsimpleOpts::default());
    let mut env = Env::new(&["a.test"], None);
    env.names = vec!["a.test".into(), "www.a.test".into()];
    env.write_config("issuer = \"dns\"", &dnsimple_issuer(&env, &fake, ""));
    let cases: [(u16, &str); 5] = [
        (401, "DNSimple rejected the token"),
        (404, "404 "),
        (412, "Let's Encrypt feature is not enabled"),
        (429, "DNSimple's rate limit is used up until"),
        (502, "502 an HTML error page"),
    ];
    for (status, want) in cases {
        fake.fail_next(status, 1);
        let run = env.certagent(&["reissue", "--now", "site"]);
        assert_eq!(run.code, 2, "{status}: {run:?}");
        assert!(run.stderr.contains(want), "{status}: {run:?}");
        assert_eq!(env.served(), env.initial_leaf, "{status}");
    }
    assert!(fake.issued().is_empty());
}

#[test]
fn dns_01_through_dnsimple_validates_a_wildcard_at_pebble() {
    let pebble = Pebble::start(PebbleOpts::default());
    let fake = FakeDnsimple::start(FakeDnsimpleOpts {
        challtestsrv: Some(pebble.challtestsrv_url()),
        ..FakeDnsimpleOpts::default()
    });
    let mut env = Env::new(&["a.test"], None);
    env.names = vec!["a.test".into(), "*.a.test".into()];
    let token = env.dir.path().join("dnsimple.token");
    std::fs::write(&token, fake.token()).unwrap();
    let issuer = format!(
        "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nchallenge = \"dns-01\"\ndns_provider = \"dnsimple\"\ndns_zone = \"a.test\"\napi_url = \"{}\"\ntoken_file = \"{}\"\ntimeout = \"60s\"\n",
        pebble.directory_url(),
        pebble.ca_bundle().display(),
        fake.base_url(),
        token.display()
    );
    env.write_config("issuer = \"pebble\"", &issuer);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}\n{}", fake.log(), pebble.log());
    let served = env.served();
    let mut names = san_dns_names(&served);
    names.sort();
    assert_eq!(names, vec!["*.a.test", "a.test"]);
    assert!(
        pebble
            .cert_status(&common::cert_serial_hex(&served))
            .is_some(),
        "not issued by Pebble"
    );
    // Two TXT values at the same name (apex and wildcard), both removed afterwards.
    let history = fake.txt_history();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history
            .iter()
            .all(|(name, value)| name == "_acme-challenge" && value.len() == 43),
        "{history:?}"
    );
    assert!(
        fake.txt_records().is_empty(),
        "TXT records left behind: {:?}",
        fake.txt_records()
    );
}

#[test]
fn a_download_that_is_not_ready_yet_is_pending_not_failed() {
    let fake = FakeDnsimple::start(FakeDnsimpleOpts {
        polls_until_issued: 0,
        ..FakeDnsimpleOpts::default()
    });
    let mut env = Env::new(&["a.test"], None);
    env.names = vec!["a.test".into(), "www.a.test".into()];
    env.write_config("issuer = \"dns\"", &dnsimple_issuer(&env, &fake, ""));
    // 428 "Certificate not issued" on the first download.
    fake.fail_matching("GET", "/download", 428, 1);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 75, "{run:?}\n{}", fake.log());
    assert!(
        run.stdout.contains("has not released certificate"),
        "{run:?}"
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", fake.log());
    assert_eq!(purchases(&fake), 1);
    assert_eq!(env.served(), fake.issued()[0].cert_der);
}
