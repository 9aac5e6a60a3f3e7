//! Watching one certificate's published record: from a given revision, so nothing is missed
//! between a read and the watch; re-reading the current value when the history it needs was
//! compacted; resuming from the last revision seen after a broken stream.

use std::collections::VecDeque;

use etcd_client::{EventType, WatchOptions, WatchStream};

use super::etcd::Fleet;
use super::records::{self, MAX_PUBLISHED, Published};
use crate::error::{Error, Result};

/// What happened to a published record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishedEvent {
    /// A record was published (or re-published) at `revision`.
    Published { record: Published, revision: i64 },
    /// The record was deleted at `revision` (an operator cleaning up).
    Deleted { revision: i64 },
    /// The history from the last revision seen was compacted away: this is the current
    /// value, read at `revision`. Skip it if it is not newer than what the host serves.
    Resynced {
        record: Option<Published>,
        revision: i64,
    },
}

/// A watch on `PREFIX/certs/NAME/published`. [`PublishedWatch::next`] returns the next event;
/// after an error (etcd unreachable), calling it again resumes where it stopped.
pub struct PublishedWatch<'a> {
    fleet: &'a Fleet,
    name: String,
    key: String,
    /// Every event up to this revision has been returned.
    seen: i64,
    stream: Option<WatchStream>,
    queued: VecDeque<PublishedEvent>,
}

impl Fleet {
    /// Watches the published record of `name` for events after revision `seen` (the revision
    /// returned by [`Fleet::published`], or the last event's).
    pub fn watch_published(&self, name: &str, seen: i64) -> Result<PublishedWatch<'_>> {
        records::check_segment("certificate name", name)?;
        Ok(PublishedWatch {
            fleet: self,
            name: name.to_string(),
            key: self.keys.published(name),
            seen,
            stream: None,
            queued: VecDeque::new(),
        })
    }
}

impl PublishedWatch<'_> {
    /// The last revision whose events were returned: persist it to resume after a restart.
    pub fn seen(&self) -> i64 {
        self.seen
    }

    /// The next event, waiting as long as it takes; an error if etcd cannot be reached
    /// (within the request timeout) or the watch broke.
    pub async fn next(&mut self) -> Result<PublishedEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Ok(event);
            }
            if self.stream.is_none() {
                self.start().await?;
            }
            self.receive().await?;
        }
    }

    async fn start(&mut self) -> Result<()> {
        let options = WatchOptions::new().with_start_revision(self.seen + 1);
        let what = format!("watch {:?} in etcd", self.name);
        let key = self.key.clone();
        let stream = self
            .fleet
            .call(&what, |mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.watch(key, Some(options)).await }
            })
            .await?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Reads one response and queues its events, or resynchronises after a compaction.
    async fn receive(&mut self) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) | Err(_) => {
                self.stream = None;
                return Err(Error::msg(format!(
                    "failed to watch {:?} in etcd: the stream ended",
                    self.name
                ))
                .with_hint("the watch resumes from the last revision seen once etcd is back"));
            }
        };
        if response.compact_revision() > 0 {
            self.stream = None;
            return self.resync().await;
        }
        if response.canceled() {
            self.stream = None;
            return Err(Error::msg(format!(
                "failed to watch {:?} in etcd: cancelled by etcd ({})",
                self.name,
                response.cancel_reason()
            )));
        }
        // A value that does not decode is reported once, after the good ones before and
        // after it are queued; it is never returned again (`seen` moved past it).
        let mut bad = None;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            self.seen = self.seen.max(revision);
            match event.event_type() {
                EventType::Delete => self.queued.push_back(PublishedEvent::Deleted { revision }),
                EventType::Put => match records::decode(&self.key, kv.value(), MAX_PUBLISHED) {
                    Ok(record) => self
                        .queued
                        .push_back(PublishedEvent::Published { record, revision }),
                    Err(e) => bad = bad.or(Some(e)),
                },
            }
        }
        bad.map_or(Ok(()), Err)
    }

    /// Re-reads the current value and goes on watching after the revision it was read at.
    async fn resync(&mut self) -> Result<()> {
        let (record, revision) = self.fleet.published(&self.name).await?;
        self.seen = revision;
        self.queued
            .push_back(PublishedEvent::Resynced { record, revision });
        Ok(())
    }
}

/// One watch on every certificate's published record (`PREFIX/certs/*/published`): a host
/// follows its whole fleet on one stream. After an error (etcd unreachable, a compaction
/// of the history it needs), read everything again with [`Fleet::all_published`] and watch
/// from there.
pub struct AllPublishedWatch<'a> {
    fleet: &'a Fleet,
    stream: WatchStream,
    queued: VecDeque<Published>,
}

impl Fleet {
    fn certs_prefix(&self) -> String {
        format!("{}/certs/", self.keys.prefix())
    }

    /// Every certificate's published record, and the store's revision they were read at.
    /// Records that do not decode are left out (and logged).
    pub async fn all_published(&self) -> Result<(Vec<Published>, i64)> {
        let prefix = self.certs_prefix();
        let response = self
            .call("read the published certificates", |mut c| {
                let prefix = prefix.clone();
                let options = etcd_client::GetOptions::new().with_prefix();
                async move { c.get(prefix, Some(options)).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let records = response
            .kvs()
            .iter()
            .filter_map(|kv| self.published_of(kv.key(), kv.value()))
            .collect();
        Ok((records, revision))
    }

    /// Watches every published record for events after revision `seen`.
    pub async fn watch_all_published(&self, seen: i64) -> Result<AllPublishedWatch<'_>> {
        let prefix = self.certs_prefix();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(seen + 1);
        let stream = self
            .call("watch the published certificates", |mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        Ok(AllPublishedWatch {
            fleet: self,
            stream,
            queued: VecDeque::new(),
        })
    }

    /// The record at `key` if it is a `published` one that decodes.
    fn published_of(&self, key: &[u8], value: &[u8]) -> Option<Published> {
        let key = std::str::from_utf8(key).ok()?;
        let name = key
            .strip_prefix(&self.certs_prefix())?
            .strip_suffix("/published")?;
        match records::decode::<Published>(key, value, MAX_PUBLISHED) {
            Ok(record) if record.name == name => Some(record),
            Ok(_) => {
                log::warn!("ignoring {key:?} in etcd: it names another certificate");
                None
            }
            Err(e) => {
                log::warn!("ignoring {key:?} in etcd: {e}");
                None
            }
        }
    }
}

impl AllPublishedWatch<'_> {
    /// The next record published (deletions are skipped: an operator cleaning up changes
    /// nothing a host serves).
    pub async fn next(&mut self) -> Result<Published> {
        loop {
            if let Some(record) = self.queued.pop_front() {
                return Ok(record);
            }
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) | Err(_) => {
                    return Err(Error::msg(
                        "failed to watch the published certificates in etcd: the stream ended",
                    ));
                }
            };
            if response.compact_revision() > 0 || response.canceled() {
                return Err(Error::msg(
                    "the watch on the published certificates was cancelled (compacted history); reading them again",
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if event.event_type() == EventType::Put
                    && let Some(record) = self.fleet.published_of(kv.key(), kv.value())
                {
                    self.queued.push_back(record);
                }
            }
        }
    }
}
