//! End to end with a real ACME CA (Debian's Pebble, strict validation) and a real nginx:
//! http-01 through the built-in responder and through nginx's webroot, names and key-type
//! changes, and external account binding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, Pebble, PebbleOpts, san_dns_names, spki_of_cert_der, spki_of_key_pem};

fn acme_issuer(pebble: &Pebble, responder: &str) -> String {
    format!(
        r#"[issuer.pebble]
kind = "acme"
directory = "{dir}"
ca_bundle = "{bundle}"
contact = ["mailto:ops@a.test"]
timeout = "60s"
{responder}
"#,
        dir = pebble.directory_url(),
        bundle = pebble.ca_bundle().display(),
    )
}

/// The served leaf was issued by Pebble (it knows the serial) and is for the key file.
fn assert_pebble_serves_key_file(env: &Env, pebble: &Pebble) {
    let served = env.served();
    assert_ne!(served, env.initial_leaf, "nginx still serves the old leaf");
    let key = std::fs::read_to_string(&env.key_file).expect("key file");
    assert_eq!(
        spki_of_cert_der(&served),
        spki_of_key_pem(&key),
        "served leaf is not for the key file"
    );
    let serial = common::cert_serial_hex(&served);
    let status = pebble
        .cert_status(&serial)
        .unwrap_or_else(|| panic!("Pebble does not know serial {serial}\n{}", pebble.log()));
    assert_eq!(status["Status"], "Valid");
}

#[test]
fn key_deleted_reissued_through_acme_with_built_in_http01_responder() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "issuer = \"pebble\"",
        &acme_issuer(
            &pebble,
            &format!("listen = \"127.0.0.1:{}\"", pebble.http_port()),
        ),
    );
    std::fs::remove_file(&env.key_file).expect("delete key");
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check
            .stdout
            .starts_with("site: needs re-issue: key-missing"),
        "{check:?}"
    );

    let run = env.certagent(&["reissue", "--now", "site", "--reason", "key-lost"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
    assert_eq!(pebble.orders_created(), 1);
    // The account was stored once, private, and is reused by the next re-issue.
    let account = env.state_dir().join("acme/pebble/account.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&account).expect("account").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(pebble.orders_created(), 2);
    assert!(
        pebble
            .pebble_log()
            .contains("There are now 1 accounts in memory"),
        "{}",
        pebble.pebble_log()
    );
    assert!(
        !pebble.pebble_log().contains("There are now 2 accounts"),
        "a second account was registered"
    );
    assert_eq!(env.certagent(&["check"]).code, 0);
}

#[test]
fn names_and_key_type_changes_through_acme_with_nginx_webroot() {
    let http_port = common::reserved_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port: Some(http_port),
        ..PebbleOpts::default()
    });
    let mut env = Env::new(&["a.test"], Some(http_port));
    let issuer = acme_issuer(
        &pebble,
        &format!("webroot = \"{}\"", env.nginx.webroot().display()),
    );

    env.names = vec!["a.test".into(), "b.test".into()];
    env.write_config("issuer = \"pebble\"", &issuer);
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(
        check.json()["certificates"][0]["reason"],
        "names-changed",
        "{check:?}"
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
    assert_eq!(san_dns_names(&env.served()), vec!["a.test", "b.test"]);
    // Challenge files are removed after validation.
    let leftovers = std::fs::read_dir(env.nginx.webroot().join(".well-known/acme-challenge"))
        .expect("challenge dir")
        .count();
    assert_eq!(leftovers, 0);

    env.write_config("issuer = \"pebble\"\nkey_type = \"ecdsa-p384\"", &issuer);
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(
        check.json()["certificates"][0]["reason"],
        "key-type-changed",
        "{check:?}"
    );
    let run = env.certagent(&["reissue", "--now", "site", "--reason", "key-change"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
    let key = std::fs::read_to_string(&env.key_file).expect("key");
    // P-384 curve OID 1.3.132.0.34
    assert!(
        spki_of_key_pem(&key)
            .windows(5)
            .any(|w| w == [0x2b, 0x81, 0x04, 0x00, 0x22]),
        "key is not P-384"
    );
    assert_eq!(env.certagent(&["check"]).code, 0);
}

#[test]
fn external_account_binding_is_used_when_configured() {
    // Pebble's example EAB key, base64url.
    let mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start(PebbleOpts {
        eab_required: true,
        eab_keys: vec![("kid-1".into(), mac.into())],
        always_valid: true,
        ..PebbleOpts::default()
    });
    let env = Env::new(&["a.test"], None);
    let mac_file = env.dir.path().join("eab.key");
    std::fs::write(&mac_file, format!("{mac}\n")).expect("write mac");
    let listen = format!("listen = \"127.0.0.1:{}\"", pebble.http_port());
    let without = acme_issuer(&pebble, &listen);
    env.write_config("issuer = \"pebble\"", &without);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("failed to register ACME account"),
        "{run:?}"
    );
    assert!(run.stderr.contains("externalAccountRequired"), "{run:?}");
    // Nothing changed on the host.
    assert_eq!(env.served(), env.initial_leaf);

    let with = format!(
        "{without}eab_kid = \"kid-1\"\neab_hmac_key_file = \"{}\"\n",
        mac_file.display()
    );
    env.write_config("issuer = \"pebble\"", &with);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
}

/// `issuer-changed` by certagent's record of its last install: a configuration that moved
/// from the local CA to an ACME CA notices that what is in service is the local CA's (only
/// reported, by default); once the ACME CA's certificate is installed it is healthy, and a
/// leaf another CA issued for the same key and names, written over it, is reported again.
#[test]
fn what_certagent_installed_from_another_ca_than_configured_is_issuer_changed() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("", &pebble.issuer_table());
    let local = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(local.code, 0, "{local:?}");

    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "only reported: {check:?}");
    let report = &check.json()["certificates"][0];
    assert_eq!(
        report["noted"],
        serde_json::json!(["issuer-changed"]),
        "{report}"
    );
    assert_eq!(report["action"], "none", "{report}");
    let problem = report["problems"][0].as_str().unwrap();
    assert!(
        problem.ends_with("not by the configured issuer \"pebble\"; only reported: reissue_on_issuer_change = true replaces it"),
        "{report}"
    );

    env.write_config(
        "issuer = \"pebble\"\nreissue_on_issuer_change = true",
        &pebble.issuer_table(),
    );
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(check.json()["certificates"][0]["reason"], "issuer-changed");
    let acme = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(acme.code, 0, "{acme:?}\n{}", pebble.log());
    assert_pebble_serves_key_file(&env, &pebble);
    let healthy = env.certagent(&["check", "--json"]);
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert_eq!(
        healthy.json()["certificates"][0]["reasons"],
        serde_json::json!([])
    );

    // Another CA's leaf for the same key and names, not installed by certagent.
    env.swap_in_another_cas_leaf();
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    let report = &check.json()["certificates"][0];
    assert_eq!(
        report["reasons"],
        serde_json::json!(["issuer-changed"]),
        "{report}"
    );
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("the certificate in service was issued by \"CN=Other Test CA\", not by the configured issuer \"pebble\""),
        "{report}"
    );
}
