//! `[server.NAME]`: the web server a certificate is installed into — how it is tested,
//! reloaded and probed, and which TLS endpoints show the new certificate.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use super::MAX_TIMEOUT;
use super::build::valid_name;
use super::walk::{Ctx, Section, did_you_mean};
use crate::core::{CertName, Span};

pub(super) const SERVER_KEYS: &str = "kind, layout, verify, test_command, reload_command, pid_file, runtime_socket, command_timeout, verify_timeout, verify_settle";
pub(super) const ENDPOINT_KEYS: &str = "address, sni, starttls";

#[derive(Clone, Debug)]
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) kind: ServerKind,
    /// Apache only: which distribution's commands and paths are the defaults. `None` means
    /// detect from the installed binaries when needed.
    pub(crate) layout: Option<ApacheLayout>,
    pub(crate) verify: Vec<Endpoint>,
    pub(crate) test_command: Option<Vec<String>>,
    pub(crate) reload_command: Option<Vec<String>>,
    pub(crate) pid_file: Option<PathBuf>,
    /// HAProxy only: its runtime API (the `stats socket ... level admin`); certificates with
    /// a `bundle_file` are swapped through it, with no reload.
    pub(crate) runtime_socket: Option<PathBuf>,
    /// Limit for each test/reload command.
    pub(crate) command_timeout: Span,
    /// How long to wait for the new certificate to be served after a reload.
    pub(crate) verify_timeout: Span,
    /// How long the new certificate must be served without a break when certagent cannot see
    /// the old workers retire (`kind = "command"`, or their /proc entries unreadable).
    pub(crate) verify_settle: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    Nginx,
    Apache,
    Haproxy,
    Command,
    None,
}

impl ServerKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ServerKind::Nginx => "nginx",
            ServerKind::Apache => "apache",
            ServerKind::Haproxy => "haproxy",
            ServerKind::Command => "command",
            ServerKind::None => "none",
        }
    }
}

/// Where Apache lives: Debian/Ubuntu (`apache2`, `apache2ctl`, unit `apache2`) or
/// RHEL/Fedora (`httpd`, `apachectl`, unit `httpd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApacheLayout {
    Debian,
    Rhel,
}

/// A TLS endpoint probed after a reload. Without `sni` it is probed for every certificate
/// of the server, with the certificate's first name; with `sni` only for the certificates
/// that carry that name, with that name (so one server can list the endpoints of many
/// virtual hosts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) address: SocketAddr,
    /// A host name, or an IP address (probed without SNI) for certificates with that address.
    pub(crate) sni: Option<CertName>,
    /// A mail server's plain-text port: the protocol's upgrade is spoken before the handshake.
    pub(crate) starttls: Option<Starttls>,
}

/// The plain-text protocol a `verify` endpoint speaks before TLS (`starttls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Starttls {
    /// SMTP (Postfix, port 25 or 587): `EHLO`, then `STARTTLS`.
    Smtp,
    /// IMAP (Dovecot, port 143): `a001 STARTTLS`.
    Imap,
    /// POP3 (Dovecot, port 110): `STLS`.
    Pop3,
}

impl Starttls {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Starttls::Smtp => "smtp",
            Starttls::Imap => "imap",
            Starttls::Pop3 => "pop3",
        }
    }
}

impl Endpoint {
    /// The SNI to probe this endpoint with while installing a certificate for `names`, or
    /// `None` when the endpoint belongs to another certificate. For an IP address first name
    /// it is the address, and the probe sends no SNI (RFC 6066 §3 allows host names only).
    pub(crate) fn sni_for(&self, names: &[CertName]) -> Option<String> {
        match &self.sni {
            None => names.first().map(|n| probe_sni(&n.to_string())),
            Some(sni) => names
                .iter()
                .any(|n| match (n, sni) {
                    (CertName::Dns(n), CertName::Dns(host)) => {
                        name_covers(n.as_str(), host.as_str())
                    }
                    (n, sni) => n == sni,
                })
                .then(|| sni.to_string()),
        }
    }
}

/// The SNI to probe with for a name: the name itself, or for a wildcard a concrete label.
pub(crate) fn probe_sni(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(rest) => format!("certagent-probe.{rest}"),
        None => name.to_string(),
    }
}

/// Whether a certificate name (possibly `*.example.com`) is valid for the host `host`.
pub(crate) fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => name == host,
    }
}

pub(super) fn read_server(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Server> {
    let name_ok = valid_name(cx, s, "server", name);
    let kind = read_kind(cx, s)?;
    let layout = read_layout(cx, s, kind);
    let verify = read_endpoints(cx, s);
    let test_command = s.command(cx, "test_command");
    let reload_command = s.command(cx, "reload_command");
    let pid_file = s.path(cx, "pid_file");
    let runtime_socket = s.path(cx, "runtime_socket");
    if runtime_socket.is_some() && kind != ServerKind::Haproxy {
        cx.error(
            &s.at("runtime_socket"),
            &s.full_key("runtime_socket"),
            "only kind = \"haproxy\" has a runtime API socket",
        );
    }
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
        runtime_socket,
        command_timeout,
        verify_timeout,
        verify_settle,
    })
}

/// `kind`: required, one of the known server kinds.
fn read_kind(cx: &mut Ctx, s: &mut Section) -> Option<ServerKind> {
    const KINDS: &str = "\"nginx\", \"apache\", \"haproxy\", \"command\" or \"none\"";
    match s.string(cx, "kind") {
        Some((k, span)) => match k.as_str() {
            "nginx" => Some(ServerKind::Nginx),
            "apache" => Some(ServerKind::Apache),
            "haproxy" => Some(ServerKind::Haproxy),
            "command" => Some(ServerKind::Command),
            "none" => Some(ServerKind::None),
            other => {
                let message =
                    match did_you_mean(other, ["nginx", "apache", "haproxy", "command", "none"]) {
                        Some(close) => {
                            format!("unknown server kind {other:?}; did you mean {close:?}?")
                        }
                        None => format!("unknown server kind {other:?}; expected {KINDS}"),
                    };
                cx.error(&span, &s.full_key("kind"), message);
                s.abandon();
                None
            }
        },
        None => {
            cx.error(
                &s.span,
                &s.full_key("kind"),
                format!("missing; one of {KINDS}"),
            );
            s.abandon();
            None
        }
    }
}

/// `layout`: only for Apache, "debian" or "rhel".
fn read_layout(cx: &mut Ctx, s: &mut Section, kind: ServerKind) -> Option<ApacheLayout> {
    let (l, span) = s.string(cx, "layout")?;
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

/// `verify`: each element is an address string, or a table `{ address = "...", sni = "...",
/// starttls = "smtp" }`.
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
    let mut out = Vec::new();
    for item in array.iter() {
        if let Some(text) = item.get_ref().as_str() {
            if let Some(a) = parse_address(cx, &key, text, &item.span()) {
                out.push(Endpoint {
                    address: a,
                    sni: None,
                    starttls: None,
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
        let t = Section::new(key.clone(), table, item.span());
        out.extend(read_endpoint_table(cx, &key, t));
    }
    out
}

/// An endpoint address, reported under `key` when it is not one.
fn parse_address(cx: &mut Ctx, key: &str, text: &str, span: &Range<usize>) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(
                span,
                key,
                format!("{text:?} is not an address like \"127.0.0.1:443\""),
            );
            None
        }
    }
}

/// One `{ address = "...", sni = "..." }` in `verify` (`key`).
fn read_endpoint_table(cx: &mut Ctx, key: &str, mut t: Section) -> Option<Endpoint> {
    let addr = match t.string(cx, "address") {
        Some((a, a_span)) => parse_address(cx, key, &a, &a_span),
        None => {
            cx.error(
                &t.span,
                &t.full_key("address"),
                "missing; the endpoint's address, like \"127.0.0.1:443\"",
            );
            None
        }
    };
    let sni = read_sni(cx, &mut t);
    let starttls = read_starttls(cx, &mut t);
    t.finish(cx, ENDPOINT_KEYS);
    Some(Endpoint {
        address: addr?,
        sni,
        starttls,
    })
}

/// An endpoint's `starttls`: the mail protocol spoken before the handshake.
fn read_starttls(cx: &mut Ctx, t: &mut Section) -> Option<Starttls> {
    let (p, span) = t.string(cx, "starttls")?;
    let known = [Starttls::Smtp, Starttls::Imap, Starttls::Pop3];
    if let Some(found) = known.into_iter().find(|k| k.as_str() == p) {
        return Some(found);
    }
    let message = match did_you_mean(&p, known.map(Starttls::as_str)) {
        Some(close) => format!("unknown STARTTLS protocol {p:?}; did you mean {close:?}?"),
        None => format!(
            "unknown STARTTLS protocol {p:?}; expected \"smtp\", \"imap\" or \"pop3\" (leave it out for a port that speaks TLS at once)"
        ),
    };
    cx.error(&span, &t.full_key("starttls"), message);
    None
}

/// An endpoint's `sni`: one host name, not a wildcard, or an IP address.
fn read_sni(cx: &mut Ctx, t: &mut Section) -> Option<CertName> {
    let (n, span) = t.string(cx, "sni")?;
    match n.parse::<CertName>() {
        Ok(d) if d.dns().is_some_and(|d| d.as_str().starts_with("*.")) => {
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

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::test_util::parse_as;
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse_as("/c/config.toml", text)
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
                    sni: None,
                    starttls: None,
                },
                Endpoint {
                    address: "127.0.0.1:8443".parse().unwrap(),
                    sni: Some("shop.example.com".parse().unwrap()),
                    starttls: None,
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
        let names =
            |list: &[&str]| -> Vec<CertName> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let plain = Endpoint {
            address: "127.0.0.1:443".parse().unwrap(),
            sni: None,
            starttls: None,
        };
        let shop = Endpoint {
            address: "127.0.0.1:443".parse().unwrap(),
            sni: Some("shop.example.com".parse().unwrap()),
            starttls: None,
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
        assert_eq!(
            plain
                .sni_for(&names(&["2001:db8::1", "a.example.com"]))
                .as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(shop.sni_for(&names(&["192.0.2.10"])), None);
        let by_ip = Endpoint {
            address: "127.0.0.1:443".parse().unwrap(),
            sni: Some("0:0::1".parse().unwrap()),
            starttls: None,
        };
        assert_eq!(
            by_ip.sni_for(&names(&["a.test", "::1"])).as_deref(),
            Some("::1")
        );
        assert_eq!(by_ip.sni_for(&names(&["a.test"])), None);
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
            "/c/config.toml:5: server.web.verify.port: unknown key; known keys here: address, sni, starttls",
            "/c/config.toml:5: server.web.verify.address: missing; the endpoint's address, like \"127.0.0.1:443\"",
            "/c/config.toml:5: server.web.verify: expected an address string or a table { address = \"127.0.0.1:443\", sni = \"www.example.com\" }, found integer",
            "/c/config.toml:9: server.ap.layout: unknown layout \"arch\"; expected \"debian\" (apache2, apache2ctl) or \"rhel\" (httpd, apachectl)",
            "/c/config.toml:17: certificate.site.pre_install: expected a non-empty argv array, e.g. [\"nginx\", \"-t\"]",
            "/c/config.toml:14: certificate.site.server: none of server \"ap\"'s verify endpoints is for [\"site.example.com\"]: add one without sni, or with sni = one of these names",
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
    fn a_verify_endpoint_may_speak_a_mail_protocol_before_tls() {
        let text = r#"
[server.mail]
kind = "command"
reload_command = ["postfix", "reload"]
verify = ["127.0.0.1:465", { address = "127.0.0.1:25", starttls = "smtp" }, { address = "127.0.0.1:143", starttls = "imap", sni = "mail.example.com" }, { address = "127.0.0.1:110", starttls = "pop3" }]
"#;
        let c = parse(text).unwrap();
        let got: Vec<_> = c.servers["mail"]
            .verify
            .iter()
            .map(|e| (e.address.port(), e.starttls))
            .collect();
        assert_eq!(
            got,
            vec![
                (465, None),
                (25, Some(Starttls::Smtp)),
                (143, Some(Starttls::Imap)),
                (110, Some(Starttls::Pop3))
            ]
        );
        let errors = parse(
            &text
                .replace("\"imap\"", "\"imapp\"")
                .replace("\"pop3\"", "\"ldap\""),
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/c/config.toml:5: server.mail.verify.starttls: unknown STARTTLS protocol \"imapp\"; did you mean \"imap\"?".to_string(),
                "/c/config.toml:5: server.mail.verify.starttls: unknown STARTTLS protocol \"ldap\"; expected \"smtp\", \"imap\" or \"pop3\" (leave it out for a port that speaks TLS at once)".to_string(),
            ]
        );
    }

    #[test]
    fn only_haproxy_has_a_runtime_socket() {
        let text = "[server.lb]\nkind = \"haproxy\"\nverify = [\"127.0.0.1:443\"]\nruntime_socket = \"/run/haproxy/admin.sock\"\n\n[server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]\nruntime_socket = \"/run/haproxy/admin.sock\"\n";
        let errors = parse(text).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/c/config.toml:9: server.web.runtime_socket: only kind = \"haproxy\" has a runtime API socket"
                    .to_string()
            ]
        );
        let ok = parse(&text.replace("kind = \"nginx\"", "kind = \"haproxy\"")).unwrap();
        assert_eq!(ok.servers["lb"].kind, ServerKind::Haproxy);
        assert_eq!(
            ok.servers["lb"].runtime_socket.as_deref(),
            Some(std::path::Path::new("/run/haproxy/admin.sock"))
        );
    }
}
