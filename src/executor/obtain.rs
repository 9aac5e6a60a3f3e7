//! Phase 2: a pending key (resumed or new), the order at the issuer, and the chain it
//! sends, validated and saved before anything is installed (a crash after that never asks
//! the CA again).

use crate::compromise::{self, Blocked};
use crate::config::Certificate;
use crate::core::{Reason, Timestamp};
use crate::error::{Error, Result};
use crate::issuer::{IssueRequest, Issuer};
use crate::keys::{self, Chain, PrivateKey};
use crate::store::{Journal, Outcome, OutcomeKind, Pending, fsutil};

use super::{Executor, Installed, Signals, observe};

impl Executor {
    pub(super) async fn reissue_fresh(
        &self,
        cert: &Certificate,
        reason: Reason,
    ) -> Result<Installed> {
        let now = self.clock.now();
        // Whatever the caller's reason, a compromised key in service gets the full response.
        let reason = {
            let blocked = Blocked::load(&self.config);
            // Fail closed: a new key may be on the list that cannot be read.
            if let Some(why) = blocked.unknown() {
                return Err(Error::msg(format!(
                    "failed to re-issue {:?}: cannot tell which keys are compromised: {why}",
                    cert.name
                ))
                .with_hint(
                    "nothing was installed; make the file readable (a list of at most 16 MiB), or remove it from key_blocklist",
                ));
            }
            let mut journal = self.store.journal(&cert.name).ok();
            if let Some(j) = journal.as_mut() {
                compromise::track_flag(&self.store, &self.config, &cert.name, j);
            }
            let signals = Signals::for_cert(&self.config, &blocked, journal.as_ref(), &cert.name);
            let compromised = observe(cert, now, &signals)
                .decision
                .reasons
                .contains(&Reason::KeyCompromised);
            if compromised {
                Reason::KeyCompromised
            } else {
                reason
            }
        };
        // Refuse now what the install would refuse later, before a key or an order exists.
        crate::adopt::preflight(cert)?;
        let issuer_cfg = self
            .config
            .issuers
            .get(&cert.issuer)
            .ok_or_else(|| Error::msg(format!("issuer {:?} is not configured", cert.issuer)))?;
        let mut journal = self.store.journal(&cert.name)?;
        let wanted: Vec<String> = cert.names.iter().map(|n| n.to_string()).collect();
        let mut blocked = Blocked::load(&self.config);

        // A pending re-issue for the same names, key type and issuer is resumed: its key is
        // already on disk and the CA may already have an order for it.
        let reusable = journal.pending.as_ref().is_some_and(|p| {
            p.names == wanted
                && p.key_spec == cert.key_type
                && p.issuer == cert.issuer
                && !blocked.contains(&p.key_spki_sha256)
        });
        let key = match (reusable, self.store.pending_key(&cert.name)?) {
            (true, Some(pem)) => PrivateKey::from_pem(pem.as_str()).ok(),
            _ => None,
        };
        let key = match key {
            Some(k)
                if journal
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.key_spki_sha256 == k.spki_sha256()) =>
            {
                log::info!(cert = cert.name.as_str(); "resuming pending re-issue");
                k
            }
            _ => {
                if journal.pending.is_some() {
                    log::info!(cert = cert.name.as_str(); "discarding pending re-issue that no longer matches the configuration");
                }
                self.store.clear_pending(&cert.name)?;
                // Never a key that was ever compromised (a collision is only theoretical).
                let key = loop {
                    let key = PrivateKey::generate(cert.key_type).map_err(Error::msg)?;
                    if !blocked.contains(&key.spki_sha256()) {
                        break key;
                    }
                };
                self.store.save_pending_key(&cert.name, &key.to_pem())?;
                journal.pending = Some(Pending {
                    reason,
                    started_at: now,
                    issuer: cert.issuer.clone(),
                    key_spec: cert.key_type,
                    key_spki_sha256: key.spki_sha256(),
                    names: wanted.clone(),
                    attempts: 0,
                    order_url: None,
                    issued: false,
                    compromise: None,
                    reminders: 0,
                });
                self.store.save_journal(&cert.name, &journal)?;
                log::info!(cert = cert.name.as_str(), reason = reason.as_str(), key_type = cert.key_type.as_str(), event = "key-generated"; "generated new key");
                key
            }
        };
        crate::failpoint!("after-key-persisted");
        if reason == Reason::KeyCompromised
            && journal
                .pending
                .as_ref()
                .is_some_and(|p| p.compromise.is_none())
        {
            let work = self.capture_compromise(cert, &mut journal, &mut blocked)?;
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
            self.store.save_journal(&cert.name, &journal)?;
        }
        let revoke_now = cert.revoke_first
            && journal
                .pending
                .as_ref()
                .and_then(|p| p.compromise.as_ref())
                .is_some_and(|c| !c.revoked_first && c.old_leaf.is_some());
        if revoke_now {
            // The key is known to be in an attacker's hands: revoke before replacing, so
            // nothing signed by it is trusted a minute longer than necessary.
            let work = journal.pending.as_ref().and_then(|p| p.compromise.clone());
            if let Some(work) = work {
                self.revoke_compromised(cert, &work.old_spki_sha256, work.old_leaf.as_deref())
                    .await?;
                if let Some(c) = journal.pending.as_mut().and_then(|p| p.compromise.as_mut()) {
                    c.revoked_first = true;
                }
                self.store.save_journal(&cert.name, &journal)?;
            }
        }
        let reason = journal.pending.as_ref().map(|p| p.reason).unwrap_or(reason);

        let mut key = key;
        let chain = match journal.pending.as_ref().is_some_and(|p| p.issued) {
            true => self.store.pending_chain(&cert.name)?,
            false => None,
        };
        let chain = match chain {
            Some(c) => c,
            None => {
                let mut shutdown = self.shutdown.clone();
                let result = tokio::select! {
                    r = self.obtain(cert, issuer_cfg, &key, &mut journal, now) => r,
                    _ = shutdown.wait_for(|stop| *stop) => {
                        return Err(Error::msg("stopped while waiting for the CA; the re-issue resumes at the next start"));
                    }
                };
                let issued = match result {
                    Ok(i) => i,
                    Err(e @ Error::Pending { .. }) => {
                        // Not a failure: the old certificate stays in service meanwhile.
                        journal.last = Some(Outcome {
                            at: self.clock.now(),
                            result: OutcomeKind::Pending,
                            reason,
                            message: e.to_string(),
                            serial: None,
                            generation: None,
                        });
                        self.store.save_journal(&cert.name, &journal)?;
                        return Err(e);
                    }
                    Err(e) => {
                        journal.server_retry_after = e.retry_after();
                        self.record(
                            cert,
                            &mut journal,
                            OutcomeKind::Failed,
                            reason,
                            &e.to_string(),
                            None,
                            None,
                        )?;
                        return Err(e);
                    }
                };
                if let Some(theirs) = issued.key {
                    // The issuer made the key (DNSimple): it replaces ours as the pending key,
                    // unless it is one we know to be compromised.
                    let k = PrivateKey::from_pem(theirs.as_str()).map_err(|e| {
                        Error::msg(format!("the issuer's private key is unusable: {e}"))
                    })?;
                    if blocked.contains(&k.spki_sha256()) {
                        return Err(Error::msg(
                            "the issuer sent a key that is known to be compromised",
                        ));
                    }
                    self.store.save_pending_key(&cert.name, &theirs)?;
                    if let Some(p) = journal.pending.as_mut() {
                        p.key_spki_sha256 = k.spki_sha256();
                    }
                    key = k;
                }
                self.accept_chain(cert, &mut journal, &key, issued.chain, now, reason)?
            }
        };
        // Validate again: a saved chain is input from disk like any other.
        keys::validate_chain(&cert.names, &key, &chain, now)
            .map_err(|e| Error::msg(format!("saved certificate is unusable: {e}")))?;
        self.stopping()?;
        self.install(cert, &mut journal, &key, &chain, reason).await
    }

    /// Step 3 for a chain that just arrived (from the CA or a human): it must be for our
    /// key and names; then it is saved, so a crash after this point never asks again.
    pub(super) fn accept_chain(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        key: &PrivateKey,
        chain: Chain,
        now: Timestamp,
        reason: Reason,
    ) -> Result<Chain> {
        if let Err(e) = keys::validate_chain(&cert.names, key, &chain, now) {
            let e = Error::msg(format!(
                "the certificate for {:?} was rejected: {e}",
                cert.name
            ))
            .with_hint("nothing was installed; the certificate in service is unchanged");
            // A bad answer is not resumable: order afresh next time.
            if let Some(p) = journal.pending.as_mut() {
                p.order_url = None;
            }
            self.record(
                cert,
                journal,
                OutcomeKind::Failed,
                reason,
                &e.to_string(),
                None,
                None,
            )?;
            return Err(e);
        }
        self.store.save_pending_chain(&cert.name, &chain)?;
        if let Some(p) = journal.pending.as_mut() {
            p.issued = true;
        }
        self.store.save_journal(&cert.name, journal)?;
        crate::failpoint!("after-issued");
        Ok(chain)
    }

    pub(super) async fn obtain(
        &self,
        cert: &Certificate,
        issuer_cfg: &crate::config::Issuer,
        key: &PrivateKey,
        journal: &mut Journal,
        now: Timestamp,
    ) -> Result<crate::issuer::Issued> {
        let issuer = Issuer::open(issuer_cfg, &self.store)?;
        let csr = key.csr_der(&cert.names).map_err(Error::msg)?;
        let spki = key.spki_der();
        let resume = journal.pending.as_ref().and_then(|p| p.order_url.clone());
        // With ARI, the new order names its predecessor (RFC 9773 §5): the serial in service
        // whose renewal information this CA gave us.
        let replaces = fsutil::read_capped(&cert.cert_file, keys::MAX_PEM_BYTES)
            .ok()
            .flatten()
            .and_then(|b| Chain::from_pem(&b).ok()?.leaf().ok())
            .filter(|l| journal.ari.as_ref().is_some_and(|a| a.serial == l.serial))
            .and_then(|l| l.cert_id);
        if let Some(p) = journal.pending.as_mut() {
            p.attempts += 1;
        }
        self.store.save_journal(&cert.name, journal)?;
        let req = IssueRequest {
            cert_name: &cert.name,
            key_spec: cert.key_type,
            names: &cert.names,
            csr_der: &csr,
            spki_der: &spki,
            now,
            resume_order: resume.as_deref(),
            replaces: replaces.as_deref(),
        };
        let store = &self.store;
        let name = cert.name.clone();
        let mut journal_copy = journal.clone();
        let mut on_order = |url: &str| -> Result<()> {
            if let Some(p) = journal_copy.pending.as_mut() {
                p.order_url = Some(url.to_string());
            }
            store.save_journal(&name, &journal_copy)
        };
        let chain = issuer.issue(&req, &mut on_order).await.map_err(|e| {
            e.context(format!(
                "failed to obtain a certificate for {:?} from issuer {:?}",
                cert.name, cert.issuer
            ))
        });
        // Pick up what the callback journalled.
        *journal = self.store.journal(&cert.name)?;
        chain
    }
}
