//! The compromised keys the state directory holds: certagent's memory of every key it ever
//! saw compromised (`STATE/compromised-keys`, one SPKI SHA-256 hex digest per line, only
//! growing), the 0700 quarantine directory a compromised key is kept in until its
//! certificate is revoked, and removing such a key from every kept generation. Where the
//! news of a compromise comes from (flag files, blocklists) is `compromise`'s business.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Perms, Store, fsutil};
use crate::error::{Context, Result};

/// Blocklists and the memory are lists of digests; a few MiB is already a lot of keys.
pub(crate) const MAX_LIST_BYTES: usize = 16 << 20;

/// Identity of a flag file as last seen. One flag, one response: once answered, a flag stays
/// answered however often it is rewritten (config management rewriting it on every run must
/// not burn a new key each time); after certagent has seen it gone, a flag is a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FlagId {
    pub(crate) ino: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) size: u64,
}

/// One digest per line; `#` comments and blank lines ignored; `sha256:` prefixes and colons
/// (as `openssl` prints them) accepted; anything that is not 64 hex digits is skipped.
pub(crate) fn parse_digests(text: &str) -> impl Iterator<Item = String> + '_ {
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

impl Store {
    fn memory_path(&self) -> PathBuf {
        self.root().join("compromised-keys")
    }

    /// certagent's memory of compromised keys, as stored (`None` until the first compromise).
    pub(crate) fn compromised_memory(&self) -> Result<Option<Vec<u8>>> {
        fsutil::read_capped(&self.memory_path(), MAX_LIST_BYTES)
    }

    /// Remember `digest` as compromised, durably, before anything else is done about it.
    pub(crate) fn remember_compromised(&self, digest: &str) -> Result<()> {
        let path = self.memory_path();
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

    fn quarantined_path(&self, cert: &str, digest: &str) -> PathBuf {
        self.root()
            .join("quarantine")
            .join(format!("{cert}-{}.key", &digest[..16.min(digest.len())]))
    }

    /// Keep a copy of a compromised key (0600 in the 0700 quarantine directory): it may still
    /// be needed to sign the revocation of its certificate.
    pub(crate) fn quarantine_key(
        &self,
        cert: &str,
        digest: &str,
        key_pem: &[u8],
    ) -> Result<PathBuf> {
        fsutil::ensure_dir(&self.root().join("quarantine"), 0o700)?;
        let path = self.quarantined_path(cert, digest);
        fsutil::replace_file(&path, key_pem, Perms::mode(0o600))?;
        Ok(path)
    }

    pub(crate) fn quarantined_key(&self, cert: &str, digest: &str) -> Option<Vec<u8>> {
        fsutil::read_capped(
            &self.quarantined_path(cert, digest),
            crate::keys::MAX_PEM_BYTES,
        )
        .ok()
        .flatten()
    }

    /// Remove every copy of the key with `digest` from the generations of `cert`. Returns the
    /// generations it was removed from.
    pub(crate) fn purge_key(&self, cert: &str, digest: &str) -> Result<Vec<String>> {
        let live = self.live_dir(cert);
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
