//! End to end with a real Apache (Debian's apache2 on a temporary ServerRoot and a loopback
//! port) and the embedded local CA: re-issue served, rollback on a failing config test and on
//! a reload that changes nothing, a bad pair from the issuer that never reaches Apache, and an
//! Apache that is not running and stays that way. After every failure the Apache parent is
//! the same process, alive, serving the old leaf, and survives one more graceful restart (so
//! nothing on disk would kill it at logrotate's daily reload either).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{
    Apache, Run, Site, TlsCa, hold_connection, reserved_port, run_certagent, run_certagent_under,
    send_signal, served_leaf, spki_of_cert_der, spki_of_key_pem, toml_list, wait_until,
    with_unit_capabilities,
};

/// Apache serving one site on loopback with a certificate from a test CA, and a certagent
/// config pointing at it.
struct ApacheEnv {
    dir: tempfile::TempDir,
    apache: Apache,
    port: u16,
    cert_file: PathBuf,
    key_file: PathBuf,
    config: PathBuf,
    initial_leaf: Vec<u8>,
}

impl ApacheEnv {
    fn new(start: bool) -> ApacheEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TlsCa::new(&dir.path().join("testca"));
        let ssl = dir.path().join("ssl");
        std::fs::create_dir_all(&ssl).unwrap();
        let cert_file = ssl.join("site.pem");
        let key_file = ssl.join("site.key");
        let now = SystemTime::now();
        let leaf = ca.issue_leaf(
            &["a.test"],
            now - Duration::from_secs(10 * 86_400),
            now + Duration::from_secs(60 * 86_400),
        );
        leaf.write(&cert_file, &key_file);
        let port = reserved_port();
        let site = Site {
            port,
            server_names: vec!["a.test".into()],
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let root = dir.path().join("apache");
        let apache = if start {
            Apache::start(&root, &[site])
        } else {
            Apache::configure(&root, &[site])
        };
        let config = dir.path().join("etc/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        ApacheEnv {
            dir,
            apache,
            port,
            cert_file,
            key_file,
            config,
            initial_leaf: leaf.cert_der,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `[server.web]` of kind apache with the given extra lines (defaults: the real config
    /// test of our ServerRoot; reload by SIGUSR1 to the parent in our pid file).
    fn write_config(&self, server_extra: &str) {
        let text = format!(
            r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"
lock_timeout = "5s"

[server.web]
kind = "apache"
layout = "debian"
verify = ["{addr}"]
pid_file = "{pid}"
verify_timeout = "3s"
{server_extra}

[certificate.site]
names = ["a.test"]
issuer = "internal"
server = "web"
cert_file = "{cert}"
key_file = "{key}"
"#,
            state = self.state_dir().display(),
            run = self.dir.path().join("run").display(),
            addr = self.addr(),
            pid = self.apache.pid_file().display(),
            cert = self.cert_file.display(),
            key = self.key_file.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn test_command(&self) -> String {
        format!("test_command = {}", toml_list(&self.apache.test_command()))
    }

    fn certagent(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_certagent(&self.config, args, env)
    }

    fn served(&self) -> Vec<u8> {
        served_leaf(&self.addr(), "a.test")
            .unwrap_or_else(|| panic!("apache does not answer:\n{}", self.apache.log()))
    }

    /// The same parent as at the start, alive, serving the original leaf; and it survives a
    /// graceful restart of its own, so the files on disk are loadable.
    fn assert_unharmed(&mut self, parent: u32) {
        assert!(
            self.apache.is_alive(),
            "apache died:\n{}",
            self.apache.log()
        );
        assert_eq!(self.apache.parent_pid(), parent);
        assert_eq!(
            self.served(),
            self.initial_leaf,
            "the old leaf is not served"
        );
        // A graceful restart that cannot load the files makes the parent exit within
        // milliseconds; one that can logs "resuming normal operations" again.
        let resumed = |log: &str| log.matches("resuming normal operations").count();
        let before = resumed(&self.apache.error_log());
        assert!(send_signal(parent, "USR1"));
        assert!(
            wait_until(Duration::from_secs(5), || resumed(&self.apache.error_log())
                > before
                || !self.apache.is_alive()),
            "{}",
            self.apache.log()
        );
        assert!(
            self.apache.is_alive(),
            "a graceful restart killed apache:\n{}",
            self.apache.log()
        );
        assert_eq!(self.served(), self.initial_leaf);
    }
}

#[test]
fn harness_a_mismatched_pair_passes_apaches_config_test_and_a_graceful_restart_kills_it() {
    // The hazard the other tests guard against, reproduced on this machine: without
    // certagent's own pair check, every test below that injects a bad pair would see Apache
    // die.
    let mut env = ApacheEnv::new(true);
    let other = TlsCa::new(&env.dir.path().join("otherca")).issue_leaf(
        &["a.test"],
        SystemTime::now() - Duration::from_secs(3_600),
        SystemTime::now() + Duration::from_secs(86_400),
    );
    std::fs::write(&env.key_file, &other.key_pem).unwrap();
    let (code, out) = Apache::run(&env.apache.test_command());
    assert_eq!((code, out.trim()), (0, "Syntax OK"));
    let parent = env.apache.parent_pid();
    assert!(send_signal(parent, "USR1"));
    assert!(
        wait_until(Duration::from_secs(5), || !env.apache.is_alive()),
        "apache survived a mismatched pair:\n{}",
        env.apache.log()
    );
    assert!(
        env.apache.error_log().contains("AH02565"),
        "{}",
        env.apache.log()
    );
}

#[test]
fn reissue_is_served_by_apache_whose_parent_survives() {
    let mut env = ApacheEnv::new(true);
    env.write_config(&env.test_command());
    let parent = env.apache.parent_pid();
    let healthy = env.certagent(&["check"], &[]);
    assert_eq!(healthy.code, 0, "{healthy:?}");

    std::fs::remove_file(&env.key_file).unwrap();
    let check = env.certagent(&["check", "--json"], &[]);
    assert_eq!(check.code, 1, "{check:?}");
    assert_eq!(check.json()["certificates"][0]["reason"], "key-missing");

    // Three in a row: each must be proven served by the new generation of children, never
    // by an old child still accepting connections.
    let mut previous = env.initial_leaf.clone();
    for generation in 1..=3 {
        let run = env.certagent(&["-vv", "reissue", "--now", "site", "--json"], &[]);
        assert_eq!(run.code, 0, "{run:?}\n{}", env.apache.log());
        let doc = run.json();
        assert_eq!(doc["certificates"][0]["result"], "installed");
        assert_eq!(doc["certificates"][0]["generation"], generation);
        assert!(
            !run.stderr.contains("still accept connections"),
            "old children did not retire: {run:?}"
        );
        // ... because certagent waited for the old children to close their listeners.
        assert!(
            run.stderr
                .contains("old workers stopped accepting connections server=web workers=")
                && !run.stderr.contains("workers=0 "),
            "{run:?}"
        );
        let served = env.served();
        assert_ne!(served, previous, "apache still serves the previous leaf");
        let key = std::fs::read_to_string(&env.key_file).unwrap();
        assert_eq!(spki_of_cert_der(&served), spki_of_key_pem(&key));
        previous = served;
    }
    assert!(env.apache.is_alive(), "{}", env.apache.log());
    assert_eq!(
        env.apache.parent_pid(),
        parent,
        "apache was restarted, not reloaded"
    );
    assert_eq!(env.certagent(&["check"], &[]).code, 0);
}

/// Under the unit's capabilities certagent (root, without CAP_SYS_PTRACE) cannot read the
/// descriptors of Apache's children (user nobody): listing /proc/PID/fd works, each link is
/// EACCES. That used to read as "holds no listener", so the old children counted as retired
/// at once and three quick handshakes were the only proof. Now it is "cannot tell", and the
/// new leaf has to be served steadily for verify_settle.
///
/// An old child only stays to be looked at while it has work: on an idle server it may exit
/// within milliseconds of the graceful restart, and certagent then rightly sees it gone. So
/// the test holds a connection in the middle of a request on the old child, which keeps it
/// alive (finishing its connection) for as long as the test wants, whatever the timing.
#[test]
fn with_the_units_capabilities_unreadable_children_are_not_taken_for_retired() {
    let env = ApacheEnv::new(true);
    env.write_config(&env.test_command());
    let old_children = env.apache.children();
    assert!(!old_children.is_empty(), "{}", env.apache.log());
    let held = hold_connection(&env.addr(), "a.test")
        .unwrap_or_else(|| panic!("apache does not answer:\n{}", env.apache.log()));
    assert_eq!(held.leaf, env.initial_leaf);

    let setpriv = with_unit_capabilities();
    let setpriv: Vec<&str> = setpriv.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let run = run_certagent_under(
        &setpriv,
        &env.config,
        &["-vv", "reissue", "--now", "site", "--json"],
        &[],
    );
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}\n{}", env.apache.log());
    assert_eq!(run.json()["certificates"][0]["result"], "installed");
    // The premise: an old child was alive (busy with the held connection) all along.
    assert!(
        old_children.iter().any(|pid| common::pid_alive(*pid)),
        "no old child survived the held connection; the test proves nothing:\n{}",
        env.apache.log()
    );
    assert!(
        run.stderr
            .contains("cannot see the old workers retire; the endpoints are watched for 1s"),
        "{run:?}"
    );
    // The settle applied: the new leaf had to be served without a break for 1 s.
    assert!(took >= Duration::from_secs(1), "took {took:?}: {run:?}");
    // And it is what every new connection gets now.
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    for _ in 0..10 {
        let served = env.served();
        assert_ne!(served, env.initial_leaf);
        assert_eq!(spki_of_cert_der(&served), spki_of_key_pem(&key));
    }
    drop(held);
}

#[test]
fn failing_config_test_rolls_back_and_apache_keeps_serving() {
    let mut env = ApacheEnv::new(true);
    let old_cert = std::fs::read(&env.cert_file).unwrap();
    let old_key = std::fs::read(&env.key_file).unwrap();
    // Apache's real config test, failing for real: an unknown directive behind a define.
    let mut test = env.apache.test_command();
    test.extend(["-D".to_string(), "CERTAGENT_FAIL_TEST".to_string()]);
    env.write_config(&format!("test_command = {}", toml_list(&test)));
    let parent = env.apache.parent_pid();
    let run = env.certagent(&["reissue", "--now", "site"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "certagent: site: configuration test of server \"web\" failed: `{}` failed with exit status 1: AH00526: Syntax error on line 17 of {}: | Invalid command 'CertagentNoSuchDirective'",
            test.join(" "),
            env.apache.conf_path().display()
        )),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("; rolled back to generation 0\n"),
        "{run:?}"
    );
    assert_eq!(std::fs::read(&env.cert_file).unwrap(), old_cert);
    assert_eq!(std::fs::read(&env.key_file).unwrap(), old_key);
    env.assert_unharmed(parent);
    let status = env.certagent(&["status", "--json"], &[]).json();
    assert_eq!(status["certificates"][0]["last"]["result"], "rolled-back");
}

#[test]
fn reload_that_does_nothing_is_detected_retried_and_rolled_back() {
    let mut env = ApacheEnv::new(true);
    env.write_config(&format!(
        "{}\nreload_command = [\"true\"]",
        env.test_command()
    ));
    let parent = env.apache.parent_pid();
    let run = env.certagent(&["reissue", "--now", "site", "--json"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "rolled-back");
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    let want = format!(
        "server \"web\" does not serve the new certificate: {} (SNI a.test) serves serial {}; rolled back to generation 0, reloaded the previous certificate",
        env.addr(),
        common::cert_serial_hex(&env.initial_leaf)
    );
    assert_eq!(error, want);
    assert!(
        run.stderr.contains("reloading once more"),
        "no retry: {run:?}"
    );
    env.assert_unharmed(parent);
}

#[test]
fn a_previous_pair_that_is_not_usable_is_not_restored_over_a_valid_new_one() {
    let mut env = ApacheEnv::new(true);
    // The key is lost (Apache still has it in memory) and the config test then fails: rolling
    // back would restore a certificate without its key, which the next graceful restart
    // (logrotate's, daily) cannot load.
    let mut test = env.apache.test_command();
    test.extend(["-D".to_string(), "CERTAGENT_FAIL_TEST".to_string()]);
    env.write_config(&format!("test_command = {}", toml_list(&test)));
    std::fs::remove_file(&env.key_file).unwrap();
    let parent = env.apache.parent_pid();
    let run = env.certagent(&["reissue", "--now", "site", "--json"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "failed");
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    let gen0_key = env.state_dir().join("live/site/gen-0/key.pem");
    assert!(
        error.ends_with(&format!(
            "; kept generation 1: the previous generation 0 is not a usable pair (key {:?} is missing), restoring it would break the server",
            gen0_key.display().to_string()
        )),
        "{error}"
    );
    assert_eq!(
        doc["certificates"][0]["hint"],
        "the new pair is valid and stays in place; see the web server's error log"
    );
    // On disk: the new, valid pair. Apache: untouched, and a graceful restart loads it.
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    let cert = std::fs::read_to_string(&env.cert_file).unwrap();
    assert_eq!(
        spki_of_key_pem(&key),
        spki_of_cert_der(&common::pem_to_der(&cert))
    );
    assert!(env.apache.is_alive());
    assert_eq!(env.served(), env.initial_leaf);
    assert!(send_signal(parent, "USR1"));
    assert!(
        wait_until(Duration::from_secs(5), || env.apache.is_alive()
            && served_leaf(&env.addr(), "a.test")
                .is_some_and(|l| l != env.initial_leaf)),
        "{}",
        env.apache.log()
    );
    assert_eq!(env.apache.parent_pid(), parent);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_certificate_for_another_key_never_reaches_apache() {
    let mut env = ApacheEnv::new(true);
    env.write_config(&env.test_command());
    let old_cert = std::fs::read(&env.cert_file).unwrap();
    let old_key = std::fs::read(&env.key_file).unwrap();
    let parent = env.apache.parent_pid();
    let run = env.certagent(
        &["reissue", "--now", "site", "--json"],
        &[("CERTAGENT_FAILPOINT", "issue-foreign-key")],
    );
    assert!(
        env.apache.is_alive(),
        "the bad pair reached apache and killed it: {run:?}\n{}",
        env.apache.log()
    );
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["certificates"][0]["result"], "failed");
    assert_eq!(
        doc["certificates"][0]["error"],
        "the certificate for \"site\" was rejected: the certificate is for a different key"
    );
    assert_eq!(
        doc["certificates"][0]["hint"],
        "nothing was installed; the certificate in service is unchanged"
    );
    // Not even adopted: the configured paths are the original plain files.
    assert!(std::fs::symlink_metadata(&env.key_file).unwrap().is_file());
    assert_eq!(std::fs::read(&env.cert_file).unwrap(), old_cert);
    assert_eq!(std::fs::read(&env.key_file).unwrap(), old_key);
    assert!(!env.state_dir().join("live/site/gen-1").exists());
    env.assert_unharmed(parent);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_truncated_staged_key_never_reaches_apache() {
    let mut env = ApacheEnv::new(true);
    env.write_config(&env.test_command());
    let old_cert = std::fs::read(&env.cert_file).unwrap();
    let old_key = std::fs::read(&env.key_file).unwrap();
    let parent = env.apache.parent_pid();
    let run = env.certagent(
        &["reissue", "--now", "site", "--json"],
        &[("CERTAGENT_FAILPOINT", "truncate-staged-key")],
    );
    assert!(
        env.apache.is_alive(),
        "the bad pair reached apache and killed it: {run:?}\n{}",
        env.apache.log()
    );
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "failed");
    assert_eq!(
        doc["certificates"][0]["error"],
        "the new files of generation 1 are not a usable pair: key: PEM block \"PRIVATE KEY\" is truncated (no END line)"
    );
    // The existing pair was adopted as generation 0 (same bytes); generation 1 is gone.
    assert_eq!(std::fs::read(&env.cert_file).unwrap(), old_cert);
    assert_eq!(std::fs::read(&env.key_file).unwrap(), old_key);
    assert!(!env.state_dir().join("live/site/gen-1").exists());
    env.assert_unharmed(parent);
    // The issued certificate stays pending; the next run installs it without a new order.
    let run = env.certagent(&["-v", "reissue", "--now", "site"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("resuming pending re-issue"), "{run:?}");
    assert_ne!(env.served(), env.initial_leaf);
}

#[test]
fn apache_that_is_not_running_gets_the_files_and_is_not_started() {
    let env = ApacheEnv::new(false);
    // `apache2 -k graceful` would start it: certagent must look at the pid file first. The
    // reload command leaves a mark when it runs, so "never ran" is a fact to check once
    // certagent has exited, not a guess after a pause.
    let ran = env.dir.path().join("reload-ran");
    let mut reload = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("touch '{}' && exec \"$@\"", ran.display()),
        "sh".to_string(),
    ];
    reload.extend(env.apache.graceful_command());
    env.write_config(&format!(
        "{}\nreload_command = {}",
        env.test_command(),
        toml_list(&reload)
    ));
    std::fs::remove_file(&env.key_file).unwrap();
    let run = env.certagent(&["reissue", "--now", "site"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("site: installed, not loaded (web server not running): serial "),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("web server is not running: installed, not loaded"),
        "{run:?}"
    );
    assert!(!ran.exists(), "the reload command ran: {run:?}");
    assert!(
        TcpStream::connect(env.addr()).is_err(),
        "something listens on {}: apache was started",
        env.addr()
    );
    assert!(!env.apache.pid_file().exists(), "apache was started");
    let key = std::fs::read_to_string(&env.key_file).unwrap();
    let cert = std::fs::read_to_string(&env.cert_file).unwrap();
    assert_eq!(
        spki_of_key_pem(&key),
        spki_of_cert_der(&common::pem_to_der(&cert))
    );
    let status = env.certagent(&["status", "--json"], &[]).json();
    assert_eq!(
        status["certificates"][0]["last"]["result"],
        "installed-not-loaded"
    );
}
