//! `reissue --dry-run`: the whole issuance — a new key (in memory), the order at the issuer's
//! `staging_directory` when it has one, validation, finalize, download — and the checks the
//! install would make of the chain (links, names, key, validity), then everything discarded.
//!
//! It must not change the host: no pending key or order in the journal (nothing for the
//! daemon to resume), no generation, no flip, no reload, no count against the daemon's
//! guards, and it never reads or writes the served files. The only thing it may write is the
//! issuer's ACME account on first use (for a staging directory, an account of its own kept
//! apart from the production one) or the local CA on first use. It takes no lock: nothing
//! it touches is another process's.

use crate::config::{Certificate, IssuerKind};
use crate::error::{Error, Result};
use crate::issuer::{IssueRequest, Issuer, acme::Acme};
use crate::keys::{self, PrivateKey};

use super::Executor;

/// What a dry run obtained (and threw away).
pub(crate) struct DryRun {
    pub(crate) serial: String,
    pub(crate) not_after: crate::core::Timestamp,
    pub(crate) profile: Option<String>,
    /// The directory ordered from (`None`: not ACME).
    pub(crate) directory: Option<String>,
}

/// Whether `cert`'s issuer can be dry-run: the error says why not (exit 64).
pub(crate) fn supported(config: &crate::config::Config, cert: &Certificate) -> Result<()> {
    let why = match config.issuers.get(&cert.issuer).map(|i| &i.kind) {
        Some(IssuerKind::Acme(_) | IssuerKind::Internal(_)) => return Ok(()),
        Some(IssuerKind::Manual(_)) => "a manual CA is a human: there is nothing to rehearse",
        Some(IssuerKind::Dnsimple(_)) => "DNSimple sells each certificate: a dry run would buy one",
        None => "its issuer is not configured",
    };
    Err(Error::Usage {
        message: format!(
            "--dry-run is not supported for certificate {:?} (issuer {:?}): {why}",
            crate::error::shown(&cert.name),
            crate::error::shown(&cert.issuer)
        ),
        hint: Some(
            "dry runs work with ACME issuers (against staging_directory when set) and the embedded CA; name the certificates to rehearse".into(),
        ),
    })
}

impl Executor {
    /// Issue a certificate for `cert` as a re-issue would, check it, and discard it.
    pub(crate) async fn dry_run(&self, cert: &Certificate) -> Result<DryRun> {
        supported(&self.config, cert)?;
        let cfg = self
            .config
            .issuers
            .get(&cert.issuer)
            .ok_or_else(|| Error::msg(format!("issuer {:?} is not configured", cert.issuer)))?;
        let (issuer, directory) = match &cfg.kind {
            IssuerKind::Acme(a) => match &a.staging_directory {
                // A staging CA gets an account of its own, in a directory of its own.
                Some(staging) => {
                    let mut staged = a.clone();
                    staged.directory = staging.clone();
                    staged.account_from_certbot = None;
                    let dir = self.store.issuer_dir("acme-staging", &cfg.name)?;
                    let acme = Acme::new(&cfg.name, &staged, &dir, self.clock);
                    (Issuer::Acme(acme), Some(staging.clone()))
                }
                None => (
                    Issuer::open(cfg, &self.store, self.clock)?,
                    Some(a.directory.clone()),
                ),
            },
            _ => (Issuer::open(cfg, &self.store, self.clock)?, None),
        };
        let now = self.clock.now();
        let key = PrivateKey::generate(cert.key_type).map_err(Error::msg)?;
        let csr = key.csr_der(&cert.names).map_err(Error::msg)?;
        let spki = key.spki_der();
        let profile = self.config.profile_of(cert);
        let req = IssueRequest {
            cert_name: &cert.name,
            names: &cert.names,
            key_spec: cert.key_type,
            csr_der: &csr,
            spki_der: &spki,
            now,
            resume_order: None,
            replaces: None,
            relay: None,
            profile: profile.as_ref(),
        };
        let name = cert.name.as_str();
        // Nothing is journalled: a dry run that stops half-way leaves no order to resume.
        let mut on_order = |url: &str| -> Result<()> {
            log::info!(cert = name, order = url, event = "dry-run-ordered"; "dry run: created ACME order");
            Ok(())
        };
        let issued = issuer.issue(&req, &mut on_order).await.map_err(|e| {
            e.context(format!(
                "dry run: failed to obtain a certificate for {:?} from issuer {:?}",
                cert.name, cert.issuer
            ))
        })?;
        keys::validate_chain(&cert.names, &key, &issued.chain, now).map_err(|e| {
            Error::msg(format!(
                "dry run: the certificate the issuer sent for {:?} would be rejected: {e}",
                cert.name
            ))
        })?;
        let leaf = issued.chain.leaf().map_err(Error::msg)?;
        log::info!(cert = name, serial = leaf.serial.as_str(), event = "dry-run-issued"; "dry run: issued and checked, discarded");
        Ok(DryRun {
            serial: leaf.serial,
            not_after: leaf.not_after,
            profile: issued.profile,
            directory,
        })
    }
}
