//! What a new operator reads: `--help`, the reason a re-issue was asked for, a dead `verify`
//! endpoint, `status`, and the daemon in the foreground (issue #19, messages that teach).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;

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
        "certagent: reissue needs --now: it replaces the key and certificate in service at once, even a healthy one\n  hint: certagent re-issues by itself when a certificate needs it; `certagent check` says whether one does and why; to replace it anyway: `certagent reissue --now www`\n",
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
