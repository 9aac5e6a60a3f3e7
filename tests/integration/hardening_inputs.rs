//! Hostile or careless inputs (issue #14): the environment children inherit, processes that
//! merely mention nginx, a flood of names on the control socket, control characters in
//! config keys. Each test is the regression test of one finding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Child, Daemon, Env, run_certagent, toml_list};

/// `sh -c` that appends `NAME=${CREDENTIALS_DIRECTORY-unset}` to `out`, then runs `then`.
fn recorder(out: &Path, name: &str, then: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo {name}=${{CREDENTIALS_DIRECTORY-unset}}${{NOTIFY_SOCKET-}} >> {}; {then}",
            out.display()
        ),
    ]
}

#[test]
fn hooks_notifications_and_server_commands_do_not_see_the_credentials_directory() {
    let env = Env::new(&["a.test"], None);
    let creds = env.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("certagent_dnsimple"), "secret-token\n").unwrap();
    let out = env.dir.path().join("seen");
    let test = recorder(&out, "test", &env.nginx.test_command().join(" "));
    let reload = recorder(
        &out,
        "reload",
        &format!("kill -HUP $(cat {})", env.nginx.pid_file().display()),
    );
    env.write_config_with_server(
        &format!(
            "pre_install = {}\npost_install = {}",
            toml_list(&recorder(&out, "pre_install", "true")),
            toml_list(&recorder(&out, "post_install", "true")),
        ),
        &format!(
            "[notify.cmd]\nkind = \"command\"\ncommand = {}\nevents = [\"installed\"]\n",
            toml_list(&recorder(&out, "notify", "true"))
        ),
        &format!(
            "test_command = {}\nreload_command = {}",
            toml_list(&test),
            toml_list(&reload)
        ),
    );
    let run = run_certagent(
        &env.config,
        &["reissue", "--now", "site"],
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
            ("NOTIFY_SOCKET", "/nonexistent/notify"),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let mut seen: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "notify=unset",
            "post_install=unset",
            "pre_install=unset",
            "reload=unset",
            "test=unset"
        ]
    );
}

#[test]
fn a_process_that_only_mentions_nginx_in_its_command_line_is_not_signalled() {
    let env = Env::new(&["a.test"], None);
    // The pid file names a process whose command line mentions nginx (a recycled pid).
    let log = env.dir.path().join("var/log/nginx/access.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "").unwrap();
    let mut decoy = Child::spawn(
        "tail",
        std::process::Command::new("tail").arg("-f").arg(&log),
    );
    let pid_file = env.dir.path().join("stale-nginx.pid");
    std::fs::write(&pid_file, format!("{}\n", decoy.pid())).unwrap();
    env.write_config("", "");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("pid_file = \"{}\"", env.nginx.pid_file().display()),
        &format!("pid_file = \"{}\"", pid_file.display()),
    );
    std::fs::write(&env.config, text).unwrap();

    let run = env.certagent(&["reissue", "--now", "site"]);
    // The reload was refused (and the install rolled back): the run is over.
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "reload of server \"web\" failed: pid {} from {:?} is not an nginx master; not signalling it",
            decoy.pid(),
            pid_file.display().to_string()
        )),
        "{run:?}"
    );
    assert!(decoy.is_running(), "the decoy got a signal");
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn a_certificate_named_many_times_is_looked_at_once() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let mut args = vec!["status", "--json"];
    args.extend(std::iter::repeat_n("site", 1000));
    let run = env.certagent(&args);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    let names: Vec<&str> = doc["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["site"]);
}

#[test]
fn a_fifo_dropped_into_conf_d_is_refused_and_the_daemon_keeps_answering() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let dropins = env.config.parent().unwrap().join("conf.d");
    std::fs::create_dir(&dropins).unwrap();
    let mut daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("certagent daemon ready", Duration::from_secs(20));

    let fifo = dropins.join("zz.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    daemon.signal("HUP");
    // Before the fix the reload blocked in open(2), waiting for a writer, on the event loop.
    daemon.wait_log(
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(20),
    );
    assert!(
        daemon
            .log()
            .contains("failed to read config file: not a regular file (a FIFO)"),
        "{}",
        daemon.log()
    );
    // The CLI reads the configuration too (and would refuse the FIFO): remove it, then ask.
    std::fs::remove_file(&fifo).unwrap();
    let status = env.certagent(&["status", "--json", "site"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["certificates"][0]["name"], "site");
    assert!(daemon.is_running());
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn a_drop_in_whose_name_holds_a_newline_is_logged_on_one_line() {
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let dropins = env.config.parent().unwrap().join("conf.d");
    std::fs::create_dir(&dropins).unwrap();
    let mut daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("certagent daemon ready", Duration::from_secs(20));

    // [agent] is not allowed in a drop-in: an error that names the file. Without a space the
    // field is printed as it is, so a raw newline would start a forged line.
    std::fs::write(dropins.join("x\ncertagent:forged.toml"), "[agent]\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_log(
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(20),
    );
    daemon.wait_log(
        "may only be set in the main config file",
        Duration::from_secs(20),
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            " file={}/x\\ncertagent:forged.toml ",
            dropins.display()
        )),
        "{log}"
    );
    assert!(!log.contains("\ncertagent:forged.toml"), "{log}");
    assert_eq!(daemon.stop(), Some(0));
}
