//! Configuration: `config.toml` plus `conf.d/*.toml` drop-ins, read in stages — spanned TOML
//! tree, then typed and validated `Config`. Every problem in every file is reported at once,
//! each with file, line and key; unknown keys are errors. Nothing here touches the network or
//! writes anything.

mod in_service;
mod walk;

pub use walk::shown;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::de::DeTable;

use crate::core::{DomainName, KeySpec, Span};
use walk::{Ctx, Section};

pub const DEFAULT_CONFIG: &str = "/etc/certagent/config.toml";
/// Name of the issuer that always exists: the embedded local CA.
pub const BUILTIN_ISSUER: &str = "internal";
/// Config files larger than this are refused (a config is a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Upper bounds of durations, so that no configured value overflows a deadline: waits and
/// timeouts, reminders, and certificate lifetimes and renewal windows.
const MAX_TIMEOUT: Span = Span::days(1);
const MAX_REMIND: Span = Span::days(365);
const MAX_LIFETIME: Span = Span::days(3_650);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
    /// What to do about it, when that is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A drop-in's file name is the operator's, like a key: shown escaped.
        let file = self.file.display().to_string();
        let file = shown(&file);
        if self.key.is_empty() {
            write!(f, "{file}:{}: {}", self.line, self.message)?;
        } else {
            write!(f, "{file}:{}: {}: {}", self.line, self.key, self.message)?;
        }
        match &self.hint {
            Some(hint) => write!(f, "\n    hint: {hint}"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The files that were read, main file first.
    pub files: Vec<PathBuf>,
    pub agent: Agent,
    pub issuers: BTreeMap<String, Issuer>,
    pub servers: BTreeMap<String, Server>,
    pub certificates: BTreeMap<String, Certificate>,
    pub notify: BTreeMap<String, Notify>,
    /// A hash of the files read (names and contents): equal fingerprints, same configuration.
    pub fingerprint: u64,
}

/// Where to tell about events (`[notify.NAME]`).
#[derive(Clone, Debug)]
pub struct Notify {
    pub name: String,
    pub target: NotifyTarget,
    /// Subscribed events; all when empty.
    pub events: Vec<String>,
    pub timeout: Span,
    pub retries: u32,
}

#[derive(Clone, Debug)]
pub enum NotifyTarget {
    /// JSON POST.
    Webhook(String),
    /// argv, no shell; the event in CERTAGENT_* environment variables.
    Command(Vec<String>),
}

/// Events a notifier can subscribe to.
pub const EVENTS: [&str; 7] = [
    "pending-approval",
    "reminder",
    "installed",
    "failed",
    "rolled-back",
    "revoked",
    "compromised",
];

#[derive(Clone, Debug)]
pub struct Agent {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub max_parallel: usize,
    pub compromised_dir: PathBuf,
    pub key_blocklist: Vec<PathBuf>,
    /// How long a command waits for another certagent process to release the lock.
    pub lock_timeout: Span,
    /// Generations kept per certificate besides the current one.
    pub keep_generations: usize,
    /// Prometheus textfile the daemon rewrites on every state change (`None`: no metrics).
    pub metrics_file: Option<PathBuf>,
    /// The line of each directory setting in the main file (`state_dir`, `runtime_dir`,
    /// `compromised_dir`, `metrics_file`), for errors found when the directories are
    /// looked at after parsing; a default has none.
    pub lines: BTreeMap<&'static str, usize>,
    /// How many re-issues the daemon starts by itself for one certificate in any hour; more
    /// wait (an operator's `reissue --now` does not).
    pub max_reissues_per_hour: u32,
}

#[derive(Clone, Debug)]
pub struct Issuer {
    pub name: String,
    pub kind: IssuerKind,
}

#[derive(Clone, Debug)]
pub enum IssuerKind {
    Acme(AcmeIssuer),
    Internal(InternalIssuer),
    Manual(ManualIssuer),
    Dnsimple(DnsimpleIssuer),
}

impl IssuerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssuerKind::Acme(_) => "acme",
            IssuerKind::Internal(_) => "internal",
            IssuerKind::Manual(_) => "manual",
            IssuerKind::Dnsimple(_) => "dnsimple",
        }
    }
}

/// A CA reached by a human: the CSR goes out, the certificate comes back by `import` or the
/// inbox, possibly days later (approval e-mail).
#[derive(Clone, Debug)]
pub struct ManualIssuer {
    /// How often to remind while approval is pending.
    pub remind_every: Span,
}

/// Access to DNSimple's API v2.
#[derive(Clone, Debug)]
pub struct DnsimpleApi {
    /// An absolute path, or the name of a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`).
    pub token_file: String,
    /// Numeric account id; looked up with `/whoami` when absent.
    pub account_id: Option<u64>,
    pub base_url: String,
}

/// Let's Encrypt certificates bought and issued through DNSimple. DNSimple generates the key
/// (its API takes no CSR) and keeps a copy.
#[derive(Clone, Debug)]
pub struct DnsimpleIssuer {
    pub api: DnsimpleApi,
    /// The DNSimple domain the certificates belong to (every name must be in it).
    pub domain: String,
    /// How long one job waits for DNSimple to issue before it reports "pending" and checks
    /// again later.
    pub timeout: Span,
}

#[derive(Clone, Debug)]
pub struct AcmeIssuer {
    pub directory: String,
    pub contact: Vec<String>,
    pub ca_bundle: Option<PathBuf>,
    pub challenge: Challenge,
    pub eab: Option<Eab>,
    /// How long one issuance may take before it is retried later.
    pub timeout: Span,
}

/// How ACME challenges are answered.
#[derive(Clone, Debug)]
pub enum Challenge {
    Http01(Http01),
    /// TXT records through DNSimple's zone API; waits until DNSimple reports them distributed.
    Dns01 {
        api: DnsimpleApi,
        zone: Option<String>,
        propagation_timeout: Span,
    },
}

/// How http-01 challenges are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Http01 {
    /// Token files are written to `WEBROOT/.well-known/acme-challenge/`.
    Webroot(PathBuf),
    /// certagent answers on this address itself.
    Listen(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct Eab {
    pub kid: String,
    /// File holding the base64url MAC key. Under the unit, a file in
    /// `/etc/certagent/credentials/` is read from its systemd credential.
    pub hmac_key_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct InternalIssuer {
    pub validity: Span,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub kind: ServerKind,
    /// Apache only: which distribution's commands and paths are the defaults. `None` means
    /// detect from the installed binaries when needed.
    pub layout: Option<ApacheLayout>,
    pub verify: Vec<Endpoint>,
    pub test_command: Option<Vec<String>>,
    pub reload_command: Option<Vec<String>>,
    pub pid_file: Option<PathBuf>,
    /// Limit for each test/reload command.
    pub command_timeout: Span,
    /// How long to wait for the new certificate to be served after a reload.
    pub verify_timeout: Span,
    /// How long the new certificate must be served without a break when certagent cannot see
    /// the old workers retire (`kind = "command"`, or their /proc entries unreadable).
    pub verify_settle: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Nginx,
    Apache,
    Command,
    None,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Nginx => "nginx",
            ServerKind::Apache => "apache",
            ServerKind::Command => "command",
            ServerKind::None => "none",
        }
    }
}

/// Where Apache lives: Debian/Ubuntu (`apache2`, `apache2ctl`, unit `apache2`) or
/// RHEL/Fedora (`httpd`, `apachectl`, unit `httpd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApacheLayout {
    Debian,
    Rhel,
}

/// A TLS endpoint probed after a reload. Without `sni` it is probed for every certificate
/// of the server, with the certificate's first name; with `sni` only for the certificates
/// that carry that name, with that name (so one server can list the endpoints of many
/// virtual hosts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub sni: Option<DomainName>,
}

impl Endpoint {
    /// The SNI to probe this endpoint with while installing a certificate for `names`, or
    /// `None` when the endpoint belongs to another certificate.
    pub fn sni_for(&self, names: &[DomainName]) -> Option<String> {
        match &self.sni {
            None => names.first().map(|n| probe_sni(n.as_str())),
            Some(sni) => names
                .iter()
                .any(|n| name_covers(n.as_str(), sni.as_str()))
                .then(|| sni.to_string()),
        }
    }
}

/// The SNI to probe with for a name: the name itself, or for a wildcard a concrete label.
pub fn probe_sni(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(rest) => format!("certagent-probe.{rest}"),
        None => name.to_string(),
    }
}

/// Whether a certificate name (possibly `*.example.com`) is valid for the host `host`.
pub fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => name == host,
    }
}

#[derive(Clone, Debug)]
pub struct Certificate {
    pub name: String,
    pub names: Vec<DomainName>,
    pub issuer: String,
    /// `None`: install only, nothing to reload or probe.
    pub server: Option<String>,
    pub key_type: KeySpec,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub chain_file: Option<PathBuf>,
    pub leaf_file: Option<PathBuf>,
    pub renew_before: Option<Span>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub key_mode: u32,
    pub cert_mode: u32,
    /// For a compromised key: revoke the old certificate before replacing it.
    pub revoke_first: bool,
    /// Run before the flip (the new files exist, nothing the server reads has changed); a
    /// non-zero exit vetoes the install.
    pub pre_install: Option<Vec<String>>,
    /// Run after the new certificate is installed (and verified, when there is a server);
    /// a failure is reported as one.
    pub post_install: Option<Vec<String>>,
    /// Limit for each hook.
    pub hook_timeout: Span,
}

impl Config {
    /// Read `path` and the drop-ins in `conf.d/` beside it (file-name order).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with(path, None)
    }

    /// Like `load`, with `candidate = (target, source)`: the content of `source` stands in for
    /// `target`, the main file or a drop-in (which need not exist yet). This is how config
    /// management checks a file before putting it in place; errors name `target`.
    pub fn load_with(
        path: &Path,
        candidate: Option<(&Path, &Path)>,
    ) -> Result<Config, ConfigErrors> {
        let mut files = vec![path.to_path_buf()];
        let mut errors = Vec::new();
        let dropin_dir = path.parent().unwrap_or(Path::new("/")).join("conf.d");
        match std::fs::read_dir(&dropin_dir) {
            Ok(entries) => {
                let mut dropins: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                dropins.sort();
                files.extend(dropins);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(ConfigError {
                hint: None,
                file: dropin_dir.clone(),
                line: 0,
                key: String::new(),
                message: format!("failed to read drop-in directory: {e}"),
            }),
        }
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
        let mut texts = Vec::new();
        for file in &files {
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

    pub fn certificate(&self, name: &str) -> Option<&Certificate> {
        self.certificates.get(name)
    }
}

/// The directories certagent keeps root's files in (and takes compromise flags from) must be
/// its own and root's alone, and the metrics file must not go into a shared system directory
/// (see `store::trust`). They are looked at on this host, so `load` does this, not
/// `parse_sources`.
fn check_directories(agent: &Agent, main: &Path, errors: &mut Vec<ConfigError>) {
    use crate::store::trust;
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
    let f = crate::store::fsutil::open_regular(file)
        .map_err(|e| format!("failed to read config file: {e}"))?;
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

/// Where a named table was first defined, to report duplicates across drop-ins.
#[derive(Clone, Debug)]
struct Origin {
    file: PathBuf,
    line: usize,
}

#[derive(Default)]
struct Builder {
    agent: Option<Agent>,
    issuers: BTreeMap<String, (Issuer, Origin)>,
    servers: BTreeMap<String, (Server, Origin)>,
    certificates: BTreeMap<String, (Certificate, Origin)>,
    notify: BTreeMap<String, (Notify, Origin)>,
    /// (certificate, key, span origin) for cross-checks after all files are read.
    refs: Vec<(String, String, Origin, &'static str)>,
    /// Certificates whose issuer is the built-in default, not written in the file.
    implicit_issuer: Vec<String>,
    /// Where each certificate's `renew_before` is set, to check it against its issuer's
    /// lifetime once every issuer is known.
    renew_before_at: BTreeMap<String, Origin>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8)
        .map_err(|_| format!("invalid file mode {s:?}: expected octal like \"0640\""))?;
    if m > 0o777 {
        return Err(format!(
            "invalid file mode {s:?}: only permission bits (0000 to 0777) are allowed"
        ));
    }
    Ok(m)
}

const AGENT_KEYS: &str = "state_dir, runtime_dir, max_parallel, compromised_dir, key_blocklist, lock_timeout, keep_generations, metrics_file, max_reissues_per_hour";
const ISSUER_KEYS: &str = "kind, directory, contact, ca_bundle, challenge, webroot, listen, eab_kid, eab_hmac_key_file, timeout, validity, dns_provider, dns_zone, propagation_timeout, remind_every, token_file, account_id, api_url, domain";
const SERVER_KEYS: &str = "kind, layout, verify, test_command, reload_command, pid_file, command_timeout, verify_timeout, verify_settle";
const ENDPOINT_KEYS: &str = "address, sni";
const CERT_KEYS: &str = "names, issuer, server, key_type, cert_file, key_file, chain_file, leaf_file, renew_before, owner, group, key_mode, cert_mode, revoke_first, pre_install, post_install, hook_timeout";

impl Builder {
    fn read_file(&mut self, cx: &mut Ctx, root: &mut Section, main: bool) {
        if let Some(mut s) = root.table(cx, "agent") {
            if !main {
                cx.error(
                    &s.span,
                    "agent",
                    "[agent] may only be set in the main config file, not in a drop-in",
                );
            }
            self.agent = Some(read_agent(cx, &mut s));
            s.finish(cx, AGENT_KEYS);
        }
        for (name, mut s) in root.tables(cx, "issuer") {
            let origin = Origin {
                file: cx.file.to_path_buf(),
                line: cx.line(&s.span),
            };
            if let Some(issuer) = read_issuer(cx, &mut s, &name) {
                self.insert_unique(cx, &s, "issuer", name, issuer, origin, |b| &mut b.issuers);
            }
            s.finish(cx, ISSUER_KEYS);
        }
        for (name, mut s) in root.tables(cx, "server") {
            let origin = Origin {
                file: cx.file.to_path_buf(),
                line: cx.line(&s.span),
            };
            if let Some(server) = read_server(cx, &mut s, &name) {
                self.insert_unique(cx, &s, "server", name, server, origin, |b| &mut b.servers);
            }
            s.finish(cx, SERVER_KEYS);
        }
        for (name, mut s) in root.tables(cx, "notify") {
            let origin = Origin {
                file: cx.file.to_path_buf(),
                line: cx.line(&s.span),
            };
            if let Some(n) = read_notify(cx, &mut s, &name) {
                self.insert_unique(cx, &s, "notify", name, n, origin, |b| &mut b.notify);
            }
            s.finish(cx, NOTIFY_KEYS);
        }
        for (name, mut s) in root.tables(cx, "certificate") {
            let origin = Origin {
                file: cx.file.to_path_buf(),
                line: cx.line(&s.span),
            };
            if !s_has(&mut s, "issuer") {
                self.implicit_issuer.push(name.clone());
            }
            if let Some(cert) = read_certificate(cx, &mut s, &name) {
                if let Some(span) = s.value_span("renew_before") {
                    let at = Origin {
                        file: cx.file.to_path_buf(),
                        line: cx.line(&span),
                    };
                    self.renew_before_at.insert(name.clone(), at);
                }
                self.refs
                    .push((name.clone(), cert.issuer.clone(), origin.clone(), "issuer"));
                if let Some(server) = &cert.server {
                    self.refs
                        .push((name.clone(), server.clone(), origin.clone(), "server"));
                }
                self.insert_unique(cx, &s, "certificate", name, cert, origin, |b| {
                    &mut b.certificates
                });
            }
            s.finish(cx, CERT_KEYS);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_unique<T>(
        &mut self,
        cx: &mut Ctx,
        s: &Section,
        what: &str,
        name: String,
        value: T,
        origin: Origin,
        map: impl Fn(&mut Self) -> &mut BTreeMap<String, (T, Origin)>,
    ) {
        if let Some((_, first)) = map(self).get(&name) {
            let msg = format!(
                "{what} {name:?} is already defined at {}:{}",
                first.file.display(),
                first.line
            );
            cx.error(&s.span, &s.key, msg);
            return;
        }
        map(self).insert(name, (value, origin));
    }

    fn finish(mut self, main: &Path, errors: &mut Vec<ConfigError>) -> Config {
        self.issuers
            .entry(BUILTIN_ISSUER.to_string())
            .or_insert_with(|| {
                (
                    Issuer {
                        name: BUILTIN_ISSUER.into(),
                        kind: IssuerKind::Internal(InternalIssuer {
                            validity: Span::days(90),
                        }),
                    },
                    Origin {
                        file: main.to_path_buf(),
                        line: 0,
                    },
                )
            });
        for (cert, target, origin, what) in &self.refs {
            let known: Vec<&String> = match *what {
                "issuer" => self.issuers.keys().collect(),
                _ => self.servers.keys().collect(),
            };
            if !known.contains(&target) {
                let list = known
                    .iter()
                    .map(|k| shown(k))
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.push(ConfigError {
                    hint: None,
                    file: origin.file.clone(),
                    line: origin.line,
                    key: format!("certificate.{}.{what}", shown(cert)),
                    message: format!(
                        "no [{what}.{}] is defined (defined: {})",
                        shown(target),
                        if list.is_empty() { "none" } else { &list }
                    ),
                });
            }
        }
        // A renewal window as long as the issuer's certificates live makes every new
        // certificate due the moment it is issued: a re-issue loop.
        for (name, (cert, _)) in &self.certificates {
            let (Some(before), Some(at)) = (cert.renew_before, self.renew_before_at.get(name))
            else {
                continue;
            };
            let Some((issuer, _)) = self.issuers.get(&cert.issuer) else {
                continue;
            };
            if let IssuerKind::Internal(internal) = &issuer.kind
                && before >= internal.validity
            {
                errors.push(ConfigError {
                    file: at.file.clone(),
                    line: at.line,
                    key: format!("certificate.{name}.renew_before"),
                    message: format!(
                        "\"{before}\" is not shorter than the lifetime of the certificates issuer {:?} signs (validity = \"{}\"): each would be due for renewal as soon as it is issued",
                        issuer.name, internal.validity,
                    ),
                    hint: Some(format!(
                        "make renew_before shorter than the validity, e.g. a third of it (\"{}\"), or leave it out",
                        Span(internal.validity.0 / 3),
                    )),
                });
            }
        }
        // Every certificate on a server that is probed needs an endpoint to probe it at.
        for (name, (cert, origin)) in &self.certificates {
            let Some((server, _)) = cert.server.as_ref().and_then(|s| self.servers.get(s)) else {
                continue;
            };
            if server.kind == ServerKind::None || server.verify.is_empty() {
                continue;
            }
            if server
                .verify
                .iter()
                .all(|e| e.sni_for(&cert.names).is_none())
            {
                let names: Vec<&str> = cert.names.iter().map(|n| n.as_str()).collect();
                errors.push(ConfigError {
                    hint: None,
                    file: origin.file.clone(),
                    line: origin.line,
                    key: format!("certificate.{}.server", shown(name)),
                    message: format!(
                        "none of server {:?}'s verify endpoints is for {names:?}: add one without sni, or with sni = one of these names",
                        server.name
                    ),
                });
            }
        }
        // The same file written by two certificates would make them overwrite each other.
        let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
        for (name, (cert, origin)) in &self.certificates {
            let outputs = [
                Some(&cert.cert_file),
                Some(&cert.key_file),
                cert.chain_file.as_ref(),
                cert.leaf_file.as_ref(),
            ];
            for path in outputs.into_iter().flatten() {
                if let Some(other) = seen.insert(path, name) {
                    errors.push(ConfigError {
                        hint: None,
                        file: origin.file.clone(),
                        line: origin.line,
                        key: format!("certificate.{}", shown(name)),
                        message: format!(
                            "path {:?} is also written by certificate {other:?}",
                            path.display().to_string()
                        ),
                    });
                }
            }
        }
        let agent = self.agent.unwrap_or_else(default_agent);
        // The local CA by default only where no other CA's certificate is in service.
        for name in &self.implicit_issuer {
            let Some((cert, origin)) = self.certificates.get(name) else {
                continue;
            };
            if let Some(by) = in_service::foreign_issuer(&cert.cert_file, &agent.state_dir) {
                let (message, hint) = in_service::message(&cert.cert_file, &by);
                errors.push(ConfigError {
                    file: origin.file.clone(),
                    line: origin.line,
                    key: format!("certificate.{name}.issuer"),
                    message,
                    hint: Some(hint),
                });
            }
        }
        Config {
            files: Vec::new(),
            agent,
            issuers: self.issuers.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            servers: self.servers.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            certificates: self
                .certificates
                .into_iter()
                .map(|(k, (v, _))| (k, v))
                .collect(),
            notify: self.notify.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            fingerprint: 0,
        }
    }
}

fn default_agent() -> Agent {
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

fn read_agent(cx: &mut Ctx, s: &mut Section) -> Agent {
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
    if let Some(list) = s.strings(cx, "key_blocklist") {
        for (p, span) in list {
            // A list that is not there protects nothing: a mistyped path must not pass.
            match walk::check_path(&p) {
                Ok(p) if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) => {
                    a.key_blocklist.push(p)
                }
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

fn valid_name(cx: &mut Ctx, s: &Section, what: &str, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if !ok {
        cx.error(
            &s.span,
            &s.key,
            format!("invalid {what} name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (it names files)"),
        );
    }
    ok
}

fn read_issuer(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Issuer> {
    let name_ok = valid_name(cx, s, "issuer", name);
    let Some((kind, kind_span)) = s.string(cx, "kind") else {
        cx.error(
            &s.span,
            &s.full_key("kind"),
            "missing; one of \"acme\", \"internal\"",
        );
        return None;
    };
    let kind = match kind.as_str() {
        "internal" => {
            let validity = s
                .span(cx, "validity", MAX_LIFETIME)
                .unwrap_or(Span::days(90));
            if validity.0 < 3_600 {
                cx.error(&s.span, &s.full_key("validity"), "must be at least 1h");
            }
            IssuerKind::Internal(InternalIssuer { validity })
        }
        "acme" => {
            let directory = match s.string(cx, "directory") {
                Some((d, span)) if d.starts_with("https://") => {
                    if d.len() < 2048 {
                        Some(d)
                    } else {
                        cx.error(&span, &s.full_key("directory"), "URL is too long");
                        None
                    }
                }
                Some((d, span)) => {
                    cx.error(
                        &span,
                        &s.full_key("directory"),
                        format!("{d:?} must be an https:// URL"),
                    );
                    None
                }
                None => {
                    cx.error(&s.span, &s.full_key("directory"), "missing; the ACME directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"");
                    None
                }
            };
            let contact = s.strings(cx, "contact").unwrap_or_default();
            for (c, span) in &contact {
                if !c.starts_with("mailto:") {
                    cx.error(
                        span,
                        &s.full_key("contact"),
                        format!("{c:?} must be a mailto: URL"),
                    );
                }
            }
            let ca_bundle = s.path(cx, "ca_bundle");
            let challenge = s.string(cx, "challenge");
            let challenge = match challenge.as_ref().map(|(c, span)| (c.as_str(), span)) {
                None | Some(("http-01", _)) => read_http01(cx, s).map(Challenge::Http01),
                Some(("dns-01", span)) => match s.string(cx, "dns_provider") {
                    Some((p, _)) if p == "dnsimple" => {
                        let api = read_dnsimple_api(cx, s);
                        let zone = s
                            .string(cx, "dns_zone")
                            .map(|(z, _)| z.trim_end_matches('.').to_ascii_lowercase());
                        let propagation_timeout = s
                            .span(cx, "propagation_timeout", MAX_TIMEOUT)
                            .unwrap_or(Span::secs(600));
                        api.map(|api| Challenge::Dns01 {
                            api,
                            zone,
                            propagation_timeout,
                        })
                    }
                    Some((p, pspan)) => {
                        cx.error(
                            &pspan,
                            &s.full_key("dns_provider"),
                            format!("unknown DNS provider {p:?}; expected \"dnsimple\""),
                        );
                        None
                    }
                    None => {
                        cx.error(
                            span,
                            &s.full_key("dns_provider"),
                            "dns-01 needs dns_provider = \"dnsimple\"",
                        );
                        None
                    }
                },
                Some((c, span)) => {
                    let msg = if c == "tls-alpn-01" {
                        format!(
                            "{c:?} is not supported by this version of certagent; use \"http-01\" or \"dns-01\""
                        )
                    } else {
                        format!("unknown challenge {c:?}; expected \"http-01\" or \"dns-01\"")
                    };
                    cx.error(span, &s.full_key("challenge"), msg);
                    None
                }
            };
            let eab_kid = s.string(cx, "eab_kid").map(|(k, _)| k);
            let eab_file = s.path(cx, "eab_hmac_key_file");
            let eab = match (eab_kid, eab_file) {
                (Some(kid), Some(hmac_key_file)) => Some(Eab { kid, hmac_key_file }),
                (None, None) => None,
                _ => {
                    cx.error(
                        &s.span,
                        &s.key,
                        "external account binding needs both eab_kid and eab_hmac_key_file",
                    );
                    None
                }
            };
            let timeout = s
                .span(cx, "timeout", MAX_TIMEOUT)
                .unwrap_or(Span::secs(600));
            IssuerKind::Acme(AcmeIssuer {
                directory: directory?,
                contact: contact.into_iter().map(|(c, _)| c).collect(),
                ca_bundle,
                challenge: challenge?,
                eab,
                timeout,
            })
        }
        "manual" => {
            let remind_every = s
                .span(cx, "remind_every", MAX_REMIND)
                .unwrap_or(Span::days(1));
            if remind_every.0 < 60 {
                cx.error(&s.span, &s.full_key("remind_every"), "must be at least 1m");
            }
            IssuerKind::Manual(ManualIssuer { remind_every })
        }
        "dnsimple" => {
            let api = read_dnsimple_api(cx, s);
            let domain = match s.parsed::<DomainName>(cx, "domain") {
                Some(d) if !d.as_str().starts_with("*.") => Some(d.to_string()),
                Some(_) => {
                    cx.error(
                        &s.span,
                        &s.full_key("domain"),
                        "the DNSimple domain cannot be a wildcard",
                    );
                    None
                }
                None => {
                    cx.error(&s.span, &s.full_key("domain"), "missing; the DNSimple domain the certificates belong to, e.g. \"example.com\"");
                    None
                }
            };
            let timeout = s
                .span(cx, "timeout", MAX_TIMEOUT)
                .unwrap_or(Span::secs(300));
            IssuerKind::Dnsimple(DnsimpleIssuer {
                api: api?,
                domain: domain?,
                timeout,
            })
        }
        other => {
            cx.error(
                &kind_span,
                &s.full_key("kind"),
                format!("unknown issuer kind {other:?}; expected \"acme\", \"internal\", \"manual\" or \"dnsimple\""),
            );
            return None;
        }
    };
    name_ok.then(|| Issuer {
        name: name.to_string(),
        kind,
    })
}

/// `webroot` or `listen` for http-01.
fn read_http01(cx: &mut Ctx, s: &mut Section) -> Option<Http01> {
    let webroot = s.path(cx, "webroot");
    let listen = s
        .string(cx, "listen")
        .and_then(|(l, span)| match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.error(
                    &span,
                    &s.full_key("listen"),
                    format!("{l:?} is not an address like \"127.0.0.1:80\""),
                );
                None
            }
        });
    match (webroot, listen) {
        (Some(w), None) => Some(Http01::Webroot(w)),
        (None, Some(l)) => Some(Http01::Listen(l)),
        (Some(_), Some(_)) => {
            cx.error(
                &s.span,
                &s.key,
                "set either webroot or listen for http-01, not both",
            );
            None
        }
        (None, None) => {
            cx.error(
                &s.span,
                &s.key,
                "http-01 needs webroot = \"/var/www/acme\" or listen = \"127.0.0.1:80\"",
            );
            None
        }
    }
}

/// `token_file`, `account_id`, `api_url` for DNSimple.
fn read_dnsimple_api(cx: &mut Ctx, s: &mut Section) -> Option<DnsimpleApi> {
    let token_file = match s.string(cx, "token_file") {
        Some((t, span)) if t.contains('/') => match walk::check_path(&t) {
            Ok(_) => Some(t),
            Err(e) => {
                cx.error(&span, &s.full_key("token_file"), e);
                None
            }
        },
        Some((t, span)) if t.is_empty() || t.starts_with('.') => {
            cx.error(
                &span,
                &s.full_key("token_file"),
                "expected an absolute path or a systemd credential name",
            );
            None
        }
        Some((t, _)) => Some(t),
        None => {
            cx.error(
                &s.span,
                &s.full_key("token_file"),
                "missing; a file (or systemd credential) holding the DNSimple API token",
            );
            None
        }
    };
    let account_id = s.integer(cx, "account_id", 1..i64::MAX).map(|n| n as u64);
    let base_url = match s.string(cx, "api_url") {
        Some((u, span)) => match check_api_url(&u) {
            Ok(()) => Some(u.trim_end_matches('/').to_string()),
            Err(why) => {
                cx.error(&span, &s.full_key("api_url"), why);
                None
            }
        },
        None => Some("https://api.dnsimple.com/v2".to_string()),
    };
    Some(DnsimpleApi {
        token_file: token_file?,
        account_id,
        base_url: base_url?,
    })
}

/// An API URL must be https://, except plain http:// to a loopback host (a local fake or
/// proxy in tests). The host is compared after parsing, never by prefix:
/// `http://localhost@attacker.example/` and `http://localhost.attacker.example/` are remote.
fn check_api_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    // `host_str` is the parsed host: lowercased, IPv4 normalised, IPv6 in brackets.
    let host = url.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "{text:?} must be an https:// URL (plain http:// only to localhost, 127.0.0.0/8 or [::1])"
        )),
    }
}

const NOTIFY_KEYS: &str = "kind, url, command, events, timeout, retries";

fn read_notify(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Notify> {
    let name_ok = valid_name(cx, s, "notify", name);
    let target = match s.string(cx, "kind") {
        Some((k, _)) if k == "webhook" => match s.string(cx, "url") {
            Some((u, span)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                cx.error(
                    &span,
                    &s.full_key("url"),
                    format!("{u:?} must be an http(s):// URL"),
                );
                None
            }
            Some((u, _)) => Some(NotifyTarget::Webhook(u)),
            None => {
                cx.error(
                    &s.span,
                    &s.full_key("url"),
                    "missing; where to POST the event",
                );
                None
            }
        },
        Some((k, _)) if k == "command" => match s.command(cx, "command") {
            Some(argv) => Some(NotifyTarget::Command(argv)),
            None => {
                cx.error(
                    &s.span,
                    &s.full_key("command"),
                    "missing; the argv to run for each event",
                );
                None
            }
        },
        Some((k, span)) => {
            cx.error(
                &span,
                &s.full_key("kind"),
                format!("unknown notify kind {k:?}; expected \"webhook\" or \"command\""),
            );
            None
        }
        None => {
            cx.error(
                &s.span,
                &s.full_key("kind"),
                "missing; \"webhook\" or \"command\"",
            );
            None
        }
    };
    let mut events = Vec::new();
    for (e, span) in s.strings(cx, "events").unwrap_or_default() {
        if EVENTS.contains(&e.as_str()) {
            events.push(e);
        } else {
            cx.error(
                &span,
                &s.full_key("events"),
                format!("unknown event {e:?}; known: {}", EVENTS.join(", ")),
            );
        }
    }
    let timeout = s.span(cx, "timeout", MAX_TIMEOUT).unwrap_or(Span::secs(10));
    let retries = s.integer(cx, "retries", 0..11).unwrap_or(3) as u32;
    let target = target?;
    name_ok.then(|| Notify {
        name: name.to_string(),
        target,
        events,
        timeout,
        retries,
    })
}

fn read_server(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Server> {
    let name_ok = valid_name(cx, s, "server", name);
    const KINDS: &str = "\"nginx\", \"apache\", \"command\" or \"none\"";
    let kind = match s.string(cx, "kind") {
        Some((k, span)) => match k.as_str() {
            "nginx" => ServerKind::Nginx,
            "apache" => ServerKind::Apache,
            "command" => ServerKind::Command,
            "none" => ServerKind::None,
            other => {
                cx.error(
                    &span,
                    &s.full_key("kind"),
                    format!("unknown server kind {other:?}; expected {KINDS}"),
                );
                return None;
            }
        },
        None => {
            cx.error(
                &s.span,
                &s.full_key("kind"),
                format!("missing; one of {KINDS}"),
            );
            return None;
        }
    };
    let layout = match s.string(cx, "layout") {
        None => None,
        Some((l, span)) => {
            let layout = match l.as_str() {
                "debian" => Some(ApacheLayout::Debian),
                "rhel" => Some(ApacheLayout::Rhel),
                other => {
                    cx.error(
                        &span,
                        &s.full_key("layout"),
                        format!("unknown layout {other:?}; expected \"debian\" (apache2, apache2ctl) or \"rhel\" (httpd, apachectl)"),
                    );
                    None
                }
            };
            if kind != ServerKind::Apache {
                cx.error(
                    &span,
                    &s.full_key("layout"),
                    "only kind = \"apache\" has a layout",
                );
            }
            layout
        }
    };
    let verify = read_endpoints(cx, s);
    let test_command = s.command(cx, "test_command");
    let reload_command = s.command(cx, "reload_command");
    let pid_file = s.path(cx, "pid_file");
    if kind == ServerKind::Command && reload_command.is_none() {
        cx.error(
            &s.span,
            &s.full_key("reload_command"),
            "missing; kind = \"command\" needs the argv that reloads the server",
        );
    }
    if kind != ServerKind::None && verify.is_empty() {
        cx.error(
            &s.span,
            &s.full_key("verify"),
            "missing; list the TLS endpoints to probe after a reload, e.g. [\"127.0.0.1:443\"]",
        );
    }
    let command_timeout = s
        .span(cx, "command_timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(60));
    let verify_timeout = s
        .span(cx, "verify_timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(15));
    let verify_settle = s
        .span(cx, "verify_settle", MAX_TIMEOUT)
        .unwrap_or(Span::secs(1));
    name_ok.then(|| Server {
        name: name.to_string(),
        kind,
        layout,
        verify,
        test_command,
        reload_command,
        pid_file,
        command_timeout,
        verify_timeout,
        verify_settle,
    })
}

/// `verify`: each element is an address string, or a table `{ address = "...", sni = "..." }`.
fn read_endpoints(cx: &mut Ctx, s: &mut Section) -> Vec<Endpoint> {
    let key = s.full_key("verify");
    let Some(v) = s.raw("verify") else {
        return Vec::new();
    };
    let Some(array) = v.get_ref().as_array() else {
        cx.error(
            &v.span(),
            &key,
            format!(
                "expected an array of addresses, found {}",
                v.get_ref().type_str()
            ),
        );
        return Vec::new();
    };
    let address = |cx: &mut Ctx, text: &str, span: &std::ops::Range<usize>| match text
        .parse::<SocketAddr>()
    {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(
                span,
                &key,
                format!("{text:?} is not an address like \"127.0.0.1:443\""),
            );
            None
        }
    };
    let mut out = Vec::new();
    for item in array.iter() {
        if let Some(text) = item.get_ref().as_str() {
            if let Some(a) = address(cx, text, &item.span()) {
                out.push(Endpoint {
                    address: a,
                    sni: None,
                });
            }
            continue;
        }
        let Some(table) = item.get_ref().as_table() else {
            cx.error(
                &item.span(),
                &key,
                format!(
                    "expected an address string or a table {{ address = \"127.0.0.1:443\", sni = \"www.example.com\" }}, found {}",
                    item.get_ref().type_str()
                ),
            );
            continue;
        };
        let mut t = Section::new(key.clone(), table, item.span());
        let addr = match t.string(cx, "address") {
            Some((a, span)) => address(cx, &a, &span),
            None => {
                cx.error(
                    &item.span(),
                    &t.full_key("address"),
                    "missing; the endpoint's address, like \"127.0.0.1:443\"",
                );
                None
            }
        };
        let sni = match t.string(cx, "sni") {
            None => None,
            Some((n, span)) => {
                match n.parse::<DomainName>() {
                    Ok(d) if d.as_str().starts_with("*.") => {
                        cx.error(
                        &span,
                        &t.full_key("sni"),
                        format!("{n:?} is a wildcard; an SNI names one host, e.g. \"www.example.com\""),
                    );
                        None
                    }
                    Ok(d) => Some(d),
                    Err(e) => {
                        cx.error(&span, &t.full_key("sni"), e);
                        None
                    }
                }
            }
        };
        t.finish(cx, ENDPOINT_KEYS);
        if let Some(address) = addr {
            out.push(Endpoint { address, sni });
        }
    }
    out
}

fn read_certificate(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Certificate> {
    let name_ok = valid_name(cx, s, "certificate", name);
    let mut names = Vec::new();
    match s.strings(cx, "names") {
        Some(list) if !list.is_empty() => {
            let mut seen = BTreeSet::new();
            for (n, span) in list {
                match n.parse::<DomainName>() {
                    Ok(d) if seen.insert(d.clone()) => names.push(d),
                    Ok(d) => cx.error(
                        &span,
                        &s.full_key("names"),
                        format!("{:?} is listed twice", d.as_str()),
                    ),
                    Err(e) => cx.error(&span, &s.full_key("names"), e),
                }
            }
            if names.len() > 100 {
                cx.error(
                    &s.span,
                    &s.full_key("names"),
                    "at most 100 names per certificate",
                );
            }
        }
        Some(_) => cx.error(
            &s.span,
            &s.full_key("names"),
            "must list at least one DNS name",
        ),
        None => cx.error(
            &s.span,
            &s.full_key("names"),
            "missing; the DNS names the certificate is for",
        ),
    }
    let issuer = s
        .string(cx, "issuer")
        .map(|(i, _)| i)
        .unwrap_or_else(|| BUILTIN_ISSUER.to_string());
    let server = s.string(cx, "server").map(|(v, _)| v);
    let key_type = s
        .parsed::<KeySpec>(cx, "key_type")
        .unwrap_or(KeySpec::EcdsaP256);
    let cert_file = s.path(cx, "cert_file");
    let key_file = s.path(cx, "key_file");
    if !s_has(s, "cert_file") {
        cx.error(
            &s.span,
            &s.full_key("cert_file"),
            "missing; the certificate chain file the web server reads",
        );
    }
    if !s_has(s, "key_file") {
        cx.error(
            &s.span,
            &s.full_key("key_file"),
            "missing; the private key file the web server reads",
        );
    }
    let chain_file = s.path(cx, "chain_file");
    let leaf_file = s.path(cx, "leaf_file");
    let renew_before = s.span(cx, "renew_before", MAX_LIFETIME);
    let owner = s.string(cx, "owner").map(|(v, _)| v);
    let group = s.string(cx, "group").map(|(v, _)| v);
    let mut mode = |cx: &mut Ctx, key: &str, default: u32| match s.string(cx, key) {
        Some((m, span)) => parse_mode(&m).unwrap_or_else(|e| {
            cx.error(&span, &s.full_key(key), e);
            default
        }),
        None => default,
    };
    let key_mode = mode(cx, "key_mode", 0o600);
    let cert_mode = mode(cx, "cert_mode", 0o644);
    let revoke_first = s.boolean(cx, "revoke_first").unwrap_or(false);
    let pre_install = s.command(cx, "pre_install");
    let post_install = s.command(cx, "post_install");
    let hook_timeout = s
        .span(cx, "hook_timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(60));
    if key_mode & 0o007 != 0 {
        cx.error(
            &s.span,
            &s.full_key("key_mode"),
            format!(
                "{key_mode:04o} lets every user read the private key; use 0600 or 0640 with a group"
            ),
        );
    }
    if let (Some(c), Some(k)) = (&cert_file, &key_file)
        && c == k
    {
        cx.error(
            &s.span,
            &s.key,
            "cert_file and key_file must be different files",
        );
    }
    if !name_ok || names.is_empty() {
        return None;
    }
    Some(Certificate {
        name: name.to_string(),
        names,
        issuer,
        server,
        key_type,
        cert_file: cert_file?,
        key_file: key_file?,
        chain_file,
        leaf_file,
        renew_before,
        owner,
        group,
        key_mode,
        cert_mode,
        revoke_first,
        pre_install,
        post_install,
        hook_timeout,
    })
}

fn s_has(s: &mut Section, key: &str) -> bool {
    s.raw(key).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let c = Config::parse_sources(
            &[(
                PathBuf::from("/etc/certagent/config.toml"),
                text.to_string(),
            )],
            &mut errors,
        );
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.iter().map(|e| e.to_string()).collect())
        }
    }

    const GOOD: &str = r#"
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

    #[test]
    fn a_minimal_config_uses_the_embedded_ca_and_defaults() {
        let c = parse(GOOD).unwrap();
        let cert = &c.certificates["site"];
        assert_eq!(cert.issuer, "internal");
        assert_eq!(cert.key_type, KeySpec::EcdsaP256);
        assert_eq!(cert.key_mode, 0o600);
        assert_eq!(cert.names[0].as_str(), "example.com");
        assert!(matches!(
            c.issuers["internal"].kind,
            IssuerKind::Internal(_)
        ));
        assert_eq!(c.agent.max_parallel, 4);
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let text = r#"
[agent]
max_parallel = 0
colour = "blue"

[certificate.site]
names = ["ok.example", "bad..name"]
issuer = "nope"
key_type = "rsa-1024"
cert_file = "relative/site.pem"
key_mode = "0644"
"#;
        let errors = parse(text).unwrap_err();
        let want = [
            "/etc/certagent/config.toml:3: agent.max_parallel: 0 is out of range (1 to 1024)",
            "/etc/certagent/config.toml:4: agent.colour: unknown key; known keys here: state_dir, runtime_dir, max_parallel, compromised_dir, key_blocklist, lock_timeout, keep_generations, metrics_file, max_reissues_per_hour",
            "/etc/certagent/config.toml:7: certificate.site.names: invalid DNS name \"bad..name\": label \"\" must be 1 to 63 letters, digits or inner hyphens (a wildcard is allowed only as the whole first label)",
            "/etc/certagent/config.toml:9: certificate.site.key_type: unknown key type \"rsa-1024\"; expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096",
            "/etc/certagent/config.toml:10: certificate.site.cert_file: path \"relative/site.pem\" must be absolute",
            "/etc/certagent/config.toml:6: certificate.site.key_file: missing; the private key file the web server reads",
            "/etc/certagent/config.toml:6: certificate.site.key_mode: 0644 lets every user read the private key; use 0600 or 0640 with a group",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e == w),
                "missing {w:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
    }

    #[test]
    fn references_and_shared_paths_are_checked_across_files() {
        let main = (PathBuf::from("/c/config.toml"), GOOD.to_string());
        let dropin = (
            PathBuf::from("/c/conf.d/b.toml"),
            r#"
[certificate.other]
names = ["b.example"]
server = "missing"
cert_file = "/etc/ssl/site.pem"
key_file = "/etc/ssl/other.key"

[certificate.site]
names = ["c.example"]
cert_file = "/etc/ssl/c.pem"
key_file = "/etc/ssl/c.key"
"#
            .to_string(),
        );
        let mut errors = Vec::new();
        Config::parse_sources(&[main, dropin], &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "/c/conf.d/b.toml:8: certificate.site: certificate \"site\" is already defined at /c/config.toml:9",
                "/c/conf.d/b.toml:2: certificate.other.server: no [server.missing] is defined (defined: web)",
                "/c/config.toml:9: certificate.site: path \"/etc/ssl/site.pem\" is also written by certificate \"other\"",
            ]
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_one_error_not_also_missing() {
        let errors = parse(
            "[certificate.site]\nnames = 1\ncert_file = 2\nkey_file = \"/etc/ssl/site.key\"\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0]
                .contains("certificate.site.names: expected an array of strings, found integer"),
            "{errors:#?}"
        );
        assert!(
            errors[1].contains("certificate.site.cert_file: "),
            "{errors:#?}"
        );
        assert!(errors.iter().all(|e| !e.contains("missing")), "{errors:#?}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let errors = parse("[agent]\nstate_dir = \n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("/etc/certagent/config.toml:2: invalid TOML:"),
            "{errors:?}"
        );
    }

    #[test]
    fn acme_issuer_needs_directory_and_a_challenge_responder() {
        let errors = parse("[issuer.le]\nkind = \"acme\"\ndirectory = \"http://x\"\n").unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:3: issuer.le.directory: \"http://x\" must be an https:// URL",
                "/etc/certagent/config.toml:1: issuer.le: http-01 needs webroot = \"/var/www/acme\" or listen = \"127.0.0.1:80\"",
            ]
        );
        let ok = parse("[issuer.le]\nkind = \"acme\"\ndirectory = \"https://x/dir\"\nlisten = \"127.0.0.1:80\"\n").unwrap();
        match &ok.issuers["le"].kind {
            IssuerKind::Acme(a) => {
                assert!(
                    matches!(&a.challenge, Challenge::Http01(Http01::Listen(l)) if l.to_string() == "127.0.0.1:80")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absurd_durations_are_refused_with_file_line_and_key() {
        const ABSURD: &str = "15250284452471w";
        // (table, key): every duration the configuration takes.
        let cases = [
            ("[agent]", "lock_timeout"),
            ("[issuer.ca]\nkind = \"internal\"", "validity"),
            ("[issuer.ca]\nkind = \"manual\"", "remind_every"),
            (
                "[issuer.ca]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nwebroot = \"/var/www\"",
                "timeout",
            ),
            (
                "[issuer.ca]\nkind = \"dnsimple\"\ndomain = \"example.com\"\ntoken_file = \"/etc/t\"",
                "timeout",
            ),
            (
                "[server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]",
                "command_timeout",
            ),
            (
                "[server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]",
                "verify_timeout",
            ),
            (
                "[server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]",
                "verify_settle",
            ),
            (
                "[notify.ops]\nkind = \"webhook\"\nurl = \"https://hooks.test/x\"",
                "timeout",
            ),
            (
                "[certificate.c]\nnames = [\"c.test\"]\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"",
                "renew_before",
            ),
            (
                "[certificate.c]\nnames = [\"c.test\"]\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"",
                "hook_timeout",
            ),
        ];
        for (table, key) in cases {
            let text = format!("{table}\n{key} = \"{ABSURD}\"\n");
            let line = text.lines().count();
            let errors = parse(&text).unwrap_err();
            let section = table
                .lines()
                .next()
                .unwrap()
                .trim_matches(['[', ']'])
                .to_string();
            let want = format!(
                "/etc/certagent/config.toml:{line}: {section}.{key}: \"{ABSURD}\" is too long: at most "
            );
            assert!(
                errors.len() == 1 && errors[0].starts_with(&want),
                "{key}: {errors:#?}"
            );
        }
        let errors = parse("[agent]\nlock_timeout = \"2d\"\n").unwrap_err();
        assert_eq!(
            errors,
            ["/etc/certagent/config.toml:2: agent.lock_timeout: \"2d\" is too long: at most 1d"]
        );
        let c = parse(
            "[issuer.ca]\nkind = \"internal\"\nvalidity = \"3650d\"\n[agent]\nlock_timeout = \"24h\"\n",
        )
        .unwrap();
        assert_eq!(c.agent.lock_timeout, Span::days(1));
    }

    #[test]
    fn a_renewal_window_as_long_as_the_internal_lifetime_is_refused() {
        let cert = |before: &str, issuer: &str| {
            format!(
                "[issuer.short]\nkind = \"internal\"\nvalidity = \"1h\"\n\n[certificate.c]\nnames = [\"c.test\"]\nissuer = \"{issuer}\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\nrenew_before = \"{before}\"\n"
            )
        };
        assert_eq!(
            parse(&cert("2h", "short")).unwrap_err(),
            [
                "/etc/certagent/config.toml:10: certificate.c.renew_before: \"2h\" is not shorter than the lifetime of the certificates issuer \"short\" signs (validity = \"1h\"): each would be due for renewal as soon as it is issued\n    hint: make renew_before shorter than the validity, e.g. a third of it (\"20m\"), or leave it out"
            ]
        );
        assert_eq!(parse(&cert("1h", "short")).unwrap_err().len(), 1);
        assert!(parse(&cert("20m", "short")).is_ok());
        // The embedded CA signs for 90 days.
        let errors = parse(&cert("90d", "internal")).unwrap_err();
        assert!(
            errors[0].contains("certificate.c.renew_before: \"90d\" is not shorter than the lifetime of the certificates issuer \"internal\" signs (validity = \"90d\")"),
            "{errors:#?}"
        );
        assert!(parse(&cert("30d", "internal")).is_ok());
    }

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

    #[test]
    fn dnsimple_plain_http_is_allowed_to_loopback_hosts_only() {
        let config = |url: &str| {
            format!(
                "[issuer.d]\nkind = \"dnsimple\"\ndomain = \"a.test\"\ntoken_file = \"/t\"\napi_url = \"{url}\"\n"
            )
        };
        for remote in [
            "http://localhost@attacker.example/v2",
            "http://localhost.attacker.example/v2",
            "http://127.0.0.1.attacker.example/v2",
            "http://attacker.example/v2",
            "ftp://localhost/v2",
        ] {
            let errors = parse(&config(remote)).unwrap_err();
            assert_eq!(
                errors,
                vec![format!(
                    "/etc/certagent/config.toml:5: issuer.d.api_url: {remote:?} must be an https:// URL (plain http:// only to localhost, 127.0.0.0/8 or [::1])"
                )]
            );
        }
        let errors = parse(&config("localhost/v2")).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:5: issuer.d.api_url: \"localhost/v2\" is not a URL: relative URL without a base"
            ]
        );
        for local in [
            "http://localhost/v2",
            "http://127.0.0.1:1234/v2",
            "http://127.1.2.3/v2",
            "http://[::1]:99/v2",
            "https://api.dnsimple.com/v2/",
        ] {
            let c = parse(&config(local)).unwrap_or_else(|e| panic!("{local}: {e:#?}"));
            match &c.issuers["d"].kind {
                IssuerKind::Dnsimple(d) => {
                    assert_eq!(d.api.base_url, local.trim_end_matches('/'))
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let c = Config::parse_sources(
            &[(PathBuf::from("/c/config.toml"), text.to_string())],
            &mut errors,
        );
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.iter().map(|e| e.to_string()).collect())
        }
    }

    const TWO_SITES: &str = r#"
[server.web]
kind = "apache"
layout = "rhel"
verify = ["127.0.0.1:443", { address = "127.0.0.1:8443", sni = "Shop.Example.com" }]

[certificate.shop]
names = ["shop.example.com"]
server = "web"
cert_file = "/etc/ssl/shop.pem"
key_file = "/etc/ssl/shop.key"
pre_install = ["/usr/local/bin/check", "--strict"]
post_install = ["systemctl", "reload", "haproxy"]
hook_timeout = "30s"
"#;

    #[test]
    fn verify_takes_addresses_and_tables_with_an_sni() {
        let c = parse(TWO_SITES).unwrap();
        let web = &c.servers["web"];
        assert_eq!(web.kind, ServerKind::Apache);
        assert_eq!(web.layout, Some(ApacheLayout::Rhel));
        assert_eq!(
            web.verify,
            vec![
                Endpoint {
                    address: "127.0.0.1:443".parse().unwrap(),
                    sni: None
                },
                Endpoint {
                    address: "127.0.0.1:8443".parse().unwrap(),
                    sni: Some("shop.example.com".parse().unwrap())
                },
            ]
        );
        let shop = &c.certificates["shop"];
        assert_eq!(
            shop.pre_install.as_deref(),
            Some(&["/usr/local/bin/check".to_string(), "--strict".into()][..])
        );
        assert_eq!(shop.post_install.as_ref().unwrap()[2], "haproxy");
        assert_eq!(shop.hook_timeout, Span::secs(30));
    }

    #[test]
    fn an_endpoint_with_an_sni_is_probed_only_for_certificates_with_that_name() {
        let names = |list: &[&str]| -> Vec<DomainName> {
            list.iter().map(|n| n.parse().unwrap()).collect()
        };
        let plain = Endpoint {
            address: "127.0.0.1:443".parse().unwrap(),
            sni: None,
        };
        let shop = Endpoint {
            address: "127.0.0.1:443".parse().unwrap(),
            sni: Some("shop.example.com".parse().unwrap()),
        };
        assert_eq!(
            plain.sni_for(&names(&["*.example.com"])).as_deref(),
            Some("certagent-probe.example.com")
        );
        assert_eq!(
            shop.sni_for(&names(&["www.example.com", "*.example.com"]))
                .as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(shop.sni_for(&names(&["www.example.com"])), None);
        assert_eq!(shop.sni_for(&names(&["*.shop.example.com"])), None);
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert_eq!(probe_sni("www.example.com"), "www.example.com");
    }

    #[test]
    fn bad_endpoints_layouts_and_hooks_are_reported_with_their_keys() {
        let text = r#"
[server.web]
kind = "nginx"
layout = "debian"
verify = ["127.0.0.1", { address = "127.0.0.1:8443", sni = "*.example.com", port = 1 }, { sni = "a.example.com" }, 443]

[server.ap]
kind = "apache"
layout = "arch"
verify = [{ address = "127.0.0.1:443", sni = "other.example.com" }]

[certificate.site]
names = ["site.example.com"]
server = "ap"
cert_file = "/etc/ssl/site.pem"
key_file = "/etc/ssl/site.key"
pre_install = []
"#;
        let errors = parse(text).unwrap_err();
        let want = [
            "/c/config.toml:4: server.web.layout: only kind = \"apache\" has a layout",
            "/c/config.toml:5: server.web.verify: \"127.0.0.1\" is not an address like \"127.0.0.1:443\"",
            "/c/config.toml:5: server.web.verify.sni: \"*.example.com\" is a wildcard; an SNI names one host, e.g. \"www.example.com\"",
            "/c/config.toml:5: server.web.verify.port: unknown key; known keys here: address, sni",
            "/c/config.toml:5: server.web.verify.address: missing; the endpoint's address, like \"127.0.0.1:443\"",
            "/c/config.toml:5: server.web.verify: expected an address string or a table { address = \"127.0.0.1:443\", sni = \"www.example.com\" }, found integer",
            "/c/config.toml:9: server.ap.layout: unknown layout \"arch\"; expected \"debian\" (apache2, apache2ctl) or \"rhel\" (httpd, apachectl)",
            "/c/config.toml:17: certificate.site.pre_install: expected a non-empty argv array, e.g. [\"nginx\", \"-t\"]",
            "/c/config.toml:12: certificate.site.server: none of server \"ap\"'s verify endpoints is for [\"site.example.com\"]: add one without sni, or with sni = one of these names",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e == w),
                "missing {w:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
    }
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
