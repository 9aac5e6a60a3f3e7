//! Issuers: where a certificate for our key comes from. One enum, one `issue` call; the
//! executor validates whatever comes back before it goes anywhere near the web server.

pub mod acme;
pub mod http;
pub mod internal;

use crate::config::{Issuer as IssuerConfig, IssuerKind};
use crate::core::{DomainName, Timestamp};
use crate::error::Result;
use crate::keys::Chain;
use crate::store::Store;

/// What one issuance needs.
pub struct IssueRequest<'a> {
    pub names: &'a [DomainName],
    pub csr_der: &'a [u8],
    pub spki_der: &'a [u8],
    pub now: Timestamp,
    /// A journalled order to resume instead of ordering again.
    pub resume_order: Option<&'a str>,
}

pub enum Issuer {
    Acme(acme::Acme),
    Internal(internal::LocalCa),
}

impl Issuer {
    pub fn open(cfg: &IssuerConfig, store: &Store) -> Result<Issuer> {
        Ok(match &cfg.kind {
            IssuerKind::Acme(a) => Issuer::Acme(acme::Acme::new(
                &cfg.name,
                a,
                &store.issuer_dir("acme", &cfg.name)?,
            )),
            IssuerKind::Internal(i) => Issuer::Internal(internal::LocalCa::new(
                &store.issuer_dir("ca", &cfg.name)?,
                i,
            )),
        })
    }

    /// Obtain a chain for the request. `on_order` is called with a new order URL before any
    /// further request is made, so the caller can journal it.
    pub async fn issue(
        &self,
        req: &IssueRequest<'_>,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<Chain> {
        match self {
            Issuer::Acme(a) => {
                a.issue(req.names, req.csr_der, req.resume_order, on_order)
                    .await
            }
            Issuer::Internal(ca) => ca.issue(req.names, req.spki_der, req.now),
        }
    }
}
