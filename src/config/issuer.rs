//! `[issuer.NAME]`: ACME CAs (http-01 or dns-01), the embedded local CA, manual CAs, and
//! DNSimple; the URLs and credentials each needs.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use super::build::valid_name;
use super::profile::{ProfileKeys, read_profile_keys, read_staging_directory};
use super::walk::{self, Ctx, Section};
use super::{MAX_LIFETIME, MAX_REMIND, MAX_TIMEOUT};
use crate::core::{DomainName, Span};

pub(super) const ISSUER_KEYS: &str = "kind, directory, contact, ca_bundle, challenge, webroot, listen, eab_kid, eab_hmac_key_file, account_from_certbot, profile, profile_required, staging_directory, timeout, validity, dns_provider, dns_zone, dns_server, dns_resolvers, tsig_key_file, propagation_timeout, remind_every, token_file, account_id, api_url, domain";

#[derive(Clone, Debug)]
pub(crate) struct Issuer {
    pub(crate) name: String,
    pub(crate) kind: IssuerKind,
}

impl Issuer {
    /// Which CA this issuer is, as far as the configuration tells: an ACME directory, a
    /// local CA (by the name its files are kept under), DNSimple, a human. Journalled with
    /// each install, so that a configuration that later names another CA is noticed
    /// (`issuer-changed`).
    pub(crate) fn identity(&self) -> String {
        match &self.kind {
            IssuerKind::Acme(a) => format!("acme {}", a.directory),
            IssuerKind::Internal(_) => format!("internal {}", self.name),
            IssuerKind::Manual(_) => format!("manual {}", self.name),
            IssuerKind::Dnsimple(d) => format!("dnsimple {}", d.api.base_url),
        }
    }
}

// A handful per configuration, built once: the size of the ACME variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum IssuerKind {
    Acme(AcmeIssuer),
    Internal(InternalIssuer),
    Manual(ManualIssuer),
    Dnsimple(DnsimpleIssuer),
}

/// A CA reached by a human: the CSR goes out, the certificate comes back by `import` or the
/// inbox, possibly days later (approval e-mail).
#[derive(Clone, Debug)]
pub(crate) struct ManualIssuer {
    /// How often to remind while approval is pending.
    pub(crate) remind_every: Span,
}

/// Access to DNSimple's API v2.
#[derive(Clone, Debug)]
pub(crate) struct DnsimpleApi {
    /// An absolute path, or the name of a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`).
    pub(crate) token_file: String,
    /// Numeric account id; looked up with `/whoami` when absent.
    pub(crate) account_id: Option<u64>,
    pub(crate) base_url: String,
}

/// Let's Encrypt certificates bought and issued through DNSimple. DNSimple generates the key
/// (its API takes no CSR) and keeps a copy.
#[derive(Clone, Debug)]
pub(crate) struct DnsimpleIssuer {
    pub(crate) api: DnsimpleApi,
    /// The DNSimple domain the certificates belong to (every name must be in it).
    pub(crate) domain: String,
    /// How long one job waits for DNSimple to issue before it reports "pending" and checks
    /// again later.
    pub(crate) timeout: Span,
}

#[derive(Clone, Debug)]
pub(crate) struct AcmeIssuer {
    pub(crate) directory: String,
    pub(crate) contact: Vec<String>,
    pub(crate) ca_bundle: Option<PathBuf>,
    pub(crate) challenge: Challenge,
    pub(crate) eab: Option<Eab>,
    /// How long one issuance may take before it is retried later.
    pub(crate) timeout: Span,
    /// A certbot account directory (`…/accounts/SERVER/directory/ID`) whose account to take
    /// over at first use, instead of registering a new one (`issuer::acme::certbot`).
    pub(crate) account_from_certbot: Option<PathBuf>,
    /// The default ACME profile of this issuer's certificates (a certificate's own wins).
    pub(crate) profile: ProfileKeys,
    /// Where `reissue --dry-run` orders instead of `directory` (a staging CA).
    pub(crate) staging_directory: Option<String>,
}

/// How ACME challenges are answered.
#[derive(Clone, Debug)]
pub(crate) enum Challenge {
    Http01(Http01),
    /// TXT records through DNSimple's zone API; waits until DNSimple reports them distributed.
    Dns01 {
        api: DnsimpleApi,
        zone: Option<String>,
        propagation_timeout: Span,
    },
    /// TXT records by RFC 2136 dynamic update, TSIG-signed, to the zone's primary.
    Rfc2136(super::rfc2136::Rfc2136),
}

/// How http-01 challenges are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Http01 {
    /// Token files are written to `WEBROOT/.well-known/acme-challenge/`.
    Webroot(PathBuf),
    /// certagent answers on this address itself.
    Listen(SocketAddr),
}

#[derive(Clone, Debug)]
pub(crate) struct Eab {
    pub(crate) kid: String,
    /// File holding the base64url MAC key. Under the unit, a file in
    /// `/etc/certagent/credentials/` is read from its systemd credential.
    pub(crate) hmac_key_file: PathBuf,
}

#[derive(Clone, Debug)]
pub(crate) struct InternalIssuer {
    pub(crate) validity: Span,
}

pub(super) fn read_issuer(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Issuer> {
    let name_ok = valid_name(cx, s, "issuer", name);
    const KINDS: [&str; 4] = ["acme", "internal", "manual", "dnsimple"];
    let Some((kind, kind_span)) = s.string(cx, "kind") else {
        cx.error(
            &s.span,
            &s.full_key("kind"),
            "missing; one of \"acme\", \"internal\", \"manual\" or \"dnsimple\"",
        );
        s.abandon();
        return None;
    };
    let kind = match kind.as_str() {
        "internal" => IssuerKind::Internal(read_internal(cx, s)),
        "acme" => IssuerKind::Acme(read_acme(cx, s)?),
        "manual" => IssuerKind::Manual(read_manual(cx, s)),
        "dnsimple" => IssuerKind::Dnsimple(read_dnsimple(cx, s)?),
        other => {
            let message = match walk::did_you_mean(other, KINDS) {
                Some(close) => format!("unknown issuer kind {other:?}; did you mean {close:?}?"),
                None => format!(
                    "unknown issuer kind {other:?}; expected \"acme\", \"internal\", \"manual\" or \"dnsimple\""
                ),
            };
            cx.error(&kind_span, &s.full_key("kind"), message);
            s.abandon();
            return None;
        }
    };
    name_ok.then(|| Issuer {
        name: name.to_string(),
        kind,
    })
}

/// `kind = "internal"`: the certificates' validity.
fn read_internal(cx: &mut Ctx, s: &mut Section) -> InternalIssuer {
    let validity = s
        .span(cx, "validity", MAX_LIFETIME)
        .unwrap_or(Span::days(90));
    if validity.0 < 3_600 {
        cx.error(
            &s.at("validity"),
            &s.full_key("validity"),
            "must be at least 1h",
        );
    }
    InternalIssuer { validity }
}

/// `kind = "acme"`: directory, contacts, challenge, EAB and timeout.
fn read_acme(cx: &mut Ctx, s: &mut Section) -> Option<AcmeIssuer> {
    let directory = read_directory(cx, s);
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
    let challenge = read_challenge(cx, s);
    let eab = read_eab(cx, s);
    let timeout = s
        .span(cx, "timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(600));
    let account_from_certbot = s.path(cx, "account_from_certbot");
    let profile = read_profile_keys(cx, s);
    let staging_directory = read_staging_directory(cx, s);
    Some(AcmeIssuer {
        account_from_certbot,
        profile,
        staging_directory,
        directory: directory?,
        contact: contact.into_iter().map(|(c, _)| c).collect(),
        ca_bundle,
        challenge: challenge?,
        eab,
        timeout,
    })
}

/// The ACME `directory`: a required https:// URL.
fn read_directory(cx: &mut Ctx, s: &mut Section) -> Option<String> {
    match s.string(cx, "directory") {
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
    }
}

/// `challenge`: http-01 (the default) or dns-01.
fn read_challenge(cx: &mut Ctx, s: &mut Section) -> Option<Challenge> {
    let challenge = s.string(cx, "challenge");
    match challenge.as_ref().map(|(c, span)| (c.as_str(), span)) {
        None | Some(("http-01", _)) => read_http01(cx, s).map(Challenge::Http01),
        Some(("dns-01", span)) => read_dns01(cx, s, span),
        Some((c, span)) => {
            let msg = if c == "tls-alpn-01" {
                format!(
                    "{c:?} is not supported by this version of certagent; use \"http-01\" or \"dns-01\""
                )
            } else if let Some(close) = walk::did_you_mean(c, ["http-01", "dns-01"]) {
                format!("unknown challenge {c:?}; did you mean {close:?}?")
            } else {
                format!("unknown challenge {c:?}; expected \"http-01\" or \"dns-01\"")
            };
            cx.error(span, &s.full_key("challenge"), msg);
            None
        }
    }
}

/// `dns_provider`, `dns_zone`, `propagation_timeout` and the DNSimple API (or the RFC 2136
/// server and key) for dns-01;
/// `challenge_span` is where `challenge = "dns-01"` was set.
fn read_dns01(cx: &mut Ctx, s: &mut Section, challenge_span: &Range<usize>) -> Option<Challenge> {
    match s.string(cx, "dns_provider") {
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
        Some((p, _)) if p == "rfc2136" => {
            super::rfc2136::read_rfc2136(cx, s).map(Challenge::Rfc2136)
        }
        Some((p, pspan)) => {
            let message = match walk::did_you_mean(&p, ["dnsimple", "rfc2136"]) {
                Some(close) => format!("unknown DNS provider {p:?}; did you mean {close:?}?"),
                None => format!("unknown DNS provider {p:?}; expected \"dnsimple\" or \"rfc2136\""),
            };
            cx.error(&pspan, &s.full_key("dns_provider"), message);
            None
        }
        None => {
            cx.error(
                challenge_span,
                &s.full_key("dns_provider"),
                "dns-01 needs dns_provider = \"dnsimple\" or \"rfc2136\"",
            );
            None
        }
    }
}

/// External account binding: `eab_kid` and `eab_hmac_key_file`, both or neither.
fn read_eab(cx: &mut Ctx, s: &mut Section) -> Option<Eab> {
    let eab_kid = s.string(cx, "eab_kid").map(|(k, _)| k);
    let eab_file = s.path(cx, "eab_hmac_key_file");
    match (eab_kid, eab_file) {
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
    }
}

/// `kind = "manual"`: how often to remind.
fn read_manual(cx: &mut Ctx, s: &mut Section) -> ManualIssuer {
    let remind_every = s
        .span(cx, "remind_every", MAX_REMIND)
        .unwrap_or(Span::days(1));
    if remind_every.0 < 60 {
        cx.error(
            &s.at("remind_every"),
            &s.full_key("remind_every"),
            "must be at least 1m",
        );
    }
    ManualIssuer { remind_every }
}

/// `kind = "dnsimple"`: the API, the (non-wildcard) domain and the timeout.
fn read_dnsimple(cx: &mut Ctx, s: &mut Section) -> Option<DnsimpleIssuer> {
    let api = read_dnsimple_api(cx, s);
    let domain = match s.parsed::<DomainName>(cx, "domain") {
        Some(d) if !d.as_str().starts_with("*.") => Some(d.to_string()),
        Some(_) => {
            cx.error(
                &s.at("domain"),
                &s.full_key("domain"),
                "the DNSimple domain cannot be a wildcard",
            );
            None
        }
        None => {
            cx.error(
                &s.span,
                &s.full_key("domain"),
                "missing; the DNSimple domain the certificates belong to, e.g. \"example.com\"",
            );
            None
        }
    };
    let timeout = s
        .span(cx, "timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(300));
    Some(DnsimpleIssuer {
        api: api?,
        domain: domain?,
        timeout,
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
                &s.at("listen"),
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
    let token_file = read_token_file(cx, s);
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

/// `token_file`: an absolute path or a systemd credential name.
fn read_token_file(cx: &mut Ctx, s: &mut Section) -> Option<String> {
    match s.string(cx, "token_file") {
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
    }
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

#[cfg(test)]
mod tests {
    use super::super::test_util::parse;
    use super::*;

    #[test]
    fn acme_issuer_needs_directory_and_a_challenge_responder() {
        let errors = parse("[issuer.le]\nkind = \"acme\"\ndirectory = \"http://x\"\n").unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:1: issuer.le: http-01 needs webroot = \"/var/www/acme\" or listen = \"127.0.0.1:80\"",
                "/etc/certagent/config.toml:3: issuer.le.directory: \"http://x\" must be an https:// URL",
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
