//! Phase 3: the install transaction proper: adopt, publish a generation, check the pair,
//! pre_install hook, flip, config test, reload, proof, roll back on failure, post_install
//! hook.

use crate::config::Certificate;
use crate::core::{LeafFacts, Reason};
use crate::error::{Error, Result};
use crate::keys::{self, Chain, PrivateKey};
use crate::server::{self, Served, WebServer};
use crate::store::{
    self, Flip, FlipPhase, GenFiles, GenerationContent, InstalledProfile, Journal, OutcomeKind,
    PostActions, fsutil,
};

use super::{Attempt, Executor, Installed, Stop};

/// What loading a flipped generation came to.
enum Load {
    /// No server is configured for the certificate.
    NoServer,
    /// Its server is of kind "none": install only.
    InstallOnly,
    /// The server is not running: installed, not loaded.
    NotRunning,
    /// Reloaded and proven served.
    Served,
}

impl Load {
    fn kind(&self) -> OutcomeKind {
        match self {
            Load::NotRunning => OutcomeKind::InstalledNotLoaded,
            Load::NoServer | Load::InstallOnly | Load::Served => OutcomeKind::Installed,
        }
    }

    /// Install only (server kind "none"): there is nothing to load, so nothing is "not
    /// loaded".
    fn loaded(&self) -> bool {
        matches!(self, Load::Served | Load::InstallOnly)
    }
}

impl Executor {
    /// Steps 4–9 of the transaction: adopt existing files, publish, check the published pair,
    /// run the pre_install hook, flip, test, reload, verify, and roll back on failure.
    pub(super) async fn install(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        key: &PrivateKey,
        chain: &Chain,
        reason: Reason,
    ) -> Attempt {
        self.adopt(cert, journal)?;
        let number = journal.next_generation;
        journal.next_generation += 1;
        self.store.save_journal(&cert.name, journal)?;
        let files = self
            .store
            .publish_generation(cert, number, &content(key, chain))?;
        #[cfg(feature = "failpoints")]
        crate::failpoint::truncate_if("truncate-staged-key", &files.key());
        self.vet(cert, journal, chain, reason, number, &files)
            .await
            .map_err(Stop::Failed)?;
        let flip = Flip {
            from: self.store.current_generation(&cert.name),
            to: number,
            reason,
            phase: FlipPhase::Flipped,
        };
        journal.flip = Some(flip.clone());
        self.store.save_journal(&cert.name, journal)?;
        crate::failpoint!("before-flip");
        self.store.flip(&cert.name, number)?;
        self.store.link_outputs(cert)?;
        log::info!(cert = cert.name.as_str(), generation = number, reason = journal.said(reason), event = "flipped"; "flipped to new generation");
        crate::failpoint!("after-flip");
        self.settle_flip(cert, journal, &flip).await
    }

    /// The published generation before it is flipped in: the pair check, then the
    /// pre_install hook. A refusal removes it (`veto`).
    async fn vet(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        chain: &Chain,
        reason: Reason,
        number: u64,
        files: &GenFiles,
    ) -> Result<()> {
        // The files exactly as the server will read them. Apache says "Syntax OK" for a
        // mismatched or truncated pair and its parent exits on the graceful restart that
        // follows, so this check, not the server's config test, is what protects it.
        if let Err(why) = check_generation(files) {
            let e = Error::msg(format!(
                "the new files of generation {number} are not a usable pair: {why}"
            ));
            return Err(self.veto(cert, journal, number, reason, e));
        }
        let serial = chain.leaf().map_err(Error::msg)?.serial;
        if let Some(argv) = &cert.pre_install {
            let env = hook_env(cert, "pre_install", reason, &serial, number, files);
            if let Err(e) = server::run_with_env(argv, &env, hook_timeout(cert)).await {
                let e = e.context(format!(
                    "pre_install hook of {:?} vetoed the install",
                    cert.name
                ));
                return Err(self.veto(cert, journal, number, reason, e));
            }
        }
        Ok(())
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
        log::error!(cert = cert.name.as_str(), reason = journal.said(reason), generation = number, event = "failed"; "install stopped before the flip: {message}");
        let _ = self.record(cert, journal, OutcomeKind::Failed, reason, &message, None);
        Error::msg(message)
            .with_hint("nothing was installed; the certificate in service is unchanged")
    }

    /// Take over plain files at the configured paths as a generation of their own (kept for
    /// rollback), then make the paths symlinks into `current/`. The server sees the same
    /// bytes before and after.
    pub(super) fn adopt(&self, cert: &Certificate, journal: &mut Journal) -> Result<()> {
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
    /// `flip.from` if any of them fails. Also used by recovery after a crash. Then the
    /// post_install hook and what is left of a compromise response.
    pub(super) async fn settle_flip(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
    ) -> Attempt {
        let files = self.store.generation(&cert.name, flip.to);
        let fullchain = fsutil::read_capped(&files.fullchain(), keys::MAX_PEM_BYTES)?
            .ok_or_else(|| Error::msg(format!("generation {} has no certificate", flip.to)))?;
        let chain = Chain::from_pem(&fullchain).map_err(Error::msg)?;
        let leaf = chain.leaf().map_err(Error::msg)?;
        // Recovery meets files written by a process that was killed: never load them unseen.
        if let Err(why) = check_pair(&files, &fullchain) {
            let e = Error::msg(format!(
                "generation {} is not a usable pair: {why}",
                flip.to
            ));
            return Err(self.rollback(cert, journal, flip, None, false, e).await);
        }
        let load = self.load(cert, journal, flip, &chain).await?;
        self.commit(cert, journal, flip, load.kind(), &leaf)?;
        let installed = Installed {
            reason: flip.reason,
            generation: flip.to,
            serial: leaf.serial,
            not_after: leaf.not_after,
            loaded: load.loaded(),
            hook_error: None,
            profile: journal
                .installed_profile
                .as_ref()
                .and_then(|p| p.issued.clone()),
            issuer: journal
                .installed_issuer
                .as_ref()
                .and_then(|i| i.name.clone()),
        };
        let installed = self.post_install(cert, journal, flip, installed).await;
        if let Err(e) = self.run_post_actions(cert, journal).await {
            log::error!(cert = cert.name.as_str(); "after the install: {e}");
        }
        Ok(installed)
    }

    /// Have the server load the flipped generation: config test, reload, proof (reloading
    /// once more if the proof fails); any failure rolls back.
    async fn load(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        chain: &Chain,
    ) -> Result<Load, Stop> {
        let Some(server) = self.server(cert) else {
            return Ok(Load::NoServer);
        };
        if server.kind() == crate::config::ServerKind::None {
            return Ok(Load::InstallOnly);
        }
        if server.is_running() == Some(false) {
            log::warn!(cert = cert.name.as_str(), server = server.name(); "web server is not running: installed, not loaded");
            return Ok(Load::NotRunning);
        }
        self.journal_phase(cert, journal, FlipPhase::Reloading);
        let first = match server.config_test().await {
            Ok(()) => self.reload_and_probe(&server, cert, journal, chain).await,
            Err(e) => Err(e),
        };
        let mut served = match first {
            Ok(s) => s,
            Err(e) => {
                let rolled = self.rollback(cert, journal, flip, Some(&server), false, e);
                return Err(rolled.await);
            }
        };
        crate::failpoint!("after-reload");
        if let Served::Not(why) = &served {
            log::warn!(cert = cert.name.as_str(), server = server.name(); "new certificate not served after reload ({why}), reloading once more");
            self.journal_phase(cert, journal, FlipPhase::Reloading);
            if let Ok(again) = self.reload_and_probe(&server, cert, journal, chain).await {
                served = again;
            }
        }
        match served {
            Served::All => Ok(Load::Served),
            Served::Not(why) => Err(self.not_served(cert, journal, flip, &server, &why).await),
        }
    }

    /// Journal how far the install in flight got (for `status`). Best effort: the phase is
    /// what an operator reads, recovery does not depend on it.
    fn journal_phase(&self, cert: &Certificate, journal: &mut Journal, phase: FlipPhase) {
        let Some(flip) = journal.flip.as_mut() else {
            return;
        };
        flip.phase = phase;
        if let Err(e) = self.store.save_journal(&cert.name, journal) {
            log::warn!(cert = cert.name.as_str(), phase = phase.as_str(); "failed to journal the install's phase: {e}");
        }
    }

    /// The new certificate is still not served after two reloads: roll back, saying whether
    /// the server exited.
    async fn not_served(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        server: &WebServer,
        why: &str,
    ) -> Stop {
        let mut message = format!(
            "server {:?} does not serve the new certificate: {why}",
            server.name()
        );
        if server.is_running() == Some(false) {
            message.push_str(&exited_note(server));
        }
        let e = Error::msg(message);
        self.rollback(cert, journal, flip, Some(server), true, e)
            .await
    }

    /// One reload and its proof: note the workers serving now, reload, wait until those have
    /// stopped accepting connections, probe every endpoint of the certificate.
    pub(super) async fn reload_and_probe(
        &self,
        server: &WebServer,
        cert: &Certificate,
        journal: &mut Journal,
        chain: &Chain,
    ) -> Result<Served> {
        let old_workers = server.workers();
        self.load_current(server, cert).await?;
        self.journal_phase(cert, journal, FlipPhase::Verifying);
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
    pub(super) async fn post_install(
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
        log::error!(cert = cert.name.as_str(), reason = journal.said(flip.reason), serial = installed.serial.as_str(), generation = flip.to, event = "hook-failed"; "{e}");
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

    /// Journal the flipped generation as installed (and what a compromise response still
    /// owes), clear the pending re-issue, collect old generations.
    fn commit(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        kind: OutcomeKind,
        leaf: &LeafFacts,
    ) -> Result<()> {
        let serial = leaf.serial.as_str();
        let message = match kind {
            OutcomeKind::InstalledNotLoaded => {
                "installed, not loaded: the web server is not running"
            }
            _ => "installed and verified in service",
        };
        let installed = store::Outcome {
            at: self.clock.now(),
            result: kind,
            reason: flip.reason,
            message: message.into(),
            serial: Some(serial.to_string()),
            generation: Some(flip.to),
            asked: None,
        };
        // The issuer of this re-issue (a resumed one keeps the issuer it started with).
        journal.installed_issuer =
            super::failover::installed(&self.config, cert, journal, &leaf.issuer_dn);
        journal.installed_profile = journal.pending.as_ref().map(|p| InstalledProfile {
            asked: p.profile_asked.clone(),
            issued: p.profile.clone(),
        });
        journal_installed(journal, flip, installed);
        self.store.save_journal(&cert.name, journal)?;
        self.store.clear_pending(&cert.name)?;
        let mut protect = vec![flip.to];
        protect.extend(flip.from);
        let removed =
            self.store
                .gc(&cert.name, self.config.agent.keep_generations + 1, &protect)?;
        // Older generations kept for rollback follow a changed owner, group or mode too.
        self.fix_generations(cert)?;
        let event = match kind {
            OutcomeKind::InstalledNotLoaded => "installed-not-loaded",
            _ => "installed",
        };
        let reason = journal.said(flip.reason);
        // Removed generations only when there were some: no `removed=[]` noise.
        if removed.is_empty() {
            log::info!(
                cert = cert.name.as_str(), reason = reason, serial = serial, generation = flip.to,
                event = event;
                "{message}"
            );
        } else {
            log::info!(
                cert = cert.name.as_str(), reason = reason, serial = serial, generation = flip.to,
                event = event, removed = format!("{removed:?}").as_str();
                "{message}"
            );
        }
        Ok(())
    }
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

/// The journal of an installed generation: current, nothing pending, no failures, the
/// outcome recorded, and what a compromise response still owes.
fn journal_installed(journal: &mut Journal, flip: &Flip, installed: store::Outcome) {
    journal.current = Some(flip.to);
    journal.flip = None;
    journal.failover = None;
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
            issuer: work.issuer,
        });
    }
    journal.pending = None;
    journal.revoked = None;
    journal.ari = None;
    journal.refresh = None;
    journal.failures = 0;
    journal.retry_at = None;
    journal.server_retry_after = None;
    journal.record_outcome(installed);
}

/// The files of a new generation.
fn content(key: &PrivateKey, chain: &Chain) -> GenerationContent {
    GenerationContent {
        key: Some(zeroize::Zeroizing::new(key.to_pem().as_bytes().to_vec())),
        fullchain: Some(chain.to_pem().into_bytes()),
        leaf: Some(chain.leaf_pem().into_bytes()),
        chain: Some(chain.intermediates_pem().into_bytes()),
        key_perms: None,
        adopted: false,
    }
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

/// The pair check on a generation's files as they are on disk (`keys::check_generation`).
pub(super) fn check_generation(files: &GenFiles) -> Result<(), String> {
    let read = |path: &std::path::Path, what: &str| {
        fsutil::read_capped(path, keys::MAX_PEM_BYTES)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{what} {:?} is missing", path.display().to_string()))
    };
    check_pair(files, &read(&files.fullchain(), "certificate")?)
}

/// The pair check of a generation whose certificate was already read.
fn check_pair(files: &GenFiles, fullchain: &[u8]) -> Result<(), String> {
    keys::check_generation(fullchain, || {
        fsutil::read_capped(&files.key(), keys::MAX_PEM_BYTES)
            .map_err(|e| e.to_string())?
            .map(zeroize::Zeroizing::new)
            .ok_or_else(|| format!("key {:?} is missing", files.key().display().to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InternalIssuer;
    use crate::core::{CertName, KeySpec, Span};
    use crate::issuer::internal::LocalCa;
    use crate::keys::PrivateKey;

    /// A generation directory holding `fullchain` and `key` (either may be absent).
    pub(super) fn generation(
        dir: &std::path::Path,
        fullchain: Option<&[u8]>,
        key: Option<&[u8]>,
    ) -> GenFiles {
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
    pub(super) fn the_pair_check_refuses_what_apache_would_die_on() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::new(
            tmp.path(),
            &InternalIssuer {
                validity: Span::days(30),
            },
        );
        let names: Vec<CertName> = vec!["a.test".parse().unwrap()];
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
