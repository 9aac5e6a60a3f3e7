//! `certagent discover` against real nginx and Apache configurations with several virtual
//! hosts, an include file and relative paths: the servers are started with these configs (so
//! they are real and valid), discover prints them as TOML that `config validate` accepts,
//! `check` finds healthy, and `reissue` installs and proves served through the discovered
//! verify endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Apache, Leaf, Nginx, TlsCa, reserved_port, run_certagent, served_leaf};

fn leaf(ca: &TlsCa, names: &[&str], cert: &Path, key: &Path) -> Leaf {
    let now = SystemTime::now();
    let leaf = ca.issue_leaf(
        names,
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(60 * 86_400),
    );
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    leaf.write(cert, key);
    leaf
}

/// Run discover; it never needs (or reads) certagent's own config.
fn discover(args: &[&str]) -> common::Run {
    let mut all = vec!["discover"];
    all.extend(args);
    run_certagent(Path::new("/nonexistent/config.toml"), &all, &[])
}

/// The discovered TOML with an [agent] table in front, as a config file. The test CA is no
/// public CA discover could name: as an operator would, the test chooses the embedded local
/// CA for its certificates by name (without it, `config validate` refuses them).
fn adopt(dir: &Path, toml: &str) -> std::path::PathBuf {
    let toml: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("[certificate.") {
                format!("{l}\nissuer = \"internal\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    adopt_as_is(dir, &toml)
}

/// The discovered TOML with an [agent] table in front, unchanged.
fn adopt_as_is(dir: &Path, toml: &str) -> std::path::PathBuf {
    let config = dir.join("etc/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\n{toml}",
            dir.join("state").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn nginx_sites_from_includes_and_relative_paths_become_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TlsCa::new(&dir.join("testca"));
    let prefix = dir.join("nginx");
    // Relative to the directory of nginx.conf, as nginx resolves them.
    let default = leaf(
        &ca,
        &["default.test"],
        &prefix.join("ssl/default.pem"),
        &prefix.join("ssl/default.key"),
    );
    let shop = leaf(
        &ca,
        &["shop.test", "www.shop.test"],
        &dir.join("certs/shop.pem"),
        &dir.join("certs/shop.key"),
    );
    leaf(
        &ca,
        &["blog.test"],
        &prefix.join("ssl/blog.pem"),
        &prefix.join("ssl/blog.key"),
    );
    let (p1, p2, p3) = (reserved_port(), reserved_port(), reserved_port());
    std::fs::create_dir_all(prefix.join("sites")).unwrap();
    std::fs::write(
        prefix.join("nginx.conf"),
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
    # inherited by server blocks without their own certificate
    ssl_certificate ssl/default.pem;
    ssl_certificate_key ssl/default.key;
    server {{
        listen 127.0.0.1:{p1} ssl default_server;
        server_name default.test;
    }}
    server {{
        listen 127.0.0.1:{p1} ssl;
        server_name shop.test www.shop.test;
        ssl_certificate "{certs}/shop.pem";   # absolute, quoted
        ssl_certificate_key {certs}/shop.key;
        # ssl_certificate /commented/out.pem;
    }}
    include sites/*.conf;
    server {{
        listen 127.0.0.1:{p3};
        server_name plain.test;
    }}
}}
"#,
            prefix = prefix.display(),
            certs = dir.join("certs").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        prefix.join("sites/blog.conf"),
        format!(
            "server {{\n    listen 127.0.0.1:{p2} ssl;\n    server_name blog.test;\n    ssl_certificate ssl/blog.pem;\n    ssl_certificate_key ssl/blog.key;\n}}\n\
             server {{\n    listen 127.0.0.1:{p2} ssl;\n    server_name www.shop.test;\n    ssl_certificate {certs}/shop.pem;\n    ssl_certificate_key {certs}/shop.key;\n}}\n",
            certs = dir.join("certs").display()
        ),
    )
    .unwrap();
    let nginx = Nginx::start_custom(&prefix, &prefix.join("nginx.conf"), &[p1, p2, p3]);
    let conf = prefix.join("nginx.conf");
    let conf_arg = conf.to_str().unwrap();

    let json = discover(&["--nginx-conf", conf_arg, "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["problems"], serde_json::json!([]));
    let certs = doc["certificates"].as_array().unwrap();
    let names: Vec<&str> = certs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default-test", "shop-test", "blog-test"]);
    let shop_doc = &certs[1];
    assert_eq!(
        shop_doc["names"],
        serde_json::json!(["shop.test", "www.shop.test"])
    );
    assert_eq!(shop_doc["key_type"], "ecdsa-p256");
    assert_eq!(shop_doc["serial"], shop.serial_hex());
    assert_eq!(
        shop_doc["cert_file"],
        dir.join("certs/shop.pem").display().to_string()
    );
    assert_eq!(shop_doc["usable"], true);
    assert_eq!(
        shop_doc["sources"],
        serde_json::json!([
            format!("{conf_arg}:24"),
            format!("{}:10", prefix.join("sites/blog.conf").display())
        ])
    );
    assert_eq!(
        shop_doc["endpoints"],
        serde_json::json!([
            {"address": format!("127.0.0.1:{p1}"), "sni": "shop.test"},
            {"address": format!("127.0.0.1:{p2}"), "sni": "www.shop.test"},
        ])
    );
    // Relative paths resolved against the directory of nginx.conf, from the http level and
    // from the include file.
    assert_eq!(
        certs[0]["cert_file"],
        prefix.join("ssl/default.pem").display().to_string()
    );
    assert_eq!(certs[0]["serial"], default.serial_hex());
    assert_eq!(
        certs[2]["key_file"],
        prefix.join("ssl/blog.key").display().to_string()
    );
    let files = doc["servers"][0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        doc["servers"][0]["pid_file"],
        nginx.pid_file().display().to_string()
    );

    let toml = discover(&["--nginx-conf", conf_arg]);
    assert_eq!(toml.code, 0, "{toml:?}");
    assert!(
        toml.stdout
            .starts_with("# Found by `certagent discover`: 3 certificate(s), 3 ready to manage.\n"),
        "{}",
        toml.stdout
    );
    assert!(
        toml.stdout.contains(&format!(
            "[certificate.shop-test]\nnames = [\"shop.test\", \"www.shop.test\"]\nserver = \"nginx\"\nkey_type = \"ecdsa-p256\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("certs/shop.pem").display(),
            dir.join("certs/shop.key").display()
        )),
        "{}",
        toml.stdout
    );
    // Discover changed nothing.
    assert!(
        std::fs::symlink_metadata(dir.join("certs/shop.pem"))
            .unwrap()
            .is_file()
    );

    // As discovered, the certificates of a CA discover cannot name are refused: the embedded
    // local CA would replace them with certificates no browser trusts.
    let config = adopt_as_is(dir, &toml.stdout);
    let refused = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(refused.code, 78, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "certificate.shop-test.issuer: not set, so the embedded local CA would issue this certificate, but {:?} holds one issued by \"CN=certagent test CA\"",
            dir.join("certs/shop.pem").display().to_string()
        )),
        "{refused:?}"
    );
    assert!(
        toml.stdout
            .contains("# problem: issued by CN=certagent test CA: name the CA that issues it"),
        "{}",
        toml.stdout
    );

    // Ready to use once the issuer is named: valid, healthy, and a re-issue through it is
    // proven served on both addresses of the shop.
    let config = adopt(dir, &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);
    assert_eq!(
        valid.stdout,
        format!(
            "{}: valid, 3 certificate(s): blog-test, default-test, shop-test\n",
            config.display()
        )
    );
    let check = run_certagent(&config, &["check"], &[]);
    assert_eq!(check.code, 0, "{check:?}");
    let run = run_certagent(&config, &["reissue", "--now", "shop-test"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", nginx.log());
    let on_p1 = served_leaf(&format!("127.0.0.1:{p1}"), "shop.test").unwrap();
    assert_ne!(on_p1, shop.cert_der);
    assert_eq!(
        served_leaf(&format!("127.0.0.1:{p2}"), "www.shop.test").unwrap(),
        on_p1
    );
    assert_eq!(
        served_leaf(&format!("127.0.0.1:{p1}"), "default.test").unwrap(),
        default.cert_der
    );
}

#[test]
fn apache_virtual_hosts_from_includes_and_relative_paths_become_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TlsCa::new(&dir.join("testca"));
    let root = dir.join("apache");
    let shop = leaf(
        &ca,
        &["shop.test", "www.shop.test"],
        &dir.join("certs/shop.pem"),
        &dir.join("certs/shop.key"),
    );
    // Relative to ServerRoot, as mod_ssl resolves them.
    let blog = leaf(
        &ca,
        &["blog.test"],
        &root.join("ssl/blog.pem"),
        &root.join("ssl/blog.key"),
    );
    let (p1, p2, p3) = (reserved_port(), reserved_port(), reserved_port());
    std::fs::create_dir_all(root.join("sites-enabled")).unwrap();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let modules = "/usr/lib/apache2/modules";
    std::fs::write(
        root.join("apache2.conf"),
        format!(
            r#"ServerRoot "{root}"
ServerName 127.0.0.1
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule ssl_module {modules}/mod_ssl.so
DefaultRuntimeDir {root}
PidFile apache2.pid
ErrorLog logs/error.log
User nobody
Group nogroup
Define CERTS {certs}
Listen 127.0.0.1:{p1}
Listen 127.0.0.1:{p2}
Listen 127.0.0.1:{p3}
<IfModule ssl_module>
<VirtualHost 127.0.0.1:{p1}>
    ServerName shop.test
    ServerAlias www.shop.test
    SSLEngine on
    SSLCertificateFile "${{CERTS}}/shop.pem"
    SSLCertificateKeyFile ${{CERTS}}/shop.key
</VirtualHost>
</IfModule>
IncludeOptional sites-enabled/*.conf
"#,
            root = root.display(),
            certs = dir.join("certs").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("sites-enabled/blog.conf"),
        format!(
            "# the blog\n<VirtualHost 127.0.0.1:{p2}>\n    ServerName blog.test\n    SSLEngine on\n    SSLCertificateFile ssl/blog.pem\n    SSLCertificateKeyFile \\\n        ssl/blog.key\n</VirtualHost>\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("sites-enabled/plain.conf"),
        format!("<VirtualHost 127.0.0.1:{p3}>\n    ServerName plain.test\n</VirtualHost>\n"),
    )
    .unwrap();
    let mut apache = Apache::start_custom(&root, &[p1, p2, p3]);
    let parent = apache.parent_pid();
    let root_arg = root.to_str().unwrap();

    let json = discover(&["--apache-root", root_arg, "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["problems"], serde_json::json!([]));
    let server = &doc["servers"][0];
    assert_eq!(server["kind"], "apache");
    assert_eq!(
        server["config"],
        root.join("apache2.conf").display().to_string()
    );
    assert_eq!(server["pid_file"], apache.pid_file().display().to_string());
    assert_eq!(
        server["test_command"],
        serde_json::json!([
            "apache2",
            "-d",
            root_arg,
            "-f",
            root.join("apache2.conf").display().to_string(),
            "-t"
        ])
    );
    assert_eq!(server["files"].as_array().unwrap().len(), 3);
    let certs = doc["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{certs:#?}");
    assert_eq!(certs[0]["name"], "shop-test");
    assert_eq!(
        certs[0]["server_names"],
        serde_json::json!(["shop.test", "www.shop.test"])
    );
    assert_eq!(
        certs[0]["cert_file"],
        dir.join("certs/shop.pem").display().to_string()
    );
    assert_eq!(certs[0]["serial"], shop.serial_hex());
    assert_eq!(certs[1]["name"], "blog-test");
    assert_eq!(
        certs[1]["cert_file"],
        root.join("ssl/blog.pem").display().to_string()
    );
    assert_eq!(
        certs[1]["key_file"],
        root.join("ssl/blog.key").display().to_string()
    );
    assert_eq!(
        certs[1]["sources"],
        serde_json::json!([format!(
            "{}:5",
            root.join("sites-enabled/blog.conf").display()
        )])
    );
    assert_eq!(
        certs[1]["endpoints"],
        serde_json::json!([{"address": format!("127.0.0.1:{p2}"), "sni": "blog.test"}])
    );

    let toml = discover(&["--apache-root", root_arg]);
    assert_eq!(toml.code, 0, "{toml:?}");
    let config = adopt(dir, &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);
    assert_eq!(run_certagent(&config, &["check"], &[]).code, 0);
    let run = run_certagent(&config, &["reissue", "--now", "blog-test", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", apache.log());
    assert_eq!(run.json()["certificates"][0]["result"], "installed");
    let served = served_leaf(&format!("127.0.0.1:{p2}"), "blog.test").unwrap();
    assert_ne!(served, blog.cert_der);
    assert!(apache.is_alive());
    assert_eq!(apache.parent_pid(), parent);
}

#[test]
fn discover_says_what_it_cannot_read_or_manage() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none/nginx.conf");
    let run = discover(&["--nginx-conf", missing.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "certagent: failed to read {:?}: no such file\n  hint: point --nginx-conf, --apache-root or --apache-conf at the server's configuration\n",
            missing.display().to_string()
        )
    );

    // A variable path, a missing certificate and an include that does not exist.
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(
        &conf,
        "http {\n  include missing.conf;\n  server {\n    listen 443 ssl;\n    server_name v.test;\n    ssl_certificate /etc/ssl/$ssl_server_name.pem;\n    ssl_certificate_key /etc/ssl/$ssl_server_name.key;\n  }\n  server {\n    listen 8443 ssl;\n    server_name gone.test;\n    ssl_certificate gone.pem;\n    ssl_certificate_key gone.key;\n  }\n}\n",
    )
    .unwrap();
    let run = discover(&["--nginx-conf", conf.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(
        doc["problems"],
        serde_json::json!([format!(
            "nginx: {}:2: include {:?} does not exist",
            conf.display(),
            tmp.path().join("missing.conf").display().to_string()
        )])
    );
    let certs = doc["certificates"].as_array().unwrap();
    assert_eq!(certs[0]["usable"], false);
    assert_eq!(
        certs[0]["problems"][0],
        "ssl_certificate \"/etc/ssl/$ssl_server_name.pem\" uses variables: nginx reads such files at every handshake; name the files directly to let certagent manage them"
    );
    assert_eq!(certs[1]["usable"], false);
    assert_eq!(
        certs[1]["problems"][0],
        format!(
            "certificate: {:?} does not exist",
            tmp.path().join("gone.pem").display().to_string()
        )
    );
    // In TOML they are comments, and what is left still validates.
    let toml = discover(&["--nginx-conf", conf.to_str().unwrap()]);
    assert!(
        toml.stdout
            .contains("# not ready to manage as it is:\n# [certificate.gone-test]\n"),
        "{}",
        toml.stdout
    );
    let config = adopt(tmp.path(), &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);
}

/// A certbot tree under `dir/letsencrypt` with the lineage `shop.test` (a Let's Encrypt–like
/// chain), renewed from `server` with certbot's `account` (`webroot_path` when given), and
/// nginx serving its `live/` links. Returns the `live/shop.test` directory, nginx and its
/// configuration file.
fn certbot_site(
    dir: &Path,
    server: &str,
    account: &str,
    webroot: Option<&Path>,
) -> (std::path::PathBuf, Nginx, std::path::PathBuf) {
    let le = TlsCa::lets_encrypt_like(&dir.join("le-ca"));
    let root = dir.join("letsencrypt");
    let archive = root.join("archive/shop.test");
    let live = root.join("live/shop.test");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(root.join("renewal")).unwrap();
    let shop = leaf(
        &le,
        &["shop.test"],
        &archive.join("cert1.pem"),
        &archive.join("privkey1.pem"),
    );
    std::fs::write(archive.join("chain1.pem"), le.ca_pem()).unwrap();
    std::fs::write(
        archive.join("fullchain1.pem"),
        format!("{}{}", shop.cert_pem, le.ca_pem()),
    )
    .unwrap();
    for f in ["cert", "chain", "fullchain", "privkey"] {
        std::os::unix::fs::symlink(
            format!("../../archive/shop.test/{f}1.pem"),
            live.join(format!("{f}.pem")),
        )
        .unwrap();
    }
    let (authenticator, webroot) = match webroot {
        Some(w) => ("webroot", format!("webroot_path = {0},\n", w.display())),
        None => ("standalone", String::new()),
    };
    std::fs::write(
        root.join("renewal/shop.test.conf"),
        format!(
            "version = 2.1.0\narchive_dir = {0}\ncert = {1}/cert.pem\nprivkey = {1}/privkey.pem\n\
             chain = {1}/chain.pem\nfullchain = {1}/fullchain.pem\n\n[renewalparams]\n\
             account = {account}\nauthenticator = {authenticator}\n{webroot}\
             server = {server}\n",
            archive.display(),
            live.display(),
        ),
    )
    .unwrap();
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let port = reserved_port();
    std::fs::write(
        prefix.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\nuser root;\n\
             events {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {p}/tmp/body;\n\
             proxy_temp_path {p}/tmp/proxy;\n    fastcgi_temp_path {p}/tmp/fastcgi;\n    uwsgi_temp_path {p}/tmp/uwsgi;\n\
             scgi_temp_path {p}/tmp/scgi;\n    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name shop.test;\n\
             ssl_certificate {l}/fullchain.pem;\n        ssl_certificate_key {l}/privkey.pem;\n    }}\n}}\n",
            p = prefix.display(),
            l = live.display()
        ),
    )
    .unwrap();
    let nginx = Nginx::start_custom(&prefix, &prefix.join("nginx.conf"), &[port]);
    (live, nginx, prefix.join("nginx.conf"))
}

/// A certbot account directory as certbot writes it (`accounts/SERVER/PATH/ID/`).
fn certbot_account(dir: &Path, private_key: &serde_json::Value, uri: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("private_key.json"), private_key.to_string()).unwrap();
    std::fs::write(
        dir.join("regr.json"),
        serde_json::json!({"body": {"status": "valid"}, "uri": uri}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("meta.json"),
        r#"{"creation_dt": "2026-01-01T00:00:00Z", "creation_host": "web-1", "register_to_eff": null}"#,
    )
    .unwrap();
}

/// A site certbot manages, with a Let's Encrypt–like chain: discover names the CA from
/// certbot's renewal configuration (directory and webroot), points the certificate at it, and
/// takes over the lineage as a whole (cert.pem and chain.pem too), saying that certbot's
/// timer must be stopped, and that certbot's RSA account cannot be taken over. What it prints
/// validates as it is and is healthy.
#[test]
fn a_certbot_lineage_is_adopted_whole_with_its_ca_and_webroot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (live, _nginx, nginx_conf) = certbot_site(
        dir,
        "https://acme-v02.api.letsencrypt.org/directory",
        "0123abcd",
        Some(&dir.join("www")),
    );
    let account = dir.join("letsencrypt/accounts/acme-v02.api.letsencrypt.org/directory/0123abcd");
    certbot_account(
        &account,
        &serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB", "p": "AQ", "q": "AQ", "dp": "AQ", "dq": "AQ", "qi": "AQ"}),
        "https://acme-v02.api.letsencrypt.org/acme/acct/123",
    );
    let prefix = nginx_conf.parent().unwrap().to_path_buf();
    let toml = discover(&["--nginx-conf", prefix.join("nginx.conf").to_str().unwrap()]);
    assert_eq!(toml.code, 0, "{toml:?}");
    let out = &toml.stdout;
    assert!(
        out.contains(&format!(
            "[issuer.letsencrypt]\nkind = \"acme\"\ndirectory = \"https://acme-v02.api.letsencrypt.org/directory\"\n# contact = [\"mailto:you@example.com\"]\n\
             # note: certbot's account 0123abcd ({}) cannot be taken over: its key is RSA, and certagent's ACME client signs with ECDSA P-256 keys only; certagent registers a new account at the first re-issue\n\
             webroot = \"{}\"\n",
            account.display(),
            dir.join("www").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "[certificate.shop-test]\nnames = [\"shop.test\"]\nissuer = \"letsencrypt\"\nserver = \"nginx\"\nkey_type = \"ecdsa-p256\"\ncert_file = \"{0}/fullchain.pem\"\nkey_file = \"{0}/privkey.pem\"\nchain_file = \"{0}/chain.pem\"\nleaf_file = \"{0}/cert.pem\"\n",
            live.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "# problem: a certbot lineage ({}): stop certbot renewing it",
            live.display()
        )),
        "{out}"
    );
    // certbot's timer must stop, or both renew: said up front, in the TOML and on stderr.
    assert!(
        out.contains(&format!(
            "# certbot renews 1 of these certificates:\n#   {}\n# Before adopting them, stop certbot's renewal:\n#   systemctl disable --now certbot.timer\n\
             # (and remove /etc/cron.d/certbot where it exists), or certbot and certagent will\n# both renew them, each replacing the other's certificate.\n",
            live.display()
        )),
        "{out}"
    );
    assert!(
        toml.stderr.contains("or certbot and certagent will both renew them, each replacing the other's certificate: run `systemctl disable --now certbot.timer` before adopting them"),
        "{toml:?}"
    );
    assert!(
        toml.stderr.contains("cannot be taken over: its key is RSA"),
        "{toml:?}"
    );
    let json = discover(&["--json", "--nginx-conf", nginx_conf.to_str().unwrap()]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    assert_eq!(
        doc["certbot"]["stop"], "systemctl disable --now certbot.timer",
        "{doc}"
    );
    assert_eq!(
        doc["certbot"]["lineages"],
        serde_json::json!([live.display().to_string()]),
        "{doc}"
    );
    assert!(
        doc["certbot"]["why"]
            .as_str()
            .unwrap()
            .contains("or certbot and certagent will both renew them"),
        "{doc}"
    );
    assert_eq!(
        doc["issuers"][0]["account_from_certbot"],
        serde_json::Value::Null
    );
    assert!(
        doc["issuers"][0]["account_note"]
            .as_str()
            .unwrap()
            .contains("its key is RSA"),
        "{doc}"
    );

    let config = adopt_as_is(dir, out);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{out}");
    let check = run_certagent(&config, &["check"], &[]);
    assert_eq!(check.code, 0, "{check:?}");
}

/// certbot's ACME account (an ECDSA P-256 key, registered at Pebble) is taken over when a
/// lineage is adopted: discover points the issuer at it, the first re-issue stores it as
/// certagent's own and orders with it, and Pebble registers no new account.
#[test]
fn certbots_p256_account_is_taken_over_and_no_new_account_is_registered() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pebble = common::Pebble::start(common::PebbleOpts::default());
    let accounts = |p: &common::Pebble| {
        p.pebble_log()
            .lines()
            .filter(|l| l.contains("accounts in memory"))
            .count()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The account certbot registered: made here by certagent in a state directory of its
    // own, then written out the way certbot keeps it.
    let registrar = dir.join("registrar");
    std::fs::create_dir_all(&registrar).unwrap();
    let config = registrar.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n\n{1}\n\
             [certificate.reg]\nnames = [\"reg.test\"]\nissuer = \"pebble\"\n\
             cert_file = \"{0}/reg.pem\"\nkey_file = \"{0}/reg.key\"\n",
            registrar.display(),
            pebble.issuer_table()
        ),
    )
    .unwrap();
    let reg = run_certagent(&config, &["reissue", "--now", "reg"], &[]);
    assert_eq!(reg.code, 0, "{reg:?}\n{}", pebble.log());
    assert_eq!(accounts(&pebble), 1, "{}", pebble.pebble_log());
    let stored: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registrar.join("state/acme/pebble/account.json")).unwrap(),
    )
    .unwrap();
    let uri = stored["credentials"]["id"].as_str().unwrap().to_string();
    let der = b64
        .decode(stored["credentials"]["key_pkcs8"].as_str().unwrap())
        .unwrap();
    // PKCS#8 of a P-256 key with its public key (RFC 5915): d at 36, x and y at 74 and 106.
    assert_eq!(der.len(), 138);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "d": b64.encode(&der[36..68]), "x": b64.encode(&der[74..106]), "y": b64.encode(&der[106..138]),
    });
    let (live, _nginx, nginx_conf) = certbot_site(dir, &pebble.directory_url(), "9f8e7d", None);
    let host = pebble
        .directory_url()
        .trim_start_matches("https://")
        .replace("/dir", "");
    let account = dir.join(format!("letsencrypt/accounts/{host}/dir/9f8e7d"));
    certbot_account(&account, &jwk, &uri);

    let toml = discover(&["--nginx-conf", nginx_conf.to_str().unwrap()]);
    assert_eq!(toml.code, 0, "{toml:?}");
    let want = format!(
        "# certbot's account {uri}: taken over at the first re-issue (same account, same rate limits)\naccount_from_certbot = \"{}\"\n",
        account.display()
    );
    assert!(toml.stdout.contains(&want), "{}\n{want}", toml.stdout);
    // This Pebble's trust and the port its VA connects to, as an operator would add them.
    let out = toml.stdout.replace(
        &format!("directory = \"{}\"\n", pebble.directory_url()),
        &format!(
            "directory = \"{}\"\nca_bundle = \"{}\"\nlisten = \"127.0.0.1:{}\"\n",
            pebble.directory_url(),
            pebble.ca_bundle().display(),
            pebble.http_port()
        ),
    );
    let config = adopt_as_is(dir, &out);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{out}");

    let run = run_certagent(&config, &["reissue", "--now", "shop-test"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", pebble.log());
    assert!(
        run.stderr.contains("took over certbot's ACME account"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("registered ACME account"), "{run:?}");
    assert_eq!(
        accounts(&pebble),
        1,
        "a new account:\n{}",
        pebble.pebble_log()
    );
    assert_eq!(pebble.orders_created(), 2);
    let path = dir.join("state/acme/acme/account.json");
    let taken: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(taken["credentials"]["id"], uri.as_str());
    assert_eq!(taken["directory"], pebble.directory_url());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(live.join("fullchain.pem").exists());

    // Taken over once: with certbot's copy gone, the next re-issue uses certagent's.
    std::fs::remove_dir_all(&account).unwrap();
    let again = run_certagent(&config, &["reissue", "--now", "shop-test"], &[]);
    assert_eq!(again.code, 0, "{again:?}\n{}", pebble.log());
    assert!(
        !again.stderr.contains("certbot's ACME account"),
        "{again:?}"
    );
    assert_eq!(
        accounts(&pebble),
        1,
        "a new account:\n{}",
        pebble.pebble_log()
    );
    assert_eq!(pebble.orders_created(), 3);
}

/// A PEM with key, leaf and chain (HAProxy's `crt`, certagent's `bundle_file`) for `names`.
fn bundle(ca: &TlsCa, names: &[&str], path: &Path) -> Leaf {
    let now = SystemTime::now();
    let leaf = ca.issue_leaf(
        names,
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(60 * 86_400),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!("{}{}{}", leaf.key_pem, leaf.cert_pem, ca.ca_pem()),
    )
    .unwrap();
    leaf
}

#[test]
fn haproxy_postfix_and_dovecot_certificates_become_servers_and_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = TlsCa::new(&d.join("ca"));
    let (p1, p2) = (reserved_port(), reserved_port());
    // HAProxy: a crt file and a crt directory on one bind, a crt-list on another, the runtime
    // API at level admin.
    let certs = d.join("haproxy/certs");
    bundle(&ca, &["lb.test", "www.lb.test"], &certs.join("site.pem"));
    bundle(&ca, &["dir.test"], &certs.join("dir/one.pem"));
    bundle(&ca, &["listed.test"], &certs.join("listed.pem"));
    std::fs::write(
        d.join("haproxy/list.txt"),
        "listed.pem [alpn h2,http/1.1] listed.test !other.test\n",
    )
    .unwrap();
    let haproxy_cfg = d.join("haproxy/haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n    crt-base {certs}\n    stats socket {sock} mode 600 level admin\n\ndefaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n    timeout server 5s\n\nfrontend web\n    bind 127.0.0.1:{p1} ssl crt site.pem crt dir\n    http-request return status 200\n\nlisten listed\n    bind 127.0.0.1:{p2} ssl crt-list {list}\n    http-request return status 200\n",
            certs = certs.display(),
            sock = d.join("run/admin.sock").display(),
            list = d.join("haproxy/list.txt").display(),
        ),
    )
    .unwrap();
    // Postfix: key and chain in smtpd_tls_chain_files; smtp, submission and submissions.
    let mail = d.join("mail");
    leaf(
        &ca,
        &["mx.test"],
        &mail.join("mx.pem"),
        &mail.join("mx.key"),
    );
    let main_cf = d.join("postfix/main.cf");
    std::fs::create_dir_all(main_cf.parent().unwrap()).unwrap();
    std::fs::write(
        &main_cf,
        format!(
            "tls = {}\nsmtpd_tls_chain_files =\n    $tls/mx.key,\n    ${{tls}}/mx.pem\n",
            mail.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("postfix/master.cf"),
        "smtp      inet  n       -       y       -       -       smtpd\nsubmission inet n       -       y       -       -       smtpd\n  -o smtpd_tls_security_level=encrypt\nsubmissions inet n      -       y       -       -       smtpd\n  -o smtpd_tls_wrappermode=yes\npickup    unix  n       -       y       60      1       pickup\n",
    )
    .unwrap();
    // Dovecot: IMAP only, the certificate in an included conf.d file.
    leaf(
        &ca,
        &["imap.test"],
        &mail.join("imap.pem"),
        &mail.join("imap.key"),
    );
    let dovecot_conf = d.join("dovecot/dovecot.conf");
    std::fs::create_dir_all(d.join("dovecot/conf.d")).unwrap();
    std::fs::write(&dovecot_conf, "protocols = imap\n!include conf.d/*.conf\n").unwrap();
    std::fs::write(
        d.join("dovecot/conf.d/10-ssl.conf"),
        format!(
            "ssl = required\nssl_cert = <{}\nssl_key = <{}\nlocal_name mx.test {{\n  ssl_cert = <{}\n  ssl_key = <{}\n}}\n",
            mail.join("imap.pem").display(),
            mail.join("imap.key").display(),
            mail.join("mx.pem").display(),
            mail.join("mx.key").display()
        ),
    )
    .unwrap();

    let args = [
        "--haproxy-conf",
        haproxy_cfg.to_str().unwrap(),
        "--postfix-conf",
        main_cf.to_str().unwrap(),
        "--dovecot-conf",
        dovecot_conf.to_str().unwrap(),
    ];
    // A configuration named but missing is an error naming it and the flag.
    let missing = d.join("none/main.cf");
    let run = discover(&["--postfix-conf", missing.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "certagent: failed to read {:?}: no such file\n  hint: point --postfix-conf at the server's configuration\n",
            missing.display().to_string()
        )
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = discover(&json_args);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["problems"], serde_json::json!([]), "{doc:#}");
    let servers = doc["servers"].as_array().unwrap();
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["haproxy", "postfix", "dovecot"]);
    let (lb, mx, imap) = (&servers[0], &servers[1], &servers[2]);
    assert_eq!(lb["kind"], "haproxy");
    assert_eq!(
        lb["runtime_socket"],
        d.join("run/admin.sock").display().to_string()
    );
    assert_eq!(
        lb["files"],
        serde_json::json!([
            haproxy_cfg.display().to_string(),
            d.join("haproxy/list.txt").display().to_string()
        ])
    );
    assert_eq!(
        lb["verify"],
        serde_json::json!([
            {"address": format!("127.0.0.1:{p1}"), "sni": "lb.test"},
            {"address": format!("127.0.0.1:{p1}"), "sni": "dir.test"},
            {"address": format!("127.0.0.1:{p2}"), "sni": "listed.test"},
        ])
    );
    assert_eq!(mx["kind"], "command");
    assert_eq!(
        mx["reload_command"],
        serde_json::json!([
            "postfix",
            "-c",
            d.join("postfix").display().to_string(),
            "reload"
        ])
    );
    assert_eq!(
        mx["verify"],
        serde_json::json!([
            {"address": "127.0.0.1:25", "sni": "mx.test", "starttls": "smtp"},
            {"address": "127.0.0.1:587", "sni": "mx.test", "starttls": "smtp"},
            {"address": "127.0.0.1:465", "sni": "mx.test"},
        ])
    );
    assert_eq!(imap["kind"], "command");
    assert_eq!(
        imap["reload_command"],
        serde_json::json!([
            "doveadm",
            "-c",
            dovecot_conf.display().to_string(),
            "reload"
        ])
    );
    assert_eq!(
        imap["verify"],
        serde_json::json!([
            {"address": "127.0.0.1:143", "sni": "imap.test", "starttls": "imap"},
            {"address": "127.0.0.1:993", "sni": "imap.test"},
        ])
    );
    assert_eq!(
        imap["files"],
        serde_json::json!([
            dovecot_conf.display().to_string(),
            d.join("dovecot/conf.d/10-ssl.conf").display().to_string()
        ])
    );

    let certs_found = doc["certificates"].as_array().unwrap();
    let summary: Vec<(String, String, serde_json::Value, bool)> = certs_found
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["server"].as_str().unwrap().to_string(),
                c["names"].clone(),
                c["usable"].as_bool().unwrap(),
            )
        })
        .collect();
    let j = |v: &[&str]| serde_json::json!(v);
    assert_eq!(
        summary,
        [
            (
                "lb-test".into(),
                "haproxy".into(),
                j(&["lb.test", "www.lb.test"]),
                true
            ),
            ("dir-test".into(), "haproxy".into(), j(&["dir.test"]), true),
            (
                "listed-test".into(),
                "haproxy".into(),
                j(&["listed.test"]),
                true
            ),
            ("mx-test".into(), "postfix".into(), j(&["mx.test"]), true),
            (
                "imap-test".into(),
                "dovecot".into(),
                j(&["imap.test"]),
                true
            ),
            ("mx-test-2".into(), "dovecot".into(), j(&["mx.test"]), false),
        ],
        "{doc:#}"
    );
    // The bundle HAProxy reads, and separate leaf+chain and key files beside it (for a crt
    // directory, in the directory above, which HAProxy does not load).
    let s = |p: &Path| p.display().to_string();
    assert_eq!(certs_found[0]["bundle_file"], s(&certs.join("site.pem")));
    assert_eq!(certs_found[0]["cert_file"], s(&certs.join("site.crt")));
    assert_eq!(certs_found[0]["key_file"], s(&certs.join("site.key")));
    assert_eq!(certs_found[1]["bundle_file"], s(&certs.join("dir/one.pem")));
    assert_eq!(certs_found[1]["cert_file"], s(&certs.join("one.crt")));
    assert_eq!(
        certs_found[2]["sources"],
        serde_json::json!([format!("{}:1", d.join("haproxy/list.txt").display())])
    );
    assert_eq!(certs_found[2]["server_names"], j(&["listed.test"]));
    assert_eq!(certs_found[3]["cert_file"], s(&mail.join("mx.pem")));
    assert_eq!(certs_found[3]["key_file"], s(&mail.join("mx.key")));
    assert_eq!(certs_found[3]["bundle_file"], serde_json::Value::Null);
    assert_eq!(certs_found[4]["cert_file"], s(&mail.join("imap.pem")));
    // Postfix and Dovecot sharing files: managed once, the other server reloaded by a hook.
    assert!(
        certs_found[5]["problems"].as_array().unwrap().contains(&serde_json::json!(format!(
            "{:?} is also served by postfix, whose certificate manages it: a certificate reloads one server; reload dovecot too with post_install = [\"doveadm\", \"reload\"] in that certificate",
            mail.join("mx.key").display().to_string()
        ))),
        "{doc:#}"
    );

    // The TOML validates as certagent configuration.
    let toml = discover(&args);
    assert_eq!(toml.code, 0, "{toml:?}");
    assert!(
        toml.stdout.contains(
            "[server.postfix]\nkind = \"command\"\nverify = [\n  { address = \"127.0.0.1:25\", sni = \"mx.test\", starttls = \"smtp\" },\n"
        ),
        "{}",
        toml.stdout
    );
    let config = adopt(d, &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);

    // The fixtures are what the real servers accept: the discovered test commands pass.
    for server in [lb, imap] {
        let argv: Vec<&str> = server["test_command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
    }
}

/// A real HAProxy serving a bundle, with its runtime API: the discovered configuration
/// re-issues through the API (no reload) and the new leaf is what HAProxy serves.
#[test]
fn a_discovered_haproxy_certificate_is_reissued_through_the_runtime_api() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = TlsCa::new(&d.join("ca"));
    let pem = d.join("certs/lb.pem");
    let old = bundle(&ca, &["lb.test"], &pem);
    let port = reserved_port();
    let haproxy = common::Haproxy::start(&d.join("haproxy"), port, &pem, &[]);
    let conf = d.join("haproxy/haproxy.cfg");
    let toml = discover(&["--haproxy-conf", conf.to_str().unwrap()]);
    assert_eq!(toml.code, 0, "{toml:?}");
    assert!(
        toml.stdout.contains(&format!(
            "runtime_socket = {:?}\n",
            haproxy.runtime_socket().display().to_string()
        )),
        "{}",
        toml.stdout
    );
    let config = adopt(d, &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);
    let master = haproxy.master_pid();
    let run = run_certagent(&config, &["reissue", "--now", "lb-test"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}\n{}", toml.stdout, haproxy.log());
    let served = served_leaf(&format!("127.0.0.1:{port}"), "lb.test").unwrap();
    assert_ne!(served, old.cert_der);
    // Swapped in the running process: the same master, and the new files where discover
    // put them.
    assert_eq!(haproxy.master_pid(), master);
    let leaf_pem = std::fs::read_to_string(d.join("certs/lb.crt")).unwrap();
    assert_eq!(common::pem_to_der(&leaf_pem), served);
    assert!(d.join("certs/lb.key").exists());
}

/// Real Postfix and Dovecot (non-standard ports, as the test helpers run them): the
/// discovered configuration re-issues both, proven over STARTTLS on the discovered endpoints.
#[test]
fn discovered_postfix_and_dovecot_certificates_are_reissued_and_proven_over_starttls() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = TlsCa::new(&d.join("ca"));
    let (smtp, imap, pop3) = (reserved_port(), reserved_port(), reserved_port());
    let mx = leaf(
        &ca,
        &["mx.test"],
        &d.join("tls/mx.pem"),
        &d.join("tls/mx.key"),
    );
    let im = leaf(
        &ca,
        &["imap.test"],
        &d.join("tls/imap.pem"),
        &d.join("tls/imap.key"),
    );
    let _postfix = common::Postfix::start(
        &d.join("postfix"),
        smtp,
        &d.join("tls/mx.pem"),
        &d.join("tls/mx.key"),
    );
    let dovecot = common::Dovecot::start(
        &d.join("dovecot"),
        imap,
        pop3,
        &d.join("tls/imap.pem"),
        &d.join("tls/imap.key"),
    );
    let main_cf = d.join("postfix/conf/main.cf");
    let dovecot_conf = d.join("dovecot/dovecot.conf");
    let args = [
        "--postfix-conf",
        main_cf.to_str().unwrap(),
        "--dovecot-conf",
        dovecot_conf.to_str().unwrap(),
    ];
    let toml = discover(&args);
    assert_eq!(toml.code, 0, "{toml:?}");
    for want in [
        format!("{{ address = \"127.0.0.1:{smtp}\", sni = \"mx.test\", starttls = \"smtp\" }}"),
        format!("{{ address = \"127.0.0.1:{imap}\", sni = \"imap.test\", starttls = \"imap\" }}"),
        format!("{{ address = \"127.0.0.1:{pop3}\", sni = \"imap.test\", starttls = \"pop3\" }}"),
    ] {
        assert!(toml.stdout.contains(&want), "{want}\n{}", toml.stdout);
    }
    let config = adopt(d, &toml.stdout);
    let valid = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(valid.code, 0, "{valid:?}\n{}", toml.stdout);
    for (name, addr, proto, sni, old) in [
        ("mx-test", smtp, "smtp", "mx.test", &mx),
        ("imap-test", imap, "imap", "imap.test", &im),
    ] {
        let run = run_certagent(&config, &["reissue", "--now", name], &[]);
        assert_eq!(run.code, 0, "{run:?}\n{}\n{}", toml.stdout, dovecot.log());
        let served = common::starttls_leaf(&format!("127.0.0.1:{addr}"), proto, sni).unwrap();
        assert_ne!(&served, &old.cert_der, "{name}");
    }
    let served = common::starttls_leaf(&format!("127.0.0.1:{pop3}"), "pop3", "imap.test").unwrap();
    assert_ne!(served, im.cert_der);
}
