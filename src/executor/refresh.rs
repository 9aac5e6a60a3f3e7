//! The CA's view of the certificate in service: CRL and ACME Renewal Information.

use crate::config::{AcmeIssuer, Certificate, IssuerKind};
use crate::core::{self, LeafFacts, Timestamp};
use crate::error::{Error, Result};
use crate::keys::{self, Chain};
use crate::revocation::{self, RenewalInfo};
use crate::store::{Ari, Journal, Refresh, Revoked, fsutil};
use x509_parser::certificate::X509Certificate;

use super::{Executor, Outcome};

impl Executor {
    /// Fetch the CA's view of the certificate in service: its CRL (a listed serial becomes
    /// `revoked`, with keyCompromise meaning a compromised key) and, for ACME CAs that offer
    /// it, ACME Renewal Information (the window and the point picked in it). Journalled with
    /// the time of the next fetch: the CRL's nextUpdate, ARI's Retry-After.
    pub(crate) async fn refresh(&self, cert: &Certificate) -> Outcome {
        match self.refresh_journal(cert).await {
            Ok(()) => Outcome::Refreshed,
            // The document of a failed refresh says what failed, without a hint.
            Err(e) => Outcome::RefreshFailed(Error::msg(e.to_string())),
        }
    }

    async fn refresh_journal(&self, cert: &Certificate) -> Result<()> {
        crate::failpoint_async!("refreshing");
        let now = self.clock.now();
        let Some(bytes) = fsutil::read_capped(&cert.cert_file, keys::MAX_PEM_BYTES)? else {
            return Ok(());
        };
        let chain = Chain::from_pem(&bytes).map_err(Error::msg)?;
        let leaf = chain.leaf().map_err(Error::msg)?;
        let (_, x509) = x509_parser::parse_x509_certificate(chain.leaf_der())
            .map_err(|e| Error::msg(format!("leaf does not parse: {e}")))?;
        let mut journal = self.store.journal(&cert.name)?;
        let issuer = super::failover::in_service(cert, &journal, &leaf.serial).to_string();
        let view = self
            .fetch_view(cert, &issuer, &chain, &x509, leaf, now)
            .await?;
        view.apply(&cert.name, &mut journal, rand::random::<f64>());
        self.store.save_journal(&cert.name, &journal)
    }

    /// Ask the CRL and ARI (of `issuer`, the one it came from) about `leaf`; nothing is
    /// written here.
    async fn fetch_view(
        &self,
        cert: &Certificate,
        issuer: &str,
        chain: &Chain,
        x509: &X509Certificate<'_>,
        leaf: LeafFacts,
        now: Timestamp,
    ) -> Result<CaNews> {
        let acme = match self.config.issuers.get(issuer).map(|i| &i.kind) {
            Some(IssuerKind::Acme(a)) => Some(a.clone()),
            _ => None,
        };
        let http = crate::http::Http::new(
            acme.as_ref().and_then(|a| a.ca_bundle.as_deref()),
            self.clock,
        )?;
        let mut view = CaNews {
            leaf,
            checked_at: now,
            revoked: None,
            ari: AriNews::Unchanged,
            next_at: None,
            errors: Vec::new(),
        };
        if let Some(url) = view.leaf.crl_urls.first().cloned() {
            check_crl(&cert.name, &http, chain, x509, &url, &mut view).await;
        }
        if let (Some(a), Some(cert_id)) = (&acme, view.leaf.cert_id.clone()) {
            match self.renewal_info(&http, a, &cert_id).await {
                Ok(news) => view.ari = news,
                Err(e) => view.failed(e),
            }
        }
        Ok(view)
    }

    /// ARI for `cert_id`, when the CA's directory offers it.
    async fn renewal_info(
        &self,
        http: &crate::http::Http,
        acme: &AcmeIssuer,
        cert_id: &str,
    ) -> Result<AriNews> {
        let Some(base) = revocation::renewal_info_base(http, &acme.directory).await? else {
            return Ok(AriNews::NotOffered);
        };
        let now =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.clock.now().max(0) as u64);
        let ri = revocation::renewal_info(http, &base, cert_id, now).await?;
        Ok(AriNews::Window(ri))
    }
}

/// The CRL of the leaf's issuer, believed only when the issuer is in our own chain.
async fn check_crl(
    name: &str,
    http: &crate::http::Http,
    chain: &Chain,
    x509: &X509Certificate<'_>,
    url: &str,
    view: &mut CaNews,
) {
    let now = view.checked_at;
    // The issuer must be in our own chain: a CRL nobody can verify is not believed.
    let issuer = chain.certs[1..].iter().find(|der| {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.subject() == x509.issuer())
    });
    let Some(issuer) = issuer else {
        view.errors
            .push("the chain holds no issuer certificate to verify its CRL with".to_string());
        return;
    };
    match revocation::check_crl(http, url, x509.raw_serial(), issuer).await {
        Ok(v) => {
            if let Some(reason) = v.revoked {
                log::warn!(
                    cert = name, serial = view.leaf.serial.as_str(), event = "revoked",
                    reason = reason.map(|r| r.to_string()).unwrap_or_default().as_str();
                    "the CA's CRL lists the certificate in service as revoked"
                );
                view.revoked = Some(Revoked {
                    serial: view.leaf.serial.clone(),
                    reason,
                    seen_at: now,
                    source: url.to_string(),
                });
            }
            // Fetch again at nextUpdate (within an hour .. a week).
            view.soonest(
                v.next_update
                    .unwrap_or(now + 86_400)
                    .clamp(now + 3_600, now + 7 * 86_400),
            );
        }
        Err(e) => view.failed(e),
    }
}

/// What ARI said.
enum AriNews {
    /// Not asked (no ACME issuer or no certificate id), or the fetch failed.
    Unchanged,
    /// The CA's directory offers no `renewalInfo`.
    NotOffered,
    Window(RenewalInfo),
}

/// The CA's view of the serial in service, as fetched: applied to the journal by the caller.
struct CaNews {
    leaf: LeafFacts,
    checked_at: Timestamp,
    revoked: Option<Revoked>,
    ari: AriNews,
    next_at: Option<Timestamp>,
    errors: Vec<String>,
}

impl CaNews {
    fn soonest(&mut self, t: Timestamp) {
        self.next_at = Some(self.next_at.map_or(t, |n| n.min(t)));
    }

    /// A fetch that failed is tried again in an hour.
    fn failed(&mut self, e: Error) {
        self.errors.push(e.to_string());
        self.soonest(self.checked_at + 3_600);
    }

    /// A renewal window from ARI. One random point per window: kept while the window is
    /// unchanged.
    fn ari_window(&mut self, name: &str, journal: &mut Journal, ri: RenewalInfo, sample: f64) {
        let now = self.checked_at;
        let serial = self.leaf.serial.clone();
        let renew_at = match &journal.ari {
            Some(old)
                if old.serial == serial
                    && old.window_start == ri.start
                    && old.window_end == ri.end =>
            {
                old.renew_at
            }
            _ => core::ari_renewal_time(ri.start, ri.end, sample),
        };
        log::info!(
            cert = name, serial = serial.as_str(), event = "ari";
            "renewal window {} .. {}, renewing at {}",
            crate::core::rfc3339(ri.start), crate::core::rfc3339(ri.end), crate::core::rfc3339(renew_at)
        );
        self.soonest(now + ri.retry_after);
        journal.ari = Some(Ari {
            serial,
            window_start: ri.start,
            window_end: ri.end,
            renew_at,
            next_fetch: now + ri.retry_after,
            explanation_url: ri.explanation_url,
        });
    }

    /// Record the view in the journal. `sample` (uniform in [0, 1)) picks the point in a new
    /// ARI window; the point of an unchanged window is kept.
    fn apply(mut self, name: &str, journal: &mut Journal, sample: f64) {
        let now = self.checked_at;
        if let Some(revoked) = self.revoked.take() {
            journal.revoked = Some(revoked);
        }
        match std::mem::replace(&mut self.ari, AriNews::Unchanged) {
            AriNews::Unchanged => {}
            AriNews::NotOffered => journal.ari = None,
            AriNews::Window(ri) => self.ari_window(name, journal, ri, sample),
        }
        if !self.errors.is_empty() {
            log::warn!(cert = name; "could not learn the CA's view of the certificate: {}", self.errors.join("; "));
        }
        journal.refresh = Some(Refresh {
            serial: self.leaf.serial,
            checked_at: now,
            next_at: self.next_at,
            error: (!self.errors.is_empty()).then(|| self.errors.join("; ")),
        });
    }
}
