//! dns-01 by RFC 2136: certagent adds the TXT records to a real BIND primary by TSIG-signed
//! updates, Pebble validates by asking that named, and the records are deleted afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, Named, Pebble, PebbleOpts, san_dns_names};

/// The issuer with `named` as the primary and as the resolver (the test zones exist nowhere
/// else); `extra` lines are appended.
fn rfc2136_issuer(env: &Env, pebble: &Pebble, named: &Named, extra: &str) -> String {
    format!(
        "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nchallenge = \"dns-01\"\ndns_provider = \"rfc2136\"\ndns_server = \"{addr}\"\ndns_resolvers = [\"{addr}\"]\ntsig_key_file = \"{}\"\npropagation_timeout = \"30s\"\ntimeout = \"60s\"\n{extra}\n",
        pebble.directory_url(),
        pebble.ca_bundle().display(),
        env.dir.path().join("tsig.key").display(),
        addr = named.addr(),
    )
}

#[test]
fn a_wildcard_is_validated_through_signed_updates_to_bind_and_the_records_are_removed() {
    let named = Named::start(&[("example.test", "")]);
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr()),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["example.test"], None);
    env.names = vec!["example.test".into(), "*.example.test".into()];
    named.write_key_file(&env.dir.path().join("tsig.key"));
    // No dns_zone: the zone is found by an SOA query to the resolver.
    env.write_config(
        "issuer = \"pebble\"",
        &rfc2136_issuer(&env, &pebble, &named, ""),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}\n{}", named.log(), pebble.log());
    let served = env.served();
    let mut names = san_dns_names(&served);
    names.sort();
    assert_eq!(names, vec!["*.example.test", "example.test"]);
    assert!(
        pebble
            .cert_status(&common::cert_serial_hex(&served))
            .is_some(),
        "not issued by Pebble"
    );
    // named took two signed updates adding the TXT values and two deleting them.
    let log = named.log();
    let signed = "/key acme-update: updating zone 'example.test/IN': ";
    let added = format!("{signed}adding an RR at '_acme-challenge.example.test' TXT");
    let deleted = format!("{signed}deleting an RR at _acme-challenge.example.test TXT");
    assert_eq!(log.matches(&added).count(), 2, "{log}");
    assert_eq!(log.matches(&deleted).count(), 2, "{log}");
    assert_eq!(
        named.txt("_acme-challenge.example.test"),
        Vec::<String>::new()
    );
    let secret = std::fs::read_to_string(env.dir.path().join("tsig.key")).unwrap();
    let secret = secret.split('"').nth(3).unwrap();
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
}

#[test]
fn a_wrong_tsig_key_is_refused_by_the_server_and_nothing_is_installed() {
    let named = Named::start(&[("example.test", "")]);
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr()),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["example.test"], None);
    env.names = vec!["example.test".into(), "*.example.test".into()];
    // The right name and algorithm, another secret.
    std::fs::write(
        env.dir.path().join("tsig.key"),
        "key \"acme-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"d3JvbmcgLSB3cm9uZyAtIHdyb25nIC0gd3Jvbmc=\";\n};\n",
    )
    .unwrap();
    env.write_config(
        "issuer = \"pebble\"",
        &rfc2136_issuer(&env, &pebble, &named, "dns_zone = \"example.test\""),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}\n{}", named.log());
    let want = format!(
        "the DNS server {} refused the update of zone \"example.test\": NOTAUTH (TSIG error BadSig)",
        named.addr()
    );
    assert!(run.stderr.contains(&want), "{run:?}");
    assert!(run.stderr.contains("check tsig_key_file"), "{run:?}");
    assert_eq!(env.served(), env.initial_leaf);
    assert_eq!(
        named.txt("_acme-challenge.example.test"),
        Vec::<String>::new()
    );
    assert_eq!(pebble.orders_created(), 1);
}

#[test]
fn a_name_server_that_does_not_serve_the_record_is_named_and_the_record_is_removed() {
    // ns2 is listed for the zone but nothing there answers for it (127.0.0.2:53).
    let named = Named::start(&[(
        "example.test",
        "@ IN NS ns2.example.test.\nns2 IN A 127.0.0.2",
    )]);
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr()),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["example.test"], None);
    env.names = vec!["example.test".into()];
    named.write_key_file(&env.dir.path().join("tsig.key"));
    let issuer = rfc2136_issuer(&env, &pebble, &named, "").replace(
        "propagation_timeout = \"30s\"",
        "propagation_timeout = \"2s\"",
    );
    env.write_config("issuer = \"pebble\"", &issuer);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}\n{}", named.log());
    assert!(
        run.stderr.contains(
            "the TXT record _acme-challenge.example.test is not served by the name server ns2.example.test (127.0.0.2:53) within 2s"
        ),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
    // It was added (the primary served it) and deleted after the failure.
    let log = named.log();
    assert!(
        log.contains("adding an RR at '_acme-challenge.example.test' TXT"),
        "{log}"
    );
    assert!(
        log.contains("deleting an RR at _acme-challenge.example.test TXT"),
        "{log}"
    );
    assert_eq!(
        named.txt("_acme-challenge.example.test"),
        Vec::<String>::new()
    );
}

#[test]
fn a_cname_at_the_challenge_name_delegates_the_record_to_another_zone() {
    let named = Named::start(&[
        (
            "example.test",
            "_acme-challenge.www IN CNAME www.acme.delegated.test.",
        ),
        ("delegated.test", ""),
    ]);
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr()),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["www.example.test"], None);
    env.names = vec!["www.example.test".into()];
    named.write_key_file(&env.dir.path().join("tsig.key"));
    // dns_zone names the certificate's zone; the delegated record's zone is found by SOA.
    env.write_config(
        "issuer = \"pebble\"",
        &rfc2136_issuer(&env, &pebble, &named, "dns_zone = \"example.test\""),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}\n{}", named.log(), pebble.log());
    assert_eq!(san_dns_names(&env.served()), vec!["www.example.test"]);
    let log = named.log();
    assert!(
        log.contains("/key acme-update: updating zone 'delegated.test/IN': adding an RR at 'www.acme.delegated.test' TXT"),
        "{log}"
    );
    assert!(
        log.contains("/key acme-update: updating zone 'delegated.test/IN': deleting an RR at www.acme.delegated.test TXT"),
        "{log}"
    );
    assert!(!log.contains("updating zone 'example.test/IN'"), "{log}");
    assert_eq!(named.txt("www.acme.delegated.test"), Vec::<String>::new());
}

#[test]
fn lookups_go_to_the_resolvers_not_to_the_primary() {
    // The primary answers, the only resolver does not: the zone cannot be found, nothing is
    // updated, and the error names the resolver and the key to check.
    let named = Named::start(&[("example.test", "")]);
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr()),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["example.test"], None);
    env.names = vec!["example.test".into()];
    named.write_key_file(&env.dir.path().join("tsig.key"));
    let dead = format!("127.0.0.1:{}", common::reserved_port());
    let issuer = rfc2136_issuer(&env, &pebble, &named, "").replace(
        &format!("dns_resolvers = [\"{}\"]", named.addr()),
        &format!("dns_resolvers = [\"{dead}\"]"),
    );
    assert!(issuer.contains(&dead), "{issuer}");
    env.write_config("issuer = \"pebble\"", &issuer);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!("DNS server {dead}")),
        "{run:?}"
    );
    assert!(run.stderr.contains("hint: check dns_resolvers"), "{run:?}");
    assert!(!named.log().contains("adding an RR"), "{}", named.log());
    assert_eq!(env.served(), env.initial_leaf);
}
