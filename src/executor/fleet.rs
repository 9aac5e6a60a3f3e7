//! Installing what the fleet published: the lock holder's key and chain, opened with the
//! fleet key, through this host's ordinary transaction (pair check, flip, config test, reload,
//! TLS proof, rollback). Nothing is ordered: the material becomes this host's pending re-issue,
//! already issued, and is installed the way a resumed re-issue is.

use super::outcome::Attempt;
use super::{Executor, Outcome};
use crate::compromise::Blocked;
use crate::config::Certificate;
use crate::core::Reason;
use crate::error::Error;
use crate::keys::{Chain, PrivateKey};

impl Executor {
    /// Install the published `key_pem` and `chain_pem` for `cert`, as a re-issue for
    /// `reason`. A key this host knows to be compromised, a chain that is not for the key or
    /// the configured names, or one that is not valid now, is refused with nothing changed.
    pub(crate) async fn install_published(
        &self,
        cert: &Certificate,
        key_pem: &str,
        chain_pem: &[u8],
        reason: Reason,
    ) -> Outcome {
        Outcome::of(
            cert,
            self.install_published_attempt(cert, key_pem, chain_pem, reason)
                .await,
        )
    }

    async fn install_published_attempt(
        &self,
        cert: &Certificate,
        key_pem: &str,
        chain_pem: &[u8],
        reason: Reason,
    ) -> Attempt {
        let now = self.clock.now();
        let mut journal = self.store.journal(&cert.name)?;
        let key = PrivateKey::from_pem(key_pem).map_err(|e| {
            Error::msg(format!(
                "the key the fleet published for {:?} is unusable: {e}",
                cert.name
            ))
        })?;
        let blocked = Blocked::load(&self.config);
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
        self.accept_chain(cert, &mut journal, &key, chain, now, reason)?;
        self.reissue_fresh(cert, reason, journal).await
    }
}
