//! Self-test of the integration-test harness in `tests/common/`: proves that
//! Pebble, nginx and the TLS inspection helpers behave as the certagent
//! integration tests assume, and that nothing is left running afterwards.

#![allow(clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

const DAY: Duration = Duration::from_secs(86400);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_der(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .expect("valid X.509 DER")
        .1
}

#[test]
fn pebble_starts_and_answers() {
    let pebble = Pebble::start(PebbleOpts::default());
    let (pebble_pid, challtestsrv_pid) = pebble.pids();
    assert!(pid_alive(pebble_pid) && pid_alive(challtestsrv_pid));

    // The directory answers over HTTPS trusted via ca_bundle().
    let dir = https_get(&pebble.directory_url(), pebble.ca_bundle()).expect("GET /dir");
    assert_eq!(dir.status, 200, "{}", dir.body);
    let dir_json: serde_json::Value = serde_json::from_str(&dir.body).expect("/dir is JSON");
    let new_order = dir_json["newOrder"].as_str().expect("/dir has newOrder");
    assert!(new_order.starts_with("https://127.0.0.1:"), "{new_order}");

    // Pebble's HTTPS certificate is the TlsCa leaf for localhost/127.0.0.1.
    let addr = pebble.directory_url()["https://".len()..]
        .trim_end_matches("/dir")
        .to_owned();
    let leaf = served_leaf(&addr, "localhost").expect("TLS handshake with Pebble");
    assert_eq!(san_dns_names(&leaf), vec!["localhost".to_owned()]);
    let key_pem = read(&pebble.dir().join("tls/localhost.key"));
    assert_eq!(spki_of_cert_der(&leaf), spki_of_key_pem(&key_pem));

    // The issuing root is a CA certificate.
    let root_der = pem_to_der(&pebble.root_pem());
    let root = parse_der(&root_der);
    assert!(
        root.is_ca(),
        "Pebble root is not a CA: {:?}",
        root.subject()
    );
    let inter_der = pem_to_der(&pebble.intermediate_pem());
    assert_eq!(parse_der(&inter_der).issuer(), root.subject());

    // Nothing ordered yet, unknown serials are None.
    assert_eq!(pebble.orders_created(), 0, "{}", pebble.log());
    assert_eq!(pebble.cert_status("0a:bc:de"), None);

    // The management URL and the logs are usable.
    assert!(pebble.mgmt_url().starts_with("https://127.0.0.1:"));
    assert!(pebble.log().contains("Listening on"), "{}", pebble.log());

    drop(pebble);
    assert!(!pid_alive(pebble_pid), "pebble {pebble_pid} survived drop");
    assert!(
        !pid_alive(challtestsrv_pid),
        "pebble-challtestsrv {challtestsrv_pid} survived drop"
    );
}

#[test]
fn pebble_honours_options() {
    let http_port = reserved_port();
    let pebble = Pebble::start(PebbleOpts {
        always_valid: true,
        validity_period_secs: Some(3600),
        eab_required: true,
        eab_keys: vec![(
            "kid-1".to_owned(),
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".to_owned(),
        )],
        http_port: Some(http_port),
        ..PebbleOpts::default()
    });
    assert_eq!(pebble.http_port(), http_port);
    let log = pebble.pebble_log();
    assert!(
        log.contains("Using certificate validity period of 3600 seconds"),
        "{log}"
    );
    let dir = https_get(&pebble.directory_url(), pebble.ca_bundle()).expect("GET /dir");
    let dir_json: serde_json::Value = serde_json::from_str(&dir.body).expect("/dir is JSON");
    assert_eq!(
        dir_json["meta"]["externalAccountRequired"],
        serde_json::Value::Bool(true),
        "{}",
        dir.body
    );
    let env = std::fs::read(format!("/proc/{}/environ", pebble.pids().0)).expect("environ");
    let env = String::from_utf8_lossy(&env);
    for var in [
        "PEBBLE_VA_ALWAYS_VALID=1",
        "PEBBLE_VA_NOSLEEP=1",
        "PEBBLE_WFE_NONCEREJECT=0",
        "PEBBLE_AUTHZREUSE=0",
    ] {
        assert!(env.split('\0').any(|kv| kv == var), "{var} not set");
    }
}

#[test]
fn nginx_serves_sites_and_reloads() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = TlsCa::new(&tmp.path().join("ca"));
    let now = SystemTime::now();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("create certs dir");

    let leaf_a = ca.issue_leaf(&["a.test"], now - DAY, now + 30 * DAY);
    let leaf_b = ca.issue_leaf(&["b.test", "www.b.test"], now - DAY, now + 30 * DAY);
    let site = |name: &str| Site {
        port: reserved_port(),
        server_names: vec![name.to_owned()],
        cert_file: certs.join(format!("{name}.pem")),
        key_file: certs.join(format!("{name}.key")),
    };
    let mut site_a = site("a.test");
    let site_b = site("b.test");
    site_a.server_names.push("alias.a.test".to_owned());
    leaf_a.write(&site_a.cert_file, &site_a.key_file);
    leaf_b.write(&site_b.cert_file, &site_b.key_file);

    let http_port = reserved_port();
    let nginx = Nginx::start_with_http(
        &tmp.path().join("nginx"),
        &[site_a.clone(), site_b.clone()],
        Some(http_port),
    );
    let conf = read(nginx.conf_path());
    assert!(!conf.contains("include"), "config includes files:\n{conf}");
    assert!(!conf.contains("/etc/"), "config refers to /etc:\n{conf}");
    assert!(nginx.is_alive());
    assert_eq!(
        read(&nginx.pid_file()).trim(),
        nginx.master_pid().to_string()
    );
    nginx.run_test().expect("nginx -t on the generated config");
    let test_cmd = nginx.test_command();
    assert_eq!(test_cmd[..3], ["nginx", "-t", "-q"]);

    // Each site serves its own leaf, whose key is the one in its key file.
    for (site, leaf) in [(&site_a, &leaf_a), (&site_b, &leaf_b)] {
        let addr = format!("127.0.0.1:{}", site.port);
        let served = served_leaf(&addr, &site.server_names[0])
            .unwrap_or_else(|| panic!("no TLS on {addr}:\n{}", nginx.log()));
        assert_eq!(served, leaf.cert_der, "wrong leaf on {addr}");
        assert_eq!(
            spki_of_cert_der(&served),
            spki_of_key_pem(&read(&site.key_file))
        );
        assert_eq!(cert_serial_hex(&served), leaf.serial_hex());
    }
    assert_ne!(leaf_a.spki(), leaf_b.spki());
    assert_eq!(
        san_dns_names(&leaf_b.cert_der),
        vec!["b.test".to_owned(), "www.b.test".to_owned()]
    );
    let (nb, na) = cert_validity(&leaf_a.cert_der);
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    assert_eq!(secs(nb), secs(now - DAY));
    assert_eq!(secs(na), secs(now + 30 * DAY));

    // The http-01 webroot is served on the plain-HTTP port.
    let token_file = nginx.webroot().join(".well-known/acme-challenge/tok123");
    std::fs::write(&token_file, "tok123.thumbprint").expect("write token");
    let resp = http_get(http_port, "/.well-known/acme-challenge/tok123").expect("GET token");
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "tok123.thumbprint"),
        "{}",
        nginx.log()
    );

    // Replace site A's pair and reload: the new leaf gets served.
    let leaf_a2 = ca.issue_leaf(&["a.test", "alias.a.test"], now, now + 60 * DAY);
    assert_ne!(leaf_a2.spki(), leaf_a.spki());
    leaf_a2.write(&site_a.cert_file, &site_a.key_file);
    let reload = nginx.reload_command();
    assert_eq!(reload[..3], ["nginx", "-s", "reload"]);
    let out = Command::new(&reload[0])
        .args(&reload[1..])
        .output()
        .expect("run nginx -s reload");
    assert!(
        out.status.success(),
        "reload failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        nginx.log()
    );
    let addr_a = format!("127.0.0.1:{}", site_a.port);
    let reloaded = wait_until(Duration::from_secs(10), || {
        served_leaf(&addr_a, "alias.a.test").as_deref() == Some(leaf_a2.cert_der.as_slice())
    });
    assert!(
        reloaded,
        "new leaf not served after reload:\n{}",
        nginx.log()
    );
    assert_eq!(
        spki_of_cert_der(&leaf_a2.cert_der),
        spki_of_key_pem(&read(&site_a.key_file))
    );
    let addr_b = format!("127.0.0.1:{}", site_b.port);
    assert_eq!(
        served_leaf(&addr_b, "b.test"),
        Some(leaf_b.cert_der.clone())
    );
    assert!(
        nginx.error_log().contains("reconfiguring"),
        "{}",
        nginx.log()
    );

    // Dropping the guard leaves no nginx process behind.
    let master = nginx.master_pid();
    let workers = nginx.worker_pids();
    assert!(!workers.is_empty(), "no worker found for master {master}");
    drop(nginx);
    for pid in std::iter::once(master).chain(workers) {
        assert!(!pid_alive(pid), "nginx process {pid} survived drop");
    }
    assert_eq!(served_leaf(&addr_a, "a.test"), None);
}

#[test]
fn spki_helpers_agree_with_openssl() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(tmp.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, newkey) in [("rsa", "rsa:2048"), ("ec", "ec")] {
        let mut args = vec!["req", "-x509", "-nodes", "-newkey", newkey];
        if name == "ec" {
            args.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        args.extend(["-keyout", &key, "-out", &cert, "-subj", "/CN=x.test"]);
        args.extend([
            "-addext",
            "subjectAltName=DNS:x.test,DNS:y.test,IP:127.0.0.1",
        ]);
        openssl(&args);
        let cert_der = pem_to_der(&read(&tmp.path().join(&cert)));
        let key_pem = read(&tmp.path().join(&key));
        assert_eq!(
            spki_of_cert_der(&cert_der),
            spki_of_key_pem(&key_pem),
            "{name}"
        );
        assert_eq!(san_dns_names(&cert_der), ["x.test", "y.test"]);
    }
    // Traditional encodings (PKCS#1, SEC1) give the same SPKI.
    openssl(&["rsa", "-in", "rsa.key", "-traditional", "-out", "rsa1.key"]);
    openssl(&["ec", "-in", "ec.key", "-out", "ec1.key"]);
    for (pkcs8, traditional) in [("rsa.key", "rsa1.key"), ("ec.key", "ec1.key")] {
        let t = read(&tmp.path().join(traditional));
        assert!(t.contains("-----BEGIN RSA") || t.contains("-----BEGIN EC"));
        assert_eq!(
            spki_of_key_pem(&read(&tmp.path().join(pkcs8))),
            spki_of_key_pem(&t)
        );
    }
    assert_ne!(
        spki_of_key_pem(&read(&tmp.path().join("rsa.key"))),
        spki_of_key_pem(&read(&tmp.path().join("ec.key")))
    );
}

#[test]
fn process_helpers() {
    // Child kills by pid on drop.
    let child = Child::spawn("sleep", Command::new("sleep").arg("30"));
    let pid = child.pid();
    assert!(pid_alive(pid));
    drop(child);
    assert!(!pid_alive(pid), "sleep {pid} survived drop");

    // wait_until reports success and timeouts.
    assert!(wait_until(Duration::from_secs(1), || true));
    let start = std::time::Instant::now();
    assert!(!wait_until(Duration::from_millis(200), || false));
    assert!(start.elapsed() >= Duration::from_millis(200));

    // A free port has nothing listening: no TLS leaf.
    let port = reserved_port();
    assert_ne!(port, 0);
    assert_eq!(served_leaf(&format!("127.0.0.1:{port}"), "localhost"), None);
}
