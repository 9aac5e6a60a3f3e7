//! The names a certificate is for: DNS names and, since RFC 8738, IP addresses. One type so
//! that the names of a certificate stay one list everywhere (config, CSR, ACME order, names
//! check, output); the few places that treat the kinds differently match on it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::types::DomainName;

/// A name in a certificate: a DNS name (possibly a wildcard) or an IP address. Its text is
/// canonical: a DNS name lower-case without trailing dot, an IP address as `IpAddr` writes it
/// (RFC 5952 for IPv6: `0:0::1` is `::1`), which is also how certificate SANs are compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CertName {
    Dns(DomainName),
    /// An `ip` ACME identifier and an iPAddress SAN (RFC 8738).
    Ip(IpAddr),
}

impl CertName {
    /// The DNS name, `None` for an IP address.
    pub(crate) fn dns(&self) -> Option<&DomainName> {
        match self {
            CertName::Dns(d) => Some(d),
            CertName::Ip(_) => None,
        }
    }

    pub(crate) fn is_ip(&self) -> bool {
        matches!(self, CertName::Ip(_))
    }
}

impl From<DomainName> for CertName {
    fn from(d: DomainName) -> CertName {
        CertName::Dns(d)
    }
}

impl From<IpAddr> for CertName {
    fn from(ip: IpAddr) -> CertName {
        CertName::Ip(ip)
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Dns(d) => f.write_str(d.as_str()),
            CertName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl From<CertName> for String {
    fn from(n: CertName) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for CertName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for CertName {
    type Err = String;

    /// An IP address when the text is one (`192.0.2.10`, `2001:db8::1`), else a DNS name.
    /// Bracketed IPv6 (`[::1]`, URL syntax) and zone ids (`fe80::1%eth0`, local to a host)
    /// are refused rather than guessed at; so is a dotted name whose last label is all digits
    /// (`127.1`, `10.0.0.256`): no TLD is numeric, so that is a mistyped IPv4 address.
    fn from_str(raw: &str) -> Result<Self, String> {
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(CertName::Ip(ip));
        }
        if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return Err(format!(
                "invalid name {raw:?}: write an IPv6 address without brackets, e.g. {:?}",
                inner.split('%').next().unwrap_or(inner)
            ));
        }
        if let Some((addr, _)) = raw.split_once('%')
            && addr.parse::<IpAddr>().is_ok()
        {
            return Err(format!(
                "invalid name {raw:?}: an IP address with a zone id is only meaningful on this host; certificates name global addresses, e.g. {addr:?} without \"%…\""
            ));
        }
        if raw.contains(':') {
            return Err(format!(
                "invalid name {raw:?}: not an IPv6 address (and a DNS name has no \":\"); a port does not belong in names"
            ));
        }
        let last = raw.trim_end_matches('.').rsplit('.').next().unwrap_or("");
        if raw.contains('.') && !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid name {raw:?}: neither an IPv4 address (four numbers 0 to 255, e.g. \"192.0.2.10\") nor a DNS name (no top-level domain is all digits)"
            ));
        }
        raw.parse::<DomainName>().map(CertName::Dns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_are_names_in_canonical_form() {
        let v4: CertName = "127.0.0.1".parse().unwrap();
        assert!(v4.is_ip());
        assert_eq!(v4.to_string(), "127.0.0.1");
        let v6: CertName = "0:0::1".parse().unwrap();
        assert_eq!(v6, "::1".parse().unwrap());
        assert_eq!(v6.to_string(), "::1");
        assert_eq!(
            "2001:DB8:0:0:0:0:0:1"
                .parse::<CertName>()
                .unwrap()
                .to_string(),
            "2001:db8::1"
        );
        let dns: CertName = "WWW.Example.COM".parse().unwrap();
        assert_eq!(dns.dns().map(DomainName::as_str), Some("www.example.com"));
        assert!(!dns.is_ip());
        assert_eq!(
            serde_json::to_string(&vec![v4, v6, dns]).unwrap(),
            r#"["127.0.0.1","::1","www.example.com"]"#
        );
    }

    #[test]
    fn bracketed_zoned_and_mistyped_addresses_are_refused_with_the_fix() {
        assert_eq!(
            "[::1]".parse::<CertName>().unwrap_err(),
            "invalid name \"[::1]\": write an IPv6 address without brackets, e.g. \"::1\""
        );
        assert_eq!(
            "fe80::1%eth0".parse::<CertName>().unwrap_err(),
            "invalid name \"fe80::1%eth0\": an IP address with a zone id is only meaningful on this host; certificates name global addresses, e.g. \"fe80::1\" without \"%…\""
        );
        assert!(
            "127.0.0.1:443"
                .parse::<CertName>()
                .unwrap_err()
                .contains("a port does not belong in names")
        );
        for bad in ["127.1", "10.0.0.256", "1.2.3.4."] {
            let err = bad.parse::<CertName>().unwrap_err();
            assert!(err.contains("neither an IPv4 address"), "{bad}: {err}");
        }
        // A wildcard stays DNS-only: "*.1.2.3" is refused, "*.a.test" is a DNS name.
        assert!("*.1.2.3".parse::<CertName>().is_err());
        assert!("*.a.test".parse::<CertName>().unwrap().dns().is_some());
        // Plain DNS names keep their own errors.
        assert!(
            "a..b"
                .parse::<CertName>()
                .unwrap_err()
                .starts_with("invalid DNS name \"a..b\"")
        );
    }
}
