//! The imperative shell around the core: observe a certificate on disk, and carry out a
//! re-issue with the install transaction (stage, validate, publish, flip, test, reload,
//! verify, roll back). Shared by the CLI and the daemon; the caller holds the lock.
//!
//! Every step that matters is journalled before the next one starts, so a process killed at
//! any point resumes (recovery) instead of repeating work or leaving a half-installed pair.

use std::sync::Arc;

use crate::clock::Clock;
use crate::compromise::{self, Blocked, FlagId};
use crate::config::{Certificate, Config};
use crate::core::{self, CertFact, Decision, Desired, KeyFact, Observed, Reason, Timestamp};
use crate::error::{Error, Result};
use crate::issuer::{IssueRequest, Issuer, RevokeOutcome};
use crate::keys::{self, Chain, PrivateKey};
use crate::server::{self, Served, WebServer};
use crate::store::{
    CompromiseWork, Flip, GenFiles, GenerationContent, Journal, Outcome, OutcomeKind, Pending,
    PostActions, Store, fsutil,
};

/// What is on disk for one certificate, with the problems found reading it.
pub struct Observation {
    pub observed: Observed,
    pub decision: Decision,
    pub leaf: Option<core::LeafFacts>,
    pub cert_problem: Option<String>,
    pub key_problem: Option<String>,
    /// Why it cannot be told whether a key is compromised (a list that cannot be read).
    pub compromise_problem: Option<String>,
}

pub fn desired(cert: &Certificate) -> Desired {
    Desired {
        names: cert.names.iter().cloned().collect(),
        key_spec: cert.key_type,
        renew_before: cert.renew_before,
    }
}

/// What, besides the files themselves, says a certificate's key or serial must go.
#[derive(Default)]
pub struct Signals<'a> {
    /// Digests from the blocklists and certagent's memory of compromised keys.
    pub blocked: Option<&'a Blocked>,
    /// The flag file in `compromised_dir`, if present.
    pub flag: Option<FlagId>,
    pub journal: Option<&'a Journal>,
}

impl<'a> Signals<'a> {
    pub fn for_cert(
        config: &Config,
        blocked: &'a Blocked,
        journal: Option<&'a Journal>,
        cert: &str,
    ) -> Signals<'a> {
        Signals {
            blocked: Some(blocked),
            flag: compromise::flag(config, cert),
            journal,
        }
    }
}

/// Read the configured files (never writing anything) and decide.
pub fn observe(cert: &Certificate, now: Timestamp, signals: &Signals) -> Observation {
    let (cert_fact, chain) = match fsutil::read_capped(&cert.cert_file, keys::MAX_PEM_BYTES) {
        Ok(None) => (CertFact::Missing, None),
        Err(e) => (CertFact::Invalid(e.to_string()), None),
        Ok(Some(bytes)) => match Chain::from_pem(&bytes).and_then(|c| c.leaf().map(|l| (l, c))) {
            Ok((leaf, chain)) => (CertFact::Present(leaf), Some(chain)),
            Err(e) => (CertFact::Invalid(e), None),
        },
    };
    let key_fact = match fsutil::read_capped(&cert.key_file, keys::MAX_PEM_BYTES) {
        Ok(None) => KeyFact::Missing,
        Err(e) => KeyFact::Invalid(e.to_string()),
        Ok(Some(bytes)) => {
            match PrivateKey::from_pem(&String::from_utf8_lossy(&zeroize::Zeroizing::new(bytes))) {
                Ok(key) => {
                    let verifies = chain
                        .as_ref()
                        .and_then(|c| c.leaf_spki_der().ok())
                        .map(|spki| key.verifies_with(&spki));
                    KeyFact::Present {
                        key_spec: key.spec,
                        spki_sha256: key.spki_sha256(),
                        verifies_with_cert: verifies,
                    }
                }
                Err(e) => KeyFact::Invalid(e),
            }
        }
    };
    let cert_problem = match &cert_fact {
        CertFact::Missing => Some(format!(
            "{:?} does not exist",
            cert.cert_file.display().to_string()
        )),
        CertFact::Invalid(e) => Some(e.clone()),
        CertFact::Present(_) => None,
    };
    let key_problem = match &key_fact {
        KeyFact::Missing => Some(format!(
            "{:?} does not exist",
            cert.key_file.display().to_string()
        )),
        KeyFact::Invalid(e) => Some(e.clone()),
        KeyFact::Present { .. } => None,
    };
    let leaf = match &cert_fact {
        CertFact::Present(l) => Some(l.clone()),
        _ => None,
    };
    let key_digest = match &key_fact {
        KeyFact::Present { spki_sha256, .. } => Some(spki_sha256.clone()),
        _ => None,
    };
    let blocked =
        |d: Option<&str>| d.is_some_and(|d| signals.blocked.is_some_and(|b| b.contains(d)));
    // One flag, one response: an answered flag stays answered while it is there, whatever is
    // written to it (see `compromise::track_flag`).
    let unhandled_flag =
        signals.flag.is_some() && signals.journal.is_none_or(|j| j.handled_flag.is_none());
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
    let observed = Observed {
        compromise_unknown: compromise_problem.is_some(),
        installed_at,
        cert: cert_fact,
        key: key_fact,
        compromised: unhandled_flag
            || blocked(key_digest.as_deref())
            || blocked(leaf.as_ref().map(|l| l.spki_sha256.as_str()))
            || revocation.is_some_and(|r| r.reason == Some(1)),
        revoked: revocation.is_some(),
        suggested_renewal: signals
            .journal
            .and_then(|j| j.ari.as_ref())
            .filter(|a| leaf.as_ref().is_some_and(|l| l.serial == a.serial))
            .map(|a| a.renew_at),
    };
    let decision = core::decide(&desired(cert), &observed, now);
    Observation {
        observed,
        decision,
        leaf,
        cert_problem,
        key_problem,
        compromise_problem,
    }
}

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

/// How a re-issue ended.
#[derive(Debug)]
pub struct Installed {
    /// Why this certificate was issued, as journalled: a resumed re-issue keeps its own
    /// reason, and a compromised key in service makes any re-issue a compromise response.
    pub reason: Reason,
    pub generation: u64,
    pub serial: String,
    pub not_after: Timestamp,
    pub loaded: bool,
    /// The post_install hook failed (the certificate is installed all the same).
    pub hook_error: Option<Error>,
}

/// Carries out re-issues. Cheap to clone: jobs of the daemon each hold one.
#[derive(Clone)]
pub struct Executor {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    /// Becomes true when the daemon shuts down: work that has not flipped yet stops (it is
    /// journalled and resumes next time); an install that has flipped completes or rolls back.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Executor {
    pub fn new(
        config: Arc<Config>,
        clock: Clock,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Executor> {
        let store = Store::open(&config.agent.state_dir)?;
        Ok(Executor {
            config,
            store,
            clock,
            shutdown,
        })
    }

    fn stopping(&self) -> Result<()> {
        if *self.shutdown.borrow() {
            return Err(Error::msg(
                "stopped: certagent is shutting down; the re-issue resumes at the next start",
            ));
        }
        Ok(())
    }

    fn server(&self, cert: &Certificate) -> Option<WebServer> {
        cert.server
            .as_ref()
            .and_then(|s| self.config.servers.get(s))
            .map(WebServer::new)
    }

    /// Finish what a killed process left: remove staging, settle an unverified flip. Returns
    /// the outcome of the interrupted install, if there was one.
    pub async fn recover(&self, cert: &Certificate) -> Result<Option<Result<Installed>>> {
        let removed = self.store.remove_staging(&cert.name)?;
        if removed > 0 {
            log::info!(cert = cert.name.as_str(), removed = removed; "removed staging leftovers of an interrupted run");
        }
        let mut journal = self.store.journal(&cert.name)?;
        let Some(flip) = journal.flip.clone() else {
            if journal.post.is_some() {
                log::warn!(cert = cert.name.as_str(); "finishing the response to a compromised key");
                self.run_post_actions(cert).await?;
            }
            return Ok(None);
        };
        // Journalled just before the flip: if `current` does not point at the new generation,
        // the process died before the commit point and nothing was installed.
        if self.store.current_generation(&cert.name) != Some(flip.to) {
            log::info!(cert = cert.name.as_str(), generation = flip.to; "an interrupted run stopped before its flip; nothing to undo");
            journal.flip = None;
            self.store.save_journal(&cert.name, &journal)?;
            return Ok(None);
        }
        log::warn!(cert = cert.name.as_str(), generation = flip.to; "found an interrupted install, finishing it");
        Ok(Some(self.settle_flip(cert, &mut journal, &flip).await))
    }

    /// Re-issue `cert` with a new key and install it. The caller holds the lock. If a previous
    /// run was killed after its flip, finishing that install is the re-issue asked for.
    pub async fn reissue(&self, cert: &Certificate, reason: Reason) -> Result<Installed> {
        let result = match self.recover(cert).await {
            Ok(Some(interrupted)) => interrupted,
            Ok(None) => self.reissue_fresh(cert, reason).await,
            Err(e) => Err(e),
        };
        // A failure the steps did not journal themselves (a file that could not be opened,
        // say) is journalled here, so `status` never shows an older outcome as the last one.
        if let Err(e) = &result
            && !matches!(e, Error::Pending { .. })
            && !*self.shutdown.borrow()
        {
            let message = e.to_string();
            let recorded = self.store.journal(&cert.name).ok().and_then(|j| j.last);
            let already = recorded.is_some_and(|l| {
                matches!(l.result, OutcomeKind::Failed | OutcomeKind::RolledBack)
                    && l.message == message
            });
            if !already {
                self.record_failure(&cert.name, reason, &message);
            }
        }
        result
    }

    /// Journal a failed attempt that ended without journalling its outcome. Best effort: the
    /// failure may be that the journal cannot be written.
    pub fn record_failure(&self, name: &str, reason: Reason, message: &str) {
        let Ok(mut journal) = self.store.journal(name) else {
            return;
        };
        journal.failures += 1;
        journal.record_outcome(Outcome {
            at: self.clock.now(),
            result: OutcomeKind::Failed,
            reason,
            message: message.to_string(),
            serial: None,
            generation: None,
        });
        if let Err(e) = self.store.save_journal(name, &journal) {
            log::warn!(cert = name; "failed to journal the failure: {e}");
        }
    }

    async fn reissue_fresh(&self, cert: &Certificate, reason: Reason) -> Result<Installed> {
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
                    next_look: None,
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
        validate_chain(cert, &key, &chain, now)
            .map_err(|e| Error::msg(format!("saved certificate is unusable: {e}")))?;
        self.stopping()?;
        self.install(cert, &mut journal, &key, &chain, reason).await
    }

    /// Step 3 for a chain that just arrived (from the CA or a human): it must be for our
    /// key and names; then it is saved, so a crash after this point never asks again.
    fn accept_chain(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        key: &PrivateKey,
        chain: Chain,
        now: Timestamp,
        reason: Reason,
    ) -> Result<Chain> {
        if let Err(e) = validate_chain(cert, key, &chain, now) {
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

    /// A certificate handed back by a human for a pending re-issue (`certagent import`, the
    /// inbox): accepted only if it is for the pending key and the configured names, then
    /// installed with the full transaction. The caller holds the lock.
    pub async fn import(&self, cert: &Certificate, data: &[u8]) -> Result<Installed> {
        let now = self.clock.now();
        let mut journal = self.store.journal(&cert.name)?;
        let Some(pending) = journal.pending.clone() else {
            return Err(Error::msg(format!(
                "{:?} has no pending re-issue to import a certificate for",
                cert.name
            ))
            .with_hint(format!(
                "start one with `certagent reissue --now {}`",
                cert.name
            )));
        };
        let key = self
            .store
            .pending_key(&cert.name)?
            .and_then(|pem| PrivateKey::from_pem(pem.as_str()).ok())
            .filter(|k| k.spki_sha256() == pending.key_spki_sha256)
            .ok_or_else(|| Error::msg(format!("the pending key of {:?} is missing", cert.name)))?;
        let chain = Chain::from_pem(data)
            .map_err(|e| Error::msg(format!("failed to read the certificate: {e}")))?;
        if chain.leaf().map_err(Error::msg)?.spki_sha256 != key.spki_sha256() {
            return Err(Error::msg(format!(
                "the certificate is not for the pending key of {:?}: nothing was installed",
                cert.name
            ))
            .with_hint("it was probably issued for another CSR; submit STATE/outbox/NAME.csr"));
        }
        self.accept_chain(cert, &mut journal, &key, chain, now, pending.reason)?;
        log::info!(cert = cert.name.as_str(), event = "imported"; "accepted the certificate for the pending re-issue");
        self.reissue_fresh(cert, pending.reason).await
    }

    async fn obtain(
        &self,
        cert: &Certificate,
        issuer_cfg: &crate::config::Issuer,
        key: &PrivateKey,
        journal: &mut Journal,
        now: Timestamp,
    ) -> Result<crate::issuer::Issued> {
        let issuer = Issuer::open(issuer_cfg, &self.store, self.clock)?;
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

    /// Steps 4–9 of the transaction: adopt existing files, publish, check the published pair,
    /// run the pre_install hook, flip, test, reload, verify, and roll back on failure.
    async fn install(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        key: &PrivateKey,
        chain: &Chain,
        reason: Reason,
    ) -> Result<Installed> {
        self.adopt(cert, journal)?;
        let number = journal.next_generation;
        journal.next_generation += 1;
        let content = GenerationContent {
            key: Some(zeroize::Zeroizing::new(key.to_pem().as_bytes().to_vec())),
            fullchain: Some(chain.to_pem().into_bytes()),
            leaf: Some(chain.leaf_pem().into_bytes()),
            chain: Some(chain.intermediates_pem().into_bytes()),
            key_perms: None,
            adopted: false,
        };
        self.store.save_journal(&cert.name, journal)?;
        let files = self.store.publish_generation(cert, number, &content)?;
        #[cfg(feature = "failpoints")]
        crate::failpoint::truncate_if("truncate-staged-key", &files.key());
        // The files exactly as the server will read them. Apache says "Syntax OK" for a
        // mismatched or truncated pair and its parent exits on the graceful restart that
        // follows, so this check, not the server's config test, is what protects it.
        if let Err(why) = check_generation(&files) {
            let e = Error::msg(format!(
                "the new files of generation {number} are not a usable pair: {why}"
            ));
            return Err(self.veto(cert, journal, number, reason, e));
        }
        let serial = chain.leaf().map_err(Error::msg)?.serial;
        if let Some(argv) = &cert.pre_install {
            let env = hook_env(cert, "pre_install", reason, &serial, number, &files);
            if let Err(e) = server::run_with_env(argv, &env, hook_timeout(cert)).await {
                let e = e.context(format!(
                    "pre_install hook of {:?} vetoed the install",
                    cert.name
                ));
                return Err(self.veto(cert, journal, number, reason, e));
            }
        }
        let flip = Flip {
            from: self.store.current_generation(&cert.name),
            to: number,
            reason,
        };
        journal.flip = Some(flip.clone());
        self.store.save_journal(&cert.name, journal)?;
        crate::failpoint!("before-flip");
        self.store.flip(&cert.name, number)?;
        self.store.link_outputs(cert)?;
        log::info!(cert = cert.name.as_str(), generation = number, reason = reason.as_str(), event = "flipped"; "flipped to new generation");
        crate::failpoint!("after-flip");
        self.settle_flip(cert, journal, &flip).await
    }

    /// An install stopped before its flip: the published generation goes away, the server's
    /// files never changed. The issued certificate stays pending, so the next attempt
    /// installs it without asking the CA again.
    fn veto(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        number: u64,
        reason: Reason,
        cause: Error,
    ) -> Error {
        if let Err(e) = self.store.remove_generation(&cert.name, number) {
            log::warn!(cert = cert.name.as_str(), generation = number; "{e}");
        }
        let message = cause.to_string();
        log::error!(cert = cert.name.as_str(), reason = reason.as_str(), generation = number, event = "failed"; "install stopped before the flip: {message}");
        let _ = self.record(
            cert,
            journal,
            OutcomeKind::Failed,
            reason,
            &message,
            None,
            None,
        );
        Error::msg(message)
            .with_hint("nothing was installed; the certificate in service is unchanged")
    }

    /// Take over plain files at the configured paths as a generation of their own (kept for
    /// rollback), then make the paths symlinks into `current/`. The server sees the same
    /// bytes before and after.
    fn adopt(&self, cert: &Certificate, journal: &mut Journal) -> Result<()> {
        // Paths that are missing or already ours need no adoption (a deleted key file is just
        // a deleted symlink); only a foreign file or link holds something worth keeping.
        let foreign = self.store.output_links(cert).iter().any(|(path, ours)| {
            std::fs::symlink_metadata(path).is_ok()
                && std::fs::read_link(path).ok().as_ref() != Some(ours)
        });
        if !foreign && self.store.current_generation(&cert.name).is_some() {
            return Ok(());
        }
        // Only what is certainly this certificate's becomes a generation; anything else
        // that would be replaced is kept verbatim, and what cannot be replaced is an error.
        let Some(content) = crate::adopt::take_over(&self.store, cert)? else {
            return Ok(()); // nothing to keep; the first flip creates everything
        };
        let number = journal.next_generation;
        journal.next_generation += 1;
        self.store.save_journal(&cert.name, journal)?;
        self.store.publish_generation(cert, number, &content)?;
        self.store.flip(&cert.name, number)?;
        self.store.link_outputs(cert)?;
        journal.current = Some(number);
        self.store.save_journal(&cert.name, journal)?;
        log::info!(cert = cert.name.as_str(), generation = number, event = "adopted"; "adopted existing files as a generation");
        Ok(())
    }

    /// After `current` points at `flip.to`: config test, reload, verify; roll back to
    /// `flip.from` if any of them fails. Also used by recovery after a crash.
    async fn settle_flip(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
    ) -> Result<Installed> {
        let installed = self.settle_flip_inner(cert, journal, flip).await?;
        if let Err(e) = self.run_post_actions(cert).await {
            log::error!(cert = cert.name.as_str(); "after the install: {e}");
        }
        Ok(installed)
    }

    async fn settle_flip_inner(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
    ) -> Result<Installed> {
        let files = self.store.generation(&cert.name, flip.to);
        let chain = fsutil::read_capped(&files.fullchain(), keys::MAX_PEM_BYTES)?
            .ok_or_else(|| Error::msg(format!("generation {} has no certificate", flip.to)))
            .and_then(|b| Chain::from_pem(&b).map_err(Error::msg))?;
        let leaf = chain.leaf().map_err(Error::msg)?;
        let installed = |loaded| Installed {
            reason: flip.reason,
            generation: flip.to,
            serial: leaf.serial.clone(),
            not_after: leaf.not_after,
            loaded,
            hook_error: None,
        };
        let server = self.server(cert);
        // Recovery meets files written by a process that was killed: never load them unseen.
        if let Err(why) = check_generation(&files) {
            let e = Error::msg(format!(
                "generation {} is not a usable pair: {why}",
                flip.to
            ));
            return Err(self.rollback(cert, journal, flip, None, false, e).await);
        }
        let Some(server) = server else {
            self.finish(cert, journal, flip, OutcomeKind::Installed, &leaf.serial)?;
            return Ok(self
                .post_install(cert, journal, flip, installed(false))
                .await);
        };
        if server.kind() == crate::config::ServerKind::None {
            // Install only: there is nothing to load, so nothing is "not loaded".
            self.finish(cert, journal, flip, OutcomeKind::Installed, &leaf.serial)?;
            return Ok(self
                .post_install(cert, journal, flip, installed(true))
                .await);
        }
        if server.is_running() == Some(false) {
            log::warn!(cert = cert.name.as_str(), server = server.name(); "web server is not running: installed, not loaded");
            self.finish(
                cert,
                journal,
                flip,
                OutcomeKind::InstalledNotLoaded,
                &leaf.serial,
            )?;
            return Ok(self
                .post_install(cert, journal, flip, installed(false))
                .await);
        }
        if let Err(e) = server.config_test().await {
            let rolled = self.rollback(cert, journal, flip, Some(&server), false, e);
            return Err(rolled.await);
        }
        let mut served = match self.reload_and_probe(&server, cert, &chain).await {
            Ok(s) => s,
            Err(e) => {
                let rolled = self.rollback(cert, journal, flip, Some(&server), false, e);
                return Err(rolled.await);
            }
        };
        crate::failpoint!("after-reload");
        if let Served::Not(why) = &served {
            log::warn!(cert = cert.name.as_str(), server = server.name(); "new certificate not served after reload ({why}), reloading once more");
            if let Ok(again) = self.reload_and_probe(&server, cert, &chain).await {
                served = again;
            }
        }
        match served {
            Served::All => {
                self.finish(cert, journal, flip, OutcomeKind::Installed, &leaf.serial)?;
                Ok(self
                    .post_install(cert, journal, flip, installed(true))
                    .await)
            }
            Served::Not(why) => {
                let mut message = format!(
                    "server {:?} does not serve the new certificate: {why}",
                    server.name()
                );
                if server.is_running() == Some(false) {
                    message.push_str(&exited_note(&server));
                }
                let e = Error::msg(message);
                Err(self
                    .rollback(cert, journal, flip, Some(&server), true, e)
                    .await)
            }
        }
    }

    /// One reload and its proof: note the workers serving now, reload, wait until those have
    /// stopped accepting connections, probe every endpoint of the certificate.
    async fn reload_and_probe(
        &self,
        server: &WebServer,
        cert: &Certificate,
        chain: &Chain,
    ) -> Result<Served> {
        let old_workers = server.workers();
        server.reload().await?;
        let settle = server
            .wait_retired(&old_workers, server.verify_timeout())
            .await;
        Ok(server
            .wait_served(
                &cert.names,
                chain.leaf_der(),
                server.verify_timeout(),
                settle,
            )
            .await)
    }

    /// Run the post_install hook of an installed certificate. A failure is recorded and
    /// reported (the install itself stands: it is verified and in service).
    async fn post_install(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        mut installed: Installed,
    ) -> Installed {
        let Some(argv) = &cert.post_install else {
            return installed;
        };
        let files = self.store.generation(&cert.name, flip.to);
        let env = hook_env(
            cert,
            "post_install",
            flip.reason,
            &installed.serial,
            flip.to,
            &files,
        );
        let Err(e) = server::run_with_env(argv, &env, hook_timeout(cert)).await else {
            return installed;
        };
        let e = e.context(format!("post_install hook of {:?} failed", cert.name));
        log::error!(cert = cert.name.as_str(), reason = flip.reason.as_str(), serial = installed.serial.as_str(), generation = flip.to, event = "hook-failed"; "{e}");
        if let Some(last) = journal.last.as_mut() {
            last.message = format!("{}; {e}", last.message);
            if let Err(e) = self.store.save_journal(&cert.name, journal) {
                log::warn!(cert = cert.name.as_str(); "{e}");
            }
        }
        installed.hook_error = Some(e.with_hint(
            "the new certificate is installed; fix the hook and run it by hand, it is not retried",
        ));
        installed
    }

    fn finish(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        kind: OutcomeKind,
        serial: &str,
    ) -> Result<()> {
        journal.current = Some(flip.to);
        journal.flip = None;
        // A compromised predecessor still has to be revoked and purged: journalled in the
        // same write that records the new generation, so a crash cannot lose it.
        if let Some(work) = journal.pending.as_ref().and_then(|p| p.compromise.clone()) {
            journal.post = Some(PostActions {
                old_spki_sha256: work.old_spki_sha256,
                revoke: if work.revoked_first {
                    None
                } else {
                    work.old_leaf
                },
                revoke_attempts: 0,
                purged: false,
            });
        }
        journal.pending = None;
        journal.revoked = None;
        journal.ari = None;
        journal.refresh = None;
        journal.failures = 0;
        journal.retry_at = None;
        journal.server_retry_after = None;
        let message = match kind {
            OutcomeKind::InstalledNotLoaded => {
                "installed, not loaded: the web server is not running"
            }
            _ => "installed and verified in service",
        };
        journal.record_outcome(Outcome {
            at: self.clock.now(),
            result: kind,
            reason: flip.reason,
            message: message.into(),
            serial: Some(serial.to_string()),
            generation: Some(flip.to),
        });
        self.store.save_journal(&cert.name, journal)?;
        self.store.clear_pending(&cert.name)?;
        let mut protect = vec![flip.to];
        protect.extend(flip.from);
        let removed =
            self.store
                .gc(&cert.name, self.config.agent.keep_generations + 1, &protect)?;
        // Older generations kept for rollback follow a changed owner, group or mode too.
        self.fix_permissions(cert)?;
        let event = match kind {
            OutcomeKind::InstalledNotLoaded => "installed-not-loaded",
            _ => "installed",
        };
        log::info!(
            cert = cert.name.as_str(), reason = flip.reason.as_str(), serial = serial, generation = flip.to,
            event = event, removed = format!("{removed:?}").as_str();
            "{message}"
        );
        Ok(())
    }

    /// Give every kept generation of `cert` the configured owner, group and modes (no new
    /// key; adopted generations are only narrowed). Returns how many files changed.
    pub fn fix_permissions(&self, cert: &Certificate) -> Result<usize> {
        let fixed = self.store.fix_permissions(cert)?;
        for d in &fixed {
            log::info!(cert = cert.name.as_str(), generation = d.generation, event = "permissions-fixed"; "fixed the access of {}", d.describe());
        }
        Ok(fixed.len())
    }

    /// Flip back to the previous generation, reload if the new one was loaded, and record
    /// it. Returns the error to report (the cause plus what was done about it). A previous
    /// generation that is not a usable pair is not restored when the new one is: loading it
    /// would take the server down (Apache) or fail at the next reload (logrotate's, daily).
    async fn rollback(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        server: Option<&WebServer>,
        reloaded: bool,
        cause: Error,
    ) -> Error {
        let new_usable = check_generation(&self.store.generation(&cert.name, flip.to)).is_ok();
        let previous_unusable = flip.from.and_then(|prev| {
            check_generation(&self.store.generation(&cert.name, prev))
                .err()
                .map(|why| (prev, why))
        });
        if let (true, Some((prev, why))) = (new_usable, previous_unusable) {
            let message = format!(
                "{cause}; kept generation {}: the previous generation {prev} is not a usable pair ({why}), restoring it would break the server",
                flip.to
            );
            journal.current = Some(flip.to);
            journal.flip = None;
            log::error!(cert = cert.name.as_str(), reason = flip.reason.as_str(), generation = flip.to, event = "failed"; "install failed: {message}");
            let _ = self.record(
                cert,
                journal,
                OutcomeKind::Failed,
                flip.reason,
                &message,
                None,
                Some(flip.to),
            );
            return Error::msg(message).with_hint(
                "the new pair is valid and stays in place; see the web server's error log",
            );
        }
        let mut notes = Vec::new();
        let flipped = match flip.from {
            Some(prev) => self
                .store
                .flip(&cert.name, prev)
                .map(|_| format!("rolled back to generation {prev}")),
            None => self
                .store
                .unlink_current(&cert.name)
                .map(|_| "removed the new files (there was nothing before)".into()),
        };
        match flipped {
            Ok(n) => notes.push(n),
            Err(e) => notes.push(format!("ROLLBACK FAILED: {e}")),
        }
        if let (true, Some(server)) = (reloaded, server) {
            match server.reload().await {
                Ok(()) => notes.push("reloaded the previous certificate".into()),
                Err(e) => notes.push(format!("reload after rollback failed: {e}")),
            }
        }
        journal.current = flip.from;
        journal.flip = None;
        let message = format!("{cause}; {}", notes.join(", "));
        log::error!(cert = cert.name.as_str(), reason = flip.reason.as_str(), generation = flip.to, event = "rolled-back"; "install failed: {message}");
        let _ = self.record(
            cert,
            journal,
            OutcomeKind::RolledBack,
            flip.reason,
            &message,
            None,
            Some(flip.to),
        );
        let hint = cause.hint().map(str::to_string);
        let e = Error::msg(message);
        match hint {
            Some(h) => e.with_hint(h),
            None => e.with_hint(
                "the previous certificate and key are in place; see the web server's error log",
            ),
        }
    }

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
        let http = crate::issuer::http::Http::new(
            acme.as_ref().and_then(|a| a.ca_bundle.as_deref()),
            self.clock,
        )?;
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

    /// The key in service is compromised: remember its digest (it is never used again),
    /// keep a copy in quarantine (to sign its certificate's revocation), and note the flag
    /// file that reported it as answered.
    fn capture_compromise(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &mut Blocked,
    ) -> Result<CompromiseWork> {
        let read = |p: &std::path::Path| fsutil::read_capped(p, keys::MAX_PEM_BYTES).ok().flatten();
        let key_pem = read(&cert.key_file);
        let key = key_pem
            .as_ref()
            .and_then(|p| PrivateKey::from_pem(&String::from_utf8_lossy(p)).ok());
        let chain = read(&cert.cert_file).and_then(|b| Chain::from_pem(&b).ok());
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
        compromise::remember(&self.store, &digest)?;
        blocked.insert(&digest);
        if let (Some(pem), Some(k)) = (&key_pem, &key)
            && k.spki_sha256() == digest
        {
            compromise::quarantine_copy(&self.store, &cert.name, &digest, pem)?;
        }
        journal.handled_flag = compromise::flag(&self.config, &cert.name);
        log::warn!(
            cert = cert.name.as_str(), reason = "key-compromised", event = "compromised", key = digest.as_str();
            "key marked compromised: it is replaced now and never used again"
        );
        use base64::Engine;
        Ok(CompromiseWork {
            old_spki_sha256: digest,
            old_leaf: chain.map(|c| base64::engine::general_purpose::STANDARD.encode(c.leaf_der())),
            revoked_first: false,
        })
    }

    /// Revoke a compromised key's certificate at the CA that issued it (as configured for the
    /// certificate), signed with the compromised key itself when certagent still has it.
    /// A refusal is logged for a human (ERROR) and not retried; a transport failure is.
    async fn revoke_compromised(
        &self,
        cert: &Certificate,
        digest: &str,
        leaf_b64: Option<&str>,
    ) -> Result<()> {
        use base64::Engine;
        let Some(leaf_b64) = leaf_b64 else {
            return Ok(());
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(leaf_b64)
            .map_err(|_| Error::msg("journalled certificate is not base64"))?;
        let serial = keys::leaf_facts(&der).map(|l| l.serial).unwrap_or_default();
        let key = compromise::quarantined_key(&self.store, &cert.name, digest)
            .and_then(|pem| PrivateKey::from_pem(&String::from_utf8_lossy(&pem)).ok());
        let issuer_cfg = self
            .config
            .issuers
            .get(&cert.issuer)
            .ok_or_else(|| Error::msg(format!("issuer {:?} is not configured", cert.issuer)))?;
        let issuer = Issuer::open(issuer_cfg, &self.store, self.clock)?;
        match issuer.revoke(&der, key.as_ref()).await? {
            RevokeOutcome::Revoked { by_key } => {
                let event = crate::notify::Event::new(
                    "revoked",
                    &cert.name,
                    "revoked the compromised certificate at the CA",
                    self.clock.now(),
                )
                .reason("key-compromised")
                .serial(serial.clone());
                crate::notify::emit(&self.config, event).await;
                log::warn!(
                cert = cert.name.as_str(), serial = serial.as_str(), event = "revoked";
                "revoked the compromised certificate at the CA (reason keyCompromise, signed with {})",
                if by_key { "the compromised key" } else { "the account key" }
                );
            }
            RevokeOutcome::AlreadyRevoked => log::info!(
                cert = cert.name.as_str(), serial = serial.as_str(), event = "revoked";
                "the compromised certificate was already revoked"
            ),
            RevokeOutcome::Refused(why) => log::error!(
                cert = cert.name.as_str(), serial = serial.as_str(), event = "revoke-refused";
                "the CA refused to revoke the compromised certificate: {why}; revoke it where it was issued"
            ),
        }
        Ok(())
    }

    /// Finish the answer to a compromised key once its successor serves: revoke the old
    /// certificate, then remove the old key from every generation. Each step is journalled.
    pub async fn run_post_actions(&self, cert: &Certificate) -> Result<()> {
        let mut journal = self.store.journal(&cert.name)?;
        let Some(mut post) = journal.post.clone() else {
            return Ok(());
        };
        crate::failpoint_async!("before-revoke");
        if let Some(leaf) = post.revoke.clone() {
            match self
                .revoke_compromised(cert, &post.old_spki_sha256, Some(&leaf))
                .await
            {
                Ok(()) => post.revoke = None,
                Err(e) => {
                    post.revoke_attempts += 1;
                    let delay =
                        core::retry_delay(post.revoke_attempts, rand::random::<f64>(), None);
                    journal.retry_at = Some(self.clock.now() + delay);
                    log::error!(cert = cert.name.as_str(), event = "failed"; "failed to revoke the compromised certificate (attempt {}): {e}", post.revoke_attempts);
                }
            }
            journal.post = Some(post.clone());
            self.store.save_journal(&cert.name, &journal)?;
        }
        if !post.purged {
            let purged =
                compromise::purge_generations(&self.store, &cert.name, &post.old_spki_sha256)?;
            post.purged = true;
            log::info!(cert = cert.name.as_str(), event = "quarantined", generations = format!("{purged:?}").as_str(); "removed the compromised key from every kept generation");
        }
        journal.post = (post.revoke.is_some() || !post.purged).then_some(post);
        self.store.save_journal(&cert.name, &journal)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        result: OutcomeKind,
        reason: Reason,
        message: &str,
        serial: Option<String>,
        generation: Option<u64>,
    ) -> Result<()> {
        journal.failures += 1;
        journal.record_outcome(Outcome {
            at: self.clock.now(),
            result,
            reason,
            message: message.to_string(),
            serial,
            generation,
        });
        self.store.save_journal(&cert.name, journal)
    }
}

/// The pair check on files as they are on disk, the question nginx and mod_ssl ask when they
/// load them: the certificate file parses, the key file parses, the key is the leaf's key,
/// and (for the key types certagent issues) it signs what the leaf's key verifies.
pub fn check_generation(files: &GenFiles) -> Result<(), String> {
    let read = |path: &std::path::Path, what: &str| {
        fsutil::read_capped(path, keys::MAX_PEM_BYTES)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{what} {:?} is missing", path.display().to_string()))
    };
    let chain = Chain::from_pem(&read(&files.fullchain(), "certificate")?)
        .map_err(|e| format!("certificate: {e}"))?;
    let key_pem = zeroize::Zeroizing::new(read(&files.key(), "key")?);
    let key = PrivateKey::from_pem(&String::from_utf8_lossy(&key_pem))
        .map_err(|e| format!("key: {e}"))?;
    let leaf = chain.leaf()?;
    if leaf.spki_sha256 != key.spki_sha256() {
        return Err("the key does not belong to the certificate".into());
    }
    if key.spec.is_some() && !key.verifies_with(&chain.leaf_spki_der()?) {
        return Err(
            "the key does not sign for the certificate (sign/verify round trip failed)".into(),
        );
    }
    Ok(())
}

/// The environment of a hook: which certificate, why, and where its new files are.
fn hook_env(
    cert: &Certificate,
    hook: &str,
    reason: Reason,
    serial: &str,
    generation: u64,
    files: &GenFiles,
) -> Vec<(String, String)> {
    [
        ("CERTAGENT_HOOK", hook.to_string()),
        ("CERTAGENT_CERT", cert.name.clone()),
        ("CERTAGENT_REASON", reason.as_str().to_string()),
        (
            "CERTAGENT_CERT_FILE",
            files.fullchain().display().to_string(),
        ),
        ("CERTAGENT_KEY_FILE", files.key().display().to_string()),
        ("CERTAGENT_SERIAL", serial.to_string()),
        ("CERTAGENT_GENERATION", generation.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn hook_timeout(cert: &Certificate) -> std::time::Duration {
    std::time::Duration::from_secs(cert.hook_timeout.0.max(1) as u64)
}

/// What to add to an error when the server's master process is gone after a reload.
fn exited_note(server: &WebServer) -> String {
    let pid_file = server
        .pid_file()
        .map(|p| format!(" (pid file {:?})", p.display().to_string()))
        .unwrap_or_default();
    format!(
        "; the server is not running any more{pid_file}: certagent never starts it, start it once its error log says why it exited"
    )
}

/// Step 3 of the transaction: the chain must be for our key and our names, currently valid,
/// and linked; the key must sign for the leaf. What fails here never reaches the server.
pub fn validate_chain(
    cert: &Certificate,
    key: &PrivateKey,
    chain: &Chain,
    now: Timestamp,
) -> Result<(), String> {
    let leaf = chain.leaf()?;
    if leaf.spki_sha256 != key.spki_sha256() {
        return Err("the certificate is for a different key".into());
    }
    let wanted: std::collections::BTreeSet<String> =
        cert.names.iter().map(|n| n.to_string()).collect();
    if leaf.names != wanted {
        let have: Vec<&String> = leaf.names.iter().collect();
        return Err(format!(
            "the certificate is for {have:?}, not the configured names {:?}",
            wanted.iter().collect::<Vec<_>>()
        ));
    }
    // CAs back-date by up to an hour; more than a day ahead means a clock problem.
    if leaf.not_before > now + 86_400 {
        return Err(format!(
            "the certificate is not valid until {} (check the clock)",
            crate::output::rfc3339(leaf.not_before)
        ));
    }
    if leaf.not_after <= now {
        return Err(format!(
            "the certificate expired at {}",
            crate::output::rfc3339(leaf.not_after)
        ));
    }
    chain.check_links()?;
    if !key.verifies_with(&chain.leaf_spki_der()?) {
        return Err(
            "the key does not sign for the certificate (sign/verify round trip failed)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InternalIssuer;
    use crate::core::{DomainName, KeySpec, Span};
    use crate::issuer::internal::LocalCa;

    /// A generation directory holding `fullchain` and `key` (either may be absent).
    fn generation(dir: &std::path::Path, fullchain: Option<&[u8]>, key: Option<&[u8]>) -> GenFiles {
        std::fs::create_dir_all(dir).unwrap();
        let g = GenFiles {
            dir: dir.to_path_buf(),
        };
        let _ = std::fs::remove_file(g.fullchain());
        let _ = std::fs::remove_file(g.key());
        if let Some(c) = fullchain {
            std::fs::write(g.fullchain(), c).unwrap();
        }
        if let Some(k) = key {
            std::fs::write(g.key(), k).unwrap();
        }
        g
    }

    #[test]
    fn the_pair_check_refuses_what_apache_would_die_on() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::new(
            tmp.path(),
            &InternalIssuer {
                validity: Span::days(30),
            },
        );
        let names: Vec<DomainName> = vec!["a.test".parse().unwrap()];
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let other = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let chain = ca
            .issue(&names, &key.spki_der(), 1_800_000_000)
            .unwrap()
            .to_pem();
        let key_pem = key.to_pem();
        let g = tmp.path().join("gen");

        let ok = generation(&g, Some(chain.as_bytes()), Some(key_pem.as_bytes()));
        assert_eq!(check_generation(&ok), Ok(()));

        let mismatched = generation(&g, Some(chain.as_bytes()), Some(other.to_pem().as_bytes()));
        assert_eq!(
            check_generation(&mismatched),
            Err("the key does not belong to the certificate".into())
        );

        let half = &key_pem.as_bytes()[..key_pem.as_bytes().len() / 2];
        let truncated = generation(&g, Some(chain.as_bytes()), Some(half));
        assert_eq!(
            check_generation(&truncated),
            Err("key: PEM block \"PRIVATE KEY\" is truncated (no END line)".into())
        );

        let garbage = generation(&g, Some(b"hello\n"), Some(key_pem.as_bytes()));
        assert_eq!(
            check_generation(&garbage),
            Err("certificate: no PEM certificate found".into())
        );

        let keyless = generation(&g, Some(chain.as_bytes()), None);
        assert_eq!(
            check_generation(&keyless),
            Err(format!(
                "key {:?} is missing",
                g.join("key.pem").display().to_string()
            ))
        );
    }
}
