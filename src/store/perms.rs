//! Ownership and modes of the kept generations, against the certificate's `owner`, `group`,
//! `key_mode` and `cert_mode`.
//!
//! A change of those keys applies to every generation kept for rollback, not only to the next
//! one: a user removed from `owner` must not go on reading valid keys of older generations.
//! Generations certagent made get exactly the configured access; an adopted generation (files
//! certagent found at the configured paths) is only ever narrowed, never handed to someone who
//! could not read it before.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Certificate;
use crate::error::{Context, Result};

use super::{Store, fsutil};

/// Name of the marker file in an adopted generation.
pub(crate) const ADOPTED_MARKER: &str = "adopted";

/// One file whose owner, group or mode differs from what the configuration asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drift {
    pub(crate) path: PathBuf,
    pub(crate) generation: u64,
    pub(crate) have: (u32, u32, u32),
    pub(crate) want: (u32, u32, u32),
}

impl Drift {
    /// For `check` and logs: `key.pem of generation 2: uid 1001 gid 1001 mode 0600, configured uid 0 gid 0 mode 0600`.
    pub(crate) fn describe(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (hu, hg, hm) = self.have;
        let (wu, wg, wm) = self.want;
        format!(
            "{file} of generation {}: uid {hu} gid {hg} mode {hm:04o}, configured uid {wu} gid {wg} mode {wm:04o}",
            self.generation
        )
    }
}

impl Store {
    /// Every file of every kept generation of `cert` whose access differs from the
    /// configuration. An unknown `owner`/`group` is an error (the config names a user that
    /// does not exist here).
    pub(crate) fn permission_drift(&self, cert: &Certificate) -> Result<Vec<Drift>> {
        let (uid, gid) = fsutil::ids(cert.owner.as_deref(), cert.group.as_deref())?;
        let (uid, gid) = (uid.unwrap_or(0), gid.unwrap_or(0));
        let mut drift = Vec::new();
        let Ok(entries) = fs::read_dir(self.live_dir(&cert.name)) else {
            return Ok(drift);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            drift.extend(generation_drift(&entry.path(), number, cert, (uid, gid)));
        }
        drift.sort_by(|a, b| (a.generation, &a.path).cmp(&(b.generation, &b.path)));
        Ok(drift)
    }

    /// Apply the configured access to every kept generation of `cert` (see
    /// `permission_drift`). No key changes; returns what was fixed.
    pub(crate) fn fix_permissions(&self, cert: &Certificate) -> Result<Vec<Drift>> {
        let drift = self.permission_drift(cert)?;
        for d in &drift {
            let shown = || {
                format!(
                    "failed to fix the access of {:?}",
                    d.path.display().to_string()
                )
            };
            // Our own files in our own directories: no link to follow (lchown, and chmod of a
            // path that `permission_drift` just saw as a regular file in a root-only tree).
            std::os::unix::fs::lchown(&d.path, Some(d.want.0), Some(d.want.1))
                .with_context(shown)?;
            fs::set_permissions(
                &d.path,
                std::os::unix::fs::PermissionsExt::from_mode(d.want.2),
            )
            .with_context(shown)?;
        }
        Ok(drift)
    }
}

/// The files of generation `number` in `dir` whose owner, group or mode differs from what
/// `cert` configures (`ids`: its uid and gid, 0 when not set).
fn generation_drift(dir: &Path, number: u64, cert: &Certificate, ids: (u32, u32)) -> Vec<Drift> {
    let (uid, gid) = ids;
    let mut drift = Vec::new();
    let adopted = dir.join(ADOPTED_MARKER).exists();
    for (file, mode) in [
        ("key.pem", cert.key_mode),
        (super::BUNDLE, cert.key_mode),
        ("fullchain.pem", cert.cert_mode),
        ("cert.pem", cert.cert_mode),
        ("chain.pem", cert.cert_mode),
    ] {
        let path = dir.join(file);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let have = (meta.uid(), meta.gid(), meta.mode() & 0o7777);
        let want = if adopted {
            // Narrow only: an owner or group the configuration no longer names loses
            // the file to root; mode bits beyond the configured ones go.
            (
                if have.0 == uid { uid } else { 0 },
                if have.1 == gid { gid } else { 0 },
                have.2 & mode,
            )
        } else {
            (uid, gid, mode)
        };
        if have != want {
            drift.push(Drift {
                path,
                generation: number,
                have,
                want,
            });
        }
    }
    drift
}
