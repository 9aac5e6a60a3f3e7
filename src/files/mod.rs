//! File primitives with the crash-safety recipe: create with the final mode and `O_EXCL |
//! O_NOFOLLOW`, write, fsync, rename, fsync the directory. Nothing here follows a symlink it
//! did not create. Below the store and the config, which both use it: `nofollow` walks a
//! configured path trusting only root's links, `trust` says whether a directory may hold root's
//! files.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::error::{Context, Result};

pub(crate) mod nofollow;
pub(crate) mod trust;

/// Owner and mode a written file gets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Perms {
    pub(crate) mode: u32,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
}

impl Perms {
    pub(crate) const fn mode(mode: u32) -> Perms {
        Perms {
            mode,
            uid: None,
            gid: None,
        }
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    trace::record(trace::Op::FsyncDir(dir.to_path_buf()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("failed to sync directory {:?}", dir.display().to_string()))
}

/// Create `path` (which must not exist) with `perms`, write `data`, fsync. The mode is set at
/// creation, so no other user can read the file at any instant.
pub(crate) fn create_new(path: &Path, data: &[u8], perms: Perms) -> Result<()> {
    let what = || format!("failed to write {:?}", path.display().to_string());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(perms.mode)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
        .with_context(what)?;
    // The umask may have narrowed the mode; set it exactly (never wider than asked).
    f.set_permissions(fs::Permissions::from_mode(perms.mode))
        .with_context(what)?;
    if perms.uid.is_some() || perms.gid.is_some() {
        std::os::unix::fs::fchown(&f, perms.uid, perms.gid).with_context(what)?;
    }
    f.write_all(data).with_context(what)?;
    // Only tests record: elsewhere no copy of the data (a private key, say) is made.
    #[cfg(test)]
    trace::record(trace::Op::Write(path.to_path_buf(), data.to_vec()));
    f.sync_all().with_context(what)?;
    trace::record(trace::Op::FsyncFile(path.to_path_buf()));
    Ok(())
}

/// Atomically replace `path` with `data`: temp file in the same directory, fsync, rename,
/// fsync the directory. Readers see the old or the new content, never a mix.
pub(crate) fn replace_file(path: &Path, data: &[u8], perms: Perms) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = temp_sibling(path);
    let _ = fs::remove_file(&tmp);
    create_new(&tmp, data, perms)?;
    trace::record(trace::Op::Rename(tmp.clone(), path.to_path_buf()));
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("failed to replace {:?}", path.display().to_string()));
    }
    fsync_dir(dir)
}

/// Atomically make `link` a symlink to `target` (replacing a file or symlink there).
pub(crate) fn replace_symlink(link: &Path, target: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(Path::new("/"));
    let tmp = temp_sibling(link);
    let _ = fs::remove_file(&tmp);
    trace::record(trace::Op::Symlink(tmp.clone(), target.to_path_buf()));
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("failed to create symlink {:?}", tmp.display().to_string()))?;
    trace::record(trace::Op::Rename(tmp.clone(), link.to_path_buf()));
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("failed to replace {:?}", link.display().to_string()));
    }
    fsync_dir(dir)
}

/// `replace_symlink` inside a directory already opened by `nofollow::parent`: the temporary
/// link and the rename happen in that directory, whatever its path names by now.
pub(crate) fn replace_symlink_at(
    parent: &nofollow::Parent,
    link: &Path,
    target: &Path,
) -> Result<()> {
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::Mode;
    use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
    let shown = || link.display().to_string();
    let tmp = format!(".{}.certagent-tmp", parent.name.to_string_lossy());
    let _ = unlinkat(&parent.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    trace::record(trace::Op::Symlink(temp_sibling(link), target.to_path_buf()));
    symlinkat(target, &parent.dir, tmp.as_str())
        .map_err(std::io::Error::from)
        .with_context(|| format!("failed to create a symlink beside {:?}", shown()))?;
    trace::record(trace::Op::Rename(temp_sibling(link), link.to_path_buf()));
    if let Err(e) = renameat(
        &parent.dir,
        tmp.as_str(),
        &parent.dir,
        parent.name.as_os_str(),
    ) {
        let _ = unlinkat(&parent.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(std::io::Error::from(e))
            .with_context(|| format!("failed to replace {:?}", shown()));
    }
    trace::record(trace::Op::FsyncDir(
        link.parent().unwrap_or(Path::new("/")).to_path_buf(),
    ));
    openat(
        &parent.dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(std::io::Error::from)
    .and_then(|d| d.sync_all())
    .with_context(|| format!("failed to sync the directory of {:?}", shown()))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.certagent-tmp"))
}

/// Open `path` for reading only if it is a regular file. `O_NONBLOCK` makes opening a FIFO
/// return at once instead of waiting for a writer (which would wedge the caller, the daemon's
/// event loop included); `fstat` on the open descriptor then refuses FIFOs, sockets, devices
/// and directories with an error that says what the path is.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    let kind = f.metadata()?.file_type();
    if kind.is_file() {
        return Ok(f);
    }
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_fifo() {
        "not a regular file (a FIFO)"
    } else if kind.is_socket() {
        "not a regular file (a socket)"
    } else if kind.is_char_device() || kind.is_block_device() {
        "not a regular file (a device)"
    } else if kind.is_dir() {
        "not a regular file (a directory)"
    } else {
        "not a regular file"
    };
    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
}

/// Read a regular file, refusing symlinks to odd places, FIFOs, devices and anything larger
/// than `cap` bytes. `Ok(None)` when it does not exist.
pub(crate) fn read_capped(path: &Path, cap: usize) -> Result<Option<Vec<u8>>> {
    let shown = path.display().to_string();
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to read {shown:?}")),
    };
    let meta = f
        .metadata()
        .with_context(|| format!("failed to read {shown:?}"))?;
    if !meta.is_file() {
        return Err(crate::error::Error::msg(format!(
            "failed to read {shown:?}: not a regular file"
        )));
    }
    if meta.len() > cap as u64 {
        return Err(crate::error::Error::msg(format!(
            "failed to read {shown:?}: larger than {} KiB",
            cap >> 10
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("failed to read {shown:?}"))?;
    if buf.len() > cap {
        return Err(crate::error::Error::msg(format!(
            "failed to read {shown:?}: larger than {} KiB",
            cap >> 10
        )));
    }
    Ok(Some(buf))
}

/// `mkdir -p` with a mode for the directories it creates. An existing directory is left as
/// it is: it is the operator's (or systemd's, `StateDirectory=`), and its mode and setgid bit
/// may be what other programs rely on; whether it is safe to use is checked at config load
/// (`store::trust`), not repaired here.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    let shown = || format!("failed to create directory {:?}", dir.display().to_string());
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(crate::error::Error::msg(format!(
            "{}: exists and is not a directory",
            shown()
        ))),
        Err(_) => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).with_context(shown)?;
            }
            match fs::DirBuilder::new().mode(mode).create(dir) {
                Ok(()) => trace::record(trace::Op::Mkdir(dir.to_path_buf())),
                // Another process made it in the meantime: theirs, not ours to chmod.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
                Err(e) => return Err(e).with_context(shown),
            }
            // The umask may have narrowed the mode: this one is ours, set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).with_context(shown)
        }
    }
}

/// Look up a user and group by name for chown.
pub(crate) fn ids(owner: Option<&str>, group: Option<&str>) -> Result<(Option<u32>, Option<u32>)> {
    use nix::unistd::{Group, User};
    let uid = match owner {
        Some(o) => Some(
            User::from_name(o)
                .ok()
                .flatten()
                .ok_or_else(|| crate::error::Error::msg(format!("unknown user {o:?}")))?
                .uid
                .as_raw(),
        ),
        None => None,
    };
    let gid = match group {
        Some(g) => Some(
            Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| crate::error::Error::msg(format!("unknown group {g:?}")))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    Ok((uid, gid))
}

/// A record of the mutating filesystem operations, in order, for the power-loss model in the
/// store's tests (`store::powerloss`, its only reader). Compiled to nothing outside tests; the
/// data of a recorded write (key files among them) is zeroized when the record is dropped.
pub(crate) mod trace {
    use std::path::PathBuf;

    #[derive(Clone, Debug, PartialEq)]
    pub(crate) enum Op {
        Mkdir(PathBuf),
        /// A new file with this content (not yet durable). Recorded in tests only.
        #[cfg_attr(not(test), allow(dead_code))]
        Write(PathBuf, Vec<u8>),
        FsyncFile(PathBuf),
        Rename(PathBuf, PathBuf),
        Symlink(PathBuf, PathBuf),
        FsyncDir(PathBuf),
    }

    impl Drop for Op {
        fn drop(&mut self) {
            if let Op::Write(_, data) = self {
                zeroize::Zeroize::zeroize(data);
            }
        }
    }

    #[cfg(test)]
    thread_local! {
        static OPS: std::cell::RefCell<Option<Vec<Op>>> = const { std::cell::RefCell::new(None) };
    }

    #[cfg(test)]
    pub(crate) fn record(op: Op) {
        OPS.with(|o| {
            if let Some(ops) = o.borrow_mut().as_mut() {
                ops.push(op);
            }
        });
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn record(_op: Op) {}

    /// Start recording on this thread.
    #[cfg(test)]
    pub(crate) fn start() {
        OPS.with(|o| *o.borrow_mut() = Some(Vec::new()));
    }

    /// Stop recording and return what was recorded.
    #[cfg(test)]
    pub(crate) fn take() -> Vec<Op> {
        OPS.with(|o| o.borrow_mut().take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn existing_directories_keep_their_mode_and_new_ones_get_exactly_the_one_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = tmp.path().join("textfile");
        fs::create_dir(&metrics).unwrap();
        fs::set_permissions(&metrics, fs::Permissions::from_mode(0o2775)).unwrap();
        ensure_dir(&metrics, 0o755).unwrap();
        assert_eq!(mode_of(&metrics), 0o2775, "setgid and group write kept");
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&state, 0o711).unwrap();
        assert_eq!(mode_of(&state), 0o755);
        let fresh = tmp.path().join("a/b/run");
        ensure_dir(&fresh, 0o700).unwrap();
        assert_eq!(mode_of(&fresh), 0o700);
    }
}
