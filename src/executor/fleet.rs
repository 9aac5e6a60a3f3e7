//! The executor's part in a fleet (`crate::fleet` drives it): the lock holder obtains a
//! certificate without installing it (it is published first, then installed like on every
//! other host); a successor adopts the pending key and order its predecessor journalled in
//! etcd; and every host installs what the fleet published through its ordinary transaction
//! (pair check, flip, config test, reload, TLS proof, rollback). Nothing here talks to etcd.

use super::observe::InService;
use super::outcome::Attempt;
use super::{Executor, Outcome, Recovered};
use crate::compromise::Blocked;
use crate::config::Certificate;
use crate::core::{Asked, Reason};
use crate::error::{Error, Result};
use crate::keys::{Chain, PrivateKey, SecretPem};

/// What the lock holder obtained: saved as this host's issued pending re-issue, not yet
/// installed.
pub(crate) struct Obtained {
    pub(crate) key_pem: SecretPem,
    pub(crate) chain_pem: String,
    pub(crate) serial: String,
    pub(crate) reason: Reason,
    /// The key this re-issue replaces because it was compromised, if it does.
    pub(crate) compromised_spki: Option<String>,
}

impl Executor {
    /// The first half of a re-issue, for the fleet's lock holder: recover, key, order and
    /// chain, saved as the issued pending re-issue. `Err` is how it ended instead (an
    /// interrupted install that was settled, a pending order, a failure).
    pub(crate) async fn obtain_for_fleet(
        &self,
        cert: &Certificate,
        reason: Reason,
        asked: &Asked,
    ) -> std::result::Result<Obtained, Outcome> {
        let journal = match self.recover(cert).await {
            Ok(Recovered::Clean(journal)) => *journal,
            Ok(Recovered::Interrupted(attempt)) => return Err(Outcome::of(cert, attempt)),
            Err(e) => return Err(Outcome::Failed(e)),
        };
        let mut journal = self
            .journal_asked(cert, journal, asked)
            .map_err(Outcome::Failed)?;
        let obtained = self.obtain_fresh(cert, reason, &mut journal).await;
        let (key, chain, reason) = match obtained {
            Ok(o) => o,
            Err(stop) => {
                let attempt: Attempt = Err(stop);
                self.journal_unrecorded(cert, reason, &attempt);
                return Err(Outcome::of(cert, attempt));
            }
        };
        let leaf = chain.leaf().map_err(|e| Outcome::Failed(Error::msg(e)))?;
        let compromised_spki = journal
            .pending
            .as_ref()
            .and_then(|p| p.compromise.as_ref())
            .map(|c| c.old_spki_sha256.clone());
        Ok(Obtained {
            key_pem: key.to_pem(),
            chain_pem: chain.to_pem(),
            serial: leaf.serial,
            reason,
            compromised_spki,
        })
    }

    /// Take over the pending key (and order, if the CA gave one) that another holder
    /// journalled in etcd, so the order it placed is resumed rather than placed again. This
    /// host's own pending re-issue for the same key is kept as it is (it may be issued).
    pub(crate) fn adopt_fleet_pending(
        &self,
        cert: &Certificate,
        key_pem: &str,
        order_url: Option<&str>,
        reason: Reason,
    ) -> Result<()> {
        let key = PrivateKey::from_pem(key_pem).map_err(|e| {
            Error::msg(format!(
                "the pending key the fleet journalled for {:?} is unusable: {e}",
                cert.name
            ))
        })?;
        let mut journal = self.store.journal(&cert.name)?;
        let ours = journal
            .pending
            .as_ref()
            .is_some_and(|p| p.key_spki_sha256 == key.spki_sha256())
            && self.store.pending_key(&cert.name)?.is_some();
        if !ours {
            self.store.clear_pending(&cert.name)?;
            let names = cert.names.iter().map(|n| n.to_string()).collect();
            self.pend(cert, &mut journal, &key, reason, self.clock.now(), names)?;
            log::info!(cert = cert.name.as_str(), event = "fleet-resumed"; "resuming the pending order another host of the fleet started");
        }
        if let Some(p) = journal.pending.as_mut()
            && p.order_url.is_none()
        {
            p.order_url = order_url.map(str::to_string);
        }
        self.store.save_journal(&cert.name, &journal)
    }

    /// Install the published `key_pem` and `chain_pem` for `cert`, as a re-issue for
    /// `reason`. A key this host knows to be compromised, a chain that is not for the key or
    /// the configured names, or one that is not valid now, is refused with nothing changed.
    /// When the generation replaced a compromised key, this host remembers that key and
    /// quarantines its copy; the revocation is the lock holder's, done once.
    pub(crate) async fn install_published(
        &self,
        cert: &Certificate,
        key_pem: &str,
        chain_pem: &[u8],
        reason: Reason,
        compromised_spki: Option<&str>,
    ) -> Outcome {
        let attempt = self
            .install_published_attempt(cert, key_pem, chain_pem, reason, compromised_spki)
            .await;
        self.journal_unrecorded(cert, reason, &attempt);
        Outcome::of(cert, attempt)
    }

    async fn install_published_attempt(
        &self,
        cert: &Certificate,
        key_pem: &str,
        chain_pem: &[u8],
        reason: Reason,
        compromised_spki: Option<&str>,
    ) -> Attempt {
        let now = self.clock.now();
        let mut journal = match self.recover(cert).await? {
            Recovered::Clean(journal) => *journal,
            // An interrupted install was settled first: go on from the journal it left.
            Recovered::Interrupted(attempt) => {
                attempt?;
                self.store.journal(&cert.name)?
            }
        };
        let key = PrivateKey::from_pem(key_pem).map_err(|e| {
            Error::msg(format!(
                "the key the fleet published for {:?} is unusable: {e}",
                cert.name
            ))
        })?;
        let mut blocked = Blocked::load(&self.config);
        if let Some(spki) = compromised_spki {
            self.store.remember_compromised(spki)?;
            blocked.insert(spki);
        }
        if blocked.contains(&key.spki_sha256()) {
            return Err(Error::msg(format!(
                "the key the fleet published for {:?} is on this host's list of compromised keys: not installed",
                cert.name
            ))
            .with_hint("a compromise response on another host should have replaced it; `certagent status --fleet` shows who holds the lock")
            .into());
        }
        let chain = Chain::from_pem(chain_pem).map_err(|e| {
            Error::msg(format!(
                "the certificate the fleet published for {:?} is unreadable: {e}",
                cert.name
            ))
        })?;
        self.store.clear_pending(&cert.name)?;
        let names = cert.names.iter().map(|n| n.to_string()).collect();
        self.pend(cert, &mut journal, &key, reason, now, names)?;
        let in_service = InService::read(cert);
        let serving_compromised = in_service
            .private_key
            .as_ref()
            .map(PrivateKey::spki_sha256)
            .is_some_and(|s| Some(s.as_str()) == compromised_spki);
        // The response to the compromise this generation answers was the holder's (capture,
        // revocation): here only the compromised key is quarantined if this host serves it,
        // and purged from the kept generations. Marked answered, so that the transaction does
        // not take the key in service (maybe this very generation, being healed) for it.
        let answered = match compromised_spki {
            Some(spki) => {
                let mut work = if serving_compromised {
                    self.capture_compromise(cert, &mut journal, &mut blocked, &in_service)?
                } else {
                    crate::store::CompromiseWork {
                        old_spki_sha256: spki.to_string(),
                        old_leaf: None,
                        revoked_first: false,
                        issuer: None,
                    }
                };
                // The holder revokes the old certificate, once for the fleet.
                work.revoked_first = true;
                if let Some(p) = journal.pending.as_mut() {
                    p.compromise = Some(work);
                }
                true
            }
            None => false,
        };
        let reason = if reason == Reason::KeyCompromised && !answered {
            Reason::Forced
        } else {
            reason
        };
        self.accept_chain(cert, &mut journal, &key, chain, now, reason)?;
        self.reissue_fresh(cert, reason, journal).await
    }
}
