//! http-01 behind a load balancer: the lock holder puts each key authorization under
//! `PREFIX/challenges/TOKEN` (on its lock's lease, so they vanish with a dead holder); every
//! host's daemon serves it from its webroot and acknowledges under `PREFIX/acks/TOKEN/NODE`
//! (on its liveness lease); the holder lets the CA validate once every live host has.
//! Key authorizations are public (they are served over plain HTTP); nothing secret is here.

use std::time::Duration;

use etcd_client::{DeleteOptions, EventType, GetOptions, PutOptions, WatchOptions};

use super::etcd::Fleet;
use crate::error::{Error, Result};

/// Largest key authorization accepted from etcd (a token and a thumbprint: ~90 bytes).
const MAX_KEY_AUTH: usize = 1024;

/// A challenge put or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChallengeEvent {
    /// `lease`: the holder's, which the acknowledgement is put on too (it goes with it).
    Put {
        token: String,
        key_auth: String,
        lease: i64,
    },
    Removed {
        token: String,
    },
}

impl Fleet {
    fn challenges_prefix(&self) -> String {
        format!("{}/challenges/", self.keys.prefix())
    }

    fn acks_prefix(&self, token: &str) -> String {
        format!("{}/acks/{token}/", self.keys.prefix())
    }

    /// Publishes one key authorization for every host to serve, on the holder's lease.
    pub async fn put_challenge(&self, lease: i64, token: &str, key_auth: &str) -> Result<()> {
        check_token(token)?;
        let key = format!("{}{token}", self.challenges_prefix());
        let options = PutOptions::new().with_lease(lease);
        let value = key_auth.as_bytes().to_vec();
        self.call("publish an http-01 token in etcd", |mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, Some(options)).await }
        })
        .await?;
        Ok(())
    }

    /// Removes a key authorization and its acknowledgements.
    pub async fn remove_challenge(&self, token: &str) -> Result<()> {
        check_token(token)?;
        let key = format!("{}{token}", self.challenges_prefix());
        self.call("remove an http-01 token from etcd", |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await?;
        let acks = self.acks_prefix(token);
        self.call(
            "remove the acknowledgements of an http-01 token",
            |mut c| {
                let acks = acks.clone();
                async move {
                    c.delete(acks, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            },
        )
        .await?;
        Ok(())
    }

    /// This host serves `token` now. The acknowledgement lives on `lease` (the holder's, so
    /// it goes with the challenge), or on this host's liveness lease without one.
    pub async fn ack_challenge(&self, token: &str, lease: i64) -> Result<()> {
        check_token(token)?;
        let lease = if lease != 0 {
            lease
        } else {
            self.alive_lease().await?
        };
        let key = format!("{}{}", self.acks_prefix(token), self.node());
        let options = PutOptions::new().with_lease(lease);
        self.call("acknowledge an http-01 token", |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.put(key, "", Some(options)).await }
        })
        .await?;
        Ok(())
    }

    /// Waits until every live host acknowledged `token`, up to `wait`; returns how many
    /// did and how many are alive. Polls (50 ms) only while an order is being validated.
    pub async fn wait_acks(&self, token: &str, wait: Duration) -> Result<(usize, usize)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let alive = self
                .count(&format!("{}/alive/", self.keys.prefix()))
                .await?;
            let acked = self.count(&self.acks_prefix(token)).await?;
            if acked >= alive || tokio::time::Instant::now() >= deadline {
                return Ok((acked, alive));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let prefix = prefix.to_string();
        let response = self
            .call("count keys in etcd", |mut c| {
                let prefix = prefix.clone();
                let options = GetOptions::new().with_prefix().with_count_only();
                async move { c.get(prefix, Some(options)).await }
            })
            .await?;
        Ok(usize::try_from(response.count()).unwrap_or(0))
    }

    /// The challenges there are now, and the revision to watch from.
    pub async fn challenges(&self) -> Result<(Vec<ChallengeEvent>, i64)> {
        let prefix = self.challenges_prefix();
        let response = self
            .call("read the http-01 tokens in etcd", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let events = response
            .kvs()
            .iter()
            .filter_map(|kv| self.event(EventType::Put, kv.key(), kv.value(), kv.lease()))
            .collect();
        Ok((events, revision))
    }

    /// Watches the challenges after `revision`.
    pub async fn watch_challenges(&self, revision: i64) -> Result<ChallengeWatch<'_>> {
        let prefix = self.challenges_prefix();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let stream = self
            .call("watch the http-01 tokens in etcd", |mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        Ok(ChallengeWatch {
            fleet: self,
            stream,
            queued: Vec::new(),
        })
    }

    fn event(
        &self,
        kind: EventType,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Option<ChallengeEvent> {
        let key = std::str::from_utf8(key).ok()?;
        let token = key.strip_prefix(&self.challenges_prefix())?.to_string();
        check_token(&token).ok()?;
        match kind {
            EventType::Delete => Some(ChallengeEvent::Removed { token }),
            EventType::Put => {
                if value.len() > MAX_KEY_AUTH {
                    return None;
                }
                let key_auth = std::str::from_utf8(value).ok()?.to_string();
                // `TOKEN.THUMBPRINT`, both base64url (RFC 8555 §8.1).
                let ok = key_auth
                    .strip_prefix(&token)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|t| {
                        !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                ok.then_some(ChallengeEvent::Put {
                    token,
                    key_auth,
                    lease,
                })
            }
        }
    }
}

/// Tokens name files: only base64url characters (RFC 8555 §8.3), as the ACME responder checks.
fn check_token(token: &str) -> Result<()> {
    crate::issuer::acme::check_token(token)
}

/// A watch on the challenges; an error when the stream breaks (read them again, watch anew).
pub struct ChallengeWatch<'a> {
    fleet: &'a Fleet,
    stream: etcd_client::WatchStream,
    queued: Vec<ChallengeEvent>,
}

impl ChallengeWatch<'_> {
    pub async fn next(&mut self) -> Result<ChallengeEvent> {
        loop {
            if !self.queued.is_empty() {
                return Ok(self.queued.remove(0));
            }
            let response = match self.stream.message().await {
                Ok(Some(r)) => r,
                _ => return Err(Error::msg("the watch on the http-01 tokens ended")),
            };
            if response.canceled() || response.compact_revision() > 0 {
                return Err(Error::msg("the watch on the http-01 tokens was cancelled"));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if let Some(e) =
                    self.fleet
                        .event(event.event_type(), kv.key(), kv.value(), kv.lease())
                {
                    self.queued.push(e);
                }
            }
        }
    }
}
