//! The imperative shell around the core: observe a certificate on disk, and carry out a
//! re-issue with the install transaction (stage, validate, publish, flip, test, reload,
//! verify, roll back). Shared by the CLI and the daemon; the caller holds the lock.
//!
//! Every step that matters is journalled before the next one starts, so a process killed at
//! any point resumes (recovery) instead of repeating work or leaving a half-installed pair.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Certificate, Config};
use crate::core::{self, CertFact, Decision, Desired, KeyFact, Observed, Reason, Timestamp};
use crate::error::{Error, Result};
use crate::issuer::{IssueRequest, Issuer};
use crate::keys::{self, Chain, PrivateKey};
use crate::server::{self, Served, WebServer};
use crate::store::{
    Flip, GenFiles, GenerationContent, Journal, Outcome, OutcomeKind, Pending, Store, fsutil,
};

/// What is on disk for one certificate, with the problems found reading it.
pub struct Observation {
    pub observed: Observed,
    pub decision: Decision,
    pub leaf: Option<core::LeafFacts>,
    pub cert_problem: Option<String>,
    pub key_problem: Option<String>,
}

pub fn desired(cert: &Certificate) -> Desired {
    Desired {
        names: cert.names.iter().cloned().collect(),
        key_spec: cert.key_type,
        renew_before: cert.renew_before,
    }
}

/// Read the configured files (never writing anything) and decide.
pub fn observe(cert: &Certificate, now: Timestamp) -> Observation {
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
    let observed = Observed {
        cert: cert_fact,
        key: key_fact,
        compromised: false,
        revoked: false,
    };
    let decision = core::decide(&desired(cert), &observed, now);
    Observation {
        observed,
        decision,
        leaf,
        cert_problem,
        key_problem,
    }
}

/// How a re-issue ended.
#[derive(Debug)]
pub struct Installed {
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
            return Ok(None);
        };
        log::warn!(cert = cert.name.as_str(), generation = flip.to; "found an interrupted install, finishing it");
        Ok(Some(self.settle_flip(cert, &mut journal, &flip).await))
    }

    /// Re-issue `cert` with a new key and install it. The caller holds the lock. If a previous
    /// run was killed after its flip, finishing that install is the re-issue asked for.
    pub async fn reissue(&self, cert: &Certificate, reason: Reason) -> Result<Installed> {
        if let Some(interrupted) = self.recover(cert).await? {
            return interrupted;
        }
        self.reissue_fresh(cert, reason).await
    }

    async fn reissue_fresh(&self, cert: &Certificate, reason: Reason) -> Result<Installed> {
        let now = self.clock.now();
        let issuer_cfg = self
            .config
            .issuers
            .get(&cert.issuer)
            .ok_or_else(|| Error::msg(format!("issuer {:?} is not configured", cert.issuer)))?;
        let mut journal = self.store.journal(&cert.name)?;
        let wanted: Vec<String> = cert.names.iter().map(|n| n.to_string()).collect();

        // A pending re-issue for the same names, key type and issuer is resumed: its key is
        // already on disk and the CA may already have an order for it.
        let reusable = journal.pending.as_ref().is_some_and(|p| {
            p.names == wanted && p.key_spec == cert.key_type && p.issuer == cert.issuer
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
                let key = PrivateKey::generate(cert.key_type).map_err(Error::msg)?;
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
                });
                self.store.save_journal(&cert.name, &journal)?;
                log::info!(cert = cert.name.as_str(), reason = reason.as_str(), key_type = cert.key_type.as_str(), event = "key-generated"; "generated new key");
                key
            }
        };
        crate::failpoint!("after-key-persisted");
        let reason = journal.pending.as_ref().map(|p| p.reason).unwrap_or(reason);

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
                let chain = match result {
                    Ok(c) => c,
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
                if let Err(e) = validate_chain(cert, &key, &chain, now) {
                    let e = Error::msg(format!(
                        "the CA's certificate for {:?} was rejected: {e}",
                        cert.name
                    ))
                    .with_hint("nothing was installed; the certificate in service is unchanged");
                    // A bad answer is not resumable: order afresh next time.
                    if let Some(p) = journal.pending.as_mut() {
                        p.order_url = None;
                    }
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
                self.store.save_pending_chain(&cert.name, &chain)?;
                if let Some(p) = journal.pending.as_mut() {
                    p.issued = true;
                }
                self.store.save_journal(&cert.name, &journal)?;
                crate::failpoint!("after-issued");
                chain
            }
        };
        // Validate again: a saved chain is input from disk like any other.
        validate_chain(cert, &key, &chain, now)
            .map_err(|e| Error::msg(format!("saved certificate is unusable: {e}")))?;
        self.stopping()?;
        self.install(cert, &mut journal, &key, &chain, reason).await
    }

    async fn obtain(
        &self,
        cert: &Certificate,
        issuer_cfg: &crate::config::Issuer,
        key: &PrivateKey,
        journal: &mut Journal,
        now: Timestamp,
    ) -> Result<Chain> {
        let issuer = Issuer::open(issuer_cfg, &self.store)?;
        let csr = key.csr_der(&cert.names).map_err(Error::msg)?;
        let spki = key.spki_der();
        let resume = journal.pending.as_ref().and_then(|p| p.order_url.clone());
        if let Some(p) = journal.pending.as_mut() {
            p.attempts += 1;
        }
        self.store.save_journal(&cert.name, journal)?;
        let req = IssueRequest {
            names: &cert.names,
            csr_der: &csr,
            spki_der: &spki,
            now,
            resume_order: resume.as_deref(),
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
        // Only what parses as what it claims to be is kept: a configured path that points at
        // some other file (a symlink to /etc/shadow, say) is never copied anywhere.
        let read = |p: &std::path::Path| fsutil::read_capped(p, keys::MAX_PEM_BYTES).ok().flatten();
        let read_certs = |p: &std::path::Path| read(p).filter(|b| Chain::from_pem(b).is_ok());
        let key = read(&cert.key_file)
            .filter(|b| PrivateKey::from_pem(&String::from_utf8_lossy(b)).is_ok());
        let fullchain = read_certs(&cert.cert_file);
        if key.is_none() && fullchain.is_none() {
            return Ok(()); // nothing to keep; the first flip creates everything
        }
        let number = journal.next_generation;
        journal.next_generation += 1;
        self.store.save_journal(&cert.name, journal)?;
        let content = GenerationContent {
            key: key.map(zeroize::Zeroizing::new),
            fullchain,
            leaf: cert.leaf_file.as_deref().and_then(read_certs),
            chain: cert.chain_file.as_deref().and_then(read_certs),
        };
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
        let files = self.store.generation(&cert.name, flip.to);
        let chain = fsutil::read_capped(&files.fullchain(), keys::MAX_PEM_BYTES)?
            .ok_or_else(|| Error::msg(format!("generation {} has no certificate", flip.to)))
            .and_then(|b| Chain::from_pem(&b).map_err(Error::msg))?;
        let leaf = chain.leaf().map_err(Error::msg)?;
        let installed = |loaded| Installed {
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
        if server.kind() == crate::config::ServerKind::None || server.is_running() == Some(false) {
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
        server
            .wait_retired(&old_workers, server.verify_timeout())
            .await;
        Ok(server
            .wait_served(&cert.names, chain.leaf_der(), server.verify_timeout())
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
        journal.pending = None;
        journal.failures = 0;
        journal.retry_at = None;
        journal.server_retry_after = None;
        let message = match kind {
            OutcomeKind::InstalledNotLoaded => {
                "installed, not loaded: the web server is not running"
            }
            _ => "installed and verified in service",
        };
        journal.last = Some(Outcome {
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
        journal.last = Some(Outcome {
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
