//! Messages that teach (#19): what a new operator sees when the configuration is incomplete
//! or mistyped, when a path or the CA's trust is wrong, and when certagent is run without
//! root — one error per mistake, at the key's line, with what to do about it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common;

use common::{Env, Pebble, PebbleOpts, TestUser, run_certagent};

/// A directory for a configuration: `etc/` (config.toml, conf.d/) and the state beside it.
fn etc() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    (tmp, etc)
}

fn certificate(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[certificate.{name}]\nnames = [\"{name}.test\"]\nissuer = \"internal\"\n{extra}cert_file = \"{d}/{name}.pem\"\nkey_file = \"{d}/{name}.key\"\n",
        d = dir.display()
    )
}

#[test]
fn drop_ins_without_config_toml_validate_and_are_listed() {
    let (tmp, etc) = etc();
    let found = etc.join("conf.d/found.toml");
    std::fs::write(&found, certificate("site", tmp.path(), "")).unwrap();
    let config = etc.join("config.toml");

    let text = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    assert_eq!(
        text.stdout,
        format!(
            "{c}: valid, 1 certificate(s): site\n  read: {f} ({c} is absent: the drop-ins alone are the configuration)\n",
            c = config.display(),
            f = found.display()
        )
    );
    let json = run_certagent(&config, &["config", "validate", "--json"], &[]);
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(
        json.json()["files"],
        serde_json::json!([found.display().to_string()])
    );

    // With config.toml: both files, main first.
    std::fs::write(&config, "[agent]\nkeep_generations = 2\n").unwrap();
    let json = run_certagent(&config, &["config", "validate", "--json"], &[]);
    assert_eq!(
        json.json()["files"],
        serde_json::json!([config.display().to_string(), found.display().to_string()])
    );
}

#[test]
fn no_configuration_at_all_says_where_it_looked_and_how_to_begin() {
    let (_tmp, etc) = etc();
    let config = etc.join("config.toml");
    let run = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(run.code, 78, "{run:?}");
    let d = etc.display();
    assert_eq!(
        run.stderr,
        format!(
            "certagent: 1 error(s) in the configuration:\n  {d}/config.toml:0: no configuration: \"{d}/config.toml\" does not exist and \"{d}/conf.d\" has no drop-ins (*.toml)\n    hint: to take over the certificates nginx and Apache serve: certagent discover > {d}/conf.d/discovered.toml; to start from the example: cp /etc/certagent/config.example.toml {d}/config.toml\n"
        )
    );
    // Other commands say the same, without the generic "run config validate" advice.
    let check = run_certagent(&config, &["check"], &[]);
    assert_eq!(check.code, 78, "{check:?}");
    assert!(check.stderr.contains("no configuration: "), "{check:?}");
    assert!(
        !check.stderr.contains("certagent config validate"),
        "{check:?}"
    );
}

#[test]
fn a_mistyped_kind_and_key_are_one_error_each_at_their_line() {
    let (tmp, etc) = etc();
    let config = etc.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server.web]\nkind = \"ngnix\"\nverify = [\"127.0.0.1:443\"]\n\n{}",
            certificate(
                "site",
                tmp.path(),
                "server = \"web\"\nrenew_befor = \"20d\"\n"
            )
        ),
    )
    .unwrap();
    let run = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(run.code, 78, "{run:?}");
    let c = config.display();
    assert_eq!(
        run.stderr,
        format!(
            "certagent: 2 error(s) in the configuration:\n  {c}:2: server.web.kind: unknown server kind \"ngnix\"; did you mean \"nginx\"?\n  {c}:9: certificate.site.renew_befor: unknown key; did you mean `renew_before`?\n"
        )
    );
    let json = run_certagent(&config, &["config", "validate", "--json"], &[]).json();
    let lines: Vec<u64> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 9], "{json}");
}

#[test]
fn a_certificate_in_a_missing_directory_is_refused_before_any_key_is_made() {
    let env = Env::new(&["a.test"], None);
    let missing = env.dir.path().join("nowhere/ssl");
    env.write_config(
        &format!("chain_file = \"{}/chain.pem\"", missing.display()),
        "",
    );
    for args in [
        &["config", "validate"][..],
        &["check"],
        &["reissue", "--now", "site"],
    ] {
        let run = env.certagent(args);
        assert_eq!(run.code, 78, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(&format!(
                "certificate.site.chain_file: directory \"{m}\" does not exist\n    hint: create it (mkdir -p {m}) or correct the path; certagent creates only its own state directory",
                m = missing.display()
            )),
            "{args:?}: {run:?}"
        );
    }
    // Nothing was generated: no key, no generation in the state.
    assert!(!env.state_dir().join("live/site").exists());
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn the_daemon_manages_on_when_a_directory_is_missing_and_refuses_only_that_reissue() {
    let env = Env::new(&["a.test"], None);
    let missing = env.dir.path().join("later/ssl");
    env.write_config(
        &format!("chain_file = \"{}/chain.pem\"", missing.display()),
        "",
    );
    // One certificate's missing directory is not the whole configuration's error here: the
    // daemon starts (a restart must not stop the management of every other certificate).
    let daemon = common::Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log(
        "this certificate cannot be re-issued until it is fixed",
        Duration::from_secs(20),
    );
    // Its re-issue is refused before a key exists.
    let offset = daemon.log_len();
    std::fs::remove_file(&env.key_file).unwrap();
    daemon.wait_log_after(
        offset,
        &format!(
            "chain_file of site: directory \"{}\" does not exist",
            missing.display()
        ),
        Duration::from_secs(20),
    );
    assert!(!env.state_dir().join("live/site").exists());
    // Once the directory is there, the same daemon re-issues it.
    std::fs::create_dir_all(&missing).unwrap();
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.serves_key_file(), "{run:?}");
    assert!(missing.join("chain.pem").exists());
}

#[test]
fn a_user_other_than_root_is_told_once_to_use_sudo() {
    let (tmp, etc) = etc();
    let config = etc.join("config.toml");
    std::fs::write(&config, certificate("site", tmp.path(), "")).unwrap();
    // The user can reach and read the configuration (not so under the unit: see below).
    for dir in [tmp.path(), etc.as_path(), &etc.join("conf.d")] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let user = TestUser::create();
    let bin = env!("CARGO_BIN_EXE_certagent");
    let config_arg = config.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut argv = vec![bin, "--config", config_arg];
        argv.extend_from_slice(args);
        user.run(&argv)
    };
    for args in [
        &["check"][..],
        &["status", "--json"],
        &["reissue", "--now", "--all"],
        &["run"],
        &["install", "--dry-run"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "certagent: must run as root: the keys, the state and the daemon's control socket are root's alone\n  hint: sudo {bin} --config {config_arg} {}\n",
                args.join(" ")
            ),
            "{args:?}"
        );
    }
    // A configuration named by $CERTAGENT_CONFIG, which sudo does not pass on: named in the hint.
    let out = user.run(&[
        "env",
        &format!("CERTAGENT_CONFIG={config_arg}"),
        bin,
        "check",
    ]);
    assert_eq!(out.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .ends_with(&format!("  hint: sudo {bin} --config {config_arg} check\n")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        doc["hint"],
        format!("sudo {bin} --config {config_arg} status --json")
    );

    // What only reads needs no root: help, version, validating a readable configuration.
    for args in [&["--help"][..], &["--version"], &["config", "validate"]] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An unreadable one (root's, as /etc/certagent is under the unit): the hint says sudo.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run(&["config", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("failed to read config file: Permission denied (os error 13)\n    hint: certagent's configuration is root's: sudo certagent config validate"),
        "{stderr}"
    );
}

#[test]
fn a_ca_whose_https_certificate_is_not_trusted_gets_a_hint_about_ca_bundle() {
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    let issuer = |bundle: &str| {
        format!(
            "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\n{bundle}listen = \"127.0.0.1:{}\"\ntimeout = \"60s\"\n",
            pebble.directory_url(),
            pebble.http_port()
        )
    };
    env.write_config("issuer = \"pebble\"", &issuer(""));
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("invalid peer certificate"), "{run:?}");
    assert!(
        run.stderr.ends_with("  hint: the CA's HTTPS certificate is not signed by a CA this host trusts; if it is a private CA (or a test one), set ca_bundle = \"/path/to/its-root.pem\" in [issuer.pebble]\n"),
        "{run:?}"
    );

    // A ca_bundle that holds another CA: the hint names the file.
    let other = common::TlsCa::new(&env.dir.path().join("otherca"));
    let wrong = other.ca_pem_path().to_path_buf();
    env.write_config(
        "issuer = \"pebble\"",
        &issuer(&format!("ca_bundle = \"{}\"\n", wrong.display())),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.ends_with(&format!(
            "  hint: the CA's HTTPS certificate is not signed by a CA in ca_bundle \"{}\" of [issuer.pebble]: put the root certificate of the CA's HTTPS server in that file\n",
            wrong.display()
        )),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn install_takes_drop_ins_alone_as_a_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let install = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_certagent"))
            .args(["install", "--json", "--root"])
            .arg(root)
            .env_remove("CERTAGENT_CONFIG")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = install();
    assert!(
        first["service"]["note"]
            .as_str()
            .unwrap()
            .contains("nor a drop-in in conf.d/"),
        "{first}"
    );
    // The adopt flow: discover's output as the only configuration.
    std::fs::write(
        root.join("etc/certagent/conf.d/discovered.toml"),
        "[certificate.site]\nnames = [\"site.test\"]\nissuer = \"internal\"\ncert_file = \"/etc/ssl/certagent/site.pem\"\nkey_file = \"/etc/ssl/certagent/site.key\"\n",
    )
    .unwrap();
    let second = install();
    assert_eq!(
        second["service"]["note"], "--root: systemd left alone; enabled for the next boot",
        "{second}"
    );
    assert_eq!(second["errors"], serde_json::json!([]), "{second}");
    // And systemd starts the service for drop-ins alone too.
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/certagent.service")).unwrap();
    assert!(
        unit.contains("\nConditionPathExists=|/etc/certagent/config.toml\nConditionPathExistsGlob=|/etc/certagent/conf.d/*.toml\n"),
        "{unit}"
    );
}
