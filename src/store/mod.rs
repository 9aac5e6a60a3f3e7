//! The state directory: per-certificate journal, pending work that survives restarts, and the
//! versioned generations the web server reads through one `current` symlink.
//!
//! ```text
//! STATE/certs/NAME/state.json        journal (atomic JSON)
//! STATE/certs/NAME/pending.key       the new key of an in-flight re-issue (0600)
//! STATE/certs/NAME/pending.pem       the issued chain, once downloaded (so a crash never re-orders)
//! STATE/live/NAME/gen-N/{key.pem,cert.pem,chain.pem,fullchain.pem}
//! STATE/live/NAME/current -> gen-N   the single commit point of an install
//! ```
//!
//! This module does file work only; what to do and in which order is the executor's job.

mod journal;
mod lock;
mod perms;
#[cfg(test)]
mod powerloss;
mod quarantine;

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Certificate;
use crate::error::{Context, Error, Result};
pub(crate) use crate::files as fsutil;
pub(crate) use crate::files::{nofollow, trust};
use crate::keys::{Chain, SecretPem};
pub(crate) use fsutil::Perms;
pub(crate) use journal::{
    Ari, CompromiseWork, Flip, FlipPhase, InstalledIssuer, InstalledProfile, IssuerInUse, Journal,
    Outcome, OutcomeKind, Pending, PostActions, Refresh, Revoked,
};
pub(crate) use lock::Lock;
pub(crate) use quarantine::{FlagId, MAX_LIST_BYTES, parse_digests};

/// Journal and file caps: a journal is a few hundred bytes.
const MAX_JOURNAL_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub(crate) struct Store {
    root: PathBuf,
}

/// The files of one generation.
#[derive(Debug)]
pub(crate) struct GenFiles {
    pub(crate) dir: PathBuf,
}

impl GenFiles {
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub(crate) fn fullchain(&self) -> PathBuf {
        self.dir.join("fullchain.pem")
    }
    pub(crate) fn leaf(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub(crate) fn chain(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }
    /// Key, leaf and chain in one file (`bundle_file`), with the key's access.
    pub(crate) fn bundle(&self) -> PathBuf {
        self.dir.join(BUNDLE)
    }
}

/// The name of a generation's bundle (key + leaf + chain).
pub(crate) const BUNDLE: &str = "bundle.pem";

impl Store {
    /// Open (and create, 0711: traversable so a configured group can reach its key, not
    /// listable) the state directory.
    pub(crate) fn open(root: &Path) -> Result<Store> {
        fsutil::ensure_dir(root, 0o711)?;
        trust::require_trusted_dir(root, "the state directory")?;
        fsutil::ensure_dir(&root.join("certs"), 0o700)?;
        fsutil::ensure_dir(&root.join("live"), 0o711)?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// A view of an existing state directory that creates nothing (for read-only looks:
    /// `check`, `status`, the daemon's evaluation of thousands of certificates).
    pub(crate) fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A private directory for an issuer's own state (ACME account, local CA).
    pub(crate) fn issuer_dir(&self, kind: &str, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(kind).join(name);
        fsutil::ensure_dir(&self.root.join(kind), 0o700)?;
        fsutil::ensure_dir(&dir, 0o700)?;
        Ok(dir)
    }

    fn cert_state_dir(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(name)
    }

    pub(crate) fn live_dir(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }

    pub(crate) fn current_link(&self, name: &str) -> PathBuf {
        self.live_dir(name).join("current")
    }

    pub(crate) fn generation(&self, name: &str, number: u64) -> GenFiles {
        GenFiles {
            dir: self.live_dir(name).join(format!("gen-{number}")),
        }
    }

    pub(crate) fn journal(&self, name: &str) -> Result<Journal> {
        let path = self.cert_state_dir(name).join("state.json");
        match fsutil::read_capped(&path, MAX_JOURNAL_BYTES)? {
            None => Ok(Journal {
                schema: 1,
                ..Journal::default()
            }),
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("failed to read journal {:?}", path.display().to_string())
            }),
        }
    }

    pub(crate) fn save_journal(&self, name: &str, journal: &Journal) -> Result<()> {
        let dir = self.cert_state_dir(name);
        fsutil::ensure_dir(&dir, 0o700)?;
        let mut j = journal.clone();
        j.schema = 1;
        let data = serde_json::to_vec_pretty(&j).context("failed to encode journal")?;
        fsutil::replace_file(&dir.join("state.json"), &data, Perms::mode(0o600))
    }

    /// Persist the key of a new re-issue before anything is sent anywhere.
    pub(crate) fn save_pending_key(&self, name: &str, key: &SecretPem) -> Result<()> {
        let dir = self.cert_state_dir(name);
        fsutil::ensure_dir(&dir, 0o700)?;
        fsutil::replace_file(&dir.join("pending.key"), key.as_bytes(), Perms::mode(0o600))
    }

    pub(crate) fn pending_key(&self, name: &str) -> Result<Option<SecretPem>> {
        let path = self.cert_state_dir(name).join("pending.key");
        Ok(fsutil::read_capped(&path, crate::keys::MAX_PEM_BYTES)?
            .map(|b| SecretPem::new(String::from_utf8_lossy(&b).into_owned())))
    }

    pub(crate) fn save_pending_chain(&self, name: &str, chain: &Chain) -> Result<()> {
        let path = self.cert_state_dir(name).join("pending.pem");
        fsutil::replace_file(&path, chain.to_pem().as_bytes(), Perms::mode(0o600))
    }

    pub(crate) fn pending_chain(&self, name: &str) -> Result<Option<Chain>> {
        let path = self.cert_state_dir(name).join("pending.pem");
        match fsutil::read_capped(&path, crate::keys::MAX_PEM_BYTES)? {
            None => Ok(None),
            Some(b) => Chain::from_pem(&b)
                .map(Some)
                .map_err(|e| Error::msg(format!("failed to read saved chain: {e}"))),
        }
    }

    pub(crate) fn clear_pending(&self, name: &str) -> Result<()> {
        let dir = self.cert_state_dir(name);
        if !dir.is_dir() {
            return Ok(());
        }
        for f in ["pending.key", "pending.pem"] {
            match fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(format!("failed to remove {f}")),
            }
        }
        fsutil::fsync_dir(&dir)
    }

    /// Which generation `current` points at, read from the symlink itself.
    pub(crate) fn current_generation(&self, name: &str) -> Option<u64> {
        let target = fs::read_link(self.current_link(name)).ok()?;
        target
            .file_name()?
            .to_str()?
            .strip_prefix("gen-")?
            .parse()
            .ok()
    }

    /// Write a complete generation under a staging name, then publish it as `gen-N` with a
    /// no-replace rename. Nothing the server reads changes.
    pub(crate) fn publish_generation(
        &self,
        cert: &Certificate,
        number: u64,
        files: &GenerationContent,
    ) -> Result<GenFiles> {
        let live = self.live_dir(&cert.name);
        fsutil::ensure_dir(&live, 0o711)?;
        let staging = live.join(format!(".staging-{number}"));
        if staging.exists() {
            fs::remove_dir_all(&staging).context("failed to clear old staging directory")?;
        }
        fs::create_dir(&staging).context("failed to create staging directory")?;
        fsutil::trace::record(fsutil::trace::Op::Mkdir(staging.clone()));
        fs::set_permissions(
            &staging,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .context("failed to set staging mode")?;
        let (uid, gid) = fsutil::ids(cert.owner.as_deref(), cert.group.as_deref())?;
        let key_perms = files.key_perms.unwrap_or(Perms {
            mode: cert.key_mode,
            uid,
            gid,
        });
        let cert_perms = Perms {
            mode: cert.cert_mode,
            uid,
            gid,
        };
        let g = GenFiles {
            dir: staging.clone(),
        };
        let result = (|| {
            if let Some(key) = &files.key {
                fsutil::create_new(&g.key(), key, key_perms)?;
            }
            if let Some(fullchain) = &files.fullchain {
                fsutil::create_new(&g.fullchain(), fullchain, cert_perms)?;
            }
            if let Some(leaf) = &files.leaf {
                fsutil::create_new(&g.leaf(), leaf, cert_perms)?;
            }
            if let Some(chain) = &files.chain {
                fsutil::create_new(&g.chain(), chain, cert_perms)?;
            }
            // The bundle is made from the key and the full chain, never taken from elsewhere.
            if let (Some(_), Some(key), Some(fullchain)) =
                (&cert.bundle_file, &files.key, &files.fullchain)
            {
                let mut bundle = zeroize::Zeroizing::new(key.to_vec());
                if !bundle.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
                bundle.extend_from_slice(fullchain);
                fsutil::create_new(&g.bundle(), &bundle, key_perms)?;
            }
            if files.adopted {
                fsutil::create_new(
                    &staging.join(perms::ADOPTED_MARKER),
                    b"",
                    Perms::mode(0o600),
                )?;
            }
            fsutil::fsync_dir(&staging)?;
            crate::failpoint!("before-publish");
            let dest = self.generation(&cert.name, number);
            fsutil::trace::record(fsutil::trace::Op::Rename(staging.clone(), dest.dir.clone()));
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staging,
                nix::fcntl::AT_FDCWD,
                &dest.dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .with_context(|| format!("failed to publish generation {number}"))?;
            fsutil::fsync_dir(&live)?;
            Ok(dest)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Point `current` at `gen-N` in one atomic rename: the commit point of an install.
    pub(crate) fn flip(&self, name: &str, number: u64) -> Result<()> {
        let target = PathBuf::from(format!("gen-{number}"));
        fsutil::replace_symlink(&self.current_link(name), &target)
    }

    /// Remove `current` (used only when rolling back an adoption that had nothing before).
    pub(crate) fn unlink_current(&self, name: &str) -> Result<()> {
        match fs::remove_file(self.current_link(name)) {
            Ok(()) => fsutil::fsync_dir(&self.live_dir(name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("failed to remove current link"),
        }
    }

    /// The paths the web server reads, and where each must point inside `current/`.
    pub(crate) fn output_links(&self, cert: &Certificate) -> Vec<(PathBuf, PathBuf)> {
        let cur = self.current_link(&cert.name);
        let mut links = vec![
            (cert.cert_file.clone(), cur.join("fullchain.pem")),
            (cert.key_file.clone(), cur.join("key.pem")),
        ];
        if let Some(c) = &cert.chain_file {
            links.push((c.clone(), cur.join("chain.pem")));
        }
        if let Some(l) = &cert.leaf_file {
            links.push((l.clone(), cur.join("cert.pem")));
        }
        if let Some(b) = &cert.bundle_file {
            links.push((b.clone(), cur.join(BUNDLE)));
        }
        links
    }

    /// Replace each configured path with a symlink into `current/`. Content is unchanged at
    /// every instant when `current` already holds copies of the files (adoption).
    ///
    /// The paths are reached without following a symlink root does not own (a user who can
    /// write a directory on the way cannot redirect root's rename), and only a symlink, a
    /// regular file (kept by adoption first) or nothing is ever replaced: a directory, device,
    /// FIFO or socket at a configured path is an error, and stays as it is.
    pub(crate) fn link_outputs(&self, cert: &Certificate) -> Result<()> {
        use nix::fcntl::{AtFlags, readlinkat};
        use nix::sys::stat::fstatat;
        for (path, target) in self.output_links(cert) {
            let shown = path.display().to_string();
            if let Some(parent) = path.parent()
                && !parent.is_dir()
            {
                return Err(Error::msg(format!(
                    "failed to install {shown:?}: directory {:?} does not exist",
                    parent.display().to_string()
                ))
                .with_hint(
                    "create the directory, or point cert_file/key_file at an existing one",
                ));
            }
            let parent = nofollow::parent(&path)
                .map_err(|e| e.context(format!("failed to install {shown:?}")))?;
            match fstatat(
                &parent.dir,
                parent.name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if nofollow::kind_name(&st) == "symlink" => {
                    if readlinkat(&parent.dir, parent.name.as_os_str())
                        .is_ok_and(|t| Path::new(&t) == target)
                    {
                        continue;
                    }
                }
                Ok(st) if nofollow::kind_name(&st) == "regular file" => {}
                Ok(st) => {
                    return Err(Error::msg(format!(
                        "refusing to replace {shown:?}: it is a {}, not a certificate or key file",
                        nofollow::kind_name(&st)
                    ))
                    .with_hint(
                        "point cert_file/key_file (and chain_file/leaf_file) at paths that hold the certificate and key, or at paths that do not exist yet",
                    ));
                }
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(Error::msg(format!(
                        "failed to install {shown:?}: {}",
                        std::io::Error::from(e)
                    )));
                }
            }
            fsutil::replace_symlink_at(&parent, &path, &target)?;
        }
        Ok(())
    }

    /// Keep a file certagent is about to replace but cannot adopt, byte for byte, in
    /// `STATE/kept/NAME/` (root only, never pruned). Returns where it went.
    pub(crate) fn keep_verbatim(&self, name: &str, role: &str, bytes: &[u8]) -> Result<PathBuf> {
        let kept = self.root.join("kept");
        fsutil::ensure_dir(&kept, 0o700)?;
        let dir = kept.join(name);
        fsutil::ensure_dir(&dir, 0o700)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = dir.join(format!("{stamp}-{role}"));
        fsutil::create_new(&path, bytes, Perms::mode(0o600))?;
        fsutil::fsync_dir(&dir)?;
        Ok(path)
    }

    /// Remove staging leftovers of a crashed run (never referenced, so always safe).
    pub(crate) fn remove_staging(&self, name: &str) -> Result<usize> {
        let live = self.live_dir(name);
        let mut removed = 0;
        let Ok(entries) = fs::read_dir(&live) else {
            return Ok(0);
        };
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".staging-") || n.ends_with(".certagent-tmp") {
                let p = e.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.with_context(|| {
                    format!("failed to remove leftover {:?}", p.display().to_string())
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Remove one generation that was published but never flipped to (a vetoed install).
    pub(crate) fn remove_generation(&self, name: &str, number: u64) -> Result<()> {
        let dir = self.generation(name, number).dir;
        match fs::remove_dir_all(&dir) {
            Ok(()) => fsutil::fsync_dir(&self.live_dir(name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("failed to remove generation {number}")),
        }
    }

    /// Delete old generations: keep the newest `keep` besides every generation in `protect`
    /// (current, previous, whatever is being served).
    pub(crate) fn gc(&self, name: &str, keep: usize, protect: &[u64]) -> Result<Vec<u64>> {
        let live = self.live_dir(name);
        let Ok(entries) = fs::read_dir(&live) else {
            return Ok(Vec::new());
        };
        let mut gens: Vec<u64> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("gen-")?.parse().ok())
            .collect();
        gens.sort_unstable_by(|a, b| b.cmp(a));
        let mut removed = Vec::new();
        for g in gens.into_iter().skip(keep) {
            if protect.contains(&g) {
                continue;
            }
            fs::remove_dir_all(self.generation(name, g).dir)
                .with_context(|| format!("failed to remove generation {g}"))?;
            removed.push(g);
        }
        if !removed.is_empty() {
            fsutil::fsync_dir(&live)?;
        }
        Ok(removed)
    }
}

/// What goes into a generation directory. `None` fields are absent files (adoption of a
/// half-broken setup keeps exactly what was there).
#[derive(Default)]
pub(crate) struct GenerationContent {
    pub(crate) key: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The key's owner and mode when not the configured ones (an adopted key keeps its own).
    pub(crate) key_perms: Option<Perms>,
    /// Files found at the configured paths, not made by certagent: their access is only ever
    /// narrowed (`perms`).
    pub(crate) adopted: bool,
    pub(crate) fullchain: Option<Vec<u8>>,
    pub(crate) leaf: Option<Vec<u8>>,
    pub(crate) chain: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::core::KeySpec;
    use crate::core::{CertName, Span};

    fn cert(dir: &Path) -> Certificate {
        Certificate {
            name: "site".into(),
            names: vec!["a.test".parse::<CertName>().unwrap()],
            issuer: "internal".into(),
            issuers: vec!["internal".into()],
            failover_after: crate::core::Span::secs(3_600),
            server: None,
            key_type: KeySpec::EcdsaP256,
            cert_file: dir.join("site.pem"),
            key_file: dir.join("site.key"),
            chain_file: None,
            leaf_file: None,
            bundle_file: None,
            renew_before: Some(Span::days(1)),
            owner: None,
            group: None,
            key_mode: 0o600,
            cert_mode: 0o644,
            revoke_first: false,
            reissue_on_issuer_change: false,
            profile: Default::default(),
            shared: false,
            pre_install: None,
            post_install: None,
            hook_timeout: Span::secs(60),
        }
    }

    #[test]
    fn generations_publish_flip_and_gc() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).unwrap();
        let c = cert(tmp.path());
        for number in 0..5u64 {
            let content = GenerationContent {
                key: Some(zeroize::Zeroizing::new(format!("key{number}").into_bytes())),
                fullchain: Some(format!("chain{number}").into_bytes()),
                ..Default::default()
            };
            let g = store.publish_generation(&c, number, &content).unwrap();
            assert_eq!(
                fs::metadata(g.key()).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(g.fullchain()).unwrap().permissions().mode() & 0o777,
                0o644
            );
            store.flip("site", number).unwrap();
            assert_eq!(store.current_generation("site"), Some(number));
        }
        // publishing over an existing generation is refused, never merged
        let err = store
            .publish_generation(&c, 4, &GenerationContent::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to publish generation 4"),
            "{err}"
        );
        store.link_outputs(&c).unwrap();
        assert_eq!(fs::read(&c.key_file).unwrap(), b"key4");
        assert_eq!(fs::read(&c.cert_file).unwrap(), b"chain4");
        store.flip("site", 1).unwrap();
        assert_eq!(fs::read(&c.key_file).unwrap(), b"key1");
        let removed = store.gc("site", 2, &[1]).unwrap();
        assert_eq!(removed, vec![2, 0]);
        assert_eq!(fs::read(&c.key_file).unwrap(), b"key1");
    }

    #[test]
    fn generation_files_get_the_configured_group_and_modes() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).unwrap();
        let mut c = cert(tmp.path());
        c.group = Some("daemon".into());
        c.key_mode = 0o640;
        c.cert_mode = 0o444;
        let content = GenerationContent {
            key: Some(zeroize::Zeroizing::new(b"k".to_vec())),
            fullchain: Some(b"c".to_vec()),
            ..Default::default()
        };
        let g = store.publish_generation(&c, 0, &content).unwrap();
        let daemon = nix::unistd::Group::from_name("daemon")
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        let key = fs::metadata(g.key()).unwrap();
        assert_eq!(
            (key.mode() & 0o777, key.gid(), key.uid()),
            (0o640, daemon, 0)
        );
        let chain = fs::metadata(g.fullchain()).unwrap();
        assert_eq!((chain.mode() & 0o777, chain.gid()), (0o444, daemon));
        c.group = Some("no-such-group-here".into());
        let err = store.publish_generation(&c, 1, &content).unwrap_err();
        assert_eq!(err.to_string(), "unknown group \"no-such-group-here\"");
    }

    #[test]
    fn journal_round_trips_and_staging_is_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).unwrap();
        let mut j = store.journal("x").unwrap();
        assert!(j.pending.is_none());
        j.current = Some(3);
        j.next_generation = 4;
        store.save_journal("x", &j).unwrap();
        assert_eq!(store.journal("x").unwrap().current, Some(3));
        fs::create_dir_all(store.live_dir("x").join(".staging-9")).unwrap();
        assert_eq!(store.remove_staging("x").unwrap(), 1);
        assert_eq!(store.remove_staging("x").unwrap(), 0);
    }

    #[test]
    fn reading_refuses_fifos_and_oversized_files() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = fsutil::read_capped(&fifo, 1024).unwrap_err();
        assert!(err.to_string().ends_with("not a regular file"), "{err}");
        let big = tmp.path().join("big");
        fs::write(&big, vec![b'x'; 2048]).unwrap();
        let err = fsutil::read_capped(&big, 1024).unwrap_err();
        assert!(err.to_string().ends_with("larger than 1 KiB"), "{err}");
        assert!(
            fsutil::read_capped(&tmp.path().join("none"), 10)
                .unwrap()
                .is_none()
        );
    }
}
