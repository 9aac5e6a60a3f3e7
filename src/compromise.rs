//! Compromised keys: where the news comes from (operator flag files in `compromised_dir`,
//! SPKI blocklists, certagent's own memory of every key it ever saw compromised) and where a
//! compromised key ends up (a 0700 quarantine directory, out of every generation).
//!
//! The memory (`STATE/compromised-keys`, one SPKI SHA-256 hex digest per line) only grows:
//! a digest in it is never generated, accepted or installed again.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Context, Result};
use crate::store::{Journal, Perms, Store, fsutil};

/// Blocklists and the memory are lists of digests; a few MiB is already a lot of keys.
const MAX_LIST_BYTES: usize = 16 << 20;

/// Digests of keys that must never serve: the configured blocklists plus certagent's memory,
/// and what could not be read of them. A list that cannot be read fails closed: while any
/// is unreadable, no key can be shown not to be listed (`unknown`).
#[derive(Clone, Debug, Default)]
pub struct Blocked {
    digests: HashSet<String>,
    problems: Vec<String>,
}

impl Blocked {
    pub fn load(config: &Config) -> Blocked {
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
        match fsutil::read_capped(&memory_path(&config.agent.state_dir), MAX_LIST_BYTES) {
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
    pub fn unknown(&self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    pub fn insert(&mut self, digest: &str) {
        self.digests.insert(digest.to_string());
    }
}

/// One digest per line; `#` comments and blank lines ignored; `sha256:` prefixes and colons
/// (as `openssl` prints them) accepted; anything that is not 64 hex digits is skipped.
pub fn parse_digests(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let line = line.strip_prefix("sha256:").unwrap_or(line);
        let hex: String = line
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
    })
}

fn memory_path(state_dir: &Path) -> PathBuf {
    state_dir.join("compromised-keys")
}

/// Remember `digest` as compromised, durably, before anything else is done about it.
pub fn remember(store: &Store, digest: &str) -> Result<()> {
    let path = memory_path(store.root());
    let mut text = fsutil::read_capped(&path, MAX_LIST_BYTES)?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if parse_digests(&text).any(|d| d == digest) {
        return Ok(());
    }
    text.push_str(digest);
    text.push('\n');
    fsutil::replace_file(&path, text.as_bytes(), Perms::mode(0o600))
}

/// Identity of a flag file as last seen. One flag, one response: once answered, a flag stays
/// answered however often it is rewritten (config management rewriting it on every run must
/// not burn a new key each time); after certagent has seen it gone, a flag is a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagId {
    pub ino: u64,
    pub mtime_ns: i64,
    pub size: u64,
}

/// The flag file for `cert` in `compromised_dir`, if present. Only a regular file is a flag:
/// a symlink is not followed, and a FIFO, directory or device is not read; each is ignored
/// with a warning saying so.
pub fn flag(config: &Config, cert: &str) -> Option<FlagId> {
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
pub fn track_flag(store: &Store, config: &Config, cert: &str, journal: &mut Journal) {
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

fn quarantine_dir(store: &Store) -> Result<PathBuf> {
    let dir = store.root().join("quarantine");
    fsutil::ensure_dir(&dir, 0o700)?;
    Ok(dir)
}

/// Keep a copy of a compromised key (0600 in the 0700 quarantine directory): it may still be
/// needed to sign the revocation of its certificate.
pub fn quarantine_copy(store: &Store, cert: &str, digest: &str, key_pem: &[u8]) -> Result<PathBuf> {
    let path =
        quarantine_dir(store)?.join(format!("{cert}-{}.key", &digest[..16.min(digest.len())]));
    fsutil::replace_file(&path, key_pem, Perms::mode(0o600))?;
    Ok(path)
}

pub fn quarantined_key(store: &Store, cert: &str, digest: &str) -> Option<Vec<u8>> {
    let path = store
        .root()
        .join("quarantine")
        .join(format!("{cert}-{}.key", &digest[..16.min(digest.len())]));
    fsutil::read_capped(&path, crate::keys::MAX_PEM_BYTES)
        .ok()
        .flatten()
}

/// Remove every copy of the key with `digest` from the generations of `cert`. Returns the
/// generations it was removed from.
pub fn purge_generations(store: &Store, cert: &str, digest: &str) -> Result<Vec<String>> {
    let live = store.live_dir(cert);
    let mut purged = Vec::new();
    let Ok(entries) = fs::read_dir(&live) else {
        return Ok(purged);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("gen-") {
            continue;
        }
        let key = e.path().join("key.pem");
        let Some(pem) = fsutil::read_capped(&key, crate::keys::MAX_PEM_BYTES)? else {
            continue;
        };
        let matches = crate::keys::PrivateKey::from_pem(&String::from_utf8_lossy(&pem))
            .is_ok_and(|k| k.spki_sha256() == digest);
        if matches {
            fs::remove_file(&key)
                .with_context(|| format!("failed to remove compromised key from {name}"))?;
            fsutil::fsync_dir(&e.path())?;
            purged.push(name);
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_lists_accept_common_spellings_and_skip_junk() {
        let d = "ab".repeat(32);
        let colons = d
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        let text = format!(
            "# blocked keys\n{d}\nsha256:{d}  # again\n{colons}\nnot-a-digest\n{}\n\n",
            "ab".repeat(31)
        );
        let got: Vec<String> = parse_digests(&text).collect();
        assert_eq!(got, vec![d.clone(), d.clone(), d]);
    }
}
