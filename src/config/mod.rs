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
mod cluster;
mod in_service;
mod issuer;
mod notify;
mod profile;
mod rfc2136;
mod server;
mod walk;

pub(crate) use crate::error::{ConfigError, ConfigErrors, shown};
pub(crate) use agent::Agent;
pub(crate) use certificate::Certificate;
pub use cluster::{
    ClusterConfig, ClusterKind, DEFAULT_LEASE_TTL, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT,
    default_node,
};
pub(crate) use issuer::{
    AcmeIssuer, Challenge, DnsimpleApi, DnsimpleIssuer, Http01, InternalIssuer, Issuer, IssuerKind,
    ManualIssuer,
};
pub(crate) use notify::{Notify, NotifyTarget};
pub(crate) use profile::ProfileWish;
pub(crate) use rfc2136::Rfc2136;
pub(crate) use server::{ApacheLayout, Server, ServerKind, Starttls, name_covers, probe_sni};

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
    /// The etcd cluster shared certificates go through (`[cluster]`), when there is one.
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) cluster: Option<ClusterConfig>,
    /// A hash of the files read (names and contents): equal fingerprints, same configuration.
    pub(crate) fingerprint: u64,
    /// Where certificate `.0`'s key `.1` (its issuer, server and output paths) is set: file
    /// and line, for errors found when this host is looked at after parsing (empty once the
    /// load has run those checks).
    pub(crate) certificate_keys_at: BTreeMap<(String, &'static str), (PathBuf, usize)>,
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
        Self::load_files(path, candidate).1
    }

    /// `load_with`, and the files it read: the main file (unless it is absent and drop-ins
    /// stand alone), then the drop-ins in the order they were merged.
    pub(crate) fn load_files(
        path: &Path,
        candidate: Option<(&Path, &Path)>,
    ) -> (Vec<PathBuf>, Result<Config, ConfigErrors>) {
        Self::load_files_under(path, candidate, Path::new("/"))
    }

    /// `load` for the daemon: a certificate whose output directory is missing is not an
    /// error of the whole configuration there (see `check_output_directories`).
    pub(crate) fn load_for_daemon(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_files_checked(path, None, Path::new("/"), false).1
    }

    /// `load` for the host whose root directory is `root` (`install --root`): the
    /// directories the certificates go into are looked for there.
    pub(crate) fn load_under(path: &Path, root: &Path) -> Result<Config, ConfigErrors> {
        Self::load_files_under(path, None, root).1
    }

    fn load_files_under(
        path: &Path,
        candidate: Option<(&Path, &Path)>,
        root: &Path,
    ) -> (Vec<PathBuf>, Result<Config, ConfigErrors>) {
        Self::load_files_checked(path, candidate, root, true)
    }

    fn load_files_checked(
        path: &Path,
        candidate: Option<(&Path, &Path)>,
        root: &Path,
        outputs: bool,
    ) -> (Vec<PathBuf>, Result<Config, ConfigErrors>) {
        let mut errors = Vec::new();
        let mut files = config_files(path, candidate, &mut errors);
        // No main file beside drop-ins (a fresh host adopted with `discover`) is an empty
        // main file; neither is no configuration at all.
        let main_absent = candidate.is_none_or(|(target, _)| target != path)
            && std::fs::symlink_metadata(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        if main_absent {
            files.remove(0);
            if files.is_empty() && errors.is_empty() {
                errors.push(no_configuration(path));
                return (files, Err(ConfigErrors(errors)));
            }
        }
        let mut texts = read_sources(&files, candidate, &mut errors);
        if main_absent {
            texts.insert(0, (path.to_path_buf(), String::new()));
        }
        let mut config = Self::parse_sources(&texts, &mut errors);
        check_directories(&config.agent, path, &mut errors);
        if outputs {
            check_output_directories(&config, root, &mut errors);
        }
        // Only the checks above need where each certificate's keys are set: a map as large as
        // the configuration (six entries per certificate) is not kept for the daemon's life.
        config.certificate_keys_at = BTreeMap::new();
        let mut order = vec![path.to_path_buf()];
        order.extend(files.iter().cloned());
        in_file_order(&mut errors, &order);
        if errors.is_empty() {
            (files, Ok(config))
        } else {
            (files, Err(ConfigErrors(errors)))
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
            root.finish(
                &mut cx,
                "agent, cluster, issuer, server, certificate, notify",
            );
        }
        let mut config = b.finish(
            sources
                .first()
                .map(|(f, _)| f.as_path())
                .unwrap_or(Path::new(DEFAULT_CONFIG)),
            errors,
        );
        let order: Vec<PathBuf> = sources.iter().map(|(f, _)| f.clone()).collect();
        in_file_order(errors, &order);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(sources, &mut hasher);
        config.fingerprint = std::hash::Hasher::finish(&hasher);
        config
    }

    pub(crate) fn certificate(&self, name: &str) -> Option<&Certificate> {
        self.certificates.get(name)
    }
}

/// Every file certagent writes for a certificate goes into a directory that exists (or
/// into certagent's own state directory, which it creates): otherwise the first re-issue
/// would fail after a new key was generated and a certificate ordered. An error of `config
/// validate` and of the commands; the daemon only warns (one deleted directory must not stop
/// the management of every other certificate) and the executor refuses that certificate's
/// re-issue before it generates anything.
fn check_output_directories(config: &Config, root: &Path, errors: &mut Vec<ConfigError>) {
    for (name, cert) in &config.certificates {
        for (key, dir, problem, hint) in
            cert.missing_output_directories(&config.agent.state_dir, root)
        {
            let (file, line) = config
                .certificate_keys_at
                .get(&(name.clone(), key))
                .cloned()
                .unwrap_or_default();
            errors.push(ConfigError {
                file,
                line,
                key: format!("certificate.{}.{key}", shown(name)),
                message: format!("directory \"{dir}\" {problem}"),
                hint: Some(hint),
            });
        }
    }
}

impl Certificate {
    /// The output paths (`cert_file`, `key_file`, `chain_file`, `leaf_file`, `bundle_file`) whose directory,
    /// looked for under `root`, is missing or not a directory: (key, directory as shown, the
    /// problem, a hint). Directories under `state_dir` are certagent's to create; one that
    /// cannot be read here (another user's) is for the re-issue, as root, to tell.
    pub(crate) fn missing_output_directories(
        &self,
        state_dir: &Path,
        root: &Path,
    ) -> Vec<(&'static str, String, &'static str, String)> {
        let outputs = [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("chain_file", self.chain_file.as_ref()),
            ("leaf_file", self.leaf_file.as_ref()),
            ("bundle_file", self.bundle_file.as_ref()),
        ];
        let mut missing = Vec::new();
        for (key, path) in outputs {
            let Some(dir) = path.and_then(|p| p.parent()) else {
                continue;
            };
            if dir.starts_with(state_dir) {
                continue;
            }
            let shown_dir = dir.display().to_string();
            let shown_dir = shown(&shown_dir).to_string();
            let on_host = root.join(dir.strip_prefix("/").unwrap_or(dir));
            let (problem, hint) = match std::fs::metadata(on_host) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => ("is not a directory", "correct the path".to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                    "does not exist",
                    format!(
                        "create it (mkdir -p {shown_dir}) or correct the path; certagent creates only its own state directory"
                    ),
                ),
                Err(_) => continue,
            };
            missing.push((key, shown_dir, problem, hint));
        }
        missing
    }
}

/// Errors in the order of the files (`files`: main file first, then the drop-ins in name
/// order), and by line within a file; problems with no file of their own (the drop-in
/// directory) first. Stable: errors on one line keep the order they were found in.
fn in_file_order(errors: &mut [ConfigError], files: &[PathBuf]) {
    errors.sort_by_key(|e| {
        let file = files.iter().position(|f| *f == e.file).map_or(0, |i| i + 1);
        (file, e.line)
    });
}

/// Neither a main file nor any drop-in: where certagent looked, and how to begin.
fn no_configuration(path: &Path) -> ConfigError {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let shown_path = path.display().to_string();
    let dropins = dir.join("conf.d").display().to_string();
    ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message: format!(
            "no configuration: {:?} does not exist and {:?} has no drop-ins (*.toml)",
            shown(&shown_path),
            shown(&dropins),
        ),
        hint: Some(format!(
            "to take over the certificates nginx and Apache serve: certagent discover > {}/discovered.toml; to start from the example: cp /etc/certagent/config.example.toml {}",
            shown(&dropins),
            shown(&shown_path),
        )),
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
            Err(e) => errors.push(ConfigError {
                // The configuration is root's (/etc/certagent is 0700 under the unit).
                hint: (e.kind() == std::io::ErrorKind::PermissionDenied
                    && !nix::unistd::geteuid().is_root())
                .then(|| {
                    "certagent's configuration is root's: sudo certagent config validate".into()
                }),
                file: file.clone(),
                line: 0,
                key: String::new(),
                message: format!("failed to read config file: {e}"),
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

fn read_capped(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = crate::files::open_regular(file)?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20),
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
        let ssl = tmp.path().display();
        let site = |name: &str, server: &str| {
            format!(
                "[certificate.{name}]\nnames = [\"{name}.test\"]\nserver = \"{server}\"\ncert_file = \"{ssl}/{name}.pem\"\nkey_file = \"{ssl}/{name}.key\"\n"
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
                "/etc/certagent/config.toml:3: server.a\\nb.x\\u{1b}[2Jy: unknown key; known keys here: kind, layout, verify, test_command, reload_command, pid_file, runtime_socket, command_timeout, verify_timeout, verify_settle",
                "/etc/certagent/config.toml:5: certificate.c\\rd: invalid certificate name \"c\\rd\": use 1 to 64 letters, digits, '-', '_' or '.' (it names files)",
                "/etc/certagent/config.toml:12: certificate.ok.server: no [server.w\\u{202e}eb] is defined (defined: none)",
                "/etc/certagent/config.toml:17: notify.n\\0: expected a table [notify.n\\0], found integer",
                "/etc/certagent/conf.d/evil\\n/etc/certagent/config.toml:1: forged.toml:1: agent: [agent] may only be set in the main config file, not in a drop-in",
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
    use super::cluster::CLUSTER_KEYS;
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
            CLUSTER_KEYS,
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

#[cfg(test)]
mod message_tests {
    use super::test_util::parse;
    use super::*;

    #[test]
    fn a_misspelt_key_gets_the_closest_known_key_not_the_whole_list() {
        let errors = parse(
            "[certificate.site]\nnames = [\"a.test\"]\nservr = \"web\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\ncolour = \"blue\"\n\n[certificat.x]\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:3: certificate.site.servr: unknown key; did you mean `server`?",
                "/etc/certagent/config.toml:6: certificate.site.colour: unknown key; known keys here: names, issuer, failover_after, server, key_type, cert_file, key_file, chain_file, leaf_file, bundle_file, renew_before, owner, group, key_mode, cert_mode, revoke_first, reissue_on_issuer_change, profile, profile_required, shared, pre_install, post_install, hook_timeout",
                "/etc/certagent/config.toml:8: certificat: unknown key; did you mean `certificate`?",
            ]
        );
    }

    #[test]
    fn a_misspelt_kind_is_one_error_not_a_cascade() {
        let errors = parse(
            "[server.web]\nkind = \"ngnix\"\nverify = [\"127.0.0.1:443\"]\n\n[certificate.site]\nnames = [\"a.test\"]\nserver = \"web\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n\n[issuer.le]\nkind = \"amce\"\ndirectory = \"https://ca.test/dir\"\nwebroot = \"/var/www\"\n\n[notify.ops]\nkind = \"webhok\"\nurl = \"https://hooks.test/x\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:2: server.web.kind: unknown server kind \"ngnix\"; did you mean \"nginx\"?",
                "/etc/certagent/config.toml:12: issuer.le.kind: unknown issuer kind \"amce\"; did you mean \"acme\"?",
                "/etc/certagent/config.toml:17: notify.ops.kind: unknown notify kind \"webhok\"; did you mean \"webhook\"?",
            ]
        );
        // Nothing close: the kinds there are.
        let errors =
            parse("[server.web]\nkind = \"caddy\"\nverify = [\"127.0.0.1:443\"]\n").unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:2: server.web.kind: unknown server kind \"caddy\"; expected \"nginx\", \"apache\", \"haproxy\", \"command\" or \"none\""
            ]
        );
    }

    #[test]
    fn a_known_key_of_another_kind_is_not_called_unknown() {
        let errors =
            parse("[issuer.ca]\nkind = \"internal\"\ndirectory = \"https://ca.test/dir\"\n")
                .unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:3: issuer.ca.directory: not a setting of kind = \"internal\""
            ]
        );
    }

    #[test]
    fn errors_point_at_the_key_and_come_in_file_and_line_order() {
        let main = (
            PathBuf::from("/c/config.toml"),
            "[server.web]\nkind = \"nginx\"\nverify = [{ address = \"127.0.0.1:443\", sni = \"b.test\" }]\n\n[certificate.a]\nnames = [\"a.test\"]\nkey_type = \"rsa-1024\"\n\n\nserver = \"wbe\"\ncert_file = \"/a.pem\"\nkey_file = \"/a.key\"\nkey_mode = \"0666\"\n"
                .to_string(),
        );
        let dropin = (
            PathBuf::from("/c/conf.d/b.toml"),
            "[certificate.b]\nnames = [\"b.test\"]\nserver = \"web\"\n\ncert_file = \"/a.pem\"\nkey_file = \"/b.key\"\n".to_string(),
        );
        let mut errors = Vec::new();
        Config::parse_sources(&[main, dropin], &mut errors);
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "/c/config.toml:7: certificate.a.key_type: unknown key type \"rsa-1024\"; expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096",
                "/c/config.toml:10: certificate.a.server: no [server.wbe] is defined; did you mean \"web\"?",
                "/c/config.toml:13: certificate.a.key_mode: 0666 lets every user read the private key; use 0600 or 0640 with a group",
                "/c/conf.d/b.toml:5: certificate.b.cert_file: path \"/a.pem\" is also written by certificate \"a\"",
            ]
        );
    }

    #[test]
    fn drop_ins_without_a_main_file_are_the_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
        let dropin = tmp.path().join("conf.d/found.toml");
        let ssl = tmp.path().display();
        std::fs::write(
            &dropin,
            format!(
                "[certificate.site]\nnames = [\"a.test\"]\ncert_file = \"{ssl}/a.pem\"\nkey_file = \"{ssl}/a.key\"\n"
            ),
        )
        .unwrap();
        let (files, config) = Config::load_files(&main, None);
        assert_eq!(files, [dropin]);
        assert_eq!(config.unwrap().certificates.len(), 1);
    }

    #[test]
    fn no_configuration_at_all_says_where_it_looked_and_how_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        let errors = Config::load(&main).unwrap_err().0;
        let dir = tmp.path().display();
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [format!(
                "{dir}/config.toml:0: no configuration: \"{dir}/config.toml\" does not exist and \"{dir}/conf.d\" has no drop-ins (*.toml)\n    hint: to take over the certificates nginx and Apache serve: certagent discover > {dir}/conf.d/discovered.toml; to start from the example: cp /etc/certagent/config.example.toml {dir}/config.toml"
            )]
        );
        // An empty conf.d/ is no configuration either.
        std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
        let errors = Config::load(&main).unwrap_err().0;
        assert!(
            errors[0].message.starts_with("no configuration"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_output_file_in_a_missing_directory_is_an_error_unless_it_is_certagents_own() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        let t = tmp.path().display();
        std::fs::write(tmp.path().join("plain"), "").unwrap();
        std::fs::write(
            &main,
            format!(
                "[agent]\nstate_dir = \"{t}/state\"\n\n[certificate.site]\nnames = [\"a.test\"]\ncert_file = \"{t}/ssl/a.pem\"\nkey_file = \"{t}/state/new/a.key\"\nchain_file = \"{t}/plain/chain.pem\"\n"
            ),
        )
        .unwrap();
        let errors = Config::load(&main).unwrap_err().0;
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                format!(
                    "{t}/config.toml:6: certificate.site.cert_file: directory \"{t}/ssl\" does not exist\n    hint: create it (mkdir -p {t}/ssl) or correct the path; certagent creates only its own state directory"
                ),
                format!(
                    "{t}/config.toml:8: certificate.site.chain_file: directory \"{t}/plain\" is not a directory\n    hint: correct the path"
                ),
            ]
        );
        std::fs::create_dir(tmp.path().join("ssl")).unwrap();
        std::fs::remove_file(tmp.path().join("plain")).unwrap();
        std::fs::create_dir(tmp.path().join("plain")).unwrap();
        Config::load(&main).unwrap();
    }
}
