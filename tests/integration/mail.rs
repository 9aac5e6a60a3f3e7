//! Mail servers as `kind = "command"` servers proven over STARTTLS: a real Postfix (SMTP) and
//! a real Dovecot (IMAP and POP3) on loopback, each with its own directories, re-issued by the
//! embedded CA, reloaded by their own commands (`postfix reload`, `doveadm reload`) and proven
//! by a handshake after the protocol's upgrade; a reload that does nothing is rolled back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{
    Dovecot, Leaf, Postfix, TlsCa, cert_serial_hex, reserved_port, run_certagent, spki_of_cert_der,
    spki_of_key_pem, starttls_leaf, toml_list,
};

const NAME: &str = "mail.test";

struct Scratch {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    initial: Leaf,
}

/// A temporary directory with a test CA's leaf for mail.test in `ssl/`.
fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let ca = TlsCa::new(&dir.path().join("testca"));
    let ssl = dir.path().join("ssl");
    std::fs::create_dir_all(&ssl).unwrap();
    let now = SystemTime::now();
    let initial = ca.issue_leaf(
        &[NAME],
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(60 * 86_400),
    );
    let (cert, key) = (ssl.join("mail.pem"), ssl.join("mail.key"));
    initial.write(&cert, &key);
    Scratch {
        dir,
        cert,
        key,
        initial,
    }
}

/// A config whose server `mail` is driven by `test`/`reload` and probed at `verify`.
fn write_config(s: &Scratch, verify: &str, test: &[String], reload: &[String]) -> PathBuf {
    let d = s.dir.path();
    let text = format!(
        r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"

[server.mail]
kind = "command"
verify = {verify}
test_command = {test}
reload_command = {reload}
verify_timeout = "5s"

[certificate.mail]
names = ["{NAME}"]
issuer = "internal"
server = "mail"
cert_file = "{cert}"
key_file = "{key}"
"#,
        state = d.join("state").display(),
        run = d.join("run").display(),
        test = toml_list(test),
        reload = toml_list(reload),
        cert = s.cert.display(),
        key = s.key.display(),
    );
    let config = d.join("config.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn key_spki(path: &Path) -> Vec<u8> {
    spki_of_key_pem(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn postfix_gets_a_new_certificate_proven_over_smtp_starttls() {
    let s = scratch();
    let postfix = Postfix::start(
        &s.dir.path().join("postfix"),
        reserved_port(),
        &s.cert,
        &s.key,
    );
    let addr = postfix.addr();
    assert_eq!(
        starttls_leaf(&addr, "smtp", NAME),
        Some(s.initial.cert_der.clone()),
        "{}",
        postfix.log()
    );
    let verify = format!("[{{ address = \"{addr}\", starttls = \"smtp\" }}]");
    let config = write_config(
        &s,
        &verify,
        &postfix.test_command(),
        &postfix.reload_command(),
    );
    let run = run_certagent(&config, &["reissue", "--now", "mail", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", postfix.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "installed");
    let served = starttls_leaf(&addr, "smtp", NAME).expect("postfix offers STARTTLS");
    assert_ne!(served, s.initial.cert_der);
    assert_eq!(
        cert_serial_hex(&served),
        doc["certificates"][0]["serial"].as_str().unwrap()
    );
    assert_eq!(spki_of_cert_der(&served), key_spki(&s.key));
    // `check` and `status` report the endpoint with its protocol.
    let check = run_certagent(&config, &["check", "--json"], &[]);
    assert_eq!(check.code, 0, "{check:?}");
    assert_eq!(
        check.json()["certificates"][0]["verify"],
        serde_json::json!([{"endpoint": addr, "sni": NAME, "starttls": "smtp", "answered": true, "error": null}])
    );
    let check = run_certagent(&config, &["status"], &[]);
    assert!(
        check.stdout.contains(&format!(
            "verify:      {addr} (SNI {NAME}, STARTTLS smtp) answers"
        )),
        "{check:?}"
    );
}

#[test]
fn dovecot_gets_a_new_certificate_proven_over_imap_and_pop3_starttls() {
    let s = scratch();
    let (imap, pop3) = (reserved_port(), reserved_port());
    let dovecot = Dovecot::start(&s.dir.path().join("dovecot"), imap, pop3, &s.cert, &s.key);
    let verify = format!(
        "[{{ address = \"127.0.0.1:{imap}\", starttls = \"imap\" }}, {{ address = \"127.0.0.1:{pop3}\", starttls = \"pop3\" }}]"
    );
    let config = write_config(
        &s,
        &verify,
        &dovecot.test_command(),
        &dovecot.reload_command(),
    );
    let run = run_certagent(&config, &["reissue", "--now", "mail", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", dovecot.log());
    let serial = run.json()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    for (port, proto) in [(imap, "imap"), (pop3, "pop3")] {
        let served = starttls_leaf(&format!("127.0.0.1:{port}"), proto, NAME)
            .unwrap_or_else(|| panic!("dovecot offers STARTTLS on {proto}"));
        assert_eq!(cert_serial_hex(&served), serial, "{proto}");
        assert_eq!(spki_of_cert_der(&served), key_spki(&s.key), "{proto}");
    }
}

/// Dovecot, not Postfix: a new `smtpd` process reads the files again by itself, so Postfix
/// would serve the new leaf without any reload; Dovecot's config process keeps what it read
/// until it is reloaded.
#[test]
fn a_starttls_service_still_presenting_the_old_certificate_is_rolled_back() {
    let s = scratch();
    let (imap, pop3) = (reserved_port(), reserved_port());
    let dovecot = Dovecot::start(&s.dir.path().join("dovecot"), imap, pop3, &s.cert, &s.key);
    let addr = format!("127.0.0.1:{imap}");
    let old_cert = std::fs::read(&s.cert).unwrap();
    let old_key = std::fs::read(&s.key).unwrap();
    let verify = format!("[{{ address = \"{addr}\", starttls = \"imap\" }}]");
    // The reload command does nothing: Dovecot goes on presenting the old leaf.
    let config = write_config(&s, &verify, &dovecot.test_command(), &["true".into()]);
    let run = run_certagent(&config, &["reissue", "--now", "mail", "--json"], &[]);
    assert_eq!(run.code, 2, "{run:?}\n{}", dovecot.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "rolled-back");
    assert_eq!(
        doc["certificates"][0]["error"],
        format!(
            "server \"mail\" does not serve the new certificate: {addr} (SNI {NAME}) serves serial {}; rolled back to generation 0, reloaded the previous certificate",
            s.initial.serial_hex()
        )
    );
    assert_eq!(std::fs::read(&s.cert).unwrap(), old_cert);
    assert_eq!(std::fs::read(&s.key).unwrap(), old_key);
    assert_eq!(
        starttls_leaf(&addr, "imap", NAME),
        Some(s.initial.cert_der.clone())
    );
}

#[test]
fn a_port_that_does_not_offer_starttls_is_named_in_the_rollback() {
    // Dovecot's IMAP port probed as SMTP: its greeting is not an SMTP reply.
    let s = scratch();
    let (imap, pop3) = (reserved_port(), reserved_port());
    let dovecot = Dovecot::start(&s.dir.path().join("dovecot"), imap, pop3, &s.cert, &s.key);
    let verify = format!("[{{ address = \"127.0.0.1:{imap}\", starttls = \"smtp\" }}]");
    let config = write_config(
        &s,
        &verify,
        &dovecot.test_command(),
        &dovecot.reload_command(),
    );
    let run = run_certagent(&config, &["reissue", "--now", "mail", "--json"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    let error = run.json()["certificates"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "server \"mail\" does not serve the new certificate: smtp 127.0.0.1:{imap}: not an SMTP reply: \"* OK"
        )),
        "{error}"
    );
    assert_eq!(
        starttls_leaf(&format!("127.0.0.1:{imap}"), "imap", NAME),
        Some(s.initial.cert_der.clone())
    );
}
