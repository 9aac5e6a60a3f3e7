//! Whether a directory may hold root's files: the state, runtime and compromise-flag
//! directories are trusted only when no user but root (or the user certagent runs as) can
//! put, remove or replace anything in them or on the path to them. A user who can replace a
//! path component can swap the whole directory for one of their own; a user who can write
//! the directory can plant `lock` as a symlink or `control.sock` as their own socket.
//!
//! This only looks (`lstat`, `readlink`); it never creates, changes or follows anything
//! into a write.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Directories shared with the whole system: never a state, runtime or metrics directory of
/// certagent's own (it would create files among everyone else's, and its checks would refuse
/// or, worse, accept a directory it must not own).
const SHARED: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/dev/shm",
    "/etc",
    "/etc/ssl",
    "/etc/ssl/certs",
    "/etc/ssl/private",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/run/lock",
    "/run/shm",
    "/run/user",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/lock",
    "/var/log",
    "/var/mail",
    "/var/run",
    "/var/spool",
    "/var/tmp",
];

/// A directory certagent must not use, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Distrust {
    pub(crate) message: String,
    pub(crate) hint: String,
}

/// Symlinks followed on one path before giving up, as the kernel does (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Whether `dir` (as written, or what it resolves to) is one of the system's shared
/// directories.
pub(crate) fn is_shared_system_dir(dir: &Path) -> bool {
    let lexical: PathBuf = dir.components().collect();
    let resolved = fs::canonicalize(dir).ok();
    SHARED.iter().any(|s| {
        let s = Path::new(s);
        lexical == s || resolved.as_deref() == Some(s)
    })
}

/// `Err` when `dir` is a shared system directory; `what` names the setting in the message.
pub(crate) fn refuse_shared(dir: &Path, what: &str) -> Result<(), Distrust> {
    if !is_shared_system_dir(dir) {
        return Ok(());
    }
    Err(Distrust {
        message: format!(
            "{:?} is a shared system directory, not one of certagent's own",
            dir.display().to_string()
        ),
        hint: format!(
            "use a directory only certagent uses (certagent creates it with the modes it needs): {}",
            match what {
                "runtime_dir" => "/run/certagent",
                "compromised_dir" => "/etc/certagent/compromised",
                "metrics_file" => "/var/lib/prometheus/node-exporter/certagent.prom",
                _ => "/var/lib/certagent",
            }
        ),
    })
}

/// Whether `uid` may own what certagent trusts: root, or the user certagent runs as.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn writable_by_others(m: &Metadata) -> bool {
    m.mode() & 0o022 != 0
}

fn shown(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Check that `dir` is, or will be when certagent creates it, a directory only root can
/// change: every directory on the way to it (symlinks resolved) is owned by root, no entry on
/// the way can be replaced by another user (a directory writable by group or others is
/// accepted on the way only with the sticky bit set and a root-owned entry, as `/tmp` holds
/// a root-owned `/tmp/x`), and `dir` itself, if it exists, is owned by root and writable by
/// root alone. A missing `dir` must be created in a directory only root can write (anyone
/// else could create it first).
pub(crate) fn check_trusted_dir(dir: &Path) -> Result<(), Distrust> {
    if !dir.is_absolute() {
        return Err(Distrust {
            message: format!("{} is not an absolute path", shown(dir)),
            hint: "write the full path, starting with /".into(),
        });
    }
    let mut cur = PathBuf::from("/");
    let mut cur_meta = lstat(&cur)?;
    if !trusted_uid(cur_meta.uid()) {
        return Err(Distrust {
            message: format!("\"/\" is owned by {}, not root", owner_name(cur_meta.uid())),
            hint: hint_owner(&cur),
        });
    }
    let mut rest: VecDeque<OsString> = normal_components(dir);
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            cur.pop();
            cur_meta = lstat(&cur)?;
            continue;
        }
        let next = cur.join(&name);
        let Some(meta) = lstat_if_exists(&next)? else {
            return check_creatable(dir, &cur, &cur_meta, &next);
        };
        check_irreplaceable(&cur, &cur_meta, &next, &meta)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if follow_link(dir, &next, links, &mut rest)? {
                cur = PathBuf::from("/");
                cur_meta = lstat(&cur)?;
            }
            continue;
        }
        check_owned_dir(&next, &meta)?;
        cur = next;
        cur_meta = meta;
    }
    check_private(dir, &cur_meta)
}

/// `dir` itself is writable by root alone.
fn check_private(dir: &Path, meta: &Metadata) -> Result<(), Distrust> {
    if writable_by_others(meta) {
        return Err(Distrust {
            message: format!(
                "{} is writable by group or others (mode {:04o}): another user could plant files in it",
                shown(dir),
                meta.mode() & 0o7777
            ),
            hint: format!(
                "`chmod go-w {}`, or choose a directory only root can write",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// `lstat` of a path on the way, `None` when it does not exist.
fn lstat_if_exists(p: &Path) -> Result<Option<Metadata>, Distrust> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Distrust {
            message: format!("cannot inspect {}: {e}", shown(p)),
            hint: hint_owner(p),
        }),
    }
}

fn hint_owner(p: &Path) -> String {
    format!(
        "use a directory owned by root that only root can write, e.g. `chown root:root {0}` and `chmod go-w {0}`, or let certagent create its own",
        p.display()
    )
}

fn lstat(p: &Path) -> Result<Metadata, Distrust> {
    fs::symlink_metadata(p).map_err(|e| Distrust {
        message: format!("cannot inspect {}: {e}", shown(p)),
        hint: hint_owner(p),
    })
}

/// `next`, missing, is where the rest of `dir` would be created, inside `cur`: nobody else
/// may be able to create it there first.
fn check_creatable(
    dir: &Path,
    cur: &Path,
    cur_meta: &Metadata,
    next: &Path,
) -> Result<(), Distrust> {
    if writable_by_others(cur_meta) {
        return Err(Distrust {
            message: format!(
                "{} does not exist and would be created in {}, which is writable by group or others (mode {:04o}): another user could create it first",
                shown(next),
                shown(cur),
                cur_meta.mode() & 0o7777
            ),
            hint: format!(
                "create {} yourself, owned by root and writable by root alone, or choose a directory under one only root can write",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Who can write `cur` can rename or remove `next`, unless `cur` is sticky and `next` is
/// root's.
fn check_irreplaceable(
    cur: &Path,
    cur_meta: &Metadata,
    next: &Path,
    meta: &Metadata,
) -> Result<(), Distrust> {
    let sticky = cur_meta.mode() & 0o1000 != 0;
    if writable_by_others(cur_meta) && !(sticky && trusted_uid(meta.uid())) {
        return Err(Distrust {
            message: format!(
                "{} is in {}, which is writable by group or others (mode {:04o}): another user could replace it",
                shown(next),
                shown(cur),
                cur_meta.mode() & 0o7777
            ),
            hint: hint_owner(cur),
        });
    }
    Ok(())
}

/// Put the target of `link` (the `links`th symlink on the way to `dir`) in front of `rest`;
/// true when the target is absolute, so that the walk starts again at `/`.
fn follow_link(
    dir: &Path,
    link: &Path,
    links: usize,
    rest: &mut VecDeque<OsString>,
) -> Result<bool, Distrust> {
    let target = fs::read_link(link).map_err(|e| Distrust {
        message: format!("cannot read symlink {}: {e}", shown(link)),
        hint: hint_owner(link),
    })?;
    if links > MAX_LINKS {
        return Err(Distrust {
            message: format!("too many symlinks on the way to {}", shown(dir)),
            hint: "point the setting at the real directory".into(),
        });
    }
    for c in normal_components(&target).into_iter().rev() {
        rest.push_front(c);
    }
    Ok(target.is_absolute())
}

/// A directory on the way, `next`, is a directory and owned by root (or certagent).
fn check_owned_dir(next: &Path, meta: &Metadata) -> Result<(), Distrust> {
    if !meta.is_dir() {
        return Err(Distrust {
            message: format!("{} is not a directory", shown(next)),
            hint: format!(
                "point the setting at a directory, not at {}",
                next.display()
            ),
        });
    }
    if !trusted_uid(meta.uid()) {
        return Err(Distrust {
            message: format!(
                "{} is owned by {}, not root: its owner could replace what certagent keeps there",
                shown(next),
                owner_name(meta.uid())
            ),
            hint: hint_owner(next),
        });
    }
    Ok(())
}

/// `check_trusted_dir` as an error for the commands: `what` names the directory's role.
pub(crate) fn require_trusted_dir(dir: &Path, what: &str) -> crate::error::Result<()> {
    check_trusted_dir(dir).map_err(|d| {
        crate::error::Error::msg(format!("refusing to use {what}: {}", d.message)).with_hint(d.hint)
    })
}

/// The names along `p`, with `..` kept (a symlink's target may climb) and `.` dropped.
fn normal_components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn shared_system_directories_are_recognised_as_written_and_resolved() {
        for d in [
            "/", "/tmp", "/run", "/var/tmp", "/etc", "/var/lib", "/dev/shm", "/home",
        ] {
            assert!(is_shared_system_dir(Path::new(d)), "{d}");
        }
        assert!(is_shared_system_dir(Path::new("/tmp/")));
        assert!(is_shared_system_dir(Path::new("/tmp/./")));
        assert!(!is_shared_system_dir(Path::new("/var/lib/certagent")));
        assert!(!is_shared_system_dir(Path::new("/run/certagent")));
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("t");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(is_shared_system_dir(&link), "a symlink to /tmp is /tmp");
        let e = refuse_shared(Path::new("/run"), "runtime_dir").unwrap_err();
        assert_eq!(
            e.message,
            "\"/run\" is a shared system directory, not one of certagent's own"
        );
        assert!(e.hint.contains("/run/certagent"), "{}", e.hint);
    }

    #[test]
    fn a_root_owned_private_directory_is_trusted_and_so_is_one_to_create() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o700);
        check_trusted_dir(tmp.path()).unwrap();
        check_trusted_dir(&tmp.path().join("state/sub")).unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o755);
        check_trusted_dir(&d).unwrap();
        // A symlink to it, in a directory only root writes.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        check_trusted_dir(&link).unwrap();
        check_trusted_dir(&link.join("x")).unwrap();
    }

    #[test]
    fn a_directory_writable_by_others_is_refused_even_sticky() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o1777);
        let e = check_trusted_dir(&d).unwrap_err();
        assert!(
            e.message.ends_with(
                "is writable by group or others (mode 1777): another user could plant files in it"
            ),
            "{}",
            e.message
        );
        assert!(e.hint.starts_with("`chmod go-w "), "{}", e.hint);
        // Missing, to be created in it: anyone could create it first.
        let e = check_trusted_dir(&d.join("certagent")).unwrap_err();
        assert!(
            e.message.contains("another user could create it first"),
            "{}",
            e.message
        );
        // A root-owned directory in it is fine: the sticky bit keeps others from replacing it.
        let inner = d.join("inner");
        fs::create_dir(&inner).unwrap();
        chmod(&inner, 0o700);
        check_trusted_dir(&inner.join("state")).unwrap();
        // Group-writable without the sticky bit: its group can replace `inner`.
        chmod(&d, 0o775);
        let e = check_trusted_dir(&inner).unwrap_err();
        assert!(
            e.message.contains("another user could replace it"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused_on_the_way_and_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o755);
        // Root can give a directory to a uid nobody has; that is enough to play another user.
        std::os::unix::fs::lchown(&d, Some(4242), None).unwrap();
        let owned_by = format!(
            "{:?} is owned by uid 4242, not root",
            d.display().to_string()
        );
        let e = check_trusted_dir(&d).unwrap_err();
        assert!(e.message.starts_with(&owned_by), "{}", e.message);
        assert!(e.hint.contains("chown root:root"), "{}", e.hint);
        let e = check_trusted_dir(&d.join("sub/state")).unwrap_err();
        assert!(e.message.starts_with(&owned_by), "{}", e.message);
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, "").unwrap();
        let e = check_trusted_dir(&f.join("x")).unwrap_err();
        assert!(e.message.ends_with("is not a directory"), "{}", e.message);
    }
}
