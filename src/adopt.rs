//! Taking over the files at a certificate's configured paths, the first time certagent
//! installs over them (or when something else replaced its links).
//!
//! What is there was not made by certagent and may have been planted by a local user who can
//! write the directory: a symlink to a root-only key, a hard link to one, a FIFO, an nginx
//! config mistaken for `cert_file`. So only material that is certainly this certificate's is
//! adopted as a generation, reached without following a symlink root does not own
//! (`store::nofollow`), a regular file with one link, owned by root or the configured owner,
//! parsing as what its path claims; the adopted key keeps the access it had (never wider).
//! Any other regular file is copied verbatim into `STATE/kept/NAME/` (root only) before its
//! path is replaced, so nothing is ever lost; a directory, device, FIFO or socket is an error
//! and stays where it is.
//!
//! This module reads and classifies; the executor publishes and flips.

use std::io::Read;
use std::path::Path;

use nix::sys::stat::FileStat;

use crate::config::Certificate;
use crate::error::{Context, Error, Result};
use crate::keys::{self, Chain, PrivateKey};
use crate::store::nofollow::{self, Entry};
use crate::store::{GenerationContent, Perms, Store, fsutil};

/// Largest file kept verbatim; anything larger at a configured path is refused.
const KEEP_CAP: u64 = 64 << 20;

/// What one configured path holds.
enum Found {
    Nothing,
    /// Material that is certainly this certificate's, with the source's metadata.
    Material(Vec<u8>, FileStat),
    /// A regular file that is not adopted, with the reason; kept verbatim.
    Keep(Vec<u8>, String),
}

/// The roles of a certificate's configured paths, for messages and kept copies.
fn outputs(cert: &Certificate) -> Vec<(&'static str, &Path)> {
    let mut v = vec![
        ("cert_file", cert.cert_file.as_path()),
        ("key_file", cert.key_file.as_path()),
    ];
    if let Some(c) = &cert.chain_file {
        v.push(("chain_file", c.as_path()));
    }
    if let Some(l) = &cert.leaf_file {
        v.push(("leaf_file", l.as_path()));
    }
    if let Some(b) = &cert.bundle_file {
        v.push(("bundle_file", b.as_path()));
    }
    v
}

/// Before any key is generated or order placed: every configured path can be taken over.
/// Refuses what an install would refuse later (a device, a directory, a path through a
/// symlink root does not own), so no CA work is wasted on it.
pub(crate) fn preflight(cert: &Certificate) -> Result<()> {
    for (role, path) in outputs(cert) {
        if let Some(dir) = path.parent()
            && !dir.is_dir()
        {
            // Reported by the install with its own hint; nothing to inspect here.
            continue;
        }
        classify(cert, role, path, None)?;
    }
    Ok(())
}

/// Read what is at `cert`'s paths: the content to publish as the adopted generation (`None`
/// when nothing is adoptable), after copying every other regular file into `STATE/kept/`.
pub(crate) fn take_over(store: &Store, cert: &Certificate) -> Result<Option<GenerationContent>> {
    let (owner, _) = fsutil::ids(cert.owner.as_deref(), None)?;
    let mut content = GenerationContent {
        adopted: true,
        ..GenerationContent::default()
    };
    for (role, path) in outputs(cert) {
        match classify(cert, role, path, owner)? {
            Found::Nothing => {}
            // A bundle is made from the key and chain of each generation: the file found
            // there is kept, never adopted.
            Found::Material(bytes, _) | Found::Keep(bytes, _) if role == "bundle_file" => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let kept = store.keep_verbatim(&cert.name, role, &bytes)?;
                log::info!(cert = cert.name.as_str(), kept = kept.display().to_string().as_str(); "replacing bundle_file {:?} by one made from the key and chain; kept the old one in {:?}", path.display().to_string(), kept.display().to_string());
            }
            Found::Keep(bytes, why) => {
                let kept = store.keep_verbatim(&cert.name, role, &bytes)?;
                log::warn!(cert = cert.name.as_str(), path = path.display().to_string().as_str(), kept = kept.display().to_string().as_str(); "not adopting {role} {:?}: {why}; kept it verbatim in {:?}", path.display().to_string(), kept.display().to_string());
            }
            Found::Material(bytes, stat) => match role {
                "key_file" => {
                    content.key = Some(zeroize::Zeroizing::new(bytes));
                    content.key_perms = Some(Perms {
                        uid: Some(stat.st_uid),
                        gid: Some(stat.st_gid),
                        mode: stat.st_mode & cert.key_mode & 0o640,
                    });
                }
                "cert_file" => content.fullchain = Some(bytes),
                "chain_file" => content.chain = Some(bytes),
                _ => content.leaf = Some(bytes),
            },
        }
    }
    Ok((content.key.is_some() || content.fullchain.is_some()).then_some(content))
}

/// Classify one path. `owner` is the configured owner's uid.
fn classify(cert: &Certificate, role: &str, path: &Path, owner: Option<u32>) -> Result<Found> {
    let shown = path.display().to_string();
    let refuse = |what: String| {
        Error::msg(format!("refusing to take over {shown:?} ({role}): {what}")).with_hint(
            "point the path at the certificate's own file, or at a path that does not exist yet; certagent replaces only certificates, keys and symlinks",
        )
    };
    let (entry, via_link) = nofollow::entry(path)
        .map_err(|e| e.context(format!("failed to inspect {role} of {:?}", cert.name)))?;
    let (mut file, stat) = match entry {
        Entry::Missing => return Ok(Found::Nothing),
        Entry::UntrustedLink { uid } => {
            log::warn!(cert = cert.name.as_str(), path = shown.as_str(); "not following {role} {shown:?}: a symlink owned by uid {uid}, not by root; it is replaced without being read");
            return Ok(Found::Nothing);
        }
        // A link to something else: replacing the link leaves that where it is.
        Entry::Other { .. } if via_link => return Ok(Found::Nothing),
        Entry::Other { kind } => return Err(refuse(format!("it is a {kind}"))),
        Entry::File { file, stat } => (file, stat),
    };
    if stat.st_size as u64 > KEEP_CAP {
        return Err(refuse(format!(
            "it is larger than {} MiB, far too large for a certificate or key, and too large to keep a copy of",
            KEEP_CAP >> 20
        )));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(KEEP_CAP + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("failed to read {shown:?}"))?;
    if bytes.len() as u64 > KEEP_CAP {
        return Err(refuse("it grew while it was read".into()));
    }
    let why = not_adoptable(role, &stat, owner, &bytes);
    Ok(match why {
        // The file stays where the link points; nothing to keep.
        Some(_) if via_link => Found::Nothing,
        Some(why) => Found::Keep(bytes, why),
        None => Found::Material(bytes, stat),
    })
}

/// Why the file read for `role` is kept aside rather than taken as the certificate's own:
/// an owner other than root or `owner`, hard links, or content that is not what `role` holds.
fn not_adoptable(role: &str, stat: &FileStat, owner: Option<u32>, bytes: &[u8]) -> Option<String> {
    let trusted_owner = stat.st_uid == 0 || Some(stat.st_uid) == owner;
    let parses = bytes.len() <= keys::MAX_PEM_BYTES
        && match role {
            "key_file" => PrivateKey::from_pem(&String::from_utf8_lossy(bytes)).is_ok(),
            _ => Chain::from_pem(bytes).is_ok(),
        };
    if !trusted_owner {
        Some(format!(
            "it is owned by uid {}, neither root nor the certificate's owner",
            stat.st_uid
        ))
    } else if stat.st_nlink != 1 {
        Some(format!(
            "it has {} hard links, so it may be another file's content",
            stat.st_nlink
        ))
    } else if !parses {
        Some(match role {
            "key_file" => "it is not a PEM private key".to_string(),
            _ => "it is not a PEM certificate chain".to_string(),
        })
    } else {
        None
    }
}
