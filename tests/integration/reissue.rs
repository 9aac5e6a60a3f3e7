//! End to end with the embedded local CA and a real nginx: `check` finds what is wrong,
//! `reissue --now` fixes it, and nginx is proven to serve the new leaf; a failing config test
//! rolls back to the old pair.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::{Env, san_dns_names, spki_of_cert_der, spki_of_key_pem};

#[test]
fn deleted_key_is_detected_reissued_and_served() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let healthy = env.certagent(&["check"]);
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert!(
        healthy.stdout.starts_with("site: healthy (serial "),
        "{healthy:?}"
    );

    std::fs::remove_file(&env.key_file).expect("delete key");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    let doc = check.json();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["certificates"][0]["reason"], "key-missing");
    assert_eq!(doc["certificates"][0]["action"], "reissue");

    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["changed"], true);
    assert_eq!(doc["certificates"][0]["result"], "installed");
    assert_ne!(
        env.served(),
        env.initial_leaf,
        "nginx still serves the old leaf"
    );
    assert!(env.serves_key_file(), "served leaf is not for the key file");

    // The key file is ours now: a symlink into the current generation, mode 0600.
    let link = std::fs::read_link(&env.key_file).expect("key file is a symlink");
    assert!(link.ends_with("live/site/current/key.pem"), "{link:?}");
    let mode = std::fs::metadata(&env.key_file)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The original certificate was kept as generation 0 (there was no key to keep).
    let gen0 = env.state_dir().join("live/site/gen-0");
    assert!(gen0.join("fullchain.pem").is_file() && !gen0.join("key.pem").exists());

    let again = env.certagent(&["check"]);
    assert_eq!(again.code, 0, "{again:?}");
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    assert_eq!(doc["certificates"][0]["generation"], 1);
    assert_eq!(doc["certificates"][0]["last"]["result"], "installed");
    assert_eq!(doc["certificates"][0]["last"]["reason"], "forced");

    // Losing the key again (the symlink is deleted) needs no new adoption: generation 2 follows.
    std::fs::remove_file(&env.key_file).expect("delete key again");
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["certificates"][0]["generation"], 2);
    assert!(env.serves_key_file());
}

#[test]
fn changed_names_are_reissued() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    assert_eq!(env.certagent(&["check"]).code, 0);
    let mut env = env;
    env.names = vec!["a.test".into(), "www.a.test".into()];
    env.write_config("", "");
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(check.stdout.trim(), "site: needs re-issue: names-changed");
    let run = env.certagent(&["reissue", "--now", "site", "--reason", "names-change"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(san_dns_names(&env.served()), vec!["a.test", "www.a.test"]);
    assert!(env.serves_key_file());
    assert_eq!(env.certagent(&["check"]).code, 0);
}

#[test]
fn changed_key_type_is_reissued_with_the_new_type() {
    let env = Env::new(&["a.test"], None);
    env.write_config("key_type = \"rsa-2048\"", "");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(
        check.json()["certificates"][0]["reasons"],
        serde_json::json!(["key-type-changed"])
    );
    let run = env.certagent(&["reissue", "--now", "--all"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("site: installed and verified in service: serial "),
        "{run:?}"
    );
    let key = std::fs::read_to_string(&env.key_file).expect("key");
    // RSA SubjectPublicKeyInfo carries the rsaEncryption OID 1.2.840.113549.1.1.1.
    let spki = spki_of_cert_der(&env.served());
    assert_eq!(spki, spki_of_key_pem(&key));
    assert!(
        spki.windows(9)
            .any(|w| w == [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]),
        "served key is not RSA"
    );
    assert_eq!(env.certagent(&["check"]).code, 0);
}

#[test]
fn failing_config_test_rolls_back_to_the_old_pair() {
    let env = Env::new(&["a.test"], None);
    let old_cert = std::fs::read(&env.cert_file).expect("cert");
    let old_key = std::fs::read(&env.key_file).expect("key");
    // nginx -t is made to fail once the new pair is in place.
    env.write_config_with_server(
        "",
        "",
        "test_command = [\"sh\", \"-c\", \"echo 'nginx: [emerg] simulated failure' >&2; exit 1\"]",
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("configuration test of server \"web\" failed: `sh -c echo 'nginx: [emerg] simulated failure' >&2; exit 1` failed with exit status 1: nginx: [emerg] simulated failure; rolled back to generation 0"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("hint: the previous certificate and key are in place"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read(&env.cert_file).expect("cert"),
        old_cert,
        "old certificate is not back"
    );
    assert_eq!(
        std::fs::read(&env.key_file).expect("key"),
        old_key,
        "old key is not back"
    );
    assert!(env.nginx.is_alive());
    assert_eq!(env.served(), env.initial_leaf);
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(status["certificates"][0]["last"]["result"], "rolled-back");
    assert_eq!(status["certificates"][0]["generation"], 0);
}

#[test]
fn reload_that_does_nothing_is_detected_and_rolled_back() {
    let env = Env::new(&["a.test"], None);
    let old_key = std::fs::read(&env.key_file).expect("key");
    env.write_config_with_server(
        "",
        "",
        &format!(
            "test_command = {}\nreload_command = [\"true\"]",
            common::toml_list(&env.nginx.test_command())
        ),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("does not serve the new certificate"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("rolled back to generation 0"),
        "{run:?}"
    );
    assert_eq!(std::fs::read(&env.key_file).expect("key"), old_key);
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn unknown_certificate_and_bad_config_have_their_exit_codes() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let run = env.certagent(&["reissue", "--now", "nope"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        "certagent: no certificate named \"nope\" in the configuration\n  hint: configured certificates: site\n"
    );
    env.write_config("colour = \"blue\"", "");
    let run = env.certagent(&["check"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.contains("certificate.site.colour: unknown key"),
        "{run:?}"
    );
    let run = env.certagent(&["config", "validate", "--json"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert_eq!(run.json()["errors"][0]["key"], "certificate.site.colour");
}

#[test]
fn a_held_lock_makes_the_command_busy() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let run_dir = env.dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    // Another certagent (here: flock(1)) holds the lock for longer than lock_timeout (5s).
    let mut holder = std::process::Command::new("flock")
        .arg(run_dir.join("lock"))
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    // Held: /proc/locks lists a lock on the lock file's inode (…:MAJ:MIN:INODE …).
    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || {
            use std::os::unix::fs::MetadataExt;
            let Ok(ino) = std::fs::metadata(run_dir.join("lock")).map(|m| m.ino()) else {
                return false;
            };
            std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
                l.lines().any(|line| {
                    line.split_whitespace()
                        .nth(5)
                        .is_some_and(|dev| dev.ends_with(&format!(":{ino}")))
                })
            })
        }
    ));
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("busy: another certagent process held"),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#""$0" --config "$1" status | head -c 1 >/dev/null; echo "exit=${PIPESTATUS[0]}""#)
        .arg(env!("CARGO_BIN_EXE_certagent"))
        .arg(&env.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), "exit=0", "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The first hour of adopting a site a public CA certified: without `issuer`, the embedded
/// local CA would have replaced its certificate with one no browser trusts. Validation refuses
/// that configuration, naming the CA in service and what to write; nothing is touched.
#[test]
fn a_certificate_from_another_ca_is_not_replaced_by_the_local_ca_unless_asked() {
    let env = Env::new(&["a.test"], None);
    let le = common::TlsCa::lets_encrypt_like(&env.dir.path().join("le"));
    let now = std::time::SystemTime::now();
    let leaf = le.issue_leaf(
        &["a.test"],
        now - std::time::Duration::from_secs(86_400),
        now + std::time::Duration::from_secs(60 * 86_400),
    );
    leaf.write(&env.cert_file, &env.key_file);
    env.write_config("", "");
    let implicit = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("issuer = \"internal\"\n", "");
    std::fs::write(&env.config, &implicit).unwrap();
    let before = std::fs::read(&env.cert_file).unwrap();

    let validate = env.certagent(&["config", "validate"]);
    assert_eq!(validate.code, 78, "{validate:?}");
    let line = implicit
        .lines()
        .position(|l| l == "[certificate.site]")
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}: certificate.site.issuer: not set, so the embedded local CA would issue this certificate, but {:?} holds one issued by \"CN=R11, C=US, O=Let's Encrypt\", and browsers do not trust the local CA\n    hint: name the CA that issues it (issuer = \"letsencrypt\" with [issuer.letsencrypt] kind = \"acme\", directory = \"https://acme-v02.api.letsencrypt.org/directory\"), or write issuer = \"internal\" to replace it with a local certificate on purpose",
        env.config.display(),
        env.cert_file.display().to_string()
    );
    assert!(validate.stderr.contains(&want), "{validate:?}\n{want}");
    for args in [&["reissue", "--now", "site"][..], &["check"][..]] {
        let run = env.certagent(args);
        assert_eq!(run.code, 78, "{args:?}: {run:?}");
    }
    assert_eq!(std::fs::read(&env.cert_file).unwrap(), before);
    assert!(!env.state_dir().join("live/site").exists());

    // Asked for by name, the local CA is the operator's choice.
    env.write_config("", "");
    assert_eq!(env.certagent(&["config", "validate"]).code, 0);

    // A self-signed certificate (a snakeoil) is no loss: the default stands.
    std::fs::write(&env.cert_file, le.ca_pem()).unwrap();
    std::fs::write(&env.config, &implicit).unwrap();
    let snakeoil = env.certagent(&["config", "validate"]);
    assert_eq!(snakeoil.code, 0, "{snakeoil:?}");
}

/// A served leaf swapped for one from another CA — same key, same names, as certbot or a
/// hand would do — is `issuer-changed`: only reported by default (healthy, nothing to do),
/// re-issued from the configured issuer with `reissue_on_issuer_change = true`.
#[test]
fn a_certificate_swapped_for_another_cas_is_reported_and_reissued_only_if_configured() {
    use std::time::Duration;
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let first = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(first.code, 0, "{first:?}");
    let healthy = env.certagent(&["check", "--json"]);
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert_eq!(
        healthy.json()["certificates"][0]["reasons"],
        serde_json::json!([])
    );

    // Another CA's leaf for the key in service, written over the link as a plain file.
    let swapped = env.swap_in_another_cas_leaf();

    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "only reported: {check:?}");
    let report = &check.json()["certificates"][0];
    assert_eq!(
        report["reasons"],
        serde_json::json!(["issuer-changed"]),
        "{report}"
    );
    assert_eq!(
        report["noted"],
        serde_json::json!(["issuer-changed"]),
        "{report}"
    );
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["action"], "none", "{report}");
    assert_eq!(report["reason"], serde_json::Value::Null, "{report}");
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("the certificate in service was issued by \"CN=Other Test CA\", not by the configured issuer \"internal\"; only reported"),
        "{report}"
    );
    let text = env.certagent(&["check"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("site: noted: issuer-changed: the certificate in service was issued by \"CN=Other Test CA\""),
        "{text:?}"
    );
    assert_eq!(
        std::fs::read(&env.cert_file).unwrap(),
        swapped.cert_pem.as_bytes()
    );

    // Asked for: the configured issuer's certificate replaces it.
    env.write_config("issuer = \"internal\"\nreissue_on_issuer_change = true", "");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    let report = &check.json()["certificates"][0];
    assert_eq!(report["reason"], "issuer-changed", "{report}");
    assert_eq!(report["action"], "reissue", "{report}");
    let daemon = common::Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=installed", Duration::from_secs(30));
    assert!(
        daemon.log().contains("reason=issuer-changed"),
        "{}",
        daemon.log()
    );
    let served = env.served();
    assert_ne!(served, swapped.cert_der);
    let after = env.certagent(&["check", "--json"]);
    assert_eq!(
        after.json()["certificates"][0]["reasons"],
        serde_json::json!([]),
        "{after:?}"
    );
}
