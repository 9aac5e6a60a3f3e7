//! Domain words shared by the pure core, the config and the shell: key types, reasons, names,
//! durations. Parsing here is strict: trailing junk is an error, never ignored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch. The core never reads a clock; callers pass `now`.
pub type Timestamp = i64;

/// The key algorithm and size a certificate is configured for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySpec {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeySpec {
    pub(crate) const ALL: [KeySpec; 5] = [
        KeySpec::EcdsaP256,
        KeySpec::EcdsaP384,
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeySpec::EcdsaP256 => "ecdsa-p256",
            KeySpec::EcdsaP384 => "ecdsa-p384",
            KeySpec::Rsa2048 => "rsa-2048",
            KeySpec::Rsa3072 => "rsa-3072",
            KeySpec::Rsa4096 => "rsa-4096",
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeySpec::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown key type {s:?}; expected one of {}",
                    KeySpec::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// Why a certificate is (or would be) re-issued. The order of the variants is the precedence
/// when several apply: the first one is reported as "the" reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The key was flagged compromised: it must never serve again.
    KeyCompromised,
    /// A blocklist or certagent's memory of compromised keys cannot be read: whether the key
    /// in service (or any new key) is listed cannot be told. Nothing is re-issued until it can.
    CompromiseUnknown,
    /// The CA revoked the certificate (or ARI says renew now).
    Revoked,
    /// The key file is absent or unreadable.
    KeyMissing,
    /// The certificate file is absent or unparseable.
    CertMissing,
    /// The key does not belong to the certificate, or fails a sign/verify round trip.
    KeyMismatch,
    /// The configured key type differs from the key in service.
    KeyTypeChanged,
    /// The configured names differ from the certificate's SANs.
    NamesChanged,
    /// The configured ACME profile differs from the one the certificate in service was
    /// ordered under.
    ProfileChanged,
    /// The certificate in service was issued by another CA than the configured issuer
    /// (acted on only with `reissue_on_issuer_change = true`).
    IssuerChanged,
    /// Inside the renewal window (or already expired).
    Expiring,
    /// An operator asked for it.
    Forced,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::KeyCompromised => "key-compromised",
            Reason::CompromiseUnknown => "compromise-unknown",
            Reason::Revoked => "revoked",
            Reason::KeyMissing => "key-missing",
            Reason::CertMissing => "cert-missing",
            Reason::KeyMismatch => "key-mismatch",
            Reason::KeyTypeChanged => "key-type-changed",
            Reason::NamesChanged => "names-changed",
            Reason::ProfileChanged => "profile-changed",
            Reason::IssuerChanged => "issuer-changed",
            Reason::Expiring => "expiring",
            Reason::Forced => "forced",
        }
    }

    /// The reason `as_str` names (records written by other hosts of a fleet).
    #[cfg(feature = "fleet")]
    pub(crate) fn parse(s: &str) -> Option<Reason> {
        const ALL: [Reason; 12] = [
            Reason::KeyCompromised,
            Reason::CompromiseUnknown,
            Reason::Revoked,
            Reason::KeyMissing,
            Reason::CertMissing,
            Reason::KeyMismatch,
            Reason::KeyTypeChanged,
            Reason::NamesChanged,
            Reason::ProfileChanged,
            Reason::IssuerChanged,
            Reason::Expiring,
            Reason::Forced,
        ];
        ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The reason an operator gave (`reissue --reason`), in the operator's words. certagent acts
/// on the `Reason` it maps to, and records both, so the journal and the logs say what was
/// asked, not only what it became.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requested {
    KeyCompromise,
    KeyLost,
    KeyChange,
    NamesChange,
    Superseded,
}

impl Requested {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Requested::KeyCompromise => "key-compromise",
            Requested::KeyLost => "key-lost",
            Requested::KeyChange => "key-change",
            Requested::NamesChange => "names-change",
            Requested::Superseded => "superseded",
        }
    }

    /// The reason certagent acts on.
    pub(crate) fn reason(self) -> Reason {
        match self {
            Requested::KeyCompromise => Reason::KeyCompromised,
            Requested::KeyLost => Reason::KeyMissing,
            Requested::KeyChange => Reason::KeyTypeChanged,
            Requested::NamesChange => Reason::NamesChanged,
            Requested::Superseded => Reason::Forced,
        }
    }
}

/// Why a re-issue started: what the operator asked for (`None` when certagent started it by
/// itself) and what it observed on disk at that moment (the reasons `check` would give).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub(crate) requested: Option<Requested>,
    pub(crate) observed: Vec<Reason>,
}

impl Asked {
    /// `requested=superseded observed=[]` style, for log lines and text output.
    pub(crate) fn observed_list(&self) -> String {
        let list: Vec<&str> = self.observed.iter().map(|r| r.as_str()).collect();
        format!("[{}]", list.join(", "))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DNS name as it goes into a certificate: lower-case, no trailing dot, at most one leading
/// `*.` label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<DomainName> for String {
    fn from(d: DomainName) -> String {
        d.0
    }
}

impl TryFrom<String> for DomainName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DomainName {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let s = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        if s.is_empty() || s.len() > 253 {
            return Err(format!(
                "invalid DNS name {raw:?}: must be 1 to 253 characters"
            ));
        }
        let rest = s.strip_prefix("*.").unwrap_or(&s);
        for label in rest.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(format!(
                    "invalid DNS name {raw:?}: label {label:?} must be 1 to 63 letters, digits or \
                     inner hyphens (a wildcard is allowed only as the whole first label)"
                ));
            }
        }
        Ok(DomainName(s))
    }
}

/// A span of time written like `90d`, `12h`, `1h30m`, `45s`, `2w`. Stored in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    pub(crate) const fn secs(s: i64) -> Span {
        Span(s)
    }
    pub(crate) const fn days(d: i64) -> Span {
        Span(d * 86_400)
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {raw:?}: expected a number and a unit (s, m, h, d, w), e.g. \"30d\" or \"1h30m\""
            )
        };
        let mut total: i64 = 0;
        let mut digits = String::new();
        let mut any = false;
        for c in raw.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(bad()),
            };
            let n: i64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            digits.clear();
            any = true;
        }
        if !any || !digits.is_empty() {
            return Err(bad());
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let (n, unit) = if s != 0 && s % 86_400 == 0 {
            (s / 86_400, "d")
        } else if s != 0 && s % 3_600 == 0 {
            (s / 3_600, "h")
        } else if s != 0 && s % 60 == 0 {
            (s / 60, "m")
        } else {
            (s, "s")
        };
        write!(f, "{n}{unit}")
    }
}

/// Human form of a number of seconds for status lines: `3d 4h`, `12m`, `40s`.
pub fn humanize(secs: i64) -> String {
    let neg = secs < 0;
    let s = secs.unsigned_abs();
    let text = if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3_600)
    } else if s >= 3_600 {
        format!("{}h {}m", s / 3_600, (s % 3_600) / 60)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    };
    if neg { format!("-{text}") } else { text }
}

/// A timestamp as RFC 3339 UTC ("2026-12-02T20:30:00Z"); out of range: the number itself.
pub fn rfc3339(ts: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_reason_is_kept_in_their_words_beside_the_reason_acted_on() {
        let cases = [
            (
                Requested::KeyCompromise,
                "key-compromise",
                Reason::KeyCompromised,
            ),
            (Requested::KeyLost, "key-lost", Reason::KeyMissing),
            (Requested::KeyChange, "key-change", Reason::KeyTypeChanged),
            (Requested::NamesChange, "names-change", Reason::NamesChanged),
            (Requested::Superseded, "superseded", Reason::Forced),
        ];
        for (requested, word, reason) in cases {
            assert_eq!(requested.as_str(), word);
            assert_eq!(requested.reason(), reason);
            assert_eq!(
                serde_json::to_string(&requested).unwrap(),
                format!("{word:?}")
            );
        }
        let asked = Asked {
            requested: Some(Requested::Superseded),
            observed: vec![Reason::KeyMissing, Reason::Expiring],
        };
        assert_eq!(asked.observed_list(), "[key-missing, expiring]");
        assert_eq!(Asked::default().observed_list(), "[]");
    }

    #[test]
    fn spans_parse_units_and_reject_junk() {
        assert_eq!("30d".parse::<Span>(), Ok(Span(30 * 86_400)));
        assert_eq!("1h30m".parse::<Span>(), Ok(Span(5_400)));
        assert_eq!("2w".parse::<Span>(), Ok(Span(1_209_600)));
        for bad in ["", "30", "d", "30x", "30d ", "-1d", "1.5h"] {
            let err = bad.parse::<Span>().unwrap_err();
            assert!(err.starts_with("invalid duration"), "{bad:?}: {err}");
        }
        assert_eq!(Span::days(90).to_string(), "90d");
        assert_eq!(Span(90).to_string(), "90s");
    }

    #[test]
    fn domain_names_are_normalised_and_checked() {
        assert_eq!(
            "WWW.Example.COM.".parse::<DomainName>().unwrap().as_str(),
            "www.example.com"
        );
        assert_eq!(
            "*.example.com".parse::<DomainName>().unwrap().as_str(),
            "*.example.com"
        );
        let err = "a..b".parse::<DomainName>().unwrap_err();
        assert_eq!(
            err,
            "invalid DNS name \"a..b\": label \"\" must be 1 to 63 letters, digits or inner hyphens \
             (a wildcard is allowed only as the whole first label)"
        );
        assert!("foo.*.com".parse::<DomainName>().is_err());
        assert!("-a.com".parse::<DomainName>().is_err());
        assert!("a_b.com".parse::<DomainName>().is_err());
    }

    #[test]
    fn key_specs_round_trip() {
        for k in KeySpec::ALL {
            assert_eq!(k.as_str().parse::<KeySpec>(), Ok(k));
        }
        assert_eq!(
            "rsa-1024".parse::<KeySpec>().unwrap_err(),
            "unknown key type \"rsa-1024\"; expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"
        );
    }

    #[test]
    fn reason_precedence_is_variant_order() {
        assert!(Reason::KeyCompromised < Reason::KeyMissing);
        assert!(Reason::KeyMissing < Reason::NamesChanged);
        assert!(Reason::Expiring < Reason::Forced);
    }
}
