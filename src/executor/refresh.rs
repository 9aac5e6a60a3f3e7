//! The CA's view of the certificate in service: CRL and ACME Renewal Information.

use crate::config::{Certificate, Config};
use crate::core::{self, Timestamp};
use crate::error::{Error, Result};
use crate::keys::{self, Chain};
use crate::store::{Journal, fsutil};

use super::Executor;

/// Whether the CA's view of the serial in service is worth fetching now: it has a CRL
/// Distribution Point, or its issuer is an ACME CA (which may offer ARI). `Err(at)`: not yet,
/// look again at `at` (`Err(None)`: nothing to fetch for this serial).
pub fn refresh_due(
    config: &Config,
    cert: &Certificate,
    leaf: &core::LeafFacts,
    journal: Option<&Journal>,
    now: Timestamp,
) -> Result<(), Option<Timestamp>> {
    let acme = matches!(
        config.issuers.get(&cert.issuer).map(|i| &i.kind),
        Some(crate::config::IssuerKind::Acme(_))
    );
    if leaf.crl_urls.is_empty() && !acme {
        return Err(None);
    }
    match journal.and_then(|j| j.refresh.as_ref()) {
        Some(r) if r.serial == leaf.serial => match r.next_at {
            Some(at) if at <= now => Ok(()),
            later => Err(later),
        },
        _ => Ok(()),
    }
}

impl Executor {
    /// Fetch the CA's view of the certificate in service: its CRL (a listed serial becomes
    /// `revoked`, with keyCompromise meaning a compromised key) and, for ACME CAs that offer
    /// it, ACME Renewal Information (the window and the point picked in it). Journalled with
    /// the time of the next fetch: the CRL's nextUpdate, ARI's Retry-After.
    pub async fn refresh(&self, cert: &Certificate) -> Result<()> {
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
        let acme = match self.config.issuers.get(&cert.issuer).map(|i| &i.kind) {
            Some(crate::config::IssuerKind::Acme(a)) => Some(a.clone()),
            _ => None,
        };
        let http =
            crate::issuer::http::Http::new(acme.as_ref().and_then(|a| a.ca_bundle.as_deref()))?;
        let mut next: Option<Timestamp> = None;
        let mut errors = Vec::new();
        let mut soonest = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));

        if let Some(url) = leaf.crl_urls.first() {
            // The issuer must be in our own chain: a CRL nobody can verify is not believed.
            let issuer = chain.certs[1..].iter().find(|der| {
                x509_parser::parse_x509_certificate(der)
                    .is_ok_and(|(_, c)| c.subject() == x509.issuer())
            });
            match issuer {
                None => errors.push(
                    "the chain holds no issuer certificate to verify its CRL with".to_string(),
                ),
                Some(issuer) => {
                    match crate::revocation::check_crl(&http, url, x509.raw_serial(), issuer).await
                    {
                        Ok(v) => {
                            if let Some(reason) = v.revoked {
                                log::warn!(
                                    cert = cert.name.as_str(), serial = leaf.serial.as_str(), event = "revoked",
                                    reason = reason.map(|r| r.to_string()).unwrap_or_default().as_str();
                                    "the CA's CRL lists the certificate in service as revoked"
                                );
                                journal.revoked = Some(crate::store::Revoked {
                                    serial: leaf.serial.clone(),
                                    reason,
                                    seen_at: now,
                                    source: url.clone(),
                                });
                            }
                            // Fetch again at nextUpdate (within an hour .. a week).
                            soonest(
                                v.next_update
                                    .unwrap_or(now + 86_400)
                                    .clamp(now + 3_600, now + 7 * 86_400),
                            );
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            soonest(now + 3_600);
                        }
                    }
                }
            }
        }
        if let (Some(a), Some(cert_id)) = (&acme, &leaf.cert_id) {
            match crate::revocation::renewal_info_base(&http, &a.directory).await {
                Ok(None) => journal.ari = None,
                Ok(Some(base)) => match crate::revocation::renewal_info(
                    &http,
                    &base,
                    cert_id,
                    std::time::SystemTime::now(),
                )
                .await
                {
                    Ok(ri) => {
                        // One random point per window: keep it while the window is unchanged.
                        let renew_at = match &journal.ari {
                            Some(old)
                                if old.serial == leaf.serial
                                    && old.window_start == ri.start
                                    && old.window_end == ri.end =>
                            {
                                old.renew_at
                            }
                            _ => core::ari_renewal_time(ri.start, ri.end, rand::random::<f64>()),
                        };
                        log::info!(
                            cert = cert.name.as_str(), serial = leaf.serial.as_str(), event = "ari";
                            "renewal window {} .. {}, renewing at {}",
                            crate::output::rfc3339(ri.start), crate::output::rfc3339(ri.end), crate::output::rfc3339(renew_at)
                        );
                        soonest(now + ri.retry_after);
                        journal.ari = Some(crate::store::Ari {
                            serial: leaf.serial.clone(),
                            window_start: ri.start,
                            window_end: ri.end,
                            renew_at,
                            next_fetch: now + ri.retry_after,
                            explanation_url: ri.explanation_url,
                        });
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        soonest(now + 3_600);
                    }
                },
                Err(e) => {
                    errors.push(e.to_string());
                    soonest(now + 3_600);
                }
            }
        }
        if !errors.is_empty() {
            log::warn!(cert = cert.name.as_str(); "could not learn the CA's view of the certificate: {}", errors.join("; "));
        }
        journal.refresh = Some(crate::store::Refresh {
            serial: leaf.serial,
            checked_at: now,
            next_at: next,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
        self.store.save_journal(&cert.name, &journal)
    }
}
