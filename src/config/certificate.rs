//! `[certificate.NAME]`: the names, the files the web server reads and their owners and
//! modes, the issuer and server it goes with, and install hooks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::build::{s_has, valid_name};
use super::issuer::{Challenge, Issuer, IssuerKind};
use super::profile::{ProfileKeys, read_profile_keys};
use super::walk::{Ctx, Section};
use super::{BUILTIN_ISSUER, MAX_LIFETIME, MAX_TIMEOUT};
use crate::core::{CertName, KeySpec, Span};

pub(super) const CERT_KEYS: &str = "names, issuer, failover_after, server, key_type, cert_file, key_file, chain_file, leaf_file, bundle_file, renew_before, owner, group, key_mode, cert_mode, revoke_first, reissue_on_issuer_change, profile, profile_required, shared, pre_install, post_install, hook_timeout";

#[derive(Clone, Debug)]
pub(crate) struct Certificate {
    pub(crate) name: String,
    /// DNS names and IP addresses (RFC 8738), none twice.
    pub(crate) names: Vec<CertName>,
    /// The first (primary) issuer of `issuers`: the one every renewal starts with.
    pub(crate) issuer: String,
    /// `issuer` as written: one name, or a list tried in order (failover; none twice).
    pub(crate) issuers: Vec<String>,
    /// Move to the next issuer of `issuers` after the current one has failed this long.
    pub(crate) failover_after: Span,
    /// `None`: install only, nothing to reload or probe.
    pub(crate) server: Option<String>,
    pub(crate) key_type: KeySpec,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) chain_file: Option<PathBuf>,
    pub(crate) leaf_file: Option<PathBuf>,
    /// Key, leaf and chain in one file (HAProxy's `crt`), with the key's mode.
    pub(crate) bundle_file: Option<PathBuf>,
    pub(crate) renew_before: Option<Span>,
    pub(crate) owner: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) key_mode: u32,
    pub(crate) cert_mode: u32,
    /// For a compromised key: revoke the old certificate before replacing it.
    pub(crate) revoke_first: bool,
    /// Re-issue when the certificate in service was issued by another CA than `issuer`
    /// (`issuer-changed`); by default that is only reported.
    pub(crate) reissue_on_issuer_change: bool,
    /// The ACME profile to order under, and whether it is required (else the issuer's).
    pub(crate) profile: ProfileKeys,
    /// One certificate for every host of the fleet that configures it (`[cluster]`).
    pub(crate) shared: bool,
    /// Run before the flip (the new files exist, nothing the server reads has changed); a
    /// non-zero exit vetoes the install.
    pub(crate) pre_install: Option<Vec<String>>,
    /// Run after the new certificate is installed (and verified, when there is a server);
    /// a failure is reported as one.
    pub(crate) post_install: Option<Vec<String>>,
    /// Limit for each hook.
    pub(crate) hook_timeout: Span,
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

pub(super) fn read_certificate(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Certificate> {
    let name_ok = valid_name(cx, s, "certificate", name);
    let names = read_names(cx, s);
    let issuers = read_issuers(cx, s);
    let failover_after = s
        .span(cx, "failover_after", MAX_LIFETIME)
        .unwrap_or(DEFAULT_FAILOVER_AFTER);
    let server = s.string(cx, "server").map(|(v, _)| v);
    let key_type = s
        .parsed::<KeySpec>(cx, "key_type")
        .unwrap_or(KeySpec::EcdsaP256);
    let (cert_file, key_file) = read_served_files(cx, s);
    let chain_file = s.path(cx, "chain_file");
    let leaf_file = s.path(cx, "leaf_file");
    let bundle_file = s.path(cx, "bundle_file");
    let renew_before = s.span(cx, "renew_before", MAX_LIFETIME);
    let owner = s.string(cx, "owner").map(|(v, _)| v);
    let group = s.string(cx, "group").map(|(v, _)| v);
    let key_mode = read_mode(cx, s, "key_mode", 0o600);
    let cert_mode = read_mode(cx, s, "cert_mode", 0o644);
    let revoke_first = s.boolean(cx, "revoke_first").unwrap_or(false);
    let reissue_on_issuer_change = s.boolean(cx, "reissue_on_issuer_change").unwrap_or(false);
    let profile = read_profile_keys(cx, s);
    let shared = s.boolean(cx, "shared").unwrap_or(false);
    let pre_install = s.command(cx, "pre_install");
    let post_install = s.command(cx, "post_install");
    let hook_timeout = s
        .span(cx, "hook_timeout", MAX_TIMEOUT)
        .unwrap_or(Span::secs(60));
    check_files(cx, s, key_mode, &cert_file, &key_file);
    if !name_ok || names.is_empty() {
        return None;
    }
    Some(Certificate {
        name: name.to_string(),
        names,
        issuer: issuers.first()?.clone(),
        issuers,
        failover_after,
        server,
        key_type,
        cert_file: cert_file?,
        key_file: key_file?,
        chain_file,
        leaf_file,
        bundle_file,
        renew_before,
        owner,
        group,
        key_mode,
        cert_mode,
        revoke_first,
        reissue_on_issuer_change,
        profile,
        shared,
        pre_install,
        post_install,
        hook_timeout,
    })
}

/// `failover_after` when it is not set: long enough that one CA's short outage does not move
/// a renewal to the next issuer, short next to any renewal window.
pub(crate) const DEFAULT_FAILOVER_AFTER: Span = Span::secs(3_600);

/// `issuer`: one issuer name, or a non-empty list of distinct names tried in order (the
/// built-in issuer when absent). Whether each exists is checked once every file is read.
fn read_issuers(cx: &mut Ctx, s: &mut Section) -> Vec<String> {
    let key = s.full_key("issuer");
    let list = match s.raw("issuer").map(|v| v.get_ref().as_array().is_some()) {
        None => return vec![BUILTIN_ISSUER.to_string()],
        Some(false) => {
            return s
                .string(cx, "issuer")
                .map(|(i, _)| vec![i])
                .unwrap_or_default();
        }
        Some(true) => s.strings(cx, "issuer").unwrap_or_default(),
    };
    let mut issuers: Vec<String> = Vec::new();
    for (name, span) in list {
        if issuers.contains(&name) {
            cx.error(&span, &key, format!("issuer {name:?} is listed twice"));
        } else {
            issuers.push(name);
        }
    }
    if issuers.is_empty() {
        cx.error(
            &s.at("issuer"),
            &key,
            "must name at least one issuer; leave issuer out for the built-in CA (\"internal\")",
        );
    }
    issuers
}

/// `names`: one to 100 DNS names or IP addresses, none twice (`::1` and `0:0::1` are the
/// same address).
fn read_names(cx: &mut Ctx, s: &mut Section) -> Vec<CertName> {
    let mut names = Vec::new();
    match s.strings(cx, "names") {
        Some(list) if !list.is_empty() => {
            let mut seen = BTreeSet::new();
            for (n, span) in list {
                match n.parse::<CertName>() {
                    Ok(d) if seen.insert(d.clone()) => names.push(d),
                    Ok(d) => cx.error(
                        &span,
                        &s.full_key("names"),
                        format!("{:?} is listed twice", d.to_string()),
                    ),
                    Err(e) => cx.error(&span, &s.full_key("names"), e),
                }
            }
            if names.len() > 100 {
                cx.error(
                    &s.at("names"),
                    &s.full_key("names"),
                    "at most 100 names per certificate",
                );
            }
        }
        Some(_) => cx.error(
            &s.span,
            &s.full_key("names"),
            "must list at least one DNS name or IP address",
        ),
        None => cx.error(
            &s.span,
            &s.full_key("names"),
            "missing; the DNS names (or IP addresses) the certificate is for",
        ),
    }
    names
}

/// Why `issuer` cannot issue for the IP addresses among `cert`'s names, with a hint, or
/// `None` when it can (or there are none). RFC 8738 §7 validates an IP address by http-01
/// or tls-alpn-01 only (there is no reverse-DNS dns-01); DNSimple sells certificates for its
/// domains, and the manual CAs certagent hands CSRs to are not known to take IP identifiers.
pub(super) fn ip_names_refusal(cert: &Certificate, issuer: &Issuer) -> Option<(String, String)> {
    let ip = cert.names.iter().find(|n| n.is_ip())?.to_string();
    let table = format!("[issuer.{}]", crate::error::shown(&issuer.name));
    match &issuer.kind {
        IssuerKind::Acme(a)
            if matches!(a.challenge, Challenge::Dns01 { .. } | Challenge::Rfc2136(_)) => Some((
            format!(
                "{ip:?} is an IP address: IP address names cannot be validated by dns-01, the challenge of issuer {:?}",
                issuer.name
            ),
            format!(
                "use challenge = \"http-01\" (webroot or listen) in {table}, or an issuer that does, for the certificates with IP addresses"
            ),
        )),
        IssuerKind::Dnsimple(_) => Some((
            format!(
                "{ip:?} is an IP address: issuer {:?} (DNSimple) issues for DNS names in its domain only",
                issuer.name
            ),
            "issue certificates for IP addresses from an ACME issuer with challenge = \"http-01\", or from the embedded CA (issuer = \"internal\")".to_string(),
        )),
        IssuerKind::Manual(_) => Some((
            format!(
                "{ip:?} is an IP address: issuer {:?} (manual) does not take IP address names",
                issuer.name
            ),
            "issue certificates for IP addresses from an ACME issuer with challenge = \"http-01\", or from the embedded CA (issuer = \"internal\")".to_string(),
        )),
        IssuerKind::Acme(_) | IssuerKind::Internal(_) => None,
    }
}

/// `cert_file` and `key_file`, both required.
fn read_served_files(cx: &mut Ctx, s: &mut Section) -> (Option<PathBuf>, Option<PathBuf>) {
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
    (cert_file, key_file)
}

/// A file mode under `key`, or `default` when it is absent or invalid.
fn read_mode(cx: &mut Ctx, s: &mut Section, key: &str, default: u32) -> u32 {
    match s.string(cx, key) {
        Some((m, span)) => parse_mode(&m).unwrap_or_else(|e| {
            cx.error(&span, &s.full_key(key), e);
            default
        }),
        None => default,
    }
}

/// The key is not world-readable, and the certificate and key are different files.
fn check_files(
    cx: &mut Ctx,
    s: &Section,
    key_mode: u32,
    cert_file: &Option<PathBuf>,
    key_file: &Option<PathBuf>,
) {
    if key_mode & 0o007 != 0 {
        cx.error(
            &s.at("key_mode"),
            &s.full_key("key_mode"),
            format!(
                "{key_mode:04o} lets every user read the private key; use 0600 or 0640 with a group"
            ),
        );
    }
    if let (Some(c), Some(k)) = (cert_file, key_file)
        && c == k
    {
        cx.error(
            &s.at("key_file"),
            &s.key,
            "cert_file and key_file must be different files",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::parse;
    use crate::core::CertName;

    fn config(names: &str, issuer: &str) -> String {
        format!(
            "{issuer}\n[certificate.c]\nnames = {names}\nissuer = \"ca\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n"
        )
    }

    const HTTP01: &str = "[issuer.ca]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nwebroot = \"/var/www/acme\"\n";
    const DNS01: &str = "[issuer.ca]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nchallenge = \"dns-01\"\ndns_provider = \"dnsimple\"\ntoken_file = \"/t\"\n";

    #[test]
    fn ip_addresses_are_names_beside_dns_names() {
        let c = parse(&config(r#"["a.test", "127.0.0.1", "2001:DB8::1"]"#, HTTP01)).unwrap();
        let names: Vec<String> = c.certificates["c"]
            .names
            .iter()
            .map(CertName::to_string)
            .collect();
        assert_eq!(names, ["a.test", "127.0.0.1", "2001:db8::1"]);
        assert!(c.certificates["c"].names[1].is_ip());
        // The embedded CA signs for IP addresses too.
        assert!(parse(&config(r#"["::1"]"#, "[issuer.ca]\nkind = \"internal\"\n")).is_ok());
    }

    #[test]
    fn bracketed_and_repeated_addresses_are_refused_at_the_names_key() {
        let errors = parse(&config(r#"["[::1]", "::1", "0:0::1"]"#, HTTP01)).unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:7: certificate.c.names: invalid name \"[::1]\": write an IPv6 address without brackets, e.g. \"::1\"",
                "/etc/certagent/config.toml:7: certificate.c.names: \"::1\" is listed twice",
            ]
        );
    }

    #[test]
    fn ip_addresses_with_a_dns01_dnsimple_or_manual_issuer_are_refused_with_a_hint() {
        let errors = parse(&config(r#"["a.test", "192.0.2.10"]"#, DNS01)).unwrap_err();
        assert_eq!(
            errors,
            [
                "/etc/certagent/config.toml:9: certificate.c.names: \"192.0.2.10\" is an IP address: IP address names cannot be validated by dns-01, the challenge of issuer \"ca\"\n    hint: use challenge = \"http-01\" (webroot or listen) in [issuer.ca], or an issuer that does, for the certificates with IP addresses"
            ]
        );
        // The same issuer is fine for DNS names alone.
        assert!(parse(&config(r#"["a.test"]"#, DNS01)).is_ok());
        let dnsimple =
            "[issuer.ca]\nkind = \"dnsimple\"\ndomain = \"a.test\"\ntoken_file = \"/t\"\n";
        let errors = parse(&config(r#"["::1"]"#, dnsimple)).unwrap_err();
        assert!(
            errors[0].contains("\"::1\" is an IP address: issuer \"ca\" (DNSimple) issues for DNS names in its domain only"),
            "{errors:#?}"
        );
        let manual = "[issuer.ca]\nkind = \"manual\"\n";
        let errors = parse(&config(r#"["::1"]"#, manual)).unwrap_err();
        assert!(
            errors[0].contains("issuer \"ca\" (manual) does not take IP address names"),
            "{errors:#?}"
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
    }

    const LISTED: &str = "[issuer.le]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nwebroot = \"/var/www/acme\"\n[issuer.backup]\nkind = \"internal\"\n";

    fn listed(issuer: &str, extra: &str) -> Result<crate::config::Config, Vec<String>> {
        parse(&format!(
            "{LISTED}{HTTP01}[certificate.c]\nnames = [\"a.test\"]\nissuer = {issuer}\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n{extra}"
        ))
    }

    #[test]
    fn issuer_is_a_name_or_a_failover_list() {
        let c = listed(r#"["le", "backup"]"#, "failover_after = \"10m\"\n").unwrap();
        let cert = &c.certificates["c"];
        assert_eq!(cert.issuer, "le");
        assert_eq!(cert.issuers, ["le", "backup"]);
        assert_eq!(cert.failover_after, crate::core::Span::secs(600));
        let c = listed(r#""backup""#, "").unwrap();
        assert_eq!(c.certificates["c"].issuers, ["backup"]);
        assert_eq!(
            c.certificates["c"].failover_after,
            super::DEFAULT_FAILOVER_AFTER
        );
        assert!(listed(r#"["ca", "backup"]"#, "failover_after = \"0s\"\n").is_ok());
    }

    #[test]
    fn a_failover_list_is_refused_empty_with_a_name_twice_or_an_unknown_issuer() {
        let e = listed("[]", "").unwrap_err();
        assert!(
            e[0].contains("certificate.c.issuer: must name at least one issuer"),
            "{e:#?}"
        );
        let e = listed(r#"["le", "le"]"#, "").unwrap_err();
        assert!(
            e[0].contains("certificate.c.issuer: issuer \"le\" is listed twice"),
            "{e:#?}"
        );
        let e = listed(r#"["le", "bakcup"]"#, "").unwrap_err();
        assert!(
            e[0].contains(
                "certificate.c.issuer: no [issuer.bakcup] is defined; did you mean \"backup\"?"
            ),
            "{e:#?}"
        );
        let e = listed("[\"le\", 3]", "").unwrap_err();
        assert!(e[0].contains("expected an array of strings"), "{e:#?}");
    }

    #[test]
    fn every_issuer_of_the_list_must_be_able_to_issue_for_ip_addresses() {
        let config = |issuer: &str| {
            format!(
                "{LISTED}[issuer.dns]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nchallenge = \"dns-01\"\ndns_provider = \"dnsimple\"\ntoken_file = \"/t\"\n[certificate.c]\nnames = [\"192.0.2.10\"]\nissuer = {issuer}\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n"
            )
        };
        assert!(parse(&config(r#"["le", "backup"]"#)).is_ok());
        let e = parse(&config(r#"["le", "dns"]"#)).unwrap_err();
        assert!(
            e[0].contains("cannot be validated by dns-01, the challenge of issuer \"dns\""),
            "{e:#?}"
        );
    }
}
