//! Phase 1: read the configured files (never writing anything) and decide what they need.

use crate::compromise::{self, Blocked};
use crate::config::{Certificate, Config, IssuerKind};
use crate::core::{
    self, CertFact, Decision, Desired, IssuerFact, KeyFact, Observed, ProfileFact, Timestamp,
};
use crate::keys::{self, Chain, PrivateKey};
use crate::store::{FlagId, Journal, fsutil};
use zeroize::Zeroizing;

/// What is on disk for one certificate, with the problems found reading it.
pub(crate) struct Observation {
    pub(crate) decision: Decision,
    pub(crate) leaf: Option<core::LeafFacts>,
    pub(crate) cert_problem: Option<String>,
    pub(crate) key_problem: Option<String>,
    /// Why it cannot be told whether a key is compromised (a list that cannot be read).
    pub(crate) compromise_problem: Option<String>,
}

/// What the configuration asks for; `profile` is the ACME profile in effect
/// (`Config::profile_of`).
pub(crate) fn desired(cert: &Certificate, profile: Option<String>) -> Desired {
    Desired {
        names: cert.names.iter().cloned().collect(),
        key_spec: cert.key_type,
        renew_before: cert.renew_before,
        reissue_on_issuer_change: cert.reissue_on_issuer_change,
        profile,
    }
}

/// What, besides the files themselves, says a certificate's key or serial must go.
#[derive(Default)]
pub(crate) struct Signals<'a> {
    /// Digests from the blocklists and certagent's memory of compromised keys.
    pub(crate) blocked: Option<&'a Blocked>,
    /// The flag file in `compromised_dir`, if present.
    pub(crate) flag: Option<FlagId>,
    pub(crate) journal: Option<&'a Journal>,
    /// The configured issuer, to tell whether the leaf in service is its (`None`: no
    /// judgement).
    pub(crate) issuer: Option<ConfiguredIssuer>,
}

/// What the configuration says about the CA a certificate should come from.
pub(crate) struct ConfiguredIssuer {
    /// `config::Issuer::identity`.
    pub(crate) identity: String,
    /// A local CA's subject, when it exists: the issuer DN its certificates carry.
    pub(crate) local_ca_dn: Option<String>,
    /// The ACME profile the certificate is to be ordered under (`Config::profile_of`).
    pub(crate) profile: Option<String>,
    /// The identities of the other issuers of a failover list: a certificate from one of
    /// them is from a configured issuer too.
    pub(crate) failover: Vec<String>,
}

impl ConfiguredIssuer {
    /// The issuer of `cert` as configured; a local CA's certificate is read (never created).
    fn of(config: &Config, cert: &str) -> Option<ConfiguredIssuer> {
        let cert = config.certificate(cert)?;
        let issuer = config.issuers.get(&cert.issuer)?;
        let local_ca_dn = match issuer.kind {
            IssuerKind::Internal(_) => {
                let path = config
                    .agent
                    .state_dir
                    .join("ca")
                    .join(&issuer.name)
                    .join("ca.pem");
                fsutil::read_capped(&path, keys::MAX_PEM_BYTES)
                    .ok()
                    .flatten()
                    .and_then(|b| Chain::from_pem(&b).ok())
                    .and_then(|c| c.leaf_subject_dn().ok())
            }
            _ => None,
        };
        let failover = cert.issuers[1..]
            .iter()
            .filter_map(|i| Some(config.issuers.get(i)?.identity()))
            .collect();
        Some(ConfiguredIssuer {
            identity: issuer.identity(),
            local_ca_dn,
            profile: config.profile_of(cert).map(|p| p.name),
            failover,
        })
    }
}

impl<'a> Signals<'a> {
    pub(crate) fn for_cert(
        config: &Config,
        blocked: &'a Blocked,
        journal: Option<&'a Journal>,
        cert: &str,
    ) -> Signals<'a> {
        Signals {
            blocked: Some(blocked),
            flag: compromise::flag(config, cert),
            journal,
            issuer: ConfiguredIssuer::of(config, cert),
        }
    }
}

/// The configured files as read, once: what `observe` decides from, and what a re-issue
/// needs of the pair in service (the key to quarantine, the leaf to revoke or replace).
pub(crate) struct InService {
    pub(crate) cert: CertFact,
    /// The certificate file as parsed (its leaf may still be unusable: see `cert`).
    pub(crate) chain: Option<Chain>,
    pub(crate) key: KeyFact,
    pub(crate) key_pem: Option<Zeroizing<Vec<u8>>>,
    pub(crate) private_key: Option<PrivateKey>,
}

impl InService {
    /// Read the configured files, never writing anything.
    pub(crate) fn read(cert: &Certificate) -> InService {
        let (cert_fact, chain) = match fsutil::read_capped(&cert.cert_file, keys::MAX_PEM_BYTES) {
            Ok(None) => (CertFact::Missing, None),
            Err(e) => (CertFact::Invalid(e.to_string()), None),
            Ok(Some(bytes)) => match Chain::from_pem(&bytes) {
                Ok(chain) => match chain.leaf() {
                    Ok(leaf) => (CertFact::Present(leaf), Some(chain)),
                    Err(e) => (CertFact::Invalid(e), Some(chain)),
                },
                Err(e) => (CertFact::Invalid(e), None),
            },
        };
        let leaf_chain = matches!(cert_fact, CertFact::Present(_)).then_some(chain.as_ref());
        let (key_fact, key_pem, private_key) =
            match fsutil::read_capped(&cert.key_file, keys::MAX_PEM_BYTES) {
                Ok(None) => (KeyFact::Missing, None, None),
                Err(e) => (KeyFact::Invalid(e.to_string()), None, None),
                Ok(Some(bytes)) => {
                    let pem = Zeroizing::new(bytes);
                    match PrivateKey::from_pem(&String::from_utf8_lossy(&pem)) {
                        Ok(key) => {
                            let verifies = leaf_chain
                                .flatten()
                                .and_then(|c| c.leaf_spki_der().ok())
                                .map(|spki| key.verifies_with(&spki));
                            let fact = KeyFact::Present {
                                key_spec: key.spec,
                                spki_sha256: key.spki_sha256(),
                                verifies_with_cert: verifies,
                            };
                            (fact, Some(pem), Some(key))
                        }
                        Err(e) => (KeyFact::Invalid(e), Some(pem), None),
                    }
                }
            };
        InService {
            cert: cert_fact,
            chain,
            key: key_fact,
            key_pem,
            private_key,
        }
    }

    pub(crate) fn leaf(&self) -> Option<&core::LeafFacts> {
        match &self.cert {
            CertFact::Present(l) => Some(l),
            _ => None,
        }
    }
}

/// Read the configured files (never writing anything) and decide.
pub(crate) fn observe(cert: &Certificate, now: Timestamp, signals: &Signals) -> Observation {
    decide(cert, &InService::read(cert), now, signals)
}

/// Decide from files already read.
pub(crate) fn decide(
    cert: &Certificate,
    files: &InService,
    now: Timestamp,
    signals: &Signals,
) -> Observation {
    let (cert_problem, key_problem) = problems(cert, files);
    let leaf = files.leaf().cloned();
    let revocation = signals
        .journal
        .and_then(|j| j.revoked.as_ref())
        .filter(|r| leaf.as_ref().is_some_and(|l| l.serial == r.serial));
    let compromise_problem = signals.blocked.and_then(Blocked::unknown);
    let installed_at = signals
        .journal
        .filter(|j| {
            j.installed_serial.is_some()
                && j.installed_serial.as_deref() == leaf.as_ref().map(|l| l.serial.as_str())
        })
        .and_then(|j| j.last_success);
    let issuer = match (&signals.issuer, &leaf) {
        (Some(configured), Some(leaf)) => expected_issuer(configured, signals.journal, leaf),
        _ => IssuerFact::Unknown,
    };
    let profile = match (&leaf, signals.journal) {
        (Some(leaf), Some(j)) if j.installed_serial.as_deref() == Some(leaf.serial.as_str()) => {
            ProfileFact::AskedFor(j.installed_profile.as_ref().and_then(|p| p.asked.clone()))
        }
        _ => ProfileFact::Unknown,
    };
    let observed = Observed {
        issuer,
        profile,
        compromise_unknown: compromise_problem.is_some(),
        installed_at,
        cert: files.cert.clone(),
        key: files.key.clone(),
        compromised: compromised(files, signals) || revocation.is_some_and(|r| r.reason == Some(1)),
        revoked: revocation.is_some(),
        suggested_renewal: signals
            .journal
            .and_then(|j| j.ari.as_ref())
            .filter(|a| leaf.as_ref().is_some_and(|l| l.serial == a.serial))
            .map(|a| a.renew_at),
    };
    let configured = signals.issuer.as_ref().and_then(|i| i.profile.clone());
    let decision = core::decide(&desired(cert, configured), &observed, now);
    Observation {
        decision,
        leaf,
        cert_problem,
        key_problem,
        compromise_problem,
    }
}

/// Which CA the leaf in service should come from, by what can be known without asking a CA:
///
/// * A local CA (kind "internal") that exists signs as its subject: a leaf naming another
///   issuer DN is another CA's.
/// * Otherwise certagent's record of its last install (the configured issuer's identity and
///   the issuer DN of that leaf) decides:
///   - the configuration now names another CA (another ACME directory, another kind), and
///     the leaf in service is the one certagent installed or carries the same issuer DN:
///     it came from the CA configured before ([`IssuerFact::Other`]);
///   - the same CA, and the leaf in service is the one certagent installed: the configured
///     CA issued it, whatever DN it bears (an ACME CA rotates its intermediates: Let's
///     Encrypt's R10/R11, E5/E6), so there is nothing to compare;
///   - the same CA, and a leaf certagent did not install (another tool wrote the files): it
///     must carry the DN the configured CA used last time. A leaf from that CA under a newly
///     rotated intermediate is reported too; that is the price of not trusting a file no one
///     accounts for.
/// * Nothing recorded (adopted files never re-issued, or a journal from before the record
///   existed): no judgement. Validation already refuses another CA's certificate under the
///   default local CA, and `discover` names the CA of what it adopts.
pub(crate) fn expected_issuer(
    configured: &ConfiguredIssuer,
    journal: Option<&Journal>,
    leaf: &core::LeafFacts,
) -> IssuerFact {
    let record = journal.and_then(|j| {
        j.installed_issuer
            .as_ref()
            .map(|r| (r, j.installed_serial.as_deref()))
    });
    let ours = |s: Option<&str>| s == Some(leaf.serial.as_str());
    // Installed from a failover issuer of the list: from a configured issuer all the same.
    if let Some((r, s)) = record
        && ours(s)
        && configured.failover.contains(&r.identity)
    {
        return IssuerFact::Unknown;
    }
    if let Some(dn) = &configured.local_ca_dn {
        return IssuerFact::Dn(dn.clone());
    }
    let Some((record, installed_serial)) = record else {
        return IssuerFact::Unknown;
    };
    let ours = ours(installed_serial);
    match (record.identity == configured.identity, ours) {
        (false, true) => IssuerFact::Other,
        (false, false) if record.dn == leaf.issuer_dn => IssuerFact::Other,
        (false, false) | (true, true) => IssuerFact::Unknown,
        (true, false) => IssuerFact::Dn(record.dn.clone()),
    }
}

/// Whether the key in service (or its certificate's key) is listed, or an unanswered flag
/// says it is compromised.
fn compromised(files: &InService, signals: &Signals) -> bool {
    let key_digest = match &files.key {
        KeyFact::Present { spki_sha256, .. } => Some(spki_sha256.as_str()),
        _ => None,
    };
    let blocked =
        |d: Option<&str>| d.is_some_and(|d| signals.blocked.is_some_and(|b| b.contains(d)));
    // One flag, one response: an answered flag stays answered while it is there, whatever is
    // written to it (see `compromise::track_flag`).
    let unhandled_flag =
        signals.flag.is_some() && signals.journal.is_none_or(|j| j.handled_flag.is_none());
    unhandled_flag || blocked(key_digest) || blocked(files.leaf().map(|l| l.spki_sha256.as_str()))
}

/// What `check` says about files that are missing or unreadable.
fn problems(cert: &Certificate, files: &InService) -> (Option<String>, Option<String>) {
    let cert_problem = match &files.cert {
        CertFact::Missing => Some(format!(
            "{:?} does not exist",
            cert.cert_file.display().to_string()
        )),
        CertFact::Invalid(e) => Some(e.clone()),
        CertFact::Present(_) => None,
    };
    let key_problem = match &files.key {
        KeyFact::Missing => Some(format!(
            "{:?} does not exist",
            cert.key_file.display().to_string()
        )),
        KeyFact::Invalid(e) => Some(e.clone()),
        KeyFact::Present { .. } => None,
    };
    (cert_problem, key_problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InstalledIssuer;

    fn leaf(serial: &str, issuer_dn: &str) -> core::LeafFacts {
        core::LeafFacts {
            names: Default::default(),
            not_before: 0,
            not_after: 1,
            serial: serial.into(),
            key_spec: None,
            spki_sha256: String::new(),
            crl_urls: Vec::new(),
            cert_id: None,
            issuer_dn: issuer_dn.into(),
        }
    }

    #[test]
    fn the_expected_issuer_follows_the_local_ca_else_the_last_install() {
        let acme = |dir: &str| ConfiguredIssuer {
            identity: format!("acme {dir}"),
            local_ca_dn: None,
            profile: None,
            failover: Vec::new(),
        };
        let journal = |identity: &str| Journal {
            installed_serial: Some("1a".into()),
            installed_issuer: Some(InstalledIssuer {
                identity: identity.into(),
                dn: "CN=R11".into(),
                name: None,
            }),
            ..Journal::default()
        };
        let le = journal("acme https://le/dir");
        let (le_dir, pebble) = (acme("https://le/dir"), acme("https://pebble/dir"));
        let local = ConfiguredIssuer {
            identity: "internal internal".into(),
            local_ca_dn: Some("CN=local".into()),
            profile: None,
            failover: Vec::new(),
        };
        // issuer = ["pebble", "le"] and issuer = ["internal", "le"]: le is a failover issuer.
        let with_le = |c: &ConfiguredIssuer| ConfiguredIssuer {
            identity: c.identity.clone(),
            local_ca_dn: c.local_ca_dn.clone(),
            profile: c.profile.clone(),
            failover: vec!["acme https://le/dir".into()],
        };
        let (pebble_le, local_le) = (with_le(&pebble), with_le(&local));
        #[rustfmt::skip]
        let cases: Vec<(&str, &ConfiguredIssuer, Option<&Journal>, core::LeafFacts, IssuerFact)> = vec![
            ("a local CA: its subject, whatever was recorded",
                &local, Some(&le), leaf("1a", "CN=R11"), IssuerFact::Dn("CN=local".into())),
            ("nothing recorded: no judgement",
                &le_dir, None, leaf("1a", "CN=Other"), IssuerFact::Unknown),
            ("certagent's own leaf from the configured CA (a rotated intermediate too)",
                &le_dir, Some(&le), leaf("1a", "CN=R10"), IssuerFact::Unknown),
            ("a leaf certagent did not install: the recorded DN",
                &le_dir, Some(&le), leaf("2b", "CN=Other"), IssuerFact::Dn("CN=R11".into())),
            ("another CA configured, certagent's leaf from the old one in service",
                &pebble, Some(&le), leaf("1a", "CN=R11"), IssuerFact::Other),
            ("another CA configured, a leaf from the old CA's DN",
                &pebble, Some(&le), leaf("2b", "CN=R11"), IssuerFact::Other),
            ("another CA configured, a leaf no one recorded: no judgement",
                &pebble, Some(&le), leaf("2b", "CN=Pebble"), IssuerFact::Unknown),
            ("certagent's leaf from a failover issuer of the list: a configured issuer",
                &pebble_le, Some(&le), leaf("1a", "CN=R11"), IssuerFact::Unknown),
            ("the same with a local CA first",
                &local_le, Some(&le), leaf("1a", "CN=R11"), IssuerFact::Unknown),
            ("a leaf certagent did not install, a local CA first: its subject",
                &local_le, Some(&le), leaf("2b", "CN=R11"), IssuerFact::Dn("CN=local".into())),
        ];
        for (what, configured, journal, leaf, want) in cases {
            assert_eq!(expected_issuer(configured, journal, &leaf), want, "{what}");
        }
    }
}
