//! The imperative shell around the core: observe a certificate on disk, and carry out a
//! re-issue with the install transaction (stage, validate, publish, flip, test, reload,
//! verify, roll back). Shared by the CLI and the daemon; the caller holds the lock.
//!
//! Every step that matters is journalled before the next one starts, so a process killed at
//! any point resumes (recovery) instead of repeating work or leaving a half-installed pair.
//!
//! One file per phase of the transaction (DESIGN.md): `observe` (what is on disk),
//! `obtain` (pending key, order, accepted chain), `install` (generation, flip, test,
//! reload, proof, rollback, hooks), `compromise` (quarantine, revoke, purge) and `refresh`
//! (the CA's view: CRL, ARI). This file holds the entry points, which return an `Outcome`
//! (`outcome`), and announces how a re-issue or import ended (the compromise phase announces
//! its own events); the JSON document is made from the Outcome by `ops`, never here.

mod compromise;
mod dry_run;
mod failover;
#[cfg(feature = "fleet")]
mod fleet;
mod install;
mod load;
mod observe;
mod obtain;
mod outcome;
mod refresh;
mod rollback;

pub(crate) use dry_run::supported as dry_run_supported;
#[cfg(feature = "fleet")]
pub(crate) use fleet::Obtained;
#[cfg(feature = "fleet")]
pub(crate) use observe::InService;
pub(crate) use observe::{Observation, Signals, observe};
pub(crate) use outcome::{Installed, Outcome, Waiting};

use outcome::{Attempt, Stop};

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Certificate, Config};
use crate::core::{Asked, Reason, Timestamp};
use crate::error::{Error, Result};
use crate::keys::{Chain, PrivateKey};
use crate::notify::{self, Event};
use crate::server::WebServer;
use crate::store::{self, Journal, OutcomeKind, Store};

/// Carries out re-issues. Cheap to clone: jobs of the daemon each hold one.
#[derive(Clone)]
pub(crate) struct Executor {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) clock: Clock,
    /// Becomes true when the daemon shuts down: work that has not flipped yet stops (it is
    /// journalled and resumes next time); an install that has flipped completes or rolls back.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Told every order URL as soon as the CA gives it (the fleet journals it in etcd, so a
    /// successor resumes the order instead of placing another).
    order_sink: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Serves http-01 tokens from the fleet's other hosts too.
    relay: Option<Arc<dyn crate::issuer::Relay>>,
    /// The fleet's etcd, when `[cluster]` is configured: shared certificates go through it.
    #[cfg(feature = "fleet")]
    pub(crate) fleet: Option<Arc<crate::fleet::FleetLink>>,
}

/// What recovery found: an interrupted install it settled, or a clean journal to go on with.
enum Recovered {
    Interrupted(Attempt),
    Clean(Box<Journal>),
}

impl Executor {
    pub(crate) fn new(
        config: Arc<Config>,
        clock: Clock,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Executor> {
        let store = Store::open(&config.agent.state_dir)?;
        #[cfg(feature = "fleet")]
        let fleet = config.cluster.as_ref().map(|c| {
            Arc::new(crate::fleet::FleetLink::new(
                c.clone(),
                &config.agent.state_dir,
            ))
        });
        Ok(Executor {
            config,
            store,
            clock,
            shutdown,
            order_sink: None,
            relay: None,
            #[cfg(feature = "fleet")]
            fleet,
        })
    }

    /// This executor as a fleet's lock holder: telling `sink` every order URL the CA gives,
    /// and serving http-01 tokens through `relay` too.
    #[cfg(feature = "fleet")]
    pub(crate) fn for_fleet(
        &self,
        sink: tokio::sync::mpsc::UnboundedSender<String>,
        relay: Arc<dyn crate::issuer::Relay>,
    ) -> Executor {
        Executor {
            order_sink: Some(sink),
            relay: Some(relay),
            ..self.clone()
        }
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

    /// Finish what a killed process left: remove staging, settle an unverified flip.
    async fn recover(&self, cert: &Certificate) -> Result<Recovered> {
        let removed = self.store.remove_staging(&cert.name)?;
        if removed > 0 {
            log::info!(cert = cert.name.as_str(), removed = removed; "removed staging leftovers of an interrupted run");
        }
        let mut journal = self.store.journal(&cert.name)?;
        let Some(flip) = journal.flip.clone() else {
            if journal.post.is_some() {
                log::warn!(cert = cert.name.as_str(); "finishing the response to a compromised key");
                self.run_post_actions(cert, &mut journal).await?;
            }
            return Ok(Recovered::Clean(Box::new(journal)));
        };
        // Journalled just before the flip: if `current` does not point at the new generation,
        // the process died before the commit point and nothing was installed.
        if self.store.current_generation(&cert.name) != Some(flip.to) {
            log::info!(cert = cert.name.as_str(), generation = flip.to; "an interrupted run stopped before its flip; nothing to undo");
            journal.flip = None;
            self.store.save_journal(&cert.name, &journal)?;
            return Ok(Recovered::Clean(Box::new(journal)));
        }
        log::warn!(cert = cert.name.as_str(), generation = flip.to; "found an interrupted install, finishing it");
        let settled = self.settle_flip(cert, &mut journal, &flip).await;
        Ok(Recovered::Interrupted(settled))
    }

    /// Finish journalled work (an interrupted install, the revocation and purge of a
    /// compromised predecessor) without starting a re-issue.
    pub(crate) async fn finish(&self, cert: &Certificate) -> Outcome {
        match self.recover(cert).await {
            Ok(Recovered::Clean(_)) | Ok(Recovered::Interrupted(Ok(_))) => Outcome::Finished,
            Ok(Recovered::Interrupted(Err(stop))) => Outcome::FinishFailed(stop.into_error()),
            Err(e) => Outcome::FinishFailed(e),
        }
    }

    /// Re-issue `cert` with a new key and install it. The caller holds the lock. If a previous
    /// run was killed after its flip, finishing that install is the re-issue asked for.
    /// `asked` is journalled first, so whatever outcome ends this re-issue says what was
    /// asked for and observed (a pending re-issue the daemon resumes keeps the operator's).
    pub(crate) async fn reissue(
        &self,
        cert: &Certificate,
        reason: Reason,
        asked: &Asked,
    ) -> Outcome {
        let started = self.clock.now();
        let attempt = match self.recover(cert).await {
            Ok(Recovered::Interrupted(interrupted)) => interrupted,
            Ok(Recovered::Clean(journal)) => match self.journal_asked(cert, *journal, asked) {
                Ok(journal) => self.reissue_fresh(cert, reason, journal).await,
                Err(e) => Err(Stop::from(e)),
            },
            Err(e) => Err(Stop::from(e)),
        };
        self.journal_unrecorded(cert, reason, &attempt);
        let outcome = Outcome::of(cert, attempt);
        self.announce_reissue(cert, reason, started, &outcome).await;
        outcome
    }

    /// A failure the steps did not journal themselves (a file that could not be opened,
    /// say) is journalled here, so `status` never shows an older outcome as the last one.
    fn journal_unrecorded(&self, cert: &Certificate, reason: Reason, attempt: &Attempt) {
        if let Err(Stop::Failed(e) | Stop::RolledBack(e)) = attempt
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
    }

    fn journal_asked(
        &self,
        cert: &Certificate,
        mut journal: Journal,
        asked: &Asked,
    ) -> Result<Journal> {
        // Resuming an operator's pending re-issue (after a rollback, say) keeps their reason.
        let asked = match journal.pending.as_ref().and_then(|p| p.requested) {
            Some(requested) if asked.requested.is_none() => Asked {
                requested: Some(requested),
                observed: asked.observed.clone(),
            },
            _ => asked.clone(),
        };
        if journal.asked.as_ref() != Some(&asked) {
            journal.asked = Some(asked);
            self.store.save_journal(&cert.name, &journal)?;
        }
        Ok(journal)
    }

    /// Tell the operators how a re-issue ended (`notify`: installed, pending-approval when
    /// there is news, failed, rolled-back), stamped with the time it started.
    async fn announce_reissue(
        &self,
        cert: &Certificate,
        reason: Reason,
        started: Timestamp,
        outcome: &Outcome,
    ) {
        let event = match outcome {
            Outcome::Installed(i) | Outcome::InstalledNotLoaded(i) => {
                let msg = format!(
                    "installed serial {} (generation {})",
                    i.serial, i.generation
                );
                Some(
                    Event::new("installed", &cert.name, msg, started)
                        .reason(i.reason.as_str())
                        .serial(i.serial.clone()),
                )
            }
            Outcome::Pending(w) => w.news.then(|| {
                Event::new("pending-approval", &cert.name, w.message.clone(), started)
                    .reason(reason.as_str())
            }),
            Outcome::RolledBack(e) => Some(
                Event::new("rolled-back", &cert.name, e.to_string(), started)
                    .reason(reason.as_str()),
            ),
            other => other.error().map(|e| {
                Event::new("failed", &cert.name, e.to_string(), started).reason(reason.as_str())
            }),
        };
        if let Some(event) = event {
            notify::emit(&self.config, event).await;
        }
    }

    /// Journal a failed attempt that ended without journalling its outcome. Best effort: the
    /// failure may be that the journal cannot be written.
    pub(crate) fn record_failure(&self, name: &str, reason: Reason, message: &str) {
        let Ok(mut journal) = self.store.journal(name) else {
            return;
        };
        journal.failures += 1;
        journal.record_outcome(store::Outcome {
            at: self.clock.now(),
            result: OutcomeKind::Failed,
            reason,
            message: message.to_string(),
            serial: None,
            generation: None,
            asked: None,
        });
        if let Err(e) = self.store.save_journal(name, &journal) {
            log::warn!(cert = name; "failed to journal the failure: {e}");
        }
    }

    /// A certificate handed back by a human for a pending re-issue (`certagent import`, the
    /// inbox): accepted only if it is for the pending key and the configured names, then
    /// installed with the full transaction. The caller holds the lock.
    /// Whatever stopped it is a failure.
    pub(crate) async fn import(&self, cert: &Certificate, data: &[u8]) -> Outcome {
        let started = self.clock.now();
        let outcome = match Outcome::of(cert, self.import_chain(cert, data).await) {
            Outcome::RolledBack(e) => Outcome::Failed(e),
            Outcome::Pending(w) => Outcome::Failed(Error::Pending {
                message: w.message,
                retry_in: w.retry_in,
                news: w.news,
            }),
            other => other,
        };
        let event = match &outcome {
            Outcome::Installed(i) | Outcome::InstalledNotLoaded(i) => Event::new(
                "installed",
                &cert.name,
                format!("installed the imported certificate, serial {}", i.serial),
                started,
            )
            .serial(i.serial.clone()),
            other => {
                let message = other.error().map(|e| e.to_string()).unwrap_or_default();
                Event::new("failed", &cert.name, message, started)
            }
        };
        notify::emit(&self.config, event).await;
        outcome
    }

    async fn import_chain(&self, cert: &Certificate, data: &[u8]) -> Attempt {
        let now = self.clock.now();
        let mut journal = self.store.journal(&cert.name)?;
        let Some(pending) = journal.pending.clone() else {
            return Err(Stop::from(
                Error::msg(format!(
                    "{:?} has no pending re-issue to import a certificate for",
                    cert.name
                ))
                .with_hint(format!(
                    "start one with `certagent reissue --now {}`",
                    cert.name
                )),
            ));
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
            return Err(Stop::from(
                Error::msg(format!(
                    "the certificate is not for the pending key of {:?}: nothing was installed",
                    cert.name
                ))
                .with_hint("it was probably issued for another CSR; submit STATE/outbox/NAME.csr"),
            ));
        }
        self.accept_chain(cert, &mut journal, &key, chain, now, pending.reason)?;
        log::info!(cert = cert.name.as_str(), event = "imported"; "accepted the certificate for the pending re-issue");
        self.reissue_fresh(cert, pending.reason, journal).await
    }

    /// Give every kept generation of `cert` the configured owner, group and modes (no new
    /// key; adopted generations are only narrowed).
    pub(crate) fn fix_permissions(&self, cert: &Certificate) -> Outcome {
        match self.fix_generations(cert) {
            Ok(changed) => Outcome::PermissionsFixed { changed },
            Err(e) => Outcome::PermissionsFailed(e),
        }
    }

    /// Returns how many files changed.
    fn fix_generations(&self, cert: &Certificate) -> Result<usize> {
        let fixed = self.store.fix_permissions(cert)?;
        for d in &fixed {
            log::info!(cert = cert.name.as_str(), generation = d.generation, event = "permissions-fixed"; "fixed the access of {}", d.describe());
        }
        Ok(fixed.len())
    }

    /// Journal a failed or rolled-back attempt.
    fn record(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        result: OutcomeKind,
        reason: Reason,
        message: &str,
        generation: Option<u64>,
    ) -> Result<()> {
        journal.failures += 1;
        journal.record_outcome(store::Outcome {
            at: self.clock.now(),
            result,
            reason,
            message: message.to_string(),
            serial: None,
            generation,
            asked: None,
        });
        self.store.save_journal(&cert.name, journal)
    }
}
