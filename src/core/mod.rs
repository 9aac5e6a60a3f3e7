//! The pure core: given what is configured, what is on disk and the time, decide whether a
//! certificate needs re-issuing, why, and when to look again.
//!
//! No I/O, no clock, no randomness: `now` and random samples are arguments, so every rule here
//! is tested with tables. The shell (executor, daemon) gathers the facts and carries out the
//! decision.

pub(crate) mod cadence;
pub(crate) mod failover;
pub(crate) mod lifecycle;
mod name;
mod types;

use std::collections::BTreeSet;

pub use name::CertName;
pub use types::{
    Asked, DomainName, KeySpec, Reason, Requested, Span, Timestamp, humanize, rfc3339,
};

/// What the configuration asks for.
#[derive(Clone, Debug)]
pub(crate) struct Desired {
    pub(crate) names: BTreeSet<CertName>,
    pub(crate) key_spec: KeySpec,
    /// Re-issue this long before `not_after`; `None` means "when 1/3 of the lifetime is left"
    /// (1/2 under ten days of lifetime; see `renewal_time`).
    pub(crate) renew_before: Option<Span>,
    /// Re-issue when the certificate in service comes from another CA than the configured
    /// issuer (`reissue_on_issuer_change`); else that is only reported.
    pub(crate) reissue_on_issuer_change: bool,
    /// The ACME profile to order under (`None`: none asked for).
    pub(crate) profile: Option<String>,
}

/// What the certificate file holds.
#[derive(Clone, Debug)]
pub(crate) enum CertFact {
    Missing,
    /// Present but unusable: unparseable, empty, too large. The text says why.
    Invalid(String),
    Present(LeafFacts),
}

/// The facts of a leaf certificate the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LeafFacts {
    pub(crate) names: BTreeSet<String>,
    pub(crate) not_before: Timestamp,
    pub(crate) not_after: Timestamp,
    /// Hex serial, lower case, no leading zeros.
    pub(crate) serial: String,
    pub(crate) key_spec: Option<KeySpec>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo, hex.
    pub(crate) spki_sha256: String,
    /// http(s) URLs of its CRL Distribution Points.
    pub(crate) crl_urls: Vec<String>,
    /// RFC 9773 CertID (None without an Authority Key Identifier).
    pub(crate) cert_id: Option<String>,
    /// The issuer's distinguished name (RFC 4514 text).
    pub(crate) issuer_dn: String,
}

/// What is known of the CA the certificate in service should come from (see
/// `executor::observe::expected_issuer` for how the shell finds it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum IssuerFact {
    /// Nothing to compare with: no judgement.
    Unknown,
    /// The leaf in service must name this issuer DN.
    Dn(String),
    /// Known to be another CA than the configured one (the configuration names a different
    /// CA than the one that issued what certagent last installed, and that is in service).
    Other,
}

/// What the key file holds.
#[derive(Clone, Debug)]
pub(crate) enum KeyFact {
    Missing,
    Invalid(String),
    Present {
        key_spec: Option<KeySpec>,
        spki_sha256: String,
        /// A signature made with this key verifies under the certificate's public key.
        /// `None` when there is no certificate to check against.
        verifies_with_cert: Option<bool>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Observed {
    pub(crate) cert: CertFact,
    pub(crate) key: KeyFact,
    /// The key in service was flagged compromised (operator, flag file, blocklist, CA).
    pub(crate) compromised: bool,
    /// The CA revoked the certificate.
    pub(crate) revoked: bool,
    /// When the CA's ARI window says to renew (the point picked in it), for the leaf in
    /// service; it replaces the lifetime rule.
    pub(crate) suggested_renewal: Option<Timestamp>,
    /// A list of compromised keys could not be read: whether a key is on it is unknown.
    pub(crate) compromise_unknown: bool,
    /// When certagent installed the leaf in service (`None`: not known, e.g. adopted files).
    pub(crate) installed_at: Option<Timestamp>,
    /// Which CA the leaf in service should come from.
    pub(crate) issuer: IssuerFact,
    /// Which ACME profile the leaf in service was ordered under.
    pub(crate) profile: ProfileFact,
}

/// What certagent recorded of the ACME profile the leaf in service was ordered under.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ProfileFact {
    /// certagent did not install that leaf (adopted or foreign files): no judgement.
    Unknown,
    /// certagent installed it, ordered asking for this profile (`None`: none). What was
    /// asked, not what the CA granted: a CA that does not offer the profile is not asked
    /// again and again for the same configuration.
    AskedFor(Option<String>),
}

/// The outcome of `decide`: every reason that applies (most urgent first) and when the
/// certificate is due if nothing is wrong now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    pub(crate) reasons: Vec<Reason>,
    /// Reasons that apply but the configuration says only to report (`issuer-changed`
    /// without `reissue_on_issuer_change`): never acted on, never unhealthy.
    pub(crate) noted: Vec<Reason>,
    /// When the certificate enters its renewal window (present only with a parseable leaf).
    pub(crate) renew_at: Option<Timestamp>,
    /// Which rule chose `renew_at`.
    pub(crate) renewal_rule: Option<RenewalRule>,
    pub(crate) not_after: Option<Timestamp>,
}

/// How the renewal point of a certificate was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenewalRule {
    /// The point picked in the CA's ARI window.
    Ari,
    /// `renew_before` ahead of expiry.
    Configured,
    /// A share of the lifetime (no `renew_before`).
    Lifetime,
    /// The configured or lifetime point had already passed when certagent installed the
    /// certificate (a window as long as the lifetime, a CA issuing shorter certificates than
    /// expected): half of what was left of its lifetime then, so that it is not re-issued
    /// in a loop.
    AfterInstall,
}

/// A renewal point and the rule that chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Renewal {
    pub(crate) at: Timestamp,
    pub(crate) rule: RenewalRule,
}

impl Decision {
    /// The reason that wins when several apply.
    pub(crate) fn reason(&self) -> Option<Reason> {
        self.reasons.first().copied()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The next instant at which the decision could change by the passing of time alone.
    pub(crate) fn next_check(&self, now: Timestamp) -> Option<Timestamp> {
        match (self.is_healthy(), self.renew_at) {
            (true, Some(at)) if at > now => Some(at),
            _ => None,
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` should be renewed: `renew_before`
/// ahead of expiry when configured, else when one third of its lifetime is left (one half for
/// lifetimes under ten days, as Let's Encrypt advises for short-lived certificates).
pub(crate) fn renewal_time(
    not_before: Timestamp,
    not_after: Timestamp,
    renew_before: Option<Span>,
) -> Timestamp {
    match renew_before {
        Some(Span(before)) => not_after.saturating_sub(before),
        None => {
            let lifetime = (not_after - not_before).max(0);
            let left = if lifetime < 10 * 86_400 {
                lifetime / 2
            } else {
                lifetime / 3
            };
            not_after - left
        }
    }
}

/// When a certificate installed at `installed_at` should be renewed: as `renewal_time` says,
/// unless that point had already passed at installation — a new certificate that is due at
/// once would be re-issued in a loop — then halfway through what was left of its lifetime.
pub(crate) fn renewal_point(
    not_before: Timestamp,
    not_after: Timestamp,
    renew_before: Option<Span>,
    installed_at: Option<Timestamp>,
) -> Renewal {
    let at = renewal_time(not_before, not_after, renew_before);
    match installed_at {
        Some(installed) if at <= installed && installed < not_after => Renewal {
            at: installed + (not_after - installed) / 2,
            rule: RenewalRule::AfterInstall,
        },
        _ => Renewal {
            at,
            rule: match renew_before {
                Some(_) => RenewalRule::Configured,
                None => RenewalRule::Lifetime,
            },
        },
    }
}

/// Decide what a certificate needs. Pure: same inputs, same answer.
pub(crate) fn decide(desired: &Desired, observed: &Observed, now: Timestamp) -> Decision {
    let mut reasons = BTreeSet::new();
    if observed.compromised {
        reasons.insert(Reason::KeyCompromised);
    }
    if observed.revoked {
        reasons.insert(Reason::Revoked);
    }
    if observed.compromise_unknown {
        reasons.insert(Reason::CompromiseUnknown);
    }
    let mut key_in_service = key_reasons(observed, &mut reasons);
    let (mut renewal, mut not_after) = (None, None);
    match &observed.cert {
        CertFact::Missing | CertFact::Invalid(_) => {
            reasons.insert(Reason::CertMissing);
        }
        CertFact::Present(leaf) => {
            if key_in_service.is_none() {
                key_in_service = Some(leaf.key_spec);
            }
            renewal = Some(leaf_reasons(desired, observed, leaf, now, &mut reasons));
            not_after = Some(leaf.not_after);
        }
    }
    if key_in_service.is_some_and(|k| k != Some(desired.key_spec)) {
        reasons.insert(Reason::KeyTypeChanged);
    }
    if matches!(observed.cert, CertFact::Present(_))
        && profile_changed(desired.profile.as_deref(), &observed.profile)
    {
        reasons.insert(Reason::ProfileChanged);
    }
    let mut noted = Vec::new();
    if let CertFact::Present(leaf) = &observed.cert
        && issuer_changed(&observed.issuer, leaf)
    {
        if desired.reissue_on_issuer_change {
            reasons.insert(Reason::IssuerChanged);
        } else {
            noted.push(Reason::IssuerChanged);
        }
    }
    Decision {
        reasons: reasons.into_iter().collect(),
        noted,
        renew_at: renewal.map(|r| r.at),
        renewal_rule: renewal.map(|r| r.rule),
        not_after,
    }
}

/// Whether the configured ACME profile is a reason to re-issue: only a profile that is
/// configured and was not asked for when the leaf in service was ordered. Removing a
/// profile from the configuration is no reason (the CA's default serves until renewal), nor
/// is a leaf certagent did not order.
pub(crate) fn profile_changed(configured: Option<&str>, fact: &ProfileFact) -> bool {
    match (configured, fact) {
        (Some(wanted), ProfileFact::AskedFor(asked)) => asked.as_deref() != Some(wanted),
        (None, _) | (_, ProfileFact::Unknown) => false,
    }
}

/// Whether the leaf in service comes from another CA than the one expected.
fn issuer_changed(expected: &IssuerFact, leaf: &LeafFacts) -> bool {
    match expected {
        IssuerFact::Unknown => false,
        IssuerFact::Dn(dn) => *dn != leaf.issuer_dn,
        IssuerFact::Other => true,
    }
}

/// The reasons the key in service gives (missing, or not the certificate's), and its type as
/// far as it can be told: `Some(None)` is a key of a type or size certagent does not issue
/// (RSA-512, P-521, Ed25519...), which must be replaced too; `None` when there is no key.
fn key_reasons(observed: &Observed, reasons: &mut BTreeSet<Reason>) -> Option<Option<KeySpec>> {
    match &observed.key {
        KeyFact::Missing | KeyFact::Invalid(_) => {
            reasons.insert(Reason::KeyMissing);
            None
        }
        KeyFact::Present {
            key_spec,
            verifies_with_cert,
            spki_sha256,
        } => {
            if let CertFact::Present(leaf) = &observed.cert
                && (leaf.spki_sha256 != *spki_sha256 || *verifies_with_cert == Some(false))
            {
                reasons.insert(Reason::KeyMismatch);
            }
            Some(*key_spec)
        }
    }
}

/// The reasons the leaf in service gives (names changed, renewal due), and its renewal
/// point: the CA's suggestion (ARI) when there is one.
fn leaf_reasons(
    desired: &Desired,
    observed: &Observed,
    leaf: &LeafFacts,
    now: Timestamp,
    reasons: &mut BTreeSet<Reason>,
) -> Renewal {
    // Both sides in canonical text: an iPAddress SAN reads as `IpAddr` writes it.
    let wanted: BTreeSet<String> = desired.names.iter().map(CertName::to_string).collect();
    let have: BTreeSet<String> = leaf.names.iter().cloned().collect();
    if wanted != have {
        reasons.insert(Reason::NamesChanged);
    }
    let point = match observed.suggested_renewal {
        Some(at) => Renewal {
            at,
            rule: RenewalRule::Ari,
        },
        None => renewal_point(
            leaf.not_before,
            leaf.not_after,
            desired.renew_before,
            observed.installed_at,
        ),
    };
    if now >= point.at {
        reasons.insert(Reason::Expiring);
    }
    point
}

/// Whether a scheduled retry still holds back a re-issue: only while the certificate needs
/// nothing it did not already need when the attempt failed (`failed_with`). A new trigger —
/// a key deleted after a failed renewal, a failure while the certificate was healthy — is
/// acted on at once; the next failure backs off with the new reasons.
pub(crate) fn backoff_holds(failed_with: &[Reason], needed_now: &[Reason]) -> bool {
    needed_now.iter().all(|r| failed_with.contains(r))
}

/// Whether the daemon may start one more re-issue of a certificate by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    Allowed,
    /// `limit` re-issues started in the last hour; the next may start at this time.
    HeldUntil(Timestamp),
}

/// The hourly guard against re-issue loops: at most `limit` re-issues started by the daemon
/// in any hour (`started`: their start times, in any order).
pub(crate) fn reissue_budget(started: &[Timestamp], limit: u32, now: Timestamp) -> Budget {
    let mut recent: Vec<Timestamp> = started
        .iter()
        .copied()
        .filter(|&t| t > now - 3_600 && t <= now)
        .collect();
    let limit = limit.max(1) as usize;
    if recent.len() < limit {
        return Budget::Allowed;
    }
    recent.sort_unstable();
    // Once the oldest `len - limit + 1` have left the hour, one more may start.
    Budget::HeldUntil(recent[recent.len() - limit] + 3_600)
}

/// The point in an ARI suggested window at which to renew: uniformly random (the sample in
/// `[0, 1)` is drawn by the caller, once per window), as RFC 9773 §4.2 recommends so that a
/// CA's clients do not all arrive at once. A window in the past means "now".
pub(crate) fn ari_renewal_time(start: Timestamp, end: Timestamp, sample: f64) -> Timestamp {
    start + (((end - start).max(0) as f64) * sample.clamp(0.0, 1.0)) as i64
}

/// Delay before retry number `attempt` (1-based) after a transient failure: 1 min doubling,
/// with ±20 % jitter from `sample` in `[0, 1)`, to `ceiling` (`cadence::backoff_ceiling`: a
/// day, or less as expiry nears). A server's `Retry-After`, when given, wins if it is later
/// (asking again sooner only meets the same refusal), but is itself capped at a day.
pub(crate) fn retry_delay(
    attempt: u32,
    sample: f64,
    retry_after: Option<i64>,
    ceiling: i64,
) -> i64 {
    const BASE: i64 = 60;
    const CAP: i64 = cadence::MAX_BACKOFF;
    let exp = BASE
        .saturating_mul(1_i64 << attempt.saturating_sub(1).min(20))
        .min(CAP);
    let jitter = 0.8 + 0.4 * sample.clamp(0.0, 1.0);
    let ours = (((exp as f64) * jitter) as i64).min(ceiling.clamp(1, CAP));
    ours.max(retry_after.unwrap_or(0).clamp(0, CAP)).min(CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: Timestamp = 1_800_000_000;

    fn names(list: &[&str]) -> BTreeSet<CertName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn desired() -> Desired {
        Desired {
            names: names(&["a.test", "www.a.test"]),
            key_spec: KeySpec::EcdsaP256,
            renew_before: None,
            reissue_on_issuer_change: false,
            profile: None,
        }
    }

    fn leaf() -> LeafFacts {
        LeafFacts {
            names: ["a.test", "www.a.test"].map(String::from).into(),
            not_before: NOW - 10 * DAY,
            not_after: NOW + 80 * DAY,
            serial: "1f".into(),
            key_spec: Some(KeySpec::EcdsaP256),
            spki_sha256: "aa".into(),
            crl_urls: Vec::new(),
            cert_id: None,
            issuer_dn: "CN=Test CA".into(),
        }
    }

    fn key() -> KeyFact {
        KeyFact::Present {
            key_spec: Some(KeySpec::EcdsaP256),
            spki_sha256: "aa".into(),
            verifies_with_cert: Some(true),
        }
    }

    fn healthy() -> Observed {
        Observed {
            cert: CertFact::Present(leaf()),
            key: key(),
            compromised: false,
            revoked: false,
            suggested_renewal: None,
            compromise_unknown: false,
            installed_at: None,
            issuer: IssuerFact::Dn("CN=Test CA".into()),
            profile: ProfileFact::Unknown,
        }
    }

    #[test]
    fn each_reason_is_detected_alone() {
        type Change = Box<dyn Fn(&mut Observed, &mut Desired)>;
        let cases: Vec<(&str, Change, Reason)> = vec![
            (
                "key deleted",
                Box::new(|o, _| o.key = KeyFact::Missing),
                Reason::KeyMissing,
            ),
            (
                "key garbage",
                Box::new(|o, _| o.key = KeyFact::Invalid("no PEM".into())),
                Reason::KeyMissing,
            ),
            (
                "key of another certificate",
                Box::new(|o, _| {
                    o.key = KeyFact::Present {
                        key_spec: Some(KeySpec::EcdsaP256),
                        spki_sha256: "bb".into(),
                        verifies_with_cert: Some(false),
                    }
                }),
                Reason::KeyMismatch,
            ),
            (
                "same public key but signature fails",
                Box::new(|o, _| {
                    o.key = KeyFact::Present {
                        key_spec: Some(KeySpec::EcdsaP256),
                        spki_sha256: "aa".into(),
                        verifies_with_cert: Some(false),
                    }
                }),
                Reason::KeyMismatch,
            ),
            (
                "cert deleted",
                Box::new(|o, _| o.cert = CertFact::Missing),
                Reason::CertMissing,
            ),
            (
                "cert garbage",
                Box::new(|o, _| o.cert = CertFact::Invalid("bad".into())),
                Reason::CertMissing,
            ),
            (
                "name added",
                Box::new(|_, d| d.names = names(&["a.test", "www.a.test", "b.test"])),
                Reason::NamesChanged,
            ),
            (
                "name removed",
                Box::new(|_, d| d.names = names(&["a.test"])),
                Reason::NamesChanged,
            ),
            (
                "key type",
                Box::new(|_, d| d.key_spec = KeySpec::Rsa3072),
                Reason::KeyTypeChanged,
            ),
            (
                "issued by another CA, re-issue configured",
                Box::new(|o, d| {
                    o.issuer = IssuerFact::Dn("CN=Other CA".into());
                    d.reissue_on_issuer_change = true;
                }),
                Reason::IssuerChanged,
            ),
            (
                "configured CA is not the one that issued it, re-issue configured",
                Box::new(|o, d| {
                    o.issuer = IssuerFact::Other;
                    d.reissue_on_issuer_change = true;
                }),
                Reason::IssuerChanged,
            ),
            (
                "another ACME profile configured than the leaf was ordered under",
                Box::new(|o, d| {
                    o.profile = ProfileFact::AskedFor(Some("classic".into()));
                    d.profile = Some("tlsserver".into());
                }),
                Reason::ProfileChanged,
            ),
            (
                "compromised",
                Box::new(|o, _| o.compromised = true),
                Reason::KeyCompromised,
            ),
            (
                "revoked",
                Box::new(|o, _| o.revoked = true),
                Reason::Revoked,
            ),
            (
                "a blocklist cannot be read",
                Box::new(|o, _| o.compromise_unknown = true),
                Reason::CompromiseUnknown,
            ),
            (
                "inside window",
                Box::new(|o, _| {
                    if let CertFact::Present(l) = &mut o.cert {
                        l.not_after = NOW + 2 * DAY
                    }
                }),
                Reason::Expiring,
            ),
            (
                "expired",
                Box::new(|o, _| {
                    if let CertFact::Present(l) = &mut o.cert {
                        l.not_after = NOW - DAY
                    }
                }),
                Reason::Expiring,
            ),
        ];
        for (what, change, want) in cases {
            let (mut o, mut d) = (healthy(), desired());
            change(&mut o, &mut d);
            let got = decide(&d, &o, NOW);
            assert_eq!(got.reasons, vec![want], "{what}");
        }
        assert!(decide(&desired(), &healthy(), NOW).is_healthy());
    }

    /// The leaf's iPAddress SANs read as canonical text (`keys::leaf_facts`); an IP name
    /// written another way is the same name, another address is a names change.
    #[test]
    fn ip_names_match_ip_sans_however_written() {
        let mut d = desired();
        d.names = names(&["a.test", "0:0::1", "192.0.2.10"]);
        let mut o = healthy();
        if let CertFact::Present(l) = &mut o.cert {
            l.names = ["a.test", "::1", "192.0.2.10"].map(String::from).into();
        }
        assert!(decide(&d, &o, NOW).is_healthy());
        d.names = names(&["a.test", "::2", "192.0.2.10"]);
        assert_eq!(decide(&d, &o, NOW).reasons, vec![Reason::NamesChanged]);
    }

    #[test]
    fn only_a_configured_profile_that_was_not_asked_for_is_a_reason() {
        let asked = |p: Option<&str>| ProfileFact::AskedFor(p.map(String::from));
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<&str>, ProfileFact, bool)> = vec![
            ("a profile added to the configuration", Some("tlsserver"), asked(None), true),
            ("the profile changed", Some("shortlived"), asked(Some("tlsserver")), true),
            ("the same profile", Some("tlsserver"), asked(Some("tlsserver")), false),
            // Asked for last time and the CA did not offer it (issued under its default):
            // the same configuration does not ask again, so no re-issue loop.
            ("asked for, not granted", Some("tlsserver"), asked(Some("tlsserver")), false),
            ("the profile removed: the CA's default serves until renewal", None, asked(Some("tlsserver")), false),
            ("none configured, none asked", None, asked(None), false),
            ("a leaf certagent did not order: no judgement", Some("tlsserver"), ProfileFact::Unknown, false),
        ];
        for (what, configured, fact, want) in cases {
            assert_eq!(profile_changed(configured, &fact), want, "{what}");
            let (mut o, mut d) = (healthy(), desired());
            o.profile = fact;
            d.profile = configured.map(String::from);
            let reasons = decide(&d, &o, NOW).reasons;
            assert_eq!(
                reasons.contains(&Reason::ProfileChanged),
                want,
                "{what}: {reasons:?}"
            );
        }
        // No certificate: it is missing, whatever the profile.
        let mut o = healthy();
        o.cert = CertFact::Missing;
        o.profile = asked(None);
        let d = Desired {
            profile: Some("tlsserver".into()),
            ..desired()
        };
        assert_eq!(decide(&d, &o, NOW).reasons, vec![Reason::CertMissing]);
    }

    #[test]
    fn most_urgent_reason_wins() {
        let mut o = healthy();
        o.key = KeyFact::Missing;
        o.cert = CertFact::Missing;
        o.compromised = true;
        let d = decide(&desired(), &o, NOW);
        assert_eq!(
            d.reasons,
            vec![
                Reason::KeyCompromised,
                Reason::KeyMissing,
                Reason::CertMissing
            ]
        );
        assert_eq!(d.reason(), Some(Reason::KeyCompromised));

        let mut o = healthy();
        if let CertFact::Present(l) = &mut o.cert {
            l.not_after = NOW + DAY;
            l.names.insert("old.test".into());
        }
        let mut want = desired();
        want.key_spec = KeySpec::EcdsaP384;
        let d = decide(&want, &o, NOW);
        assert_eq!(
            d.reasons,
            vec![
                Reason::KeyTypeChanged,
                Reason::NamesChanged,
                Reason::Expiring
            ]
        );
    }

    #[test]
    fn another_ca_is_only_noted_unless_configured() {
        // (what, issuer fact, reissue_on_issuer_change, want reasons, want noted)
        let changed = vec![Reason::IssuerChanged];
        let cases = [
            (
                "same CA",
                IssuerFact::Dn("CN=Test CA".into()),
                true,
                vec![],
                vec![],
            ),
            (
                "nothing to compare with",
                IssuerFact::Unknown,
                true,
                vec![],
                vec![],
            ),
            (
                "other CA, report only",
                IssuerFact::Dn("CN=Other".into()),
                false,
                vec![],
                changed.clone(),
            ),
            (
                "other CA, acted on",
                IssuerFact::Dn("CN=Other".into()),
                true,
                changed.clone(),
                vec![],
            ),
            (
                "other configured CA, report only",
                IssuerFact::Other,
                false,
                vec![],
                changed.clone(),
            ),
        ];
        for (what, fact, act, reasons, noted) in cases {
            let mut o = healthy();
            o.issuer = fact;
            let mut d = desired();
            d.reissue_on_issuer_change = act;
            let got = decide(&d, &o, NOW);
            assert_eq!(
                (got.reasons.clone(), got.noted.clone()),
                (reasons, noted),
                "{what}"
            );
            assert_eq!(got.is_healthy(), got.reasons.is_empty(), "{what}");
        }
        // No certificate, nothing to say about its issuer.
        let mut o = healthy();
        o.cert = CertFact::Missing;
        o.issuer = IssuerFact::Other;
        assert!(decide(&desired(), &o, NOW).noted.is_empty());
    }

    #[test]
    fn key_type_is_judged_from_the_key_when_the_certificate_is_gone() {
        let mut o = healthy();
        o.cert = CertFact::Missing;
        o.key = KeyFact::Present {
            key_spec: Some(KeySpec::Rsa2048),
            spki_sha256: "x".into(),
            verifies_with_cert: None,
        };
        let d = decide(&desired(), &o, NOW);
        assert_eq!(d.reasons, vec![Reason::CertMissing, Reason::KeyTypeChanged]);
    }

    #[test]
    fn a_weak_or_unknown_key_type_must_be_replaced() {
        let mut o = healthy();
        o.key = KeyFact::Present {
            key_spec: None,
            spki_sha256: "aa".into(),
            verifies_with_cert: Some(true),
        };
        if let CertFact::Present(l) = &mut o.cert {
            l.key_spec = None;
        }
        assert_eq!(
            decide(&desired(), &o, NOW).reasons,
            vec![Reason::KeyTypeChanged]
        );
    }

    #[test]
    fn renewal_window_follows_lifetime_or_configuration() {
        // 90-day certificate: renew with 30 days left.
        assert_eq!(renewal_time(0, 90 * DAY, None), 60 * DAY);
        // 6-day certificate: renew at half-life.
        assert_eq!(renewal_time(0, 6 * DAY, None), 3 * DAY);
        // configured
        assert_eq!(renewal_time(0, 90 * DAY, Some(Span::days(7))), 83 * DAY);
        // a certificate "valid" backwards never panics, renews at once
        assert_eq!(renewal_time(10, 0, None), 0);

        let d = decide(&desired(), &healthy(), NOW);
        let at = NOW - 10 * DAY + 60 * DAY;
        assert_eq!(d.renew_at, Some(at));
        assert_eq!(d.next_check(NOW), Some(at));
        let just_before = decide(&desired(), &healthy(), at - 1);
        assert!(just_before.is_healthy());
        let at_edge = decide(&desired(), &healthy(), at);
        assert_eq!(at_edge.reasons, vec![Reason::Expiring]);
        assert_eq!(at_edge.next_check(at), None);
    }

    #[test]
    fn a_certificate_due_when_installed_is_renewed_halfway_through_what_was_left() {
        const HOUR: i64 = 3_600;
        // (what, not_before, not_after, renew_before, installed_at, want at, want rule)
        let cases = [
            (
                "window longer than the lifetime (1h certificate, renew_before 2h)",
                NOW - 60,
                NOW + HOUR,
                Some(Span::secs(2 * HOUR)),
                Some(NOW),
                NOW + HOUR / 2,
                RenewalRule::AfterInstall,
            ),
            (
                "window exactly the lifetime",
                NOW,
                NOW + HOUR,
                Some(Span::secs(HOUR)),
                Some(NOW),
                NOW + HOUR / 2,
                RenewalRule::AfterInstall,
            ),
            (
                "6-day certificate, renew_before 7d, installed an hour after issuance",
                NOW - HOUR,
                NOW - HOUR + 6 * DAY,
                Some(Span::days(7)),
                Some(NOW),
                NOW + (6 * DAY - HOUR) / 2,
                RenewalRule::AfterInstall,
            ),
            (
                "a sane window is kept",
                NOW,
                NOW + 90 * DAY,
                Some(Span::days(30)),
                Some(NOW),
                NOW + 60 * DAY,
                RenewalRule::Configured,
            ),
            (
                "due since, but not when installed: renew now",
                NOW - 80 * DAY,
                NOW + 10 * DAY,
                Some(Span::days(30)),
                Some(NOW - 80 * DAY),
                NOW - 20 * DAY,
                RenewalRule::Configured,
            ),
            (
                "install time unknown (adopted files): the rule as configured",
                NOW,
                NOW + HOUR,
                Some(Span::secs(2 * HOUR)),
                None,
                NOW - HOUR,
                RenewalRule::Configured,
            ),
            (
                "lifetime rule",
                NOW,
                NOW + 90 * DAY,
                None,
                Some(NOW),
                NOW + 60 * DAY,
                RenewalRule::Lifetime,
            ),
            (
                "installed after expiry: nothing to wait for",
                NOW - 2 * HOUR,
                NOW - HOUR,
                None,
                Some(NOW),
                NOW - 90 * 60,
                RenewalRule::Lifetime,
            ),
            (
                "an absurd window does not overflow",
                -20,
                -10,
                Some(Span(i64::MAX)),
                None,
                i64::MIN,
                RenewalRule::Configured,
            ),
        ];
        for (what, nb, na, before, installed, at, rule) in cases {
            assert_eq!(
                renewal_point(nb, na, before, installed),
                Renewal { at, rule },
                "{what}"
            );
        }
        // Through decide: installed inside its window, healthy until half-way, not Expiring.
        let mut o = healthy();
        if let CertFact::Present(l) = &mut o.cert {
            l.not_before = NOW - 60;
            l.not_after = NOW + HOUR;
        }
        o.installed_at = Some(NOW);
        let mut d = desired();
        d.renew_before = Some(Span::secs(2 * HOUR));
        let fresh = decide(&d, &o, NOW);
        assert!(fresh.is_healthy(), "{fresh:?}");
        assert_eq!(fresh.renew_at, Some(NOW + HOUR / 2));
        assert_eq!(fresh.renewal_rule, Some(RenewalRule::AfterInstall));
        assert_eq!(
            decide(&d, &o, NOW + HOUR / 2).reasons,
            vec![Reason::Expiring]
        );
    }

    #[test]
    fn a_backoff_holds_only_for_what_failed() {
        use Reason::*;
        let cases: [(&[Reason], &[Reason], bool); 6] = [
            (&[], &[], true),
            (&[KeyMissing], &[KeyMissing], true),
            (&[KeyMissing, CertMissing], &[KeyMissing], true),
            // A healthy certificate's failed attempt does not hold back a deleted key.
            (&[], &[KeyMissing], false),
            (&[Expiring], &[KeyMissing, Expiring], false),
            (&[Forced], &[NamesChanged], false),
        ];
        for (failed, now, holds) in cases {
            assert_eq!(backoff_holds(failed, now), holds, "{failed:?} then {now:?}");
        }
    }

    #[test]
    fn at_most_the_limit_of_reissues_start_in_any_hour() {
        let cases: [(&[Timestamp], u32, Budget); 7] = [
            (&[], 5, Budget::Allowed),
            (&[NOW - 10, NOW - 5, NOW - 1, NOW], 5, Budget::Allowed),
            (
                &[NOW - 100, NOW - 10, NOW - 5, NOW - 1, NOW],
                5,
                Budget::HeldUntil(NOW - 100 + 3_600),
            ),
            // Out of order, and older than an hour: not counted.
            (
                &[NOW, NOW - 7_200, NOW - 50, NOW - 3_600, NOW - 20],
                3,
                Budget::HeldUntil(NOW - 50 + 3_600),
            ),
            (&[NOW - 3_600, NOW - 3_700], 1, Budget::Allowed),
            // More than the limit (it was lowered): wait until enough have left the hour.
            (
                &[NOW - 30, NOW - 20, NOW - 10],
                1,
                Budget::HeldUntil(NOW - 10 + 3_600),
            ),
            (&[NOW - 1], 0, Budget::HeldUntil(NOW - 1 + 3_600)),
        ];
        for (started, limit, want) in cases {
            assert_eq!(
                reissue_budget(started, limit, NOW),
                want,
                "{started:?} limit {limit}"
            );
        }
    }

    #[test]
    fn an_ari_window_replaces_the_lifetime_rule() {
        // The lifetime rule says renew in 50 days; the CA says: between 2 and 4 days from now.
        let mut o = healthy();
        let at = ari_renewal_time(NOW + 2 * DAY, NOW + 4 * DAY, 0.25);
        assert_eq!(at, NOW + 2 * DAY + DAY / 2);
        o.suggested_renewal = Some(at);
        let d = decide(&desired(), &o, NOW);
        assert!(d.is_healthy());
        assert_eq!(d.next_check(NOW), Some(at));
        assert_eq!(decide(&desired(), &o, at).reasons, vec![Reason::Expiring]);
        // A window in the past (revoked, say): renew now.
        o.suggested_renewal = Some(ari_renewal_time(NOW - 3600, NOW - 1800, 0.9));
        assert_eq!(decide(&desired(), &o, NOW).reasons, vec![Reason::Expiring]);
    }

    #[test]
    fn retry_delay_doubles_with_jitter_and_caps() {
        let day = cadence::MAX_BACKOFF;
        assert_eq!(retry_delay(1, 0.5, None, day), 60);
        assert_eq!(retry_delay(2, 0.5, None, day), 120);
        assert_eq!(retry_delay(3, 0.0, None, day), 192);
        assert_eq!(retry_delay(3, 1.0, None, day), 288);
        assert_eq!(retry_delay(40, 0.5, None, day), 86_400);
        assert_eq!(retry_delay(1, 0.5, Some(3_600), day), 3_600);
        assert_eq!(retry_delay(1, 0.5, Some(10 * DAY), day), 86_400);
        assert_eq!(retry_delay(1, 0.5, Some(-5), day), 60);
        assert_eq!(retry_delay(10, 0.5, None, 600), 600);
    }
}
