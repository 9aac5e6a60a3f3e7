//! dns-01 by RFC 2136 dynamic update: `dns_server`, `tsig_key_file`, `dns_zone`,
//! `dns_resolvers` and `propagation_timeout` of an ACME issuer with `dns_provider = "rfc2136"`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::MAX_TIMEOUT;
use super::walk::{Ctx, Section};
use crate::core::{DomainName, Span};

/// TXT records added to the zone's primary by a TSIG-signed update, deleted afterwards.
#[derive(Clone, Debug)]
pub(crate) struct Rfc2136 {
    /// The primary that accepts updates.
    pub(crate) server: SocketAddr,
    /// BIND's key-file format; under the unit, a file in `/etc/certagent/credentials/` is
    /// read from its systemd credential.
    pub(crate) tsig_key_file: PathBuf,
    /// The zone to update; found by an SOA query to the resolvers when absent.
    pub(crate) zone: Option<String>,
    /// Where SOA, NS, CNAME and address lookups go; the system's resolvers when absent.
    pub(crate) resolvers: Option<Vec<SocketAddr>>,
    pub(crate) propagation_timeout: Span,
}

pub(super) fn read_rfc2136(cx: &mut Ctx, s: &mut Section) -> Option<Rfc2136> {
    let server = match s.string(cx, "dns_server") {
        Some((text, span)) => match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.error(
                    &span,
                    &s.full_key("dns_server"),
                    format!(
                        "{text:?} is not an address like \"192.0.2.53:53\"; the primary name server that accepts the updates (by IP address, not by name)"
                    ),
                );
                None
            }
        },
        None => {
            cx.error(
                &s.span,
                &s.full_key("dns_server"),
                "missing; dns_provider = \"rfc2136\" needs the address of the primary that accepts updates, e.g. \"192.0.2.53:53\"",
            );
            None
        }
    };
    let tsig_key_file = s.path(cx, "tsig_key_file");
    if s.span_of("tsig_key_file").is_none() {
        cx.error(
            &s.span,
            &s.full_key("tsig_key_file"),
            "missing; a file in BIND's key format (tsig-keygen -a hmac-sha256 NAME), e.g. \"/etc/certagent/credentials/tsig.key\"",
        );
    }
    let zone = match s.parsed::<DomainName>(cx, "dns_zone") {
        Some(z) if z.as_str().starts_with("*.") => {
            cx.error(
                &s.at("dns_zone"),
                &s.full_key("dns_zone"),
                "a DNS zone cannot be a wildcard",
            );
            None
        }
        Some(z) => Some(z.to_string().trim_end_matches('.').to_ascii_lowercase()),
        None => None,
    };
    let resolvers = read_resolvers(cx, s);
    let propagation_timeout = s
        .span(cx, "propagation_timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(600));
    Some(Rfc2136 {
        server: server?,
        tsig_key_file: tsig_key_file?,
        zone,
        resolvers,
        propagation_timeout,
    })
}

/// `dns_resolvers`: one to eight "IP:port" or "IP" (port 53).
fn read_resolvers(cx: &mut Ctx, s: &mut Section) -> Option<Vec<SocketAddr>> {
    let key = s.full_key("dns_resolvers");
    let list = s.strings(cx, "dns_resolvers")?;
    if list.is_empty() || list.len() > 8 {
        cx.error(
            &s.at("dns_resolvers"),
            &key,
            "expected one to eight resolvers, e.g. [\"192.0.2.53:53\"]; leave it out for the system's",
        );
        return None;
    }
    let mut out = Vec::new();
    for (text, span) in list {
        match text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(a) => out.push(a),
            Err(_) => cx.error(
                &span,
                &key,
                format!(
                    "{text:?} is not an address like \"192.0.2.53:53\" (by IP address, not by name)"
                ),
            ),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::parse;
    use super::super::{Challenge, IssuerKind};

    const HEAD: &str = "[issuer.ns]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nchallenge = \"dns-01\"\ndns_provider = \"rfc2136\"\n";

    #[test]
    fn rfc2136_needs_a_server_address_and_a_key_file() {
        let ok = parse(&format!(
            "{HEAD}dns_server = \"192.0.2.53:53\"\ntsig_key_file = \"/etc/certagent/credentials/tsig.key\"\ndns_zone = \"Example.COM.\"\n"
        ))
        .unwrap();
        let IssuerKind::Acme(a) = &ok.issuers["ns"].kind else {
            panic!("not acme")
        };
        let Challenge::Rfc2136(r) = &a.challenge else {
            panic!("{:?}", a.challenge)
        };
        assert_eq!(r.server.to_string(), "192.0.2.53:53");
        assert_eq!(r.zone.as_deref(), Some("example.com"));
        assert_eq!(r.resolvers, None);
        assert_eq!(r.propagation_timeout.0, 600);
        assert_eq!(
            r.tsig_key_file.display().to_string(),
            "/etc/certagent/credentials/tsig.key"
        );

        let errors = parse(HEAD).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:1: issuer.ns.dns_server: missing; dns_provider = \"rfc2136\" needs the address of the primary that accepts updates, e.g. \"192.0.2.53:53\"",
                "/etc/certagent/config.toml:1: issuer.ns.tsig_key_file: missing; a file in BIND's key format (tsig-keygen -a hmac-sha256 NAME), e.g. \"/etc/certagent/credentials/tsig.key\"",
            ]
        );
        let errors = parse(&format!(
            "{HEAD}dns_server = \"ns1.example.com\"\ntsig_key_file = \"tsig.key\"\ndns_zone = \"*.example.com\"\n"
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].contains(":6: issuer.ns.dns_server: \"ns1.example.com\" is not an address like \"192.0.2.53:53\""), "{errors:#?}");
        assert!(
            errors[1].contains(":7: issuer.ns.tsig_key_file: "),
            "{errors:#?}"
        );
        assert!(
            errors[2].ends_with(":8: issuer.ns.dns_zone: a DNS zone cannot be a wildcard"),
            "{errors:#?}"
        );
    }

    #[test]
    fn resolvers_are_addresses_with_port_53_by_default() {
        let base = format!(
            "{HEAD}dns_server = \"192.0.2.53:53\"\ntsig_key_file = \"/etc/certagent/credentials/tsig.key\"\n"
        );
        let ok = parse(&format!(
            "{base}dns_resolvers = [\"192.0.2.1\", \"[2001:db8::1]:5353\"]\n"
        ))
        .unwrap();
        let IssuerKind::Acme(a) = &ok.issuers["ns"].kind else {
            panic!("not acme")
        };
        let Challenge::Rfc2136(r) = &a.challenge else {
            panic!("{:?}", a.challenge)
        };
        let got: Vec<String> = r
            .resolvers
            .iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["192.0.2.1:53", "[2001:db8::1]:5353"]);
        let errors = parse(&format!("{base}dns_resolvers = [\"ns1.example.com\"]\n")).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:8: issuer.ns.dns_resolvers: \"ns1.example.com\" is not an address like \"192.0.2.53:53\" (by IP address, not by name)"
            ]
        );
        let errors = parse(&format!("{base}dns_resolvers = []\n")).unwrap_err();
        assert!(
            errors[0].contains("expected one to eight resolvers"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unknown_dns_provider_gets_a_suggestion() {
        let errors = parse(&HEAD.replace("rfc2136", "rfc2163")).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:5: issuer.ns.dns_provider: unknown DNS provider \"rfc2163\"; did you mean \"rfc2136\"?"
            ]
        );
    }
}
