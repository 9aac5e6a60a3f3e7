//! `certagent run` as a real process against real Pebble and nginx: it notices a deleted key
//! and heals it with no command run, reloads its configuration on SIGHUP (keeping the old one
//! when the new one is broken), stops at a safe point on SIGTERM, talks to the CLI over its
//! control socket so the two never re-issue twice, and tells systemd what it is doing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{
    Daemon, Env, Pebble, PebbleOpts, san_dns_names, spki_of_cert_der, spki_of_key_pem, wait_until,
};

fn serves_key_file(env: &Env) -> bool {
    let Ok(key) = std::fs::read_to_string(&env.key_file) else {
        return false;
    };
    common::served_leaf(&env.addr(), &env.names[0])
        .is_some_and(|leaf| spki_of_cert_der(&leaf) == spki_of_key_pem(&key))
        && common::served_leaf(&env.addr(), &env.names[0])
            .is_some_and(|leaf| leaf != env.initial_leaf)
}

#[test]
fn deleted_key_is_replaced_and_served_with_no_command_run() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    // Healthy at start: nothing is ordered.
    assert_eq!(pebble.orders_created(), 0, "{}", daemon.log());

    std::fs::remove_file(&env.key_file).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || serves_key_file(&env)),
        "not healed:\n{}\n{}",
        daemon.log(),
        pebble.log()
    );
    daemon.wait_log("event=installed", Duration::from_secs(10));
    let log = daemon.log();
    assert!(
        log.contains("re-issue needed") && log.contains("reason=key-missing event=detected"),
        "{log}"
    );
    assert!(log.contains("event=installed"), "{log}");
    assert_eq!(pebble.orders_created(), 1);
    // The CLI asks the daemon (it holds the lock) and gets its view.
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(
        status.json()["certificates"][0]["last"]["reason"],
        "key-missing"
    );
    let check = env.certagent(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn sighup_reloads_names_and_a_broken_config_keeps_the_old_one() {
    let mut env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let mut daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);

    daemon.signal("HUP");
    daemon.wait_log(
        "SIGHUP received: configuration reloaded",
        Duration::from_secs(10),
    );
    // Rewritten with the same content (config management converging): not a reload.
    let offset = daemon.log_len();
    env.write_config("", "");
    daemon.wait_log_after(
        offset,
        "the configuration files changed on disk, their content did not",
        Duration::from_secs(10),
    );
    assert!(
        !daemon
            .log()
            .contains("changed on disk: configuration reloaded"),
        "{}",
        daemon.log()
    );

    env.names = vec!["a.test".into(), "b.test".into()];
    env.write_config("", "");
    daemon.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(20), || {
            common::served_leaf(&env.addr(), "a.test")
                .is_some_and(|l| san_dns_names(&l) == ["a.test", "b.test"])
        }),
        "names were not re-issued:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("reason=names-changed"),
        "{}",
        daemon.log()
    );
    // The daemon reports success only once nginx's old workers have retired; sample after it.
    daemon.wait_log("event=installed", Duration::from_secs(10));

    let served = common::served_leaf(&env.addr(), "a.test").unwrap();
    std::fs::write(&env.config, "[certificate.site\nnames = [").unwrap();
    daemon.signal("HUP");
    daemon.wait_log(
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(10),
    );
    // The summary line comes first, each error after it: wait for the error too.
    daemon.wait_log("invalid TOML", Duration::from_secs(10));
    assert!(daemon.is_running());
    assert_eq!(common::served_leaf(&env.addr(), "a.test").unwrap(), served);
    // The old configuration still works: deleting the key is still healed.
    std::fs::remove_file(&env.key_file).unwrap();
    let healed = wait_until(Duration::from_secs(20), || {
        serves_key_file(&env) && common::served_leaf(&env.addr(), "a.test").unwrap() != served
    });
    assert!(healed, "{}", daemon.log());
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn cli_racing_the_daemon_makes_one_reissue_not_two() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    std::fs::remove_file(&env.key_file).unwrap();
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", daemon.log());
    assert_eq!(run.json()["certificates"][0]["result"], "installed");
    assert!(serves_key_file(&env));
    // Once the daemon has handled every file change (the deleted key, the new links), a
    // second re-issue would have been started and logged: there must be none.
    let offset = daemon.log_len();
    daemon.quiesce(&env.config);
    assert!(
        !daemon.log()[offset..].contains("re-issue needed"),
        "{}",
        daemon.log()
    );
    assert_eq!(pebble.orders_created(), 1, "{}", daemon.log());
    assert_eq!(
        daemon.log().matches("event=installed").count(),
        1,
        "{}",
        daemon.log()
    );
}

/// A forced re-issue that arrives while the daemon refreshes the CA's view of the
/// certificate (ARI, CRL) is not answered by that refresh: the re-issue runs right after it.
#[cfg(feature = "failpoints")]
#[test]
fn reissue_now_during_a_refresh_reissues() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    // At start-up the daemon asks the CA about the certificate it finds; hold that there.
    let daemon = Daemon::start(
        &env.config,
        &env.dir.path().join("daemon.log"),
        &[("CERTAGENT_FAILPOINT", "refreshing=sleep:2")],
    );
    daemon.wait_log("failpoint refreshing: sleeping", Duration::from_secs(10));
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", daemon.log());
    let result = &run.json()["certificates"][0];
    assert_eq!(result["result"], "installed", "{run:?}\n{}", daemon.log());
    assert_eq!(result["reason"], "forced");
    assert!(serves_key_file(&env));
    assert_ne!(env.served(), env.initial_leaf);
    assert_eq!(pebble.orders_created(), 1, "{}", daemon.log());
}

/// Two clients queue behind a running refresh: a forced re-issue, then an import (which takes
/// the one queue slot). Both get an answer with the outcome; neither is told "success" about
/// work that never ran.
#[cfg(feature = "failpoints")]
#[test]
fn clients_queued_behind_a_refresh_all_get_an_outcome() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let daemon = Daemon::start(
        &env.config,
        &env.dir.path().join("daemon.log"),
        &[("CERTAGENT_FAILPOINT", "refreshing=sleep:3")],
    );
    daemon.wait_log("failpoint refreshing: sleeping", Duration::from_secs(10));
    let config = env.config.clone();
    let forced = std::thread::spawn(move || {
        common::run_certagent(&config, &["reissue", "--now", "site", "--json"], &[])
    });
    // The re-issue is queued behind the refresh (still sleeping in its failpoint).
    daemon.wait_log(
        "re-issue queued behind the job in flight",
        Duration::from_secs(10),
    );
    let pem = env.dir.path().join("handed-in.pem");
    std::fs::copy(&env.cert_file, &pem).unwrap();
    let import = env.certagent(&["import", "site", pem.to_str().unwrap(), "--json"]);
    let forced = forced.join().unwrap();
    // ACME has no pending re-issue to import into: the import fails, and says why.
    assert_eq!(import.code, 2, "{import:?}\n{}", daemon.log());
    assert!(
        import.stdout.contains("has no pending re-issue"),
        "{import:?}"
    );
    // The forced re-issue's client was answered too, with the same outcome, not an empty
    // success.
    assert_eq!(forced.code, 2, "{forced:?}\n{}", daemon.log());
    let doc = forced.json();
    assert_eq!(
        doc["certificates"].as_array().map(Vec::len),
        Some(1),
        "{doc}"
    );
    assert_eq!(doc["certificates"][0]["result"], "failed", "{doc}");
}

#[cfg(feature = "failpoints")]
#[test]
fn sigterm_while_waiting_for_the_ca_stops_cleanly_and_the_restart_resumes_the_order() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &pebble.issuer_table());
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &env.config,
        &log,
        &[("CERTAGENT_FAILPOINT", "after-order-created=sleep")],
    );
    std::fs::remove_file(&env.key_file).unwrap();
    daemon.wait_log(
        "failpoint after-order-created: sleeping",
        Duration::from_secs(20),
    );
    let started = std::time::Instant::now();
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the CA"
    );
    assert!(
        daemon.log().contains("certagent daemon stopped"),
        "{}",
        daemon.log()
    );
    // Nothing half-installed: the old certificate is served, no staging left, order journalled.
    assert_eq!(env.served(), env.initial_leaf);
    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.state_dir().join("certs/site/state.json")).unwrap(),
    )
    .unwrap();
    assert!(journal["pending"]["order_url"].is_string(), "{journal}");
    assert!(journal["flip"].is_null());

    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon2.log"), &[]);
    assert!(
        wait_until(Duration::from_secs(20), || serves_key_file(&env)),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("resuming ACME order"),
        "{}",
        daemon.log()
    );
    assert_eq!(pebble.orders_created(), 1);
}

/// With `max_parallel = 1`, a re-issue queued behind one that is waiting for the CA does not
/// start once SIGTERM has arrived: no key generated, no order, nothing journalled; the next
/// start takes it up.
#[cfg(feature = "failpoints")]
#[test]
fn sigterm_leaves_queued_reissues_unstarted() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    let other_key = env.dir.path().join("other.key");
    env.write_config(
        "issuer = \"pebble\"",
        &format!(
            "{}\n[certificate.other]\nnames = [\"b.test\"]\nissuer = \"pebble\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pebble.issuer_table(),
            env.dir.path().join("other.pem").display(),
            other_key.display()
        ),
    );
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replacen(
            "lock_timeout = \"5s\"",
            "lock_timeout = \"5s\"\nmax_parallel = 1",
            1,
        ),
    )
    .unwrap();
    // Both need a re-issue at start-up; whichever gets the one slot holds it at the CA.
    std::fs::remove_file(&env.key_file).unwrap();
    let mut daemon = Daemon::start(
        &env.config,
        &env.dir.path().join("daemon.log"),
        &[("CERTAGENT_FAILPOINT", "after-order-created=sleep")],
    );
    daemon.wait_log(
        "failpoint after-order-created: sleeping",
        Duration::from_secs(20),
    );
    let queued = if daemon.log().contains("generated new key cert=site") {
        "other"
    } else {
        "site"
    };
    assert!(
        daemon
            .log()
            .contains(&format!("cert={queued} reason=key-missing event=detected")),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.log());
    let text = daemon.log();
    assert!(
        !text.contains(&format!("re-issuing cert={queued} "))
            && !text.contains(&format!("generated new key cert={queued} ")),
        "the queued re-issue of {queued} started after SIGTERM:\n{text}"
    );
    assert_eq!(pebble.orders_created(), 1, "{text}");
    let journal = env.state_dir().join(format!("certs/{queued}/state.json"));
    if let Ok(json) = std::fs::read_to_string(&journal) {
        let journal: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(journal["pending"].is_null(), "{journal}");
    }

    // The next start heals both.
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon2.log"), &[]);
    assert!(
        wait_until(Duration::from_secs(30), || serves_key_file(&env)
            && other_key.exists()),
        "{}",
        daemon.log()
    );
}

#[test]
fn systemd_hears_ready_status_reloading_and_stopping() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = || {
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut daemon = Daemon::start(
        &env.config,
        &env.dir.path().join("daemon.log"),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages = Vec::new();
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        messages.push(recv());
    }
    let ready = messages.last().unwrap();
    assert!(
        ready.contains("STATUS=1 certificate, next check in "),
        "{messages:?}"
    );
    daemon.signal("HUP");
    let mut after = Vec::new();
    while !after.iter().any(|m: &String| m.contains("READY=1")) {
        after.push(recv());
    }
    assert!(after[0].contains("RELOADING=1"), "{after:?}");
    // With WATCHDOG_USEC set, pings come at half the period.
    let mut pings = 0;
    let started = std::time::Instant::now();
    while pings < 3 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "3 watchdog pings took {:?}",
        started.elapsed()
    );
    daemon.signal("TERM");
    let mut last = Vec::new();
    while !last.iter().any(|m: &String| m.contains("STOPPING=1")) {
        last.push(recv());
    }
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn a_second_daemon_is_refused_while_the_first_holds_the_lock() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let _daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    let second = env.certagent(&["run"]);
    assert_eq!(second.code, 3, "{second:?}");
    assert!(
        second
            .stderr
            .contains("busy: another certagent daemon or command holds the lock"),
        "{second:?}"
    );
}
