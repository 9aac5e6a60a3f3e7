//! Issuers: where a certificate comes from. One enum, one `issue` call; the executor
//! validates whatever comes back before it goes anywhere near the web server.

pub(crate) mod acme;
pub(crate) mod dnsimple;
pub(crate) mod internal;
pub(crate) mod jws;
pub(crate) mod manual;
pub(crate) mod rfc2136;

use crate::clock::Clock;
use crate::config::{Issuer as IssuerConfig, IssuerKind, ProfileWish};
use crate::core::{CertName, KeySpec, Timestamp};
use crate::error::Result;
use crate::keys::{Chain, SecretPem};
use crate::store::Store;

/// What one issuance needs.
pub(crate) struct IssueRequest<'a> {
    pub(crate) cert_name: &'a str,
    pub(crate) names: &'a [CertName],
    pub(crate) key_spec: KeySpec,
    pub(crate) csr_der: &'a [u8],
    pub(crate) spki_der: &'a [u8],
    pub(crate) now: Timestamp,
    /// A journalled order to resume instead of ordering again.
    pub(crate) resume_order: Option<&'a str>,
    /// RFC 9773 CertID of the certificate being replaced, when its CA offers ARI.
    pub(crate) replaces: Option<&'a str>,
    /// Where http-01 key authorizations must be served from too (a fleet's other hosts).
    pub(crate) relay: Option<&'a dyn Relay>,
    /// The ACME profile to order under (config validation allows it for ACME only).
    pub(crate) profile: Option<&'a ProfileWish>,
}

pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Other places an http-01 key authorization must be served from (the other hosts of a
/// fleet behind one load balancer): `add` returns once they serve it, `clear` removes all.
pub(crate) trait Relay: Send + Sync {
    fn add<'a>(&'a self, token: &'a str, key_auth: &'a str) -> BoxFuture<'a, Result<()>>;
    fn clear(&self) -> BoxFuture<'_, ()>;
}

/// A chain, and the key when the issuer made it (DNSimple) instead of using ours.
pub(crate) struct Issued {
    pub(crate) chain: Chain,
    pub(crate) key: Option<SecretPem>,
    /// The ACME profile the CA issued it under (`None`: none, or not ACME).
    pub(crate) profile: Option<String>,
}

/// What the CA said to a revocation request.
#[derive(Debug, PartialEq)]
pub(crate) enum RevokeOutcome {
    /// Revoked now; `by_key` when signed with the certificate's own key (so a CA like Let's
    /// Encrypt also blocks the key).
    Revoked {
        by_key: bool,
    },
    AlreadyRevoked,
    /// The CA will not revoke it (not its certificate, not our account...): a human must.
    Refused(String),
}

// One per issuance, short-lived: the size of the ACME variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Issuer {
    Acme(acme::Acme),
    Internal(internal::LocalCa),
    Manual(manual::Manual),
    Dnsimple(dnsimple::Dnsimple),
}

impl Issuer {
    /// `clock` is the "now" of the HTTP issuers' rate-limit waits.
    pub(crate) fn open(cfg: &IssuerConfig, store: &Store, clock: Clock) -> Result<Issuer> {
        Ok(match &cfg.kind {
            IssuerKind::Acme(a) => Issuer::Acme(acme::Acme::new(
                &cfg.name,
                a,
                &store.issuer_dir("acme", &cfg.name)?,
                clock,
            )),
            IssuerKind::Internal(i) => Issuer::Internal(internal::LocalCa::new(
                &store.issuer_dir("ca", &cfg.name)?,
                i,
            )),
            IssuerKind::Manual(m) => Issuer::Manual(manual::Manual::new(store.root(), m)),
            IssuerKind::Dnsimple(d) => Issuer::Dnsimple(dnsimple::Dnsimple::new(d, clock)),
        })
    }

    /// Revoke `leaf_der` with reason keyCompromise. `Err` only for failures worth retrying
    /// (transport); a refusal is an outcome.
    pub(crate) async fn revoke(
        &self,
        leaf_der: &[u8],
        key: Option<&crate::keys::PrivateKey>,
    ) -> Result<RevokeOutcome> {
        match self {
            Issuer::Acme(a) => a.revoke(leaf_der, key).await,
            Issuer::Internal(ca) => ca.revoke(leaf_der),
            Issuer::Manual(_) => Ok(RevokeOutcome::Refused(
                "a manual CA has no revocation API: ask the CA to revoke it (reason keyCompromise)"
                    .into(),
            )),
            Issuer::Dnsimple(_) => Ok(RevokeOutcome::Refused(
                "DNSimple's API has no revocation call: revoke it through DNSimple's support"
                    .into(),
            )),
        }
    }

    /// Obtain a chain for the request. `on_order` is called with a new order handle before
    /// any further request is made, so the caller can journal it. `Error::Pending` means
    /// "not yet" (a human, or a slow CA), not failure.
    pub(crate) async fn issue(
        &self,
        req: &IssueRequest<'_>,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<Issued> {
        let ours = |chain| Issued {
            chain,
            key: None,
            profile: None,
        };
        match self {
            Issuer::Acme(a) => {
                let (chain, profile) = a.issue(req, on_order).await?;
                Ok(Issued {
                    chain,
                    key: None,
                    profile,
                })
            }
            Issuer::Internal(ca) => ca.issue(req.names, req.spki_der, req.now).map(ours),
            Issuer::Manual(m) => m.issue(req.cert_name, req.csr_der).map(ours),
            Issuer::Dnsimple(d) => {
                let (chain, key) = d
                    .issue(req.names, req.key_spec, req.resume_order, on_order)
                    .await?;
                Ok(Issued {
                    chain,
                    key: Some(key),
                    profile: None,
                })
            }
        }
    }
}
