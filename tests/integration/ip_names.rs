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
fn an_ip_address_alone_is_validated_by_the_built_in_http01_responder() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["127.0.0.1"], None);
    env.write_config(
        "issuer = \"pebble\"",
        &format!(
            r#"[issuer.pebble]
kind = "acme"
directory = "{dir}"
ca_bundle = "{bundle}"
timeout = "60s"
listen = "127.0.0.1:{port}"
"#,
            dir = pebble.directory_url(),
            bundle = pebble.ca_bundle().display(),
            port = pebble.http_port(),
        ),
    );
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    let served = env.served();
    assert_ne!(served, env.initial_leaf, "nginx still serves the old leaf");
    assert!(env.serves_key_file());
    assert_eq!(
        san_ip_addresses(&served),
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(san_dns_names(&served).is_empty());
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    assert_eq!(
        doc["certificates"][0]["names"],
        serde_json::json!(["127.0.0.1"]),
        "{status:?}"
    );
    assert_eq!(doc["certificates"][0]["verify"][0]["sni"], "127.0.0.1");
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

/// `discover` reads a literal address in `server_name` (and an iPAddress SAN) as an IP name;
/// the configuration it prints validates, and a re-issue from the embedded CA is proven
/// served through the discovered endpoint, without SNI.
#[test]
fn discover_turns_an_ip_server_name_into_an_ip_name_that_reissues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = common::TlsCa::new(&dir.join("testca"));
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("ssl")).unwrap();
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let old = ca.issue_leaf(&["127.0.0.1"], now - day, now + 60 * day);
    old.write(&prefix.join("ssl/ip.pem"), &prefix.join("ssl/ip.key"));
    let port = common::reserved_port();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
user root;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name 127.0.0.1;
        ssl_certificate ssl/ip.pem;
        ssl_certificate_key ssl/ip.key;
    }}
}}
"#,
            prefix = prefix.display(),
        ),
    )
    .unwrap();
    let nginx = common::Nginx::start_custom(&prefix, &conf, &[port]);
    let conf_arg = conf.to_str().unwrap();
    let run = |config: &std::path::Path, args: &[&str]| common::run_certagent(config, args, &[]);

    let json = run(
        std::path::Path::new("/nonexistent/config.toml"),
        &["discover", "--nginx-conf", conf_arg, "--json"],
    );
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    let cert = &doc["certificates"][0];
    assert_eq!(cert["names"], serde_json::json!(["127.0.0.1"]), "{doc}");
    assert_eq!(
        cert["endpoints"],
        serde_json::json!([{"address": format!("127.0.0.1:{port}"), "sni": "127.0.0.1"}])
    );
    assert_eq!(cert["usable"], true, "{doc}");

    let toml = run(
        std::path::Path::new("/nonexistent/config.toml"),
        &["discover", "--nginx-conf", conf_arg],
    );
    assert_eq!(toml.code, 0, "{toml:?}");
    // The test CA is no public CA: as an operator would, name the embedded CA.
    let body: String = toml
        .stdout
        .lines()
        .map(|l| {
            if l.starts_with("[certificate.") {
                format!("{l}\nissuer = \"internal\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let config = dir.join("etc/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\n{body}",
            dir.join("state").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let valid = run(&config, &["config", "validate"]);
    assert_eq!(valid.code, 0, "{valid:?}\n{body}");
    let check = run(&config, &["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let name = cert["name"].as_str().unwrap();
    let reissue = run(&config, &["reissue", "--now", name]);
    assert_eq!(reissue.code, 0, "{reissue:?}\n{}", nginx.log());
    let served = served_leaf(&format!("127.0.0.1:{port}"), "127.0.0.1").unwrap();
    assert_ne!(served, old.cert_der);
    assert_eq!(
        san_ip_addresses(&served),
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(san_dns_names(&served).is_empty());
}
