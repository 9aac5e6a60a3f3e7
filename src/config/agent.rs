//! `[agent]`: the daemon's own directories and limits, with their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::MAX_TIMEOUT;
use super::walk::{self, Ctx, Section};
use crate::core::Span;

pub(super) const AGENT_KEYS: &str = "state_dir, runtime_dir, max_parallel, compromised_dir, key_blocklist, lock_timeout, keep_generations, metrics_file, max_reissues_per_hour";

#[derive(Clone, Debug)]
pub(crate) struct Agent {
    pub(crate) state_dir: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) max_parallel: usize,
    pub(crate) compromised_dir: PathBuf,
    pub(crate) key_blocklist: Vec<PathBuf>,
    /// How long a command waits for another certagent process to release the lock.
    pub(crate) lock_timeout: Span,
    /// Generations kept per certificate besides the current one.
    pub(crate) keep_generations: usize,
    /// Prometheus textfile the daemon rewrites on every state change (`None`: no metrics).
    pub(crate) metrics_file: Option<PathBuf>,
    /// The line of each directory setting in the main file (`state_dir`, `runtime_dir`,
    /// `compromised_dir`, `metrics_file`), for errors found when the directories are
    /// looked at after parsing; a default has none.
    pub(crate) lines: BTreeMap<&'static str, usize>,
    /// How many re-issues the daemon starts by itself for one certificate in any hour; more
    /// wait (an operator's `reissue --now` does not).
    pub(crate) max_reissues_per_hour: u32,
}

pub(super) fn default_agent() -> Agent {
    Agent {
        state_dir: "/var/lib/certagent".into(),
        runtime_dir: "/run/certagent".into(),
        max_parallel: 4,
        compromised_dir: "/etc/certagent/compromised".into(),
        key_blocklist: Vec::new(),
        lock_timeout: Span::secs(120),
        keep_generations: 3,
        metrics_file: None,
        lines: BTreeMap::new(),
        max_reissues_per_hour: 5,
    }
}

pub(super) fn read_agent(cx: &mut Ctx, s: &mut Section) -> Agent {
    let mut a = default_agent();
    for key in [
        "state_dir",
        "runtime_dir",
        "compromised_dir",
        "metrics_file",
    ] {
        if let Some(span) = s.span_of(key) {
            a.lines.insert(key, cx.line(&span));
        }
    }
    if let Some(p) = s.path(cx, "state_dir") {
        a.state_dir = p;
    }
    if let Some(p) = s.path(cx, "runtime_dir") {
        a.runtime_dir = p;
    }
    if let Some(n) = s.integer(cx, "max_parallel", 1..1025) {
        a.max_parallel = n as usize;
    }
    if let Some(p) = s.path(cx, "compromised_dir") {
        a.compromised_dir = p;
    }
    read_key_blocklist(cx, s, &mut a.key_blocklist);
    if let Some(d) = s.span(cx, "lock_timeout", MAX_TIMEOUT) {
        a.lock_timeout = d;
    }
    if let Some(n) = s.integer(cx, "keep_generations", 1..101) {
        a.keep_generations = n as usize;
    }
    a.metrics_file = s.path(cx, "metrics_file");
    if let Some(n) = s.integer(cx, "max_reissues_per_hour", 1..1001) {
        a.max_reissues_per_hour = n as u32;
    }
    a
}

/// `key_blocklist`: files of known-compromised keys, each of which must exist.
fn read_key_blocklist(cx: &mut Ctx, s: &mut Section, blocklist: &mut Vec<PathBuf>) {
    let Some(list) = s.strings(cx, "key_blocklist") else {
        return;
    };
    for (p, span) in list {
        // A list that is not there protects nothing: a mistyped path must not pass.
        match walk::check_path(&p) {
            Ok(p) if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) => blocklist.push(p),
            Ok(p) => {
                let why = match std::fs::metadata(&p) {
                    Ok(_) => "is not a regular file".to_string(),
                    Err(e) => format!("cannot be read: {e}"),
                };
                cx.error(
                    &span,
                    &s.full_key("key_blocklist"),
                    format!(
                        "{:?} {why}; hint: fix the path, or remove it from key_blocklist",
                        p.display().to_string()
                    ),
                );
            }
            Err(e) => cx.error(&span, &s.full_key("key_blocklist"), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_util::{GOOD, parse};

    #[test]
    fn a_blocklist_that_is_not_a_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("blocked.txt");
        std::fs::write(&list, "# none\n").unwrap();
        let config = |path: &Path| {
            format!(
                "[agent]\nkey_blocklist = [{:?}]\n",
                path.display().to_string()
            )
        };
        let c = parse(&config(&list)).unwrap();
        assert_eq!(c.agent.key_blocklist, vec![list.clone()]);
        let typo = dir.path().join("blocked.txy");
        assert_eq!(
            parse(&config(&typo)).unwrap_err(),
            [format!(
                "/etc/certagent/config.toml:2: agent.key_blocklist: {:?} cannot be read: No such file or directory (os error 2); hint: fix the path, or remove it from key_blocklist",
                typo.display().to_string()
            )]
        );
        assert_eq!(
            parse(&config(dir.path())).unwrap_err(),
            [format!(
                "/etc/certagent/config.toml:2: agent.key_blocklist: {:?} is not a regular file; hint: fix the path, or remove it from key_blocklist",
                dir.path().display().to_string()
            )]
        );
    }

    #[test]
    fn the_hourly_reissue_limit_has_a_default_and_a_range() {
        assert_eq!(parse(GOOD).unwrap().agent.max_reissues_per_hour, 5);
        let c = parse("[agent]\nmax_reissues_per_hour = 2\n").unwrap();
        assert_eq!(c.agent.max_reissues_per_hour, 2);
        assert_eq!(
            parse("[agent]\nmax_reissues_per_hour = 0\n").unwrap_err(),
            [
                "/etc/certagent/config.toml:2: agent.max_reissues_per_hour: 0 is out of range (1 to 1000)"
            ]
        );
    }
}
