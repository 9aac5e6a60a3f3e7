//! Compromised keys: where the news comes from (operator flag files in `compromised_dir`,
//! SPKI blocklists, certagent's own memory of every key it ever saw compromised).
//!
//! The memory and the quarantine belong to the state directory (`store`, whose API this
//! uses): a digest in the memory is never generated, accepted or installed again.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::config::Config;
use crate::store::{FlagId, Journal, MAX_LIST_BYTES, Store, fsutil, parse_digests};

/// Digests of keys that must never serve: the configured blocklists plus certagent's memory,
/// and what could not be read of them. A list that cannot be read fails closed: while any
/// is unreadable, no key can be shown not to be listed (`unknown`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Blocked {
    digests: HashSet<String>,
    problems: Vec<String>,
}

impl Blocked {
    pub(crate) fn load(config: &Config) -> Blocked {
        let mut b = Blocked::default();
        for f in &config.agent.key_blocklist {
            match fsutil::read_capped(f, MAX_LIST_BYTES) {
                Ok(Some(bytes)) => b.extend(&bytes),
                Ok(None) => b.problems.push(format!(
                    "key blocklist {:?} does not exist",
                    f.display().to_string()
                )),
                Err(e) => b.problems.push(format!("key blocklist: {e}")),
            }
        }
        // Absent until the first compromise; anything else unreadable is a lost memory.
        match Store::at(&config.agent.state_dir).compromised_memory() {
            Ok(Some(bytes)) => b.extend(&bytes),
            Ok(None) => {}
            Err(e) => b
                .problems
                .push(format!("certagent's list of compromised keys: {e}")),
        }
        b
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.digests
            .extend(parse_digests(&String::from_utf8_lossy(bytes)));
    }

    /// Why the lists are incomplete, if they are.
    pub(crate) fn unknown(&self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    pub(crate) fn insert(&mut self, digest: &str) {
        self.digests.insert(digest.to_string());
    }
}

/// The flag file for `cert` in `compromised_dir`, if present. Only a regular file is a flag:
/// a symlink is not followed, and a FIFO, directory or device is not read; each is ignored
/// with a warning saying so.
pub(crate) fn flag(config: &Config, cert: &str) -> Option<FlagId> {
    let path = config.agent.compromised_dir.join(cert);
    let m = fs::symlink_metadata(&path).ok()?;
    if m.is_file() {
        return Some(FlagId {
            ino: m.ino(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            size: m.size(),
        });
    }
    let t = m.file_type();
    let what = if t.is_symlink() {
        "a symlink (flags are not followed)"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    log::warn!(
        cert = cert, path = path.display().to_string().as_str();
        "ignored compromise flag {:?}: it is {what}, not a regular file; write a regular file to flag the key",
        path.display().to_string()
    );
    None
}

/// Keep the journal's record of the answered flag in step with `compromised_dir`: a flag
/// seen gone re-arms (the next one is answered), a rewritten one stays answered. Called where
/// certagent may write the journal (the daemon's evaluation, a re-issue), never by `check`.
pub(crate) fn track_flag(store: &Store, config: &Config, cert: &str, journal: &mut Journal) {
    let Some(handled) = &journal.handled_flag else {
        return;
    };
    match flag(config, cert) {
        None => {
            log::info!(cert = cert; "compromise flag removed: the next flag for this certificate is answered as a new one");
            journal.handled_flag = None;
        }
        Some(now) if &now != handled => {
            log::info!(
                cert = cert;
                "compromise flag rewritten: already answered, its key was replaced and is never used again; to flag the key in service, remove the flag and write it again once this log says it is removed, or run `certagent reissue --now {cert} --reason key-compromise`"
            );
            journal.handled_flag = Some(now);
        }
        Some(_) => return,
    }
    if let Err(e) = store.save_journal(cert, journal) {
        log::warn!(cert = cert; "failed to record the compromise flag's state: {e}");
    }
}
