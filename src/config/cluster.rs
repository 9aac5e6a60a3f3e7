//! `[cluster]`: the etcd cluster a fleet of hosts shares its certificates through (see
//! `src/cluster/`). Optional; without it nothing is shared, and `shared = true` on a
//! certificate is an error. Always parsed, so that a binary built without the `fleet` feature
//! says why it cannot use it instead of calling the table unknown.

use std::path::PathBuf;
use std::time::Duration;

use super::walk::{Ctx, Section};
use crate::core::Span;

/// The `[cluster]` table, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub kind: ClusterKind,
    /// `http://host:port` or `https://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// Everything certagent keeps in etcd lives under it; no trailing slash.
    pub prefix: String,
    /// This host's name in the fleet; unique.
    pub node: String,
    /// A holder that stops answering loses its lock (and a dead host its reports) after this.
    pub lease_ttl: Duration,
    pub fleet_key_file: PathBuf,
    /// CA certificates that sign the etcd members' certificates (PEM).
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate and key for etcd's client-certificate authentication (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user and the file holding its password (first line).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Bound on every etcd request (and on connecting); a dead cluster fails within it.
    pub request_timeout: Duration,
    /// With etcd unreachable, a shared certificate this close to expiry is re-issued by this
    /// host alone (logged loudly); `None`: never.
    pub fallback_before: Option<Duration>,
}

/// The only kind of cluster there is, for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    Etcd,
}

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/certagent";
/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// The default bound on one etcd request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const CLUSTER_KEYS: &str = "kind, endpoints, prefix, node, lease_ttl, fleet_key_file, ca_bundle, cert_file, key_file, username, password_file, request_timeout, fallback_before";

impl ClusterConfig {
    /// A configuration with the defaults: prefix `/certagent`, node = the host name,
    /// lease TTL 15 s, no TLS, no auth, no local fallback.
    pub fn new(endpoints: Vec<String>, fleet_key_file: PathBuf) -> Self {
        ClusterConfig {
            kind: ClusterKind::Etcd,
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            node: default_node(),
            lease_ttl: DEFAULT_LEASE_TTL,
            fleet_key_file,
            ca_bundle: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            fallback_before: None,
        }
    }

    /// The lease TTL in whole seconds, as etcd takes it (at least 2: a 1 s TTL leaves no
    /// room for a keep-alive).
    pub fn lease_ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(2)
    }
}

/// The host name, or `localhost` when it cannot be read.
pub fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A name that is one segment of an etcd key: what `node` may be.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

pub(super) fn read_cluster(cx: &mut Ctx, s: &mut Section) -> Option<ClusterConfig> {
    let kind = match s.string(cx, "kind") {
        None => Some(ClusterKind::Etcd),
        Some((k, _)) if k == "etcd" => Some(ClusterKind::Etcd),
        Some((k, span)) => {
            cx.error(
                &span,
                &s.full_key("kind"),
                format!("unknown cluster kind {k:?}; expected \"etcd\""),
            );
            None
        }
    };
    let endpoints = read_endpoints(cx, s);
    let prefix = match s.string(cx, "prefix") {
        None => Some(DEFAULT_PREFIX.to_string()),
        Some((p, span)) => {
            let ok = p.starts_with('/')
                && p.len() > 1
                && !p.ends_with('/')
                && !p.contains("//")
                && p.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                cx.error(
                    &span,
                    &s.full_key("prefix"),
                    format!("{p:?} is not a key prefix: it starts with /, has no trailing / and no spaces (e.g. \"/certagent\")"),
                );
            }
            ok.then_some(p)
        }
    };
    let node = match s.string(cx, "node") {
        None => Some(default_node()),
        Some((n, span)) if is_segment(&n) => {
            let _ = span;
            Some(n)
        }
        Some((n, span)) => {
            cx.error(
                &span,
                &s.full_key("node"),
                format!(
                    "{n:?} cannot name a host in etcd keys: letters, digits, '-', '_' and '.' only"
                ),
            );
            None
        }
    };
    let lease_ttl = read_duration(cx, s, "lease_ttl", 2, 300, DEFAULT_LEASE_TTL);
    let request_timeout = read_duration(cx, s, "request_timeout", 1, 120, DEFAULT_REQUEST_TIMEOUT);
    let fallback_before = s
        .span(cx, "fallback_before", Span::days(365))
        .map(|Span(secs)| Duration::from_secs(secs.max(0) as u64));
    let fleet_key_file = s.path(cx, "fleet_key_file");
    if fleet_key_file.is_none() && s.span_of("fleet_key_file").is_none() {
        cx.error(
            &s.span,
            &s.full_key("fleet_key_file"),
            "missing; 32 random bytes, the same on every host of the fleet (head -c 32 /dev/urandom > FILE; chmod 600 FILE)",
        );
    }
    let ca_bundle = s.path(cx, "ca_bundle");
    let cert_file = s.path(cx, "cert_file");
    let key_file = s.path(cx, "key_file");
    if cert_file.is_some() != key_file.is_some() {
        let missing = if cert_file.is_some() {
            "key_file"
        } else {
            "cert_file"
        };
        cx.error(
            &s.span,
            &s.full_key(missing),
            "missing; etcd's client-certificate authentication needs both cert_file and key_file",
        );
    }
    let username = s.string(cx, "username").map(|(u, _)| u);
    let password_file = s.path(cx, "password_file");
    if username.is_some() != password_file.is_some() {
        let missing = if username.is_some() {
            "password_file"
        } else {
            "username"
        };
        cx.error(
            &s.span,
            &s.full_key(missing),
            "missing; etcd authentication needs both username and password_file",
        );
    }
    Some(ClusterConfig {
        kind: kind?,
        endpoints: endpoints?,
        prefix: prefix?,
        node: node?,
        lease_ttl: lease_ttl?,
        fleet_key_file: fleet_key_file?,
        ca_bundle,
        cert_file,
        key_file,
        username,
        password_file,
        request_timeout: request_timeout?,
        fallback_before,
    })
}

/// `endpoints`: one or more `http://` or `https://` URLs with a host and port, nothing else.
fn read_endpoints(cx: &mut Ctx, s: &mut Section) -> Option<Vec<String>> {
    if s.span_of("endpoints").is_none() {
        cx.error(
            &s.span,
            &s.full_key("endpoints"),
            "missing; the etcd members, e.g. [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]",
        );
        return None;
    }
    let list = s.strings(cx, "endpoints")?;
    if list.is_empty() {
        cx.error(
            &s.at("endpoints"),
            &s.full_key("endpoints"),
            "empty; name at least one etcd member",
        );
        return None;
    }
    let mut ok = true;
    for (url, span) in &list {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let valid = rest.is_some_and(|hostport| {
            hostport.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            }) && !hostport.contains(['/', '?', '#', '@', ' '])
        });
        if !valid {
            cx.error(
                span,
                &s.full_key("endpoints"),
                format!("{url:?} is not an etcd endpoint: http:// or https://, a host and a port (e.g. \"https://10.0.0.1:2379\")"),
            );
            ok = false;
        }
    }
    ok.then(|| list.into_iter().map(|(u, _)| u).collect())
}

/// A duration between `min` and `max` seconds, `default` when absent.
fn read_duration(
    cx: &mut Ctx,
    s: &mut Section,
    name: &str,
    min: i64,
    max: i64,
    default: Duration,
) -> Option<Duration> {
    let at = s.at(name);
    match s.span(cx, name, Span::secs(max)) {
        None if s.span_of(name).is_none() => Some(default),
        None => None,
        Some(Span(secs)) if secs < min => {
            cx.error(
                &at,
                &s.full_key(name),
                format!("too short: at least {min}s"),
            );
            None
        }
        Some(Span(secs)) => Some(Duration::from_secs(secs as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::parse;

    const SHARED: &str = r#"
[issuer.le]
kind = "acme"
directory = "https://acme.example/dir"
listen = "127.0.0.1:80"

[certificate.www]
names = ["www.example.com"]
issuer = "le"
cert_file = "/etc/ssl/www.pem"
key_file = "/etc/ssl/www.key"
shared = true
"#;

    #[test]
    fn the_defaults_are_the_contracts() {
        let c = ClusterConfig::new(vec!["http://127.0.0.1:2379".into()], "/k".into());
        assert_eq!(c.prefix, "/certagent");
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert_eq!(c.lease_ttl_secs(), 15);
        assert_eq!(c.node, default_node());
        assert_eq!(c.fallback_before, None);
    }

    #[test]
    #[cfg(feature = "fleet")]
    fn a_cluster_table_is_read_with_its_defaults_and_its_keys() {
        let config = parse(&format!(
            "[cluster]\nendpoints = [\"https://10.0.0.1:2379\", \"http://etcd-2:2379\"]\nfleet_key_file = \"/etc/certagent/credentials/fleet.key\"\nnode = \"web-1\"\nlease_ttl = \"5s\"\nfallback_before = \"7d\"\n{SHARED}"
        ))
        .unwrap();
        let c = config.cluster.unwrap();
        assert_eq!(c.endpoints, ["https://10.0.0.1:2379", "http://etcd-2:2379"]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.node, "web-1");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.fallback_before, Some(Duration::from_secs(7 * 86_400)));
        assert!(config.certificates["www"].shared);
    }

    #[test]
    fn a_cluster_table_with_mistakes_says_what_each_is() {
        let errors = parse(
            "[cluster]\nkind = \"consul\"\nendpoints = [\"10.0.0.1:2379\", \"https://h:0\"]\nprefix = \"certagent/\"\nnode = \"web 1\"\nlease_ttl = \"1s\"\ncert_file = \"/etc/certagent/etcd.pem\"\nusername = \"certagent\"\n",
        )
        .unwrap_err();
        let want = [
            "config.toml:1: cluster.fleet_key_file: missing; 32 random bytes",
            "config.toml:1: cluster.key_file: missing; etcd's client-certificate authentication needs both",
            "config.toml:1: cluster.password_file: missing; etcd authentication needs both",
            "config.toml:2: cluster.kind: unknown cluster kind \"consul\"",
            "config.toml:3: cluster.endpoints: \"10.0.0.1:2379\" is not an etcd endpoint",
            "config.toml:3: cluster.endpoints: \"https://h:0\" is not an etcd endpoint",
            "config.toml:4: cluster.prefix: \"certagent/\" is not a key prefix",
            "config.toml:5: cluster.node: \"web 1\" cannot name a host",
            "config.toml:6: cluster.lease_ttl: too short: at least 2s",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e.contains(w)),
                "no {w:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn a_shared_certificate_needs_a_cluster_and_an_acme_issuer() {
        let errors = parse(SHARED).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(
                "config.toml:12: certificate.www.shared: shared = true needs a [cluster] table"
            )),
            "{errors:#?}"
        );
        let internal = SHARED.replace("issuer = \"le\"", "issuer = \"internal\"");
        let errors = parse(&format!(
            "[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nfleet_key_file = \"/k\"\n{internal}"
        ))
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(
                "certificate.www.shared: a shared certificate is issued through an ACME issuer"
            )),
            "{errors:#?}"
        );
        // One issuer per fleet certificate: no failover list.
        let listed = SHARED.replace("issuer = \"le\"", "issuer = [\"le\", \"internal\"]");
        let errors = parse(&format!(
            "[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nfleet_key_file = \"/k\"\n{listed}"
        ))
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(
                "certificate.www.shared: a shared certificate has one issuer: failover between issuers"
            )),
            "{errors:#?}"
        );
    }
}
