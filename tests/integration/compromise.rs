//! Compromised keys with a real ACME CA (Pebble) and nginx: every source of the news leads to
//! a new key in service and the old serial revoked at the CA (Pebble's management interface
//! says so), and the compromised key never comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{
    Daemon, Env, Pebble, PebbleOpts, cert_serial_hex, spki_of_cert_der, spki_of_key_pem, wait_until,
};

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Pebble-issued pair in service (so Pebble can revoke it), with its serial and key digest.
fn pebble_pair(extra: &str) -> (Pebble, Env, String, String) {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config(
        &format!("issuer = \"pebble\"\n{extra}"),
        &pebble.issuer_table(),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let served = env.served();
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    (
        pebble,
        env,
        cert_serial_hex(&served),
        sha256_hex(&spki_of_key_pem(&key)),
    )
}

fn revoked_for_key_compromise(pebble: &Pebble, serial: &str) -> bool {
    pebble
        .cert_status(serial)
        .is_some_and(|s| s["Status"] == "Revoked" && s["Reason"] == 1)
}

fn served_key_digest(env: &Env) -> String {
    sha256_hex(&spki_of_cert_der(&env.served()))
}

/// Nothing anywhere under the state directory or the configured files holds the key.
fn assert_key_gone_from_service(env: &Env, digest: &str) {
    assert_ne!(
        served_key_digest(env),
        digest,
        "the compromised key is served"
    );
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    assert_ne!(sha256_hex(&spki_of_key_pem(&key)), digest);
    for g in std::fs::read_dir(env.state_dir().join("live/site"))
        .unwrap()
        .flatten()
    {
        let k = g.path().join("key.pem");
        if let Ok(pem) = std::fs::read_to_string(&k) {
            assert_ne!(
                sha256_hex(&spki_of_key_pem(&pem)),
                digest,
                "{} still holds the compromised key",
                k.display()
            );
        }
    }
    let memory = std::fs::read_to_string(env.state_dir().join("compromised-keys")).unwrap();
    assert!(
        memory.lines().any(|l| l == digest),
        "not remembered: {memory}"
    );
}

#[test]
fn operator_flag_on_the_command_line_replaces_revokes_and_quarantines() {
    let (pebble, env, serial, digest) = pebble_pair("");
    let run = env.certagent(&[
        "reissue",
        "--now",
        "site",
        "--reason",
        "key-compromise",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        revoked_for_key_compromise(&pebble, &serial),
        "{:?}",
        pebble.cert_status(&serial)
    );
    assert!(
        run.stderr.contains("signed with the compromised key"),
        "{run:?}"
    );
    assert_key_gone_from_service(&env, &digest);
    // The quarantined copy is private.
    let q = env.state_dir().join("quarantine");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&q), 0o700);
    let files: Vec<_> = std::fs::read_dir(&q).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0].path()), 0o600);
    assert_eq!(
        sha256_hex(&spki_of_key_pem(
            &std::fs::read_to_string(files[0].path()).unwrap()
        )),
        digest
    );
    let status = env.certagent(&["check"]);
    assert_eq!(status.code, 0, "{status:?}");
}

#[test]
fn flag_file_and_blocklist_are_picked_up_by_the_daemon() {
    let (pebble, env, serial, digest) = pebble_pair("");
    let flags = env.dir.path().join("compromised");
    std::fs::create_dir_all(&flags).unwrap();
    let blocklist = env.dir.path().join("blocklist.txt");
    std::fs::write(&blocklist, "# none yet\n").unwrap();
    // Point the agent at the flag directory and the blocklist.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "lock_timeout = \"5s\"\n",
        &format!(
            "lock_timeout = \"5s\"\ncompromised_dir = \"{}\"\nkey_blocklist = [\"{}\"]\n",
            flags.display(),
            blocklist.display()
        ),
    );
    std::fs::write(&env.config, text).unwrap();
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);

    // 1. Config management drops a flag file.
    std::fs::write(flags.join("site"), "compromised\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || revoked_for_key_compromise(
            &pebble, &serial
        )),
        "{}",
        daemon.log()
    );
    daemon.wait_log(
        "removed the compromised key from every kept generation",
        Duration::from_secs(10),
    );
    assert_key_gone_from_service(&env, &digest);
    // The flag stays in place but is answered once: once the daemon has handled every file
    // change since, a second response would have been started.
    daemon.quiesce(&env.config);
    assert_eq!(
        daemon.log().matches("event=compromised").count(),
        1,
        "{}",
        daemon.log()
    );

    // 2. The new key's digest appears on a blocklist.
    let serial2 = cert_serial_hex(&env.served());
    let digest2 = served_key_digest(&env);
    std::fs::write(&blocklist, format!("# leaked\nsha256:{digest2}\n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || revoked_for_key_compromise(
            &pebble, &serial2
        )),
        "{}",
        daemon.log()
    );
    // The second response's purge (the first one already logged "event=quarantined").
    let purged_twice = wait_until(Duration::from_secs(10), || {
        daemon.log().matches("event=quarantined").count() >= 2
    });
    assert!(purged_twice, "{}", daemon.log());
    assert!(wait_until(Duration::from_secs(10), || served_key_digest(
        &env
    ) != digest2));
    assert_key_gone_from_service(&env, &digest2);
    assert_key_gone_from_service(&env, &digest);
}

#[test]
fn the_compromised_key_never_comes_back() {
    let (pebble, env, _serial, digest) = pebble_pair("");
    let old_cert = std::fs::read(&env.cert_file).unwrap();
    let old_key = std::fs::read(&env.key_file).unwrap();
    assert_eq!(
        env.certagent(&["reissue", "--now", "site", "--reason", "key-compromise"])
            .code,
        0
    );

    // Rollback: a later re-issue fails its config test; the rollback target is the
    // post-compromise generation, never the compromised one.
    let good = served_key_digest(&env);
    env.write_config_with_server(
        "issuer = \"pebble\"",
        &pebble.issuer_table(),
        "test_command = [\"false\"]",
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(served_key_digest(&env), good);
    assert_key_gone_from_service(&env, &digest);

    // An operator restores the old files by hand: certagent refuses them as compromised.
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    std::fs::remove_file(&env.cert_file).unwrap();
    std::fs::remove_file(&env.key_file).unwrap();
    std::fs::write(&env.cert_file, &old_cert).unwrap();
    std::fs::write(&env.key_file, &old_key).unwrap();
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(check.json()["certificates"][0]["reason"], "key-compromised");
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_key_gone_from_service(&env, &digest);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_between_install_and_revocation_resumes_the_revocation() {
    let (pebble, env, serial, digest) = pebble_pair("");
    let orders = pebble.orders_created();
    let run = common::run_certagent(
        &env.config,
        &["reissue", "--now", "site", "--reason", "key-compromise"],
        &[("CERTAGENT_FAILPOINT", "before-revoke")],
    );
    assert_eq!(run.code, -1, "expected death at the failpoint: {run:?}");
    // Installed, not yet revoked.
    assert_ne!(served_key_digest(&env), digest);
    assert_eq!(pebble.cert_status(&serial).unwrap()["Status"], "Valid");
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    assert!(
        wait_until(Duration::from_secs(20), || revoked_for_key_compromise(
            &pebble, &serial
        )),
        "{}",
        daemon.log()
    );
    daemon.wait_log("event=quarantined", Duration::from_secs(10));
    assert_key_gone_from_service(&env, &digest);
    assert_eq!(
        pebble.orders_created(),
        orders + 1,
        "the resume ordered again"
    );
}

#[test]
fn revoke_first_revokes_before_the_new_certificate_is_installed() {
    let (pebble, env, serial, digest) = pebble_pair("revoke_first = true");
    let run = env.certagent(&["reissue", "--now", "site", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(revoked_for_key_compromise(&pebble, &serial));
    let revoked_at = run.stderr.find("event=revoked").expect("revocation logged");
    let flipped_at = run.stderr.find("event=flipped").expect("flip logged");
    assert!(
        revoked_at < flipped_at,
        "revoked after the flip:\n{}",
        run.stderr
    );
    assert_key_gone_from_service(&env, &digest);
}
