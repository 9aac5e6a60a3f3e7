//! Configuration: `config.toml` plus `conf.d/*.toml` drop-ins, read in stages — spanned TOML
//! tree, then typed and validated `Config`. Every problem in every file is reported at once,
//! each with file, line and key; unknown keys are errors. Nothing here touches the network or
//! writes anything.
//!
//! This file holds the loading stages (files, drop-ins, candidates) and the error types; each
//! section's types and reader live in a module of its own, re-exported here.

mod agent;
mod build;
mod certificate;
mod in_service;
mod issuer;
mod notify;
mod server;
mod walk;

pub(crate) use crate::error::{ConfigError, ConfigErrors, shown};
pub(crate) use agent::Agent;
pub(crate) use certificate::Certificate;
pub(crate) use issuer::{
    AcmeIssuer, Challenge, DnsimpleApi, DnsimpleIssuer, Http01, InternalIssuer, Issuer, IssuerKind,
    ManualIssuer,
};
pub(crate) use notify::{Notify, NotifyTarget};
pub(crate) use server::{ApacheLayout, Server, ServerKind, name_covers, probe_sni};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use crate::core::Span;
use build::Builder;
use walk::{Ctx, Section};

pub(crate) const DEFAULT_CONFIG: &str = "/etc/certagent/config.toml";
/// Name of the issuer that always exists: the embedded local CA.
pub(crate) const BUILTIN_ISSUER: &str = "internal";
/// Config files larger than this are refused (a config is a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Upper bounds of durations, so that no configured value overflows a deadline: waits and
/// timeouts, reminders, and certificate lifetimes and renewal windows.
const MAX_TIMEOUT: Span = Span::days(1);
const MAX_REMIND: Span = Span::days(365);
const MAX_LIFETIME: Span = Span::days(3_650);

#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) agent: Agent,
    pub(crate) issuers: BTreeMap<String, Issuer>,
    pub(crate) servers: BTreeMap<String, Server>,
    pub(crate) certificates: BTreeMap<String, Certificate>,
    pub(crate) notify: BTreeMap<String, Notify>,
    /// A hash of the files read (names and contents): equal fingerprints, same configuration.
    pub(crate) fingerprint: u64,
}

impl Config {
    /// Read `path` and the drop-ins in `conf.d/` beside it (file-name order).
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with(path, None)
    }

    /// Like `load`, with `candidate = (target, source)`: the content of `source` stands in for
    /// `target`, the main file or a drop-in (which need not exist yet). This is how config
    /// management checks a file before putting it in place; errors name `target`.
    pub(crate) fn load_with(
        path: &Path,
        candidate: Option<(&Path, &Path)>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let files = config_files(path, candidate, &mut errors);
        let texts = read_sources(&files, candidate, &mut errors);
        let config = Self::parse_sources(&texts, &mut errors);
        check_directories(&config.agent, path, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parse already-read sources, main file first. Used by `load` and by tests.
    pub fn parse_sources(sources: &[(PathBuf, String)], errors: &mut Vec<ConfigError>) -> Config {
        let mut b = Builder::default();
        for (i, (file, text)) in sources.iter().enumerate() {
            let mut cx = Ctx::new(file, text, errors);
            let doc = match DeTable::parse(text) {
                Ok(doc) => doc,
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    cx.error(
                        &span,
                        "",
                        format!("invalid TOML: {}", e.message().trim_end()),
                    );
                    continue;
                }
            };
            let mut root = Section::new("", doc.get_ref(), doc.span());
            b.read_file(&mut cx, &mut root, i == 0);
            root.finish(&mut cx, "agent, issuer, server, certificate, notify");
        }
        let mut config = b.finish(
            sources
                .first()
                .map(|(f, _)| f.as_path())
                .unwrap_or(Path::new(DEFAULT_CONFIG)),
            errors,
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(sources, &mut hasher);
        config.fingerprint = std::hash::Hasher::finish(&hasher);
        config
    }

    pub(crate) fn certificate(&self, name: &str) -> Option<&Certificate> {
        self.certificates.get(name)
    }
}

/// The main file, then the drop-ins in `conf.d/` in name order, with a candidate drop-in
/// that does not exist yet among them.
fn config_files(
    path: &Path,
    candidate: Option<(&Path, &Path)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    let dropin_dir = path.parent().unwrap_or(Path::new("/")).join("conf.d");
    files.extend(dropins(&dropin_dir, errors));
    if let Some((target, _)) = candidate
        && !files.iter().any(|f| f == target)
    {
        if target.parent() == Some(dropin_dir.as_path())
            && target.extension().is_some_and(|x| x == "toml")
        {
            files.push(target.to_path_buf());
            files[1..].sort();
        } else {
            errors.push(ConfigError {
                hint: None,
                file: target.to_path_buf(),
                line: 0,
                key: String::new(),
                message: format!(
                    "is neither the config file nor a drop-in (a .toml file in {:?})",
                    dropin_dir.display().to_string()
                ),
            });
        }
    }
    files
}

/// The `.toml` files in `dropin_dir`, in name order; none when it does not exist.
fn dropins(dropin_dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    match std::fs::read_dir(dropin_dir) {
        Ok(entries) => {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            dropins.sort();
            dropins
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(ConfigError {
                hint: None,
                file: dropin_dir.to_path_buf(),
                line: 0,
                key: String::new(),
                message: format!("failed to read drop-in directory: {e}"),
            });
            Vec::new()
        }
    }
}

/// The text of each file (of the candidate's source for its target), an error for each
/// that cannot be read.
fn read_sources(
    files: &[PathBuf],
    candidate: Option<(&Path, &Path)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(PathBuf, String)> {
    let mut texts = Vec::new();
    for file in files {
        let source = match candidate {
            Some((target, source)) if target == file => source,
            _ => file,
        };
        match read_capped(source) {
            Ok(text) => texts.push((file.clone(), text)),
            Err(message) => errors.push(ConfigError {
                hint: None,
                file: file.clone(),
                line: 0,
                key: String::new(),
                message,
            }),
        }
    }
    texts
}

/// The directories certagent keeps root's files in (and takes compromise flags from) must be
/// its own and root's alone, and the metrics file must not go into a shared system directory
/// (see `files::trust`). They are looked at on this host, so `load` does this, not
/// `parse_sources`.
fn check_directories(agent: &Agent, main: &Path, errors: &mut Vec<ConfigError>) {
    use crate::files::trust;
    let mut report = |key: &'static str, d: trust::Distrust| {
        errors.push(ConfigError {
            file: main.to_path_buf(),
            line: agent.lines.get(key).copied().unwrap_or(0),
            key: format!("agent.{key}"),
            message: d.message,
            hint: Some(d.hint),
        })
    };
    let private = [
        ("state_dir", &agent.state_dir),
        ("runtime_dir", &agent.runtime_dir),
        ("compromised_dir", &agent.compromised_dir),
    ];
    for (key, dir) in private {
        if let Err(d) = trust::refuse_shared(dir, key).and_then(|()| trust::check_trusted_dir(dir))
        {
            report(key, d);
        }
    }
    if let Some(dir) = agent.metrics_file.as_deref().and_then(Path::parent)
        && let Err(d) = trust::refuse_shared(dir, "metrics_file")
    {
        report("metrics_file", d);
    }
}

fn read_capped(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f =
        crate::files::open_regular(file).map_err(|e| format!("failed to read config file: {e}"))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("failed to read config file: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "config file is larger than {} MiB",
            MAX_CONFIG_BYTES >> 20
        ));
    }
    Ok(text)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Parse `text` as the main file `/etc/certagent/config.toml`: the config, or each error
    /// as displayed.
    pub(crate) fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse_as("/etc/certagent/config.toml", text)
    }

    pub(crate) fn parse_as(file: &str, text: &str) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let c = Config::parse_sources(&[(PathBuf::from(file), text.to_string())], &mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.iter().map(|e| e.to_string()).collect())
        }
    }

    /// A small valid config: one nginx server, one certificate from the embedded CA.
    pub(crate) const GOOD: &str = r#"
[agent]
state_dir = "/var/lib/certagent"

[server.web]
kind = "nginx"
verify = ["127.0.0.1:443"]

[certificate.site]
names = ["Example.com", "www.example.com"]
server = "web"
cert_file = "/etc/ssl/site.pem"
key_file = "/etc/ssl/site.key"
"#;
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    #[test]
    fn a_candidate_is_validated_where_it_will_go() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        let dropins = tmp.path().join("conf.d");
        std::fs::create_dir(&dropins).unwrap();
        std::fs::write(
            &main,
            "[server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]\n",
        )
        .unwrap();
        let site = |name: &str, server: &str| {
            format!(
                "[certificate.{name}]\nnames = [\"{name}.test\"]\nserver = \"{server}\"\ncert_file = \"/s/{name}.pem\"\nkey_file = \"/s/{name}.key\"\n"
            )
        };
        std::fs::write(dropins.join("a.toml"), site("a", "web")).unwrap();
        let candidate = tmp.path().join("upload.tmp");

        // Replacing an existing drop-in: the old content is not read, so no duplicate.
        std::fs::write(&candidate, site("a", "web")).unwrap();
        let c = Config::load_with(&main, Some((&dropins.join("a.toml"), &candidate))).unwrap();
        assert_eq!(c.certificates.len(), 1);

        // A new drop-in that refers to a server the main file does not define: the error
        // names the place the file is going to, not the temporary file.
        std::fs::write(&candidate, site("b", "apache")).unwrap();
        let target = dropins.join("b.toml");
        let errors = Config::load_with(&main, Some((&target, &candidate))).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].file, target);
        assert_eq!(errors.0[0].key, "certificate.b.server");

        // A main file that drops the server the drop-ins use.
        std::fs::write(&candidate, "").unwrap();
        let errors = Config::load_with(&main, Some((&main, &candidate))).unwrap_err();
        assert_eq!(errors.0[0].key, "certificate.a.server", "{errors}");

        let elsewhere = tmp.path().join("other/x.toml");
        let errors = Config::load_with(&main, Some((&elsewhere, &candidate))).unwrap_err();
        assert!(
            errors.0[0]
                .message
                .starts_with("is neither the config file nor a drop-in"),
            "{errors}"
        );
    }
}

#[cfg(test)]
mod dropin_tests {
    use super::*;

    #[test]
    fn control_characters_in_keys_names_and_file_names_are_shown_escaped() {
        let mut errors = Vec::new();
        Config::parse_sources(
            &[
                (
                    PathBuf::from("/etc/certagent/config.toml"),
                    "[server.\"a\\nb\"]\nkind = \"none\"\n\"x\\u001b[2Jy\" = 1\n\n[certificate.\"c\\rd\"]\nnames = [\"a.test\"]\ncert_file = \"/s/c.pem\"\nkey_file = \"/s/c.key\"\n\n[certificate.ok]\nnames = [\"b.test\"]\nserver = \"w\\u202eeb\"\ncert_file = \"/s/o.pem\"\nkey_file = \"/s/o.key\"\n\n[notify]\n\"n\\u0000\" = 3\n"
                        .to_string(),
                ),
                (
                    PathBuf::from("/etc/certagent/conf.d/evil\n/etc/certagent/config.toml:1: forged.toml"),
                    "[agent]\n".to_string(),
                ),
            ],
            &mut errors,
        );
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        for line in &shown {
            assert!(
                !line.contains(['\n', '\r', '\u{1b}', '\0', '\u{202e}']),
                "{line:?}"
            );
        }
        assert_eq!(
            shown,
            [
                "/etc/certagent/config.toml:1: server.a\\nb: invalid server name \"a\\nb\": use 1 to 64 letters, digits, '-', '_' or '.' (it names files)",
                "/etc/certagent/config.toml:3: server.a\\nb.x\\u{1b}[2Jy: unknown key; known keys here: kind, layout, verify, test_command, reload_command, pid_file, command_timeout, verify_timeout, verify_settle",
                "/etc/certagent/config.toml:17: notify.n\\0: expected a table [notify.n\\0], found integer",
                "/etc/certagent/config.toml:5: certificate.c\\rd: invalid certificate name \"c\\rd\": use 1 to 64 letters, digits, '-', '_' or '.' (it names files)",
                "/etc/certagent/conf.d/evil\\n/etc/certagent/config.toml:1: forged.toml:1: agent: [agent] may only be set in the main config file, not in a drop-in",
                "/etc/certagent/config.toml:10: certificate.ok.server: no [server.w\\u{202e}eb] is defined (defined: none)",
            ]
        );
    }

    #[test]
    fn a_fifo_drop_in_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        std::fs::write(&main, "").unwrap();
        std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
        let fifo = tmp.path().join("conf.d/a.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(tmp.path().join("conf.d/b.toml")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let errors = Config::load(&main).map(|_| ()).unwrap_err();
            let _ = tx.send(errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        });
        // Generous: a hang (blocked in open(2) until a writer comes) is what this catches.
        let errors = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("loading the config blocked on a FIFO drop-in");
        assert_eq!(
            errors,
            vec![
                format!(
                    "{}:0: failed to read config file: not a regular file (a FIFO)",
                    fifo.display()
                ),
                format!(
                    "{}:0: failed to read config file: not a regular file (a directory)",
                    tmp.path().join("conf.d/b.toml").display()
                ),
            ]
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::agent::AGENT_KEYS;
    use super::certificate::CERT_KEYS;
    use super::issuer::ISSUER_KEYS;
    use super::notify::NOTIFY_KEYS;
    use super::server::{ENDPOINT_KEYS, SERVER_KEYS};
    use super::*;

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    #[test]
    fn the_example_config_is_valid() {
        let mut errors = Vec::new();
        let c = Config::parse_sources(
            &[(PathBuf::from("config.example.toml"), EXAMPLE.to_string())],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(c.certificates["www"].server.as_deref(), Some("nginx"));
        assert!(matches!(c.issuers["letsencrypt"].kind, IssuerKind::Acme(_)));
    }

    #[test]
    fn the_example_config_names_every_issuer_kind_and_challenge_it_supports() {
        let comment = |prefix: &str| {
            let line = EXAMPLE.lines().find(|l| l.starts_with(prefix)).unwrap();
            line.split_once('#').unwrap().1.to_string()
        };
        let kinds = comment("kind = \"internal\"");
        for kind in ["internal", "acme", "dnsimple", "manual"] {
            assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
            assert!(
                EXAMPLE.contains(&format!("kind = \"{kind}\"")),
                "no {kind} issuer in the example"
            );
        }
        let challenges = comment("challenge = \"http-01\"");
        assert!(
            challenges.contains("http-01 | dns-01") && !challenges.contains("dns-01 and"),
            "{challenges:?}"
        );
    }

    #[test]
    fn the_example_config_documents_every_key() {
        for list in [
            AGENT_KEYS,
            ISSUER_KEYS,
            SERVER_KEYS,
            ENDPOINT_KEYS,
            CERT_KEYS,
            NOTIFY_KEYS,
        ] {
            for key in list.split(", ") {
                // A key of its own line, or of an inline table (`{ address = ..., sni = ... }`).
                let documented = EXAMPLE.lines().any(|l| {
                    l.trim_start_matches(['#', ' '])
                        .starts_with(&format!("{key} ="))
                        || l.contains(&format!("{{ {key} ="))
                        || l.contains(&format!(", {key} ="))
                });
                assert!(documented, "config.example.toml does not document {key:?}");
            }
        }
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn shared_or_open_directories_are_config_errors_with_file_line_key_and_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let main = tmp.path().join("config.toml");
        let o = open.display();
        std::fs::write(
            &main,
            format!(
                "[agent]\nmax_parallel = 2\nstate_dir = \"/var/tmp\"\nruntime_dir = \"{o}\"\ncompromised_dir = \"{o}/flags\"\nmetrics_file = \"/run/certagent.prom\"\n"
            ),
        )
        .unwrap();
        let errors = Config::load(&main).unwrap_err().0;
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "agent.state_dir"),
                (4, "agent.runtime_dir"),
                (5, "agent.compromised_dir"),
                (6, "agent.metrics_file")
            ],
            "{errors:#?}"
        );
        assert!(errors.iter().all(|e| e.file == main && e.hint.is_some()));
        assert_eq!(
            errors[0].to_string(),
            format!(
                "{}:3: agent.state_dir: \"/var/tmp\" is a shared system directory, not one of certagent's own\n    hint: use a directory only certagent uses (certagent creates it with the modes it needs): /var/lib/certagent",
                main.display()
            )
        );
        assert_eq!(
            errors[1].message,
            format!(
                "\"{o}\" is writable by group or others (mode 1777): another user could plant files in it"
            )
        );
        assert!(
            errors[2]
                .message
                .ends_with("another user could create it first"),
            "{}",
            errors[2].message
        );
        assert_eq!(
            errors[3].message,
            "\"/run\" is a shared system directory, not one of certagent's own"
        );

        // The same directories, certagent's own and root's alone: valid.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            &main,
            format!(
                "[agent]\nstate_dir = \"{o}/state\"\nruntime_dir = \"{o}\"\ncompromised_dir = \"{o}/flags\"\nmetrics_file = \"{o}/m/certagent.prom\"\n"
            ),
        )
        .unwrap();
        Config::load(&main).unwrap();
    }
}
