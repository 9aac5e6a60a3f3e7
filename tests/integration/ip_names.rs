//! IP addresses as certificate names (RFC 8738): an `ip` identifier ordered from Pebble,
//! validated by http-01 through nginx's webroot, an iPAddress SAN in the leaf, and the
//! handshake that proves the install made without SNI (clients send none for an address).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{
    Env, Pebble, PebbleOpts, san_dns_names, san_ip_addresses, served_leaf, spki_of_cert_der,
    spki_of_key_pem,
};

#[test]
fn an_ip_address_certificate_from_pebble_via_webroot_is_served_and_proven_without_sni() {
    // Pebble validates an `ip` identifier at that address on its httpPort: nginx's plain
    // HTTP server on 127.0.0.1 serves the webroot there.
    let http_port = common::reserved_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port: Some(http_port),
        ..PebbleOpts::default()
    });
    let env = Env::new(&["127.0.0.1", "a.test"], Some(http_port));
    env.write_config(
        "issuer = \"pebble\"",
        &format!(
            r#"[issuer.pebble]
kind = "acme"
directory = "{dir}"
ca_bundle = "{bundle}"
contact = ["mailto:ops@a.test"]
timeout = "60s"
webroot = "{webroot}"
"#,
            dir = pebble.directory_url(),
            bundle = pebble.ca_bundle().display(),
            webroot = env.nginx.webroot().display(),
        ),
    );
    // The test CA's leaf in service carries IP:127.0.0.1 and DNS:a.test: the names check
    // matches SANs of both kinds, so nothing is due.
    let check = env.certagent(&["check", "--json"]);
    let json = check.json();
    let cert = &json["certificates"][0];
    assert_eq!(cert["names"], serde_json::json!(["127.0.0.1", "a.test"]));
    assert_ne!(cert["reason"], "names-changed", "{check:?}");

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());

    // A handshake without SNI (rustls sends none for ServerName::IpAddress) gets the new
    // leaf: for the key file, with the iPAddress SAN, issued by Pebble.
    let served = served_leaf(&env.addr(), "127.0.0.1").expect("nginx answers without SNI");
    assert_ne!(served, env.initial_leaf, "nginx still serves the old leaf");
    let key = std::fs::read_to_string(&env.key_file).expect("key file");
    assert_eq!(
        spki_of_cert_der(&served),
        spki_of_key_pem(&key),
        "served leaf is not for the key file"
    );
    assert_eq!(
        san_ip_addresses(&served),
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(san_dns_names(&served), vec!["a.test"]);
    let serial = common::cert_serial_hex(&served);
    let status = pebble
        .cert_status(&serial)
        .unwrap_or_else(|| panic!("Pebble does not know serial {serial}\n{}", pebble.log()));
    assert_eq!(status["Status"], "Valid");
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn a_dns01_issuer_for_an_ip_address_is_refused_before_anything_runs() {
    let env = Env::new(&["127.0.0.1"], None);
    env.write_config(
        "issuer = \"dns\"",
        r#"[issuer.dns]
kind = "acme"
directory = "https://127.0.0.1:1/dir"
challenge = "dns-01"
dns_provider = "dnsimple"
token_file = "/nonexistent/token"
"#,
    );
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 78, "{check:?}");
    assert!(
        check.stderr.contains(
            "certificate.site.names: \"127.0.0.1\" is an IP address: IP address names cannot be validated by dns-01"
        ) && check.stderr.contains("hint: use challenge = \"http-01\""),
        "{check:?}"
    );
}
