//! Phase 2: a pending key (resumed or new), the order at the issuer, and the chain it
//! sends, validated and saved before anything is installed (a crash after that never asks
//! the CA again).

use crate::compromise::{self, Blocked};
use crate::config::Certificate;
use crate::core::{LeafFacts, Reason, Timestamp};
use crate::error::{Error, Result};
use crate::issuer::{IssueRequest, Issued, Issuer};
use crate::keys::{self, Chain, PrivateKey};
use crate::store::{self, Journal, OutcomeKind, Pending};

use super::observe::{InService, decide};
use super::{Attempt, Executor, Signals, Stop, Waiting};

impl Executor {
    /// A re-issue after recovery: observe the pair in service once, then key, order, chain
    /// and install, each step journalled. `journal` is the one recovery read.
    pub(super) async fn reissue_fresh(
        &self,
        cert: &Certificate,
        reason: Reason,
        mut journal: Journal,
    ) -> Attempt {
        let (key, chain, reason) = self.obtain_fresh(cert, reason, &mut journal).await?;
        self.install(cert, &mut journal, &key, &chain, reason).await
    }

    /// Everything of a re-issue before the install: the pair in service observed once, the
    /// reason made effective, preflight checks, the pending key, the compromise response,
    /// and the validated chain (saved, so the install that follows never asks the CA again).
    pub(super) async fn obtain_fresh(
        &self,
        cert: &Certificate,
        reason: Reason,
        journal: &mut Journal,
    ) -> Result<(PrivateKey, Chain, Reason), Stop> {
        let now = self.clock.now();
        let mut blocked = Blocked::load(&self.config);
        let in_service = InService::read(cert);
        let reason = self.effective_reason(cert, reason, journal, &blocked, &in_service, now)?;
        // Refuse now what the install would refuse later, before a key or an order exists.
        crate::adopt::preflight(cert)?;
        output_directories(cert, &self.config.agent.state_dir)?;
        if let Some(server) = self.server(cert) {
            let in_service = in_service.leaf().is_some();
            server
                .preflight(&cert.name, &cert.names, in_service)
                .await?;
        }
        let left = in_service.leaf().map(|l| l.not_after - now);
        let (key, chain, reason) = loop {
            // With a failover list, a failure may move this very attempt on to the next issuer.
            let used = self.choose_issuer(cert, journal, left, now)?;
            let issuer = self
                .config
                .issuers
                .get(&used)
                .ok_or_else(|| Error::msg(format!("issuer {used:?} is not configured")))?;
            let carried = journal.pending.as_ref().and_then(|p| p.compromise.clone());
            let key = self.pending_key(cert, journal, &blocked, reason, now)?;
            if let Some(p) = journal.pending.as_mut().filter(|p| p.compromise.is_none()) {
                // A compromise being answered stays answered across a failover.
                p.compromise = carried;
            }
            crate::failpoint!("after-key-persisted");
            self.answer_compromise(cert, journal, &mut blocked, &in_service, reason, now)
                .await?;
            let reason = journal.pending.as_ref().map(|p| p.reason).unwrap_or(reason);
            let ask = Ask {
                cert,
                issuer,
                key,
                blocked: &blocked,
                in_service: in_service.leaf(),
                reason,
                now: self.clock.now(),
            };
            match self.chain(ask, journal).await {
                Ok((key, chain)) => break (key, chain, reason),
                Err(Stop::Failed(e)) if self.moves_on(cert, journal, left, &used) => {
                    log::debug!(cert = cert.name.as_str(); "{e}");
                }
                Err(stop) => return Err(stop),
            }
        };
        // Validate again: a saved chain is input from disk like any other.
        keys::validate_chain(&cert.names, &key, &chain, now)
            .map_err(|e| Error::msg(format!("saved certificate is unusable: {e}")))?;
        self.stopping()?;
        Ok((key, chain, reason))
    }

    /// Whatever the caller's reason, a compromised key in service gets the full response.
    fn effective_reason(
        &self,
        cert: &Certificate,
        reason: Reason,
        journal: &mut Journal,
        blocked: &Blocked,
        in_service: &InService,
        now: Timestamp,
    ) -> Result<Reason> {
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
        compromise::track_flag(&self.store, &self.config, &cert.name, journal);
        let signals = Signals::for_cert(&self.config, blocked, Some(journal), &cert.name);
        let compromised = decide(cert, in_service, now, &signals)
            .decision
            .reasons
            .contains(&Reason::KeyCompromised);
        Ok(if compromised {
            Reason::KeyCompromised
        } else {
            reason
        })
    }

    /// The key of this re-issue: the pending one when a pending re-issue for the same names,
    /// key type and issuer is resumed (the CA may already have an order for it), else a new
    /// one, persisted and journalled before it is used.
    fn pending_key(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &Blocked,
        reason: Reason,
        now: Timestamp,
    ) -> Result<PrivateKey> {
        let wanted: Vec<String> = cert.names.iter().map(|n| n.to_string()).collect();
        let profile = self.config.profile_of(cert).map(|p| p.name);
        let reusable = journal.pending.as_ref().is_some_and(|p| {
            p.names == wanted
                && p.key_spec == cert.key_type
                && p.issuer == super::failover::in_use(cert, journal)
                && p.profile_asked == profile
                && !blocked.contains(&p.key_spki_sha256)
        });
        let key = match (reusable, self.store.pending_key(&cert.name)?) {
            (true, Some(pem)) => PrivateKey::from_pem(pem.as_str()).ok(),
            _ => None,
        };
        if let Some(k) = key
            && journal
                .pending
                .as_ref()
                .is_some_and(|p| p.key_spki_sha256 == k.spki_sha256())
        {
            log::info!(cert = cert.name.as_str(); "resuming pending re-issue");
            return Ok(k);
        }
        let issuer = super::failover::in_use(cert, journal);
        match journal.pending.as_ref() {
            Some(p) if p.issuer != issuer && cert.issuers.contains(&p.issuer) => {
                log::info!(cert = cert.name.as_str(), issuer = issuer; "abandoning the pending re-issue at issuer {:?} for a new one at {issuer:?}", p.issuer);
            }
            Some(_) => {
                log::info!(cert = cert.name.as_str(); "discarding pending re-issue that no longer matches the configuration");
            }
            None => {}
        }
        self.new_key(cert, journal, blocked, reason, now, wanted)
    }

    /// A new pending key, never one that was ever compromised (a collision is only
    /// theoretical), on disk and journalled before the CA is contacted.
    fn new_key(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &Blocked,
        reason: Reason,
        now: Timestamp,
        names: Vec<String>,
    ) -> Result<PrivateKey> {
        self.store.clear_pending(&cert.name)?;
        // Never a key that was ever compromised (a collision is only theoretical).
        let key = loop {
            let key = PrivateKey::generate(cert.key_type).map_err(Error::msg)?;
            if !blocked.contains(&key.spki_sha256()) {
                break key;
            }
        };
        self.pend(cert, journal, &key, reason, now, names)?;
        // The operator's words when an operator asked (`superseded`, not `forced`).
        log::info!(cert = cert.name.as_str(), reason = journal.said(reason), key_type = cert.key_type.as_str(), event = "key-generated"; "generated new key");
        Ok(key)
    }

    /// The certificate for the pending key: saved by an earlier attempt, or ordered now.
    async fn chain(
        &self,
        ask: Ask<'_>,
        journal: &mut Journal,
    ) -> Result<(PrivateKey, Chain), Stop> {
        if journal.pending.as_ref().is_some_and(|p| p.issued)
            && let Some(chain) = self.store.pending_chain(&ask.cert.name)?
        {
            return Ok((ask.key, chain));
        }
        self.order(ask, journal).await
    }

    /// Ask the issuer for a certificate (stopping, journalled, when the daemon shuts down),
    /// and accept what it sends. A pending order is journalled as pending, not as a failure.
    async fn order(
        &self,
        ask: Ask<'_>,
        journal: &mut Journal,
    ) -> Result<(PrivateKey, Chain), Stop> {
        let (cert, reason) = (ask.cert, ask.reason);
        let mut shutdown = self.shutdown.clone();
        let result = tokio::select! {
            r = self.obtain(&ask, journal) => r,
            _ = shutdown.wait_for(|stop| *stop) => {
                return Err(Stop::from(Error::msg("stopped while waiting for the CA; the re-issue resumes at the next start")));
            }
        };
        let issued = match result.map_err(Stop::from) {
            Ok(i) => i,
            Err(Stop::Pending(w)) => return Err(self.journal_pending(cert, journal, reason, w)?),
            Err(stop) => {
                let e = stop.into_error();
                journal.server_retry_after = e.retry_after();
                let message = e.to_string();
                super::failover::note_failure(journal, ask.issuer, &message, ask.now);
                self.record(cert, journal, OutcomeKind::Failed, reason, &message, None)?;
                return Err(Stop::Failed(e));
            }
        };
        if let Some(p) = journal.pending.as_mut() {
            p.profile = issued.profile;
        }
        let key = self.issuer_key(cert, journal, ask.blocked, ask.key, issued.key)?;
        let chain = self.accept_chain(cert, journal, &key, issued.chain, ask.now, reason)?;
        Ok((key, chain))
    }

    /// Not a failure: the old certificate stays in service meanwhile.
    fn journal_pending(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        reason: Reason,
        waiting: Waiting,
    ) -> Result<Stop> {
        journal.last = Some(store::Outcome {
            at: self.clock.now(),
            result: OutcomeKind::Pending,
            reason,
            // As `Error::Pending` displays.
            message: format!("pending: {}", waiting.message),
            serial: None,
            generation: None,
            asked: journal.asked.clone(),
        });
        self.store.save_journal(&cert.name, journal)?;
        Ok(Stop::Pending(waiting))
    }

    /// The issuer made the key (DNSimple): it replaces ours as the pending key, unless it is
    /// one we know to be compromised.
    fn issuer_key(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        blocked: &Blocked,
        ours: PrivateKey,
        theirs: Option<keys::SecretPem>,
    ) -> Result<PrivateKey> {
        let Some(theirs) = theirs else {
            return Ok(ours);
        };
        let k = PrivateKey::from_pem(theirs.as_str())
            .map_err(|e| Error::msg(format!("the issuer's private key is unusable: {e}")))?;
        if blocked.contains(&k.spki_sha256()) {
            return Err(Error::msg(
                "the issuer sent a key that is known to be compromised",
            ));
        }
        self.store.save_pending_key(&cert.name, &theirs)?;
        if let Some(p) = journal.pending.as_mut() {
            p.key_spki_sha256 = k.spki_sha256();
        }
        Ok(k)
    }

    /// `key` as the pending re-issue's key: on disk (0600) and journalled, before anything is
    /// asked of the CA (or, for a fleet's published key, before it is installed).
    pub(super) fn pend(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        key: &PrivateKey,
        reason: Reason,
        now: Timestamp,
        names: Vec<String>,
    ) -> Result<()> {
        self.store.save_pending_key(&cert.name, &key.to_pem())?;
        journal.pending = Some(Pending {
            reason,
            started_at: now,
            issuer: super::failover::in_use(cert, journal).to_string(),
            key_spec: cert.key_type,
            key_spki_sha256: key.spki_sha256(),
            names,
            attempts: 0,
            order_url: None,
            issued: false,
            compromise: None,
            reminders: 0,
            next_look: None,
            requested: journal.asked.as_ref().and_then(|a| a.requested),
            profile_asked: self.config.profile_of(cert).map(|p| p.name),
            profile: None,
        });
        self.store.save_journal(&cert.name, journal)
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

    /// One attempt at the issuer. The order URL is journalled as soon as it exists, so a
    /// restart resumes the order instead of placing a new one.
    async fn obtain(&self, ask: &Ask<'_>, journal: &mut Journal) -> Result<Issued> {
        let cert = ask.cert;
        let issuer = Issuer::open(ask.issuer, &self.store, self.clock)?;
        let csr = ask.key.csr_der(&cert.names).map_err(Error::msg)?;
        let spki = ask.key.spki_der();
        let resume = journal.pending.as_ref().and_then(|p| p.order_url.clone());
        // With ARI, the new order names its predecessor (RFC 9773 §5): the serial in service
        // whose renewal information this CA gave us.
        // Only at the CA that issued it: another of a failover list does not know it.
        let replaces = ask
            .in_service
            .filter(|l| journal.ari.as_ref().is_some_and(|a| a.serial == l.serial))
            .filter(|l| super::failover::in_service(cert, journal, &l.serial) == ask.issuer.name)
            .and_then(|l| l.cert_id.clone());
        if let Some(p) = journal.pending.as_mut() {
            p.attempts += 1;
        }
        self.store.save_journal(&cert.name, journal)?;
        let profile = self.config.profile_of(cert);
        let req = IssueRequest {
            profile: profile.as_ref(),
            cert_name: &cert.name,
            key_spec: cert.key_type,
            names: &cert.names,
            csr_der: &csr,
            spki_der: &spki,
            now: ask.now,
            resume_order: resume.as_deref(),
            replaces: replaces.as_deref(),
            relay: self.relay.as_deref(),
        };
        let store = &self.store;
        let order_sink = self.order_sink.as_ref();
        let mut on_order = |url: &str| -> Result<()> {
            if let Some(p) = journal.pending.as_mut() {
                p.order_url = Some(url.to_string());
            }
            store.save_journal(&cert.name, journal)?;
            if let Some(sink) = order_sink {
                // The fleet journals it in etcd too; a closed sink only means nobody listens.
                let _ = sink.send(url.to_string());
            }
            Ok(())
        };
        issuer.issue(&req, &mut on_order).await.map_err(|e| {
            e.context(format!(
                "failed to obtain a certificate for {:?} from issuer {:?}",
                cert.name, ask.issuer.name
            ))
        })
    }
}

/// What an order is placed with.
struct Ask<'a> {
    cert: &'a Certificate,
    issuer: &'a crate::config::Issuer,
    key: PrivateKey,
    blocked: &'a Blocked,
    /// The leaf in service, which an ARI-aware order replaces.
    in_service: Option<&'a LeafFacts>,
    reason: Reason,
    now: Timestamp,
}

/// The directories the certificate's files go into exist (or are certagent's to create):
/// checked before a key is generated or anything is ordered. `config validate` and the
/// commands refuse such a configuration; the daemon, which keeps managing the other
/// certificates, refuses only this one's re-issue, here.
fn output_directories(cert: &Certificate, state_dir: &std::path::Path) -> Result<()> {
    match cert
        .missing_output_directories(state_dir, std::path::Path::new("/"))
        .into_iter()
        .next()
    {
        None => Ok(()),
        Some((key, dir, problem, hint)) => Err(Error::msg(format!(
            "{key} of {}: directory \"{dir}\" {problem}",
            cert.name
        ))
        .with_hint(hint)),
    }
}
