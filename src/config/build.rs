//! Assembling the sections of every file into one `Config`: duplicate tables across drop-ins,
//! references between sections, and the checks that need more than one section.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::agent::{AGENT_KEYS, default_agent, read_agent};
use super::certificate::{CERT_KEYS, read_certificate};
use super::cluster::{CLUSTER_KEYS, ClusterConfig, read_cluster};
use super::issuer::{ISSUER_KEYS, read_issuer};
use super::notify::{NOTIFY_KEYS, read_notify};
use super::profile;
use super::server::{SERVER_KEYS, read_server};
use super::walk::{Ctx, Section};
use super::{
    Agent, BUILTIN_ISSUER, Certificate, Config, ConfigError, InternalIssuer, Issuer, IssuerKind,
    Notify, Server, ServerKind, in_service,
};
use crate::core::Span;
use crate::error::shown;

/// Where a named table was first defined, to report duplicates across drop-ins.
#[derive(Clone, Debug)]
pub(super) struct Origin {
    pub(super) file: PathBuf,
    pub(super) line: usize,
}

/// The file being read and the line of `span` in it.
fn origin(cx: &Ctx, span: &Range<usize>) -> Origin {
    Origin {
        file: cx.file.to_path_buf(),
        line: cx.line(span),
    }
}

#[derive(Default)]
pub(super) struct Builder {
    agent: Option<Agent>,
    /// `[cluster]`, and where its header is (for "built without fleets").
    cluster: Option<(ClusterConfig, Origin)>,
    issuers: BTreeMap<String, (Issuer, Origin)>,
    servers: BTreeMap<String, (Server, Origin)>,
    certificates: BTreeMap<String, (Certificate, Origin)>,
    notify: BTreeMap<String, (Notify, Origin)>,
    /// (certificate, key, span origin) for cross-checks after all files are read.
    refs: Vec<(String, String, Origin, &'static str)>,
    /// Certificates whose issuer is the built-in default, not written in the file.
    implicit_issuer: Vec<String>,
    /// Where each certificate's keys that a later check may complain about are set
    /// (`renew_before` against its issuer's lifetime, `server` against its endpoints, the
    /// output paths against each other), so that the error points at the key's own line.
    key_at: BTreeMap<(String, &'static str), Origin>,
    /// `(section, name)` of the tables that are defined but could not be read: their errors
    /// are reported, and a reference to one is not also "not defined".
    unreadable: Vec<(&'static str, String)>,
}

impl Builder {
    pub(super) fn read_file(&mut self, cx: &mut Ctx, root: &mut Section, main: bool) {
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
        if let Some(mut s) = root.table(cx, "cluster") {
            if !main {
                cx.error(
                    &s.span,
                    "cluster",
                    "[cluster] may only be set in the main config file, not in a drop-in",
                );
            }
            let at = origin(cx, &s.span);
            if let Some(cluster) = read_cluster(cx, &mut s) {
                self.cluster = Some((cluster, at));
            }
            s.finish(cx, CLUSTER_KEYS);
        }
        self.read_tables(cx, root, "issuer", ISSUER_KEYS, read_issuer, |b| {
            &mut b.issuers
        });
        self.read_tables(cx, root, "server", SERVER_KEYS, read_server, |b| {
            &mut b.servers
        });
        self.read_tables(cx, root, "notify", NOTIFY_KEYS, read_notify, |b| {
            &mut b.notify
        });
        self.read_certificates(cx, root);
    }

    /// Every `[what.NAME]` table of this file, read by `read`, kept in `map` unless a table
    /// of that name is already defined.
    fn read_tables<T>(
        &mut self,
        cx: &mut Ctx,
        root: &mut Section,
        what: &'static str,
        keys: &str,
        read: fn(&mut Ctx, &mut Section, &str) -> Option<T>,
        map: impl Fn(&mut Self) -> &mut BTreeMap<String, (T, Origin)>,
    ) {
        for (name, mut s) in root.tables(cx, what) {
            let origin = origin(cx, &s.span);
            match read(cx, &mut s, &name) {
                Some(value) => self.insert_unique(cx, &s, what, name, value, origin, &map),
                None => self.unreadable.push((what, name)),
            }
            s.finish(cx, keys);
        }
    }

    /// Every `[certificate.NAME]` table of this file, with what the cross-checks in
    /// `finish` need: its references, whether its issuer is implicit, where `renew_before` is.
    fn read_certificates(&mut self, cx: &mut Ctx, root: &mut Section) {
        for (name, mut s) in root.tables(cx, "certificate") {
            let origin = origin(cx, &s.span);
            if !s_has(&mut s, "issuer") {
                self.implicit_issuer.push(name.clone());
            }
            if let Some(cert) = read_certificate(cx, &mut s, &name) {
                // A second definition is refused below: its keys are not where the first is.
                let first = !self.certificates.contains_key(&name);
                for key in [
                    "names",
                    "issuer",
                    "server",
                    "renew_before",
                    "cert_file",
                    "key_file",
                    "chain_file",
                    "leaf_file",
                    "shared",
                    "profile",
                    "profile_required",
                ] {
                    if let Some(span) = s.value_span(key).filter(|_| first) {
                        self.key_at
                            .insert((name.clone(), key), self::origin(cx, &span));
                    }
                }
                let at = |key| self.key_at.get(&(name.clone(), key)).unwrap_or(&origin);
                let issuer_at = at("issuer").clone();
                let server_at = at("server").clone();
                for issuer in &cert.issuers {
                    self.refs
                        .push((name.clone(), issuer.clone(), issuer_at.clone(), "issuer"));
                }
                if let Some(server) = &cert.server {
                    self.refs
                        .push((name.clone(), server.clone(), server_at, "server"));
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

    pub(super) fn finish(mut self, main: &Path, errors: &mut Vec<ConfigError>) -> Config {
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
        self.check_refs(errors);
        self.check_renew_before(errors);
        self.check_ip_names(errors);
        self.check_verify_endpoints(errors);
        self.check_shared_outputs(errors);
        self.check_cluster(errors);
        self.check_profiles(errors);
        let agent = self.agent.take().unwrap_or_else(default_agent);
        self.check_implicit_issuers(&agent, errors);
        Config {
            agent,
            issuers: self.issuers.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            servers: self.servers.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            certificates: self
                .certificates
                .into_iter()
                .map(|(k, (v, _))| (k, v))
                .collect(),
            notify: self.notify.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            cluster: self.cluster.map(|(c, _)| c),
            fingerprint: 0,
            certificate_keys_at: self
                .key_at
                .into_iter()
                .map(|(k, o)| (k, (o.file, o.line)))
                .collect(),
        }
    }

    /// Where `key` of certificate `name` is set, else where the certificate is.
    fn at<'a>(&'a self, name: &str, key: &'static str, certificate: &'a Origin) -> &'a Origin {
        self.key_at
            .get(&(name.to_string(), key))
            .unwrap_or(certificate)
    }

    /// Every issuer and server a certificate names is defined.
    fn check_refs(&self, errors: &mut Vec<ConfigError>) {
        for (cert, target, origin, what) in &self.refs {
            let known: Vec<&String> = match *what {
                "issuer" => self.issuers.keys().collect(),
                _ => self.servers.keys().collect(),
            };
            let unreadable = self
                .unreadable
                .iter()
                .any(|(w, n)| w == what && n == target);
            if known.contains(&target) || unreadable {
                continue;
            }
            let list = known
                .iter()
                .map(|k| shown(k))
                .collect::<Vec<_>>()
                .join(", ");
            let close = super::walk::did_you_mean(target, known.iter().map(|k| k.as_str()));
            errors.push(ConfigError {
                hint: None,
                file: origin.file.clone(),
                line: origin.line,
                key: format!("certificate.{}.{what}", shown(cert)),
                message: match close {
                    Some(close) => format!(
                        "no [{what}.{}] is defined; did you mean {:?}?",
                        shown(target),
                        shown(close)
                    ),
                    None => format!(
                        "no [{what}.{}] is defined (defined: {})",
                        shown(target),
                        if list.is_empty() { "none" } else { &list }
                    ),
                },
            });
        }
    }

    /// A renewal window as long as the issuer's certificates live makes every new
    /// certificate due the moment it is issued: a re-issue loop.
    fn check_renew_before(&self, errors: &mut Vec<ConfigError>) {
        for (name, (cert, _)) in &self.certificates {
            let (Some(before), Some(at)) = (
                cert.renew_before,
                self.key_at.get(&(name.clone(), "renew_before")),
            ) else {
                continue;
            };
            // The first local CA of the list whose certificates would be due at once.
            let Some(issuer) = cert
                .issuers
                .iter()
                .filter_map(|i| self.issuers.get(i).map(|(i, _)| i))
                .find(|i| matches!(&i.kind, IssuerKind::Internal(c) if before >= c.validity))
            else {
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
    }

    /// IP address names need an issuer that can validate them (`ip_names_refusal`).
    fn check_ip_names(&self, errors: &mut Vec<ConfigError>) {
        for (name, (cert, origin)) in &self.certificates {
            // Every issuer of a failover list may have to issue it.
            let refusal = cert
                .issuers
                .iter()
                .filter_map(|i| self.issuers.get(i))
                .find_map(|(issuer, _)| super::certificate::ip_names_refusal(cert, issuer));
            if let Some((message, hint)) = refusal {
                let at = self.at(name, "names", origin);
                errors.push(ConfigError {
                    file: at.file.clone(),
                    line: at.line,
                    key: format!("certificate.{}.names", shown(name)),
                    message,
                    hint: Some(hint),
                });
            }
        }
    }

    /// Every certificate on a server that is probed needs an endpoint to probe it at.
    fn check_verify_endpoints(&self, errors: &mut Vec<ConfigError>) {
        for (name, (cert, origin)) in &self.certificates {
            let Some((server, _)) = cert.server.as_ref().and_then(|s| self.servers.get(s)) else {
                continue;
            };
            if server.runtime_socket.is_some() && cert.bundle_file.is_none() {
                let at = self.at(name, "server", origin);
                errors.push(ConfigError {
                    hint: Some("set bundle_file to the file HAProxy's `crt` names; its key, leaf and chain are what the runtime API swaps".into()),
                    file: at.file.clone(),
                    line: at.line,
                    key: format!("certificate.{}.bundle_file", shown(name)),
                    message: format!(
                        "missing; server {:?} swaps certificates through its runtime_socket, which needs the bundle HAProxy loaded",
                        server.name
                    ),
                });
            }
            if server.kind == ServerKind::None || server.verify.is_empty() {
                continue;
            }
            if server
                .verify
                .iter()
                .all(|e| e.sni_for(&cert.names).is_none())
            {
                let names: Vec<String> = cert.names.iter().map(|n| n.to_string()).collect();
                let at = self.at(name, "server", origin);
                errors.push(ConfigError {
                    hint: None,
                    file: at.file.clone(),
                    line: at.line,
                    key: format!("certificate.{}.server", shown(name)),
                    message: format!(
                        "none of server {:?}'s verify endpoints is for {names:?}: add one without sni, or with sni = one of these names",
                        server.name
                    ),
                });
            }
        }
    }

    /// The same file written by two certificates would make them overwrite each other.
    fn check_shared_outputs(&self, errors: &mut Vec<ConfigError>) {
        let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
        for (name, (cert, origin)) in &self.certificates {
            let outputs = [
                ("cert_file", Some(&cert.cert_file)),
                ("key_file", Some(&cert.key_file)),
                ("chain_file", cert.chain_file.as_ref()),
                ("leaf_file", cert.leaf_file.as_ref()),
                ("bundle_file", cert.bundle_file.as_ref()),
            ];
            for (key, path) in outputs {
                let Some(path) = path else { continue };
                if let Some(other) = seen.insert(path, name) {
                    let at = self.at(name, key, origin);
                    errors.push(ConfigError {
                        hint: None,
                        file: at.file.clone(),
                        line: at.line,
                        key: format!("certificate.{}.{key}", shown(name)),
                        message: format!(
                            "path {:?} is also written by certificate {other:?}",
                            path.display().to_string()
                        ),
                    });
                }
            }
        }
    }

    /// A shared certificate needs a cluster and an ACME issuer (its order is resumed by
    /// whichever host holds the lock, through the fleet's account); a cluster needs a binary
    /// built with fleets.
    fn check_cluster(&self, errors: &mut Vec<ConfigError>) {
        if let Some((_, at)) = &self.cluster
            && !cfg!(feature = "fleet")
        {
            errors.push(ConfigError {
                file: at.file.clone(),
                line: at.line,
                key: "cluster".into(),
                message: "this certagent was built without fleets (the `fleet` feature)".into(),
                hint: Some("use a build with the default features (the packages have it)".into()),
            });
        }
        for (name, (cert, origin)) in self.certificates.iter().filter(|(_, (c, _))| c.shared) {
            let at = self.at(name, "shared", origin);
            let problem = if self.cluster.is_none() {
                Some((
                    "shared = true needs a [cluster] table: the etcd cluster the hosts share it through",
                    "add [cluster] with endpoints and fleet_key_file (see certagent.toml(5), FLEETS), or remove shared",
                ))
            } else if cert.issuers.len() > 1 {
                Some((
                    "a shared certificate has one issuer: failover between issuers (issuer = [a list]) is not supported for fleets",
                    "name one issuer (kind = \"acme\") for a shared certificate",
                ))
            } else if self
                .issuers
                .get(&cert.issuer)
                .is_some_and(|(i, _)| !matches!(i.kind, IssuerKind::Acme(_)))
            {
                Some((
                    "a shared certificate is issued through an ACME issuer (one order for the fleet, resumed by whichever host holds the lock)",
                    "point issuer at an [issuer.NAME] with kind = \"acme\"",
                ))
            } else {
                None
            };
            if let Some((message, hint)) = problem {
                errors.push(ConfigError {
                    file: at.file.clone(),
                    line: at.line,
                    key: format!("certificate.{}.shared", shown(name)),
                    message: message.into(),
                    hint: Some(hint.into()),
                });
            }
        }
    }

    /// `profile` and `profile_required` make sense with an ACME issuer only.
    fn check_profiles(&self, errors: &mut Vec<ConfigError>) {
        for (issuer, at) in self.issuers.values() {
            profile::check_issuer_profile(issuer, at, errors);
        }
        for (name, (cert, origin)) in &self.certificates {
            let issuer = self.issuers.get(&cert.issuer).map(|(i, _)| i);
            profile::check_profiles(
                cert,
                issuer,
                |key| self.at(name, key, origin).clone(),
                errors,
            );
        }
    }

    /// The local CA by default only where no other CA's certificate is in service.
    fn check_implicit_issuers(&self, agent: &Agent, errors: &mut Vec<ConfigError>) {
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
    }
}

pub(super) fn valid_name(cx: &mut Ctx, s: &Section, what: &str, name: &str) -> bool {
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

pub(super) fn s_has(s: &mut Section, key: &str) -> bool {
    s.raw(key).is_some()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{GOOD, parse};
    use super::*;
    use crate::core::KeySpec;

    #[test]
    fn a_minimal_config_uses_the_embedded_ca_and_defaults() {
        let c = parse(GOOD).unwrap();
        let cert = &c.certificates["site"];
        assert_eq!(cert.issuer, "internal");
        assert_eq!(cert.key_type, KeySpec::EcdsaP256);
        assert_eq!(cert.key_mode, 0o600);
        assert_eq!(cert.names[0].to_string(), "example.com");
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
            "/etc/certagent/config.toml:11: certificate.site.key_mode: 0644 lets every user read the private key; use 0600 or 0640 with a group",
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
                "/c/config.toml:12: certificate.site.cert_file: path \"/etc/ssl/site.pem\" is also written by certificate \"other\"",
                "/c/conf.d/b.toml:4: certificate.other.server: no [server.missing] is defined (defined: web)",
                "/c/conf.d/b.toml:8: certificate.site: certificate \"site\" is already defined at /c/config.toml:9",
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
}
