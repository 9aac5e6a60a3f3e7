//! Walking a configured path without trusting what an unprivileged user planted in it.
//!
//! certagent runs as root and the paths it writes (`cert_file`, `key_file`, …) may sit in a
//! directory another user can write (the certificate's `owner`, say). Such a user can replace
//! the key with a symlink to a root-only key, or a directory on the way with a symlink to
//! `/etc`, and wait for root to read or replace "its" file. So every component is opened
//! relative to the directory before it (`openat`, never a path string twice), and a symlink is
//! followed only when root owns it: a user can create symlinks only owned by themselves. What
//! the walk returns is a descriptor, so a swap after the check changes nothing.
//!
//! This module decides nothing about content; `Store::link_outputs` and the executor's
//! adoption do.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::error::{Error, Result};

/// Symlinks followed in one walk, as the kernel's own limit.
const MAX_LINKS: u32 = 40;

/// What sits at a configured path's last component.
#[derive(Debug)]
pub(crate) enum Entry {
    Missing,
    /// A symlink certagent must not follow: a user other than root owns it.
    UntrustedLink {
        uid: u32,
    },
    /// A regular file, open for reading, with its metadata (taken from the descriptor).
    File {
        file: File,
        stat: FileStat,
    },
    /// Anything else: a directory, device, FIFO or socket.
    Other {
        kind: &'static str,
    },
}

/// The directory holding a configured path's last component, and that component's name.
pub(crate) struct Parent {
    pub(crate) dir: OwnedFd,
    pub(crate) name: OsString,
}

/// Open the directory that holds `path`'s last component, following only symlinks owned by
/// root on the way.
pub(crate) fn parent(path: &Path) -> Result<Parent> {
    let mut walk = Walk::new(path)?;
    let name = walk.split_last(path)?;
    walk.finish_dirs(path)?;
    Ok(Parent {
        dir: walk.into_dir()?,
        name,
    })
}

/// What `path` holds, following symlinks (at the end too) only when root owns them, and
/// whether the path itself is such a link (replacing it then loses nothing).
pub(crate) fn entry(path: &Path) -> Result<(Entry, bool)> {
    let mut walk = Walk::new(path)?;
    let mut name = walk.split_last(path)?;
    let mut via_link = false;
    let found = loop {
        walk.finish_dirs(path)?;
        let dir = walk.top();
        let stat = match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::ENOENT) => break Entry::Missing,
            Err(e) => return Err(io_error(path, e)),
        };
        match kind(&stat) {
            SFlag::S_IFLNK => {
                let Some(target) = walk.follow(dir_dup(dir, path)?, &name, path)? else {
                    break Entry::UntrustedLink { uid: stat.st_uid };
                };
                via_link = true;
                let mut target = target;
                name = match target.pop_back() {
                    Some(last) => last,
                    None => break Entry::Other { kind: "directory" },
                };
                walk.queue = target;
            }
            SFlag::S_IFREG => break open_regular(dir, &name, path)?,
            _ => {
                break Entry::Other {
                    kind: kind_name(&stat),
                };
            }
        }
    };
    Ok((found, via_link))
}

/// The regular file `name` in `dir`, opened without following a link; `Missing` or `Other`
/// when it was removed or replaced since it was looked at.
fn open_regular(dir: &OwnedFd, name: &OsString, path: &Path) -> Result<Entry> {
    let fd = match openat(
        dir,
        name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(io_error(path, e)),
    };
    let stat = fstat(&fd).map_err(|e| io_error(path, e))?;
    if kind(&stat) != SFlag::S_IFREG {
        return Ok(Entry::Other {
            kind: kind_name(&stat),
        });
    }
    Ok(Entry::File {
        file: File::from(fd),
        stat,
    })
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// How an entry's type reads in a message.
pub(crate) fn kind_name(stat: &FileStat) -> &'static str {
    match kind(stat) {
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFLNK => "symlink",
        _ => "regular file",
    }
}

struct Walk {
    /// The directories walked so far; the first is `/`. `..` pops one.
    stack: Vec<OwnedFd>,
    /// Components still to walk.
    queue: VecDeque<OsString>,
    links: u32,
}

impl Walk {
    fn new(path: &Path) -> Result<Walk> {
        if !path.is_absolute() {
            return Err(Error::msg(format!(
                "{:?} is not an absolute path",
                path.display().to_string()
            )));
        }
        let root = openat(
            AT_FDCWD,
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error(path, e))?;
        Ok(Walk {
            stack: vec![root],
            queue: components(path),
            links: 0,
        })
    }

    fn top(&self) -> &OwnedFd {
        // The stack starts with `/` and `..` never pops it.
        &self.stack[self.stack.len() - 1]
    }

    fn split_last(&mut self, path: &Path) -> Result<OsString> {
        self.queue
            .pop_back()
            .ok_or_else(|| Error::msg(format!("{:?} names no file", path.display().to_string())))
    }

    /// Walk every queued component as a directory.
    fn finish_dirs(&mut self, path: &Path) -> Result<()> {
        while let Some(c) = self.queue.pop_front() {
            if c == "." {
                continue;
            }
            if c == ".." {
                if self.stack.len() > 1 {
                    self.stack.pop();
                }
                continue;
            }
            let dir = self.top();
            let stat = fstatat(dir, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(path, e))?;
            match kind(&stat) {
                SFlag::S_IFDIR => {
                    let fd = openat(
                        dir,
                        c.as_os_str(),
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_error(path, e))?;
                    self.stack.push(fd);
                }
                SFlag::S_IFLNK => self.queue_link(&c, stat.st_uid, path)?,
                _ => {
                    return Err(Error::msg(format!(
                        "refusing the path {:?}: {:?} on the way is a {}, not a directory",
                        path.display().to_string(),
                        c.to_string_lossy(),
                        kind_name(&stat)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Queue the target of the symlink `name` on the way, refused unless root owns it.
    fn queue_link(&mut self, name: &OsString, uid: u32, path: &Path) -> Result<()> {
        let dir = dir_dup(self.top(), path)?;
        match self.follow(dir, name, path)? {
            Some(mut target) => {
                while let Some(t) = target.pop_back() {
                    self.queue.push_front(t);
                }
                Ok(())
            }
            None => Err(Error::msg(format!(
                "refusing the path {:?}: {:?} on the way is a symlink owned by uid {}",
                path.display().to_string(),
                name.to_string_lossy(),
                uid
            ))
            .with_hint(
                "certagent follows only symlinks owned by root; replace it with a directory, or configure the path it points to",
            )),
        }
    }

    /// The target of the symlink `name` in `dir` as components, if root owns the link; an
    /// absolute target restarts the walk at `/`. The link is opened itself (`O_PATH |
    /// O_NOFOLLOW`), so its owner and its target are read from the same inode.
    fn follow(
        &mut self,
        dir: OwnedFd,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<VecDeque<OsString>>> {
        let link = openat(
            &dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error(path, e))?;
        let stat = fstat(&link).map_err(|e| io_error(path, e))?;
        if stat.st_uid != 0 {
            return Ok(None);
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(io_error(path, Errno::ELOOP));
        }
        let target = readlinkat(&link, "").map_err(|e| io_error(path, e))?;
        let target = Path::new(&target);
        if target.is_absolute() {
            self.stack.truncate(1);
        }
        Ok(Some(components(target)))
    }

    fn into_dir(mut self) -> Result<OwnedFd> {
        // Never empty: see `top`.
        self.stack
            .pop()
            .ok_or_else(|| Error::msg("empty directory stack"))
    }
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn dir_dup(dir: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    dir.try_clone().map_err(|e| {
        Error::msg(format!(
            "failed to open {:?}: {e}",
            path.display().to_string()
        ))
    })
}

fn io_error(path: &Path, e: Errno) -> Error {
    Error::msg(format!(
        "failed to open {:?}: {}",
        path.display().to_string(),
        std::io::Error::from(e)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read((e, _): (Entry, bool)) -> String {
        match e {
            Entry::File { mut file, .. } => {
                let mut s = String::new();
                file.read_to_string(&mut s).unwrap();
                s
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn root_owned_links_are_followed_at_the_end_and_on_the_way() {
        // Tests run as root: every link made here is root's.
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("key.pem"), "KEY").unwrap();
        symlink("real", dir.path().join("via")).unwrap();
        symlink("../real/key.pem", real.join("alias")).unwrap();
        assert_eq!(read(entry(&dir.path().join("via/key.pem")).unwrap()), "KEY");
        assert_eq!(read(entry(&dir.path().join("via/alias")).unwrap()), "KEY");
        assert!(matches!(
            entry(&dir.path().join("via/none")).unwrap(),
            (Entry::Missing, false)
        ));
        assert!(matches!(
            entry(&dir.path().join("via/alias")).unwrap(),
            (Entry::File { .. }, true)
        ));
        assert!(matches!(
            entry(dir.path()).unwrap(),
            (Entry::Other { kind: "directory" }, false)
        ));
        assert!(matches!(
            entry(Path::new("/dev/null")).unwrap(),
            (
                Entry::Other {
                    kind: "character device"
                },
                false
            )
        ));
        let p = parent(&dir.path().join("via/anything")).unwrap();
        assert_eq!(p.name, "anything");
        let loops = dir.path().join("loop");
        symlink("loop", &loops).unwrap();
        let err = entry(&loops).unwrap_err().to_string();
        assert!(err.contains("Too many levels of symbolic links"), "{err}");
    }
}
