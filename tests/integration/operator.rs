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
