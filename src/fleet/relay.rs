//! The holder's http-01 tokens, published in etcd for every host to serve.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Fleet;
use crate::error::Result;

/// How long the holder waits for every live host to serve an http-01 token before it lets
/// the CA validate anyway (a host that does not answer in time may fail the validation).
const TOKEN_WAIT: Duration = Duration::from_secs(10);

/// The holder's http-01 tokens, published in etcd for every host to serve.
pub(super) struct TokenRelay {
    pub(super) fleet: Arc<Fleet>,
    pub(super) lease: i64,
    pub(super) added: std::sync::Mutex<Vec<String>>,
}

impl crate::issuer::Relay for TokenRelay {
    fn add<'a>(
        &'a self,
        token: &'a str,
        key_auth: &'a str,
    ) -> crate::issuer::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.fleet
                .put_challenge(self.lease, token, key_auth)
                .await?;
            if let Ok(mut added) = self.added.lock() {
                added.push(token.to_string());
            }
            let (acked, alive) = self.fleet.wait_acks(token, TOKEN_WAIT).await?;
            if acked < alive {
                log::warn!(token = token; "only {acked} of {alive} live hosts serve the http-01 token; letting the CA validate anyway");
            } else {
                log::debug!(token = token; "all {alive} live hosts serve the http-01 token");
            }
            Ok(())
        })
    }

    fn clear(&self) -> crate::issuer::BoxFuture<'_, ()> {
        Box::pin(async move {
            let tokens = self
                .added
                .lock()
                .map(|mut a| std::mem::take(&mut *a))
                .unwrap_or_default();
            for token in tokens {
                if let Err(e) = self.fleet.remove_challenge(&token).await {
                    log::debug!("failed to remove an http-01 token from etcd: {e}");
                }
            }
        })
    }
}
