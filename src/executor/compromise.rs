//! The response to a compromised key: capture it (memory, quarantine), revoke its
//! certificate, purge it from every kept generation once its successor serves.

use crate::compromise::{self, Blocked};
use crate::config::Certificate;
use crate::core::{self, Reason, Timestamp};
use crate::error::{Error, Result};
use crate::issuer::{Issuer, RevokeOutcome};
use crate::keys::{self, PrivateKey};
use crate::store::{CompromiseWork, Journal};

use super::Executor;
use super::observe::InService;

impl Executor {
    /// For a compromise response (once per pending re-issue): capture the key in service and
    /// tell the operators; then, with `revoke_first`, revoke its certificate before
    /// replacing it.
    pub(super) async fn answer_compromise(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &mut Blocked,
        in_service: &InService,
        reason: Reason,
        now: Timestamp,
    ) -> Result<()> {
        if reason == Reason::KeyCompromised
            && journal
                .pending
                .as_ref()
                .is_some_and(|p| p.compromise.is_none())
        {
            self.capture_and_tell(cert, journal, blocked, in_service, now)
                .await?;
        }
        let work = journal
            .pending
            .as_ref()
            .and_then(|p| p.compromise.clone())
            .filter(|c| cert.revoke_first && !c.revoked_first && c.old_leaf.is_some());
        if let Some(work) = work {
            // The key is known to be in an attacker's hands: revoke before replacing, so
            // nothing signed by it is trusted a minute longer than necessary.
            let leaf = work.old_leaf.as_deref();
            self.revoke_compromised(cert, &work.old_spki_sha256, leaf, work.issuer.as_deref())
                .await?;
            if let Some(c) = journal.pending.as_mut().and_then(|p| p.compromise.as_mut()) {
                c.revoked_first = true;
            }
            self.store.save_journal(&cert.name, journal)?;
        }
        Ok(())
    }

    /// Capture the compromised key in service, journal the re-issue as a compromise
    /// response, and tell the operators.
    async fn capture_and_tell(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &mut Blocked,
        in_service: &InService,
        now: Timestamp,
    ) -> Result<()> {
        let work = self.capture_compromise(cert, journal, blocked, in_service)?;
        let event = crate::notify::Event::new(
            "compromised",
            &cert.name,
            "key marked compromised; replacing it",
            now,
        )
        .reason(Reason::KeyCompromised.as_str());
        crate::notify::emit(&self.config, event).await;
        if let Some(p) = journal.pending.as_mut() {
            p.reason = Reason::KeyCompromised;
            p.compromise = Some(work);
        }
        self.store.save_journal(&cert.name, journal)?;
        Ok(())
    }

    /// The key in service is compromised: remember its digest (it is never used again),
    /// keep a copy in quarantine (to sign its certificate's revocation), and note the flag
    /// file that reported it as answered.
    pub(super) fn capture_compromise(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &mut Blocked,
        in_service: &InService,
    ) -> Result<CompromiseWork> {
        let key_pem = &in_service.key_pem;
        let key = &in_service.private_key;
        let chain = &in_service.chain;
        let leaf_digest = chain
            .as_ref()
            .and_then(|c| c.leaf().ok())
            .map(|l| l.spki_sha256);
        let digest = key
            .as_ref()
            .map(PrivateKey::spki_sha256)
            .or(leaf_digest)
            .ok_or_else(|| {
                Error::msg(format!(
                    "failed to identify the compromised key of {:?}: neither its key nor its certificate is readable",
                    cert.name
                ))
            })?;
        self.store.remember_compromised(&digest)?;
        blocked.insert(&digest);
        if let (Some(pem), Some(k)) = (key_pem, key)
            && k.spki_sha256() == digest
        {
            self.store.quarantine_key(&cert.name, &digest, pem)?;
        }
        journal.handled_flag = compromise::flag(&self.config, &cert.name);
        log::warn!(
            cert = cert.name.as_str(), reason = "key-compromised", event = "compromised", key = digest.as_str();
            "key marked compromised: it is replaced now and never used again"
        );
        use base64::Engine;
        let serial = in_service.leaf().map(|l| l.serial.as_str());
        Ok(CompromiseWork {
            issuer: journal.issued_by(serial),
            old_spki_sha256: digest,
            old_leaf: chain
                .as_ref()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c.leaf_der())),
            revoked_first: false,
        })
    }

    /// Revoke a compromised key's certificate at the CA that issued it (`issuer`, journalled
    /// when it was captured: of a failover list, the one it came from; else the certificate's
    /// first issuer), signed with the compromised key itself when certagent still has it.
    /// A refusal is logged for a human (ERROR) and not retried; a transport failure is.
    pub(super) async fn revoke_compromised(
        &self,
        cert: &Certificate,
        digest: &str,
        leaf_b64: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<()> {
        use base64::Engine;
        let Some(leaf_b64) = leaf_b64 else {
            return Ok(());
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(leaf_b64)
            .map_err(|_| Error::msg("journalled certificate is not base64"))?;
        let serial = keys::leaf_facts(&der).map(|l| l.serial).unwrap_or_default();
        let key = self
            .store
            .quarantined_key(&cert.name, digest)
            .and_then(|pem| PrivateKey::from_pem(&String::from_utf8_lossy(&pem)).ok());
        // The issuer that issued it, when known and still configured for the certificate.
        let name = issuer
            .filter(|i| cert.issuers.iter().any(|c| c == i))
            .unwrap_or(cert.issuer.as_str());
        let issuer_cfg = self
            .config
            .issuers
            .get(name)
            .ok_or_else(|| Error::msg(format!("issuer {name:?} is not configured")))?;
        let issuer = Issuer::open(issuer_cfg, &self.store, self.clock)?;
        let outcome = issuer.revoke(&der, key.as_ref()).await?;
        self.revocation_done(cert, &serial, outcome).await;
        Ok(())
    }

    /// Log (and for a revocation, notify) how the CA answered. A refusal is for a human.
    async fn revocation_done(&self, cert: &Certificate, serial: &str, outcome: RevokeOutcome) {
        match outcome {
            RevokeOutcome::Revoked { by_key } => {
                let event = crate::notify::Event::new(
                    "revoked",
                    &cert.name,
                    "revoked the compromised certificate at the CA",
                    self.clock.now(),
                )
                .reason("key-compromised")
                .serial(serial.to_string());
                crate::notify::emit(&self.config, event).await;
                log::warn!(
                cert = cert.name.as_str(), serial = serial, event = "revoked";
                "revoked the compromised certificate at the CA (reason keyCompromise, signed with {})",
                if by_key { "the compromised key" } else { "the account key" }
                );
            }
            RevokeOutcome::AlreadyRevoked => log::info!(
                cert = cert.name.as_str(), serial = serial, event = "revoked";
                "the compromised certificate was already revoked"
            ),
            RevokeOutcome::Refused(why) => log::error!(
                cert = cert.name.as_str(), serial = serial, event = "revoke-refused";
                "the CA refused to revoke the compromised certificate: {why}; revoke it where it was issued"
            ),
        }
    }

    /// Finish the answer to a compromised key once its successor serves: revoke the old
    /// certificate, then remove the old key from every generation. Each step is journalled.
    pub(super) async fn run_post_actions(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
    ) -> Result<()> {
        let Some(mut post) = journal.post.clone() else {
            return Ok(());
        };
        crate::failpoint_async!("before-revoke");
        if let Some(leaf) = post.revoke.clone() {
            match self
                .revoke_compromised(
                    cert,
                    &post.old_spki_sha256,
                    Some(&leaf),
                    post.issuer.as_deref(),
                )
                .await
            {
                Ok(()) => post.revoke = None,
                Err(e) => {
                    post.revoke_attempts += 1;
                    let delay = core::retry_delay(
                        post.revoke_attempts,
                        rand::random::<f64>(),
                        None,
                        core::cadence::MAX_BACKOFF,
                    );
                    journal.retry_at = Some(self.clock.now() + delay);
                    log::error!(cert = cert.name.as_str(), event = "failed"; "failed to revoke the compromised certificate (attempt {}): {e}", post.revoke_attempts);
                }
            }
            journal.post = Some(post.clone());
            self.store.save_journal(&cert.name, journal)?;
        }
        if !post.purged {
            let purged = self.store.purge_key(&cert.name, &post.old_spki_sha256)?;
            post.purged = true;
            log::info!(cert = cert.name.as_str(), event = "quarantined", generations = format!("{purged:?}").as_str(); "removed the compromised key from every kept generation");
        }
        journal.post = (post.revoke.is_some() || !post.purged).then_some(post);
        self.store.save_journal(&cert.name, journal)
    }
}
