//! What a new operator reads: `--help`, the reason a re-issue was asked for, a dead `verify`
//! endpoint, `status`, and the daemon in the foreground (issue #19, messages that teach).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::run_certagent;

fn help(args: &[&str]) -> String {
    let run = run_certagent(Path::new("/nonexistent/config.toml"), args, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

#[test]
fn help_lists_global_options_under_their_own_heading_with_examples_and_see_also() {
    for sub in ["check", "status", "reissue", "run", "import", "install"] {
        let text = help(&[sub, "--help"]);
        let global = text
            .find("Global options:")
            .unwrap_or_else(|| panic!("{sub}: no global heading:\n{text}"));
        assert!(text[global..].contains("--config <PATH>"), "{sub}:\n{text}");
        let options = text.find("Options:").expect("options heading");
        assert!(
            !text[options..global].contains("--config"),
            "{sub}: --config among the command's own options:\n{text}"
        );
        assert!(text.contains("\nExamples:\n  certagent "), "{sub}:\n{text}");
        assert!(text.contains("\nSee also: certagent "), "{sub}:\n{text}");
    }
}

#[test]
fn top_level_examples_do_not_wrap_at_100_columns() {
    let text = help(&["--help"]);
    let examples = text.find("Examples:").expect("examples");
    for line in text[examples..].lines() {
        assert!(line.chars().count() <= 100, "too long: {line:?}");
        // A wrapped description would start a line with a lowercase word at column 2.
        let body = line.trim_start();
        if line.len() - body.len() == 2 {
            assert!(
                body.starts_with("certagent") || body.starts_with('/'),
                "wrapped line: {line:?}\n{text}"
            );
        }
    }
    assert!(
        text.contains("  certagent reissue --now www\n      new key"),
        "{text}"
    );
}

#[test]
fn reissue_help_and_error_say_why_now_is_required() {
    let text = help(&["reissue", "--help"]);
    assert!(
        text.contains("certagent\n          already re-issues by itself")
            || text.contains("certagent already re-issues by itself"),
        "{text}"
    );
    let run = run_certagent(
        Path::new("/nonexistent/config.toml"),
        &["reissue", "www"],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        "certagent: reissue needs --now: it replaces the key and certificate in service at once, even a healthy one\n  hint: certagent re-issues by itself when a certificate needs it; `certagent check` says whether one does and why; to replace it anyway: `certagent reissue --now www`; to rehearse without changing anything: `certagent reissue --dry-run www`\n",
        "{run:?}"
    );
}

#[test]
fn the_reason_an_operator_gives_is_recorded_as_given_beside_what_was_observed() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let run = env.certagent(&[
        "reissue",
        "--now",
        "site",
        "--json",
        "--reason",
        "superseded",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let result = &run.json()["certificates"][0];
    assert_eq!(result["requested_reason"], "superseded", "{run:?}");
    assert_eq!(result["observed"], serde_json::json!([]), "{run:?}");
    // What certagent acted on is unchanged (the contract's field keeps its meaning).
    assert_eq!(result["reason"], "forced", "{run:?}");
    assert!(
        run.stderr
            .contains("re-issuing cert=site reason=superseded observed=[]"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("reason=forced"), "{run:?}");
    assert!(run.stderr.contains("event=installed"), "{run:?}");
    assert!(!run.stderr.contains("removed=[]"), "{run:?}");

    // A lost key, reissued as key-lost: the journal says key-lost, and that the key was
    // observed missing.
    std::fs::remove_file(&env.key_file).expect("delete key");
    let run = env.certagent(&["reissue", "--now", "site", "--json", "--reason", "key-lost"]);
    assert_eq!(run.code, 0, "{run:?}");
    let result = &run.json()["certificates"][0];
    assert_eq!(result["requested_reason"], "key-lost", "{run:?}");
    assert_eq!(
        result["observed"],
        serde_json::json!(["key-missing"]),
        "{run:?}"
    );

    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let last = &status.json()["certificates"][0]["last"];
    assert_eq!(last["result"], "installed", "{status:?}");
    assert_eq!(last["requested_reason"], "key-lost", "{status:?}");
    assert_eq!(
        last["observed"],
        serde_json::json!(["key-missing"]),
        "{status:?}"
    );
    let text = env.certagent(&["status"]);
    assert!(
        text.stdout.contains(
            "installed (reason key-lost, observed: key-missing): installed and verified in service"
        ),
        "{text:?}"
    );
    let journal = std::fs::read_to_string(env.state_dir().join("certs/site/state.json")).unwrap();
    let journal: serde_json::Value = serde_json::from_str(&journal).unwrap();
    assert_eq!(journal["last"]["asked"]["requested"], "key-lost");
    assert_eq!(
        journal["last"]["asked"]["observed"],
        serde_json::json!(["key-missing"])
    );
}

/// Every file under `dir` with its content (empty for directories and unreadable files).
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                todo.push(path.clone());
                out.push((path, Vec::new()));
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_verify_endpoint_nothing_listens_on_fails_the_reissue_at_once_and_changes_nothing() {
    let mut env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let dead = format!("127.0.0.1:{}", common::reserved_port());
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("verify = [\"{}\"]", env.addr()),
        &format!("verify = [\"{dead}\"]"),
    );
    assert!(text.contains(&dead), "{text}");
    std::fs::write(&env.config, text).unwrap();
    let ssl = env.cert_file.parent().unwrap().to_path_buf();
    let before = (tree(&env.state_dir()), tree(&ssl));

    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 78, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["changed"], false, "{run:?}");
    let error = doc["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "failed to re-issue \"site\": nothing listens on {dead} (connection refused), the verify endpoint of server.web.verify, although nginx is running; nothing was generated, ordered or changed"
        )),
        "{run:?}"
    );
    assert!(
        doc["hint"]
            .as_str()
            .unwrap()
            .starts_with("set server.web.verify to the address:port nginx serves"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("generated new key"), "{run:?}");
    // Nothing generated, nothing changed on disk (no state, no pending key), nothing reloaded.
    assert_eq!((tree(&env.state_dir()), tree(&ssl)), before);
    assert_eq!(env.served(), env.initial_leaf);

    // `check` says which endpoint does not answer, in text and JSON.
    let check = env.certagent(&["check", "--json"]);
    let verify = &check.json()["certificates"][0]["verify"];
    assert_eq!(verify[0]["endpoint"], dead.as_str(), "{check:?}");
    assert_eq!(verify[0]["answered"], false, "{check:?}");
    assert!(
        verify[0]["error"].as_str().unwrap().contains("refused"),
        "{check:?}"
    );
    let check = env.certagent(&["check"]);
    assert!(
        check.stdout.contains(&format!(
            "site: verify endpoint {dead} (SNI a.test) does not answer: connect to {dead}: Connection refused"
        )),
        "{check:?}"
    );

    // With the web server stopped nothing can listen, and that is no misconfiguration: the
    // certificate is installed, not loaded (a first install before the server starts).
    env.nginx.stop();
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.json()["certificates"][0]["result"],
        "installed-not-loaded",
        "{run:?}"
    );
}

#[test]
fn check_reports_a_verify_endpoint_that_answers() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let verify = &check.json()["certificates"][0]["verify"];
    assert_eq!(
        verify,
        &serde_json::json!([{"endpoint": env.addr(), "sni": "a.test", "answered": true, "error": null}])
    );
}

#[test]
fn status_says_whether_the_daemon_runs_and_shows_its_view_while_the_file_on_disk_is_invalid() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["daemon"]["running"], false, "{status:?}");
    let status = env.certagent(&["status"]);
    assert!(
        status
            .stdout
            .starts_with("daemon: not running (read from disk)\nsite\n"),
        "{status:?}"
    );

    let daemon = common::Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["daemon"]["running"], true, "{status:?}");
    assert_eq!(
        status.json()["daemon"]["config_errors"],
        serde_json::json!([])
    );

    // An invalid edit: the daemon keeps its configuration, and status still shows its view.
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{good}\n[bogus]\n")).unwrap();
    daemon.wait_log(
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(20),
    );
    let status = env.certagent(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    assert_eq!(doc["daemon"]["running"], true, "{status:?}");
    assert!(
        doc["daemon"]["config_errors"][0]
            .as_str()
            .unwrap()
            .contains("bogus"),
        "{status:?}"
    );
    assert_eq!(doc["certificates"][0]["name"], "site", "{status:?}");
    assert!(
        status.stderr.starts_with(
            "certagent: warning: the configuration on disk is invalid; the daemon runs on the configuration it read before:"
        ),
        "{status:?}"
    );
    // `check` and `config validate` still say the file is invalid.
    assert_eq!(env.certagent(&["config", "validate"]).code, 78);
    drop(daemon);
    // No daemon to ask: the invalid file is all there is.
    assert_eq!(env.certagent(&["status"]).code, 78);
}

#[test]
fn the_foreground_daemon_says_what_it_read_stamps_its_lines_and_says_when_the_config_is_valid_again()
 {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let daemon = common::Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    let log = daemon.log();
    let ready = log
        .lines()
        .find(|l| l.contains("certagent daemon ready"))
        .expect("ready line");
    assert!(
        ready.contains(&format!("config={}", env.config.display())),
        "{ready}"
    );
    assert!(
        ready.contains(&format!("state_dir={}", env.state_dir().display())),
        "{ready}"
    );
    assert!(ready.contains(" next_check=20"), "{ready}");
    // Off the journal every line starts with the time: "2026-12-03T00:55:00Z certagent: ...".
    for line in log.lines().filter(|l| !l.is_empty()) {
        let (stamp, rest) = line.split_once(' ').unwrap_or(("", line));
        assert!(
            stamp.len() == 20 && stamp.ends_with('Z') && rest.starts_with("certagent: "),
            "{line:?}"
        );
    }

    // A bad edit, then the fix (back to the file in use): the daemon says it is valid again.
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{good}\n[bogus]\n")).unwrap();
    daemon.wait_log(
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(20),
    );
    let offset = daemon.log_len();
    std::fs::write(&env.config, &good).unwrap();
    daemon.wait_log_after(offset, "configuration valid again", Duration::from_secs(20));

    // And a fix that changes the configuration: valid again, then reloaded.
    std::fs::write(&env.config, format!("{good}\n[bogus]\n")).unwrap();
    daemon.wait_log_after(
        offset,
        "the new configuration is invalid, keeping the old one",
        Duration::from_secs(20),
    );
    let offset = daemon.log_len();
    std::fs::write(
        &env.config,
        good.replace("lock_timeout = \"5s\"", "lock_timeout = \"6s\""),
    )
    .unwrap();
    daemon.wait_log_after(offset, "configuration reloaded", Duration::from_secs(20));
    let tail = daemon.log()[offset..].to_string();
    assert!(tail.contains("configuration valid again"), "{tail}");

    // Through the daemon too, the operator's reason is the one logged and answered.
    let offset = daemon.log_len();
    let run = env.certagent(&[
        "reissue",
        "--now",
        "site",
        "--no-wait",
        "--json",
        "--reason",
        "key-change",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let result = &run.json()["certificates"][0];
    assert_eq!(result["result"], "started", "{run:?}");
    assert_eq!(result["requested_reason"], "key-change", "{run:?}");
    daemon.wait_log_after(offset, "event=installed", Duration::from_secs(30));
    let tail = daemon.log()[offset..].to_string();
    assert!(
        tail.contains("re-issuing cert=site reason=key-change observed=[]"),
        "{tail}"
    );
    assert!(!tail.contains("reason=key-type-changed"), "{tail}");
}

#[cfg(feature = "failpoints")]
#[test]
fn status_mid_install_shows_the_generation_served_and_how_far_the_install_got() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    // Killed once nginx was reloaded, before the new certificate was proven served.
    let run = common::run_certagent(
        &env.config,
        &["reissue", "--now", "site"],
        &[("CERTAGENT_FAILPOINT", "after-reload")],
    );
    assert!(
        run.stderr
            .contains("failpoint after-reload: killing myself"),
        "{run:?}"
    );
    let status = env.certagent(&["status", "--json"]);
    let installing = &status.json()["certificates"][0]["installing"];
    assert_eq!(installing["from"], 0, "{status:?}");
    assert_eq!(installing["to"], 1, "{status:?}");
    assert_eq!(installing["phase"], "verifying", "{status:?}");
    let status = env.certagent(&["status"]);
    assert!(
        status
            .stdout
            .contains("  in service:  generation 0 until generation 1 is proven served\n  installing:  generation 1 (verifying): serial "),
        "{status:?}"
    );
    // The next run finishes the install; status then has nothing in flight.
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let status = env.certagent(&["status", "--json"]);
    assert!(
        status.json()["certificates"][0]["installing"].is_null(),
        "{status:?}"
    );
}

#[test]
fn a_dead_verify_endpoint_of_a_server_whose_state_is_unknown_asks_whether_it_runs() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let dead = format!("127.0.0.1:{}", common::reserved_port());
    let text = std::fs::read_to_string(&env.config).unwrap();
    let pid_line = format!("pid_file = \"{}\"", env.nginx.pid_file().display());
    let reload = common::toml_list(&env.nginx.reload_command());
    let text = text
        .replace("kind = \"nginx\"", "kind = \"command\"")
        .replace(&pid_line, &format!("reload_command = {reload}"))
        .replace(&format!("[\"{}\"]", env.addr()), &format!("[\"{dead}\"]"));
    std::fs::write(&env.config, text).unwrap();
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "certagent: failed to re-issue \"site\": nothing listens on {dead} (connection refused), the verify endpoint of server.web.verify (is the server running?); nothing was generated, ordered or changed\n  hint: set server.web.verify to the address:port the server serves"
        )),
        "{run:?}"
    );
    assert_eq!(env.served(), env.initial_leaf);
}

#[test]
fn after_a_failed_install_status_shows_the_error_and_the_operators_reason_for_what_is_pending() {
    let env = common::Env::new(&["a.test"], None);
    env.write_config("", "");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("test_command = [", "test_command = [\"false\", "),
    )
    .unwrap();
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    let status = env.certagent(&["status", "--json"]);
    let site = &status.json()["certificates"][0];
    assert_eq!(site["last"]["result"], "rolled-back", "{status:?}");
    assert!(
        site["last"]["message"]
            .as_str()
            .unwrap()
            .starts_with("configuration test of server \"web\" failed"),
        "{status:?}"
    );
    assert_eq!(site["pending"]["reason"], "forced", "{status:?}");
    assert_eq!(
        site["pending"]["requested_reason"], "superseded",
        "{status:?}"
    );
    let status = env.certagent(&["status"]);
    assert!(
        status
            .stdout
            .contains("  pending:     re-issue (superseded) since "),
        "{status:?}"
    );
    assert!(
        status
            .stdout
            .contains(" rolled-back (reason superseded, observed: nothing wrong): configuration test of server \"web\" failed"),
        "{status:?}"
    );
}
