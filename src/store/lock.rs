//! One exclusive lock shared by every certagent process (daemon, CLI, config management):
//! `flock` on `RUNTIME_DIR/lock`. Released when the process exits, however it exits.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Context, Error, Result};

pub(crate) struct Lock {
    _held: Flock<std::fs::File>,
}

impl Lock {
    /// Take the lock, waiting up to `timeout` for another holder to finish; `Error::Busy` then.
    pub(crate) async fn acquire(runtime_dir: &Path, timeout: Duration) -> Result<Lock> {
        super::fsutil::ensure_dir(runtime_dir, 0o700)?;
        // Checked at config load too; again here, now that it exists, so a directory another
        // user created or swapped in the meantime is not used.
        super::trust::require_trusted_dir(runtime_dir, "the runtime directory")?;
        let path = runtime_dir.join("lock");
        match Flock::lock(open_lock_file(&path)?, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(Lock { _held: held }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => {
                return Err(Error::msg(format!(
                    "failed to lock {:?}: {e}",
                    path.display().to_string()
                )));
            }
        }
        // Someone else holds it: block in a thread (flock has no timeout), give up after
        // `timeout`. If we give up, the thread still owns the fd and the process exits soon.
        let file = open_lock_file(&path)?;
        let waiter = tokio::task::spawn_blocking(move || {
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)
        });
        match tokio::time::timeout(timeout, waiter).await {
            Ok(Ok(Ok(held))) => Ok(Lock { _held: held }),
            Ok(Ok(Err(e))) => Err(Error::msg(format!(
                "failed to lock {:?}: {e}",
                path.display().to_string()
            ))),
            Ok(Err(e)) => Err(Error::msg(format!("failed to lock: {e}"))),
            Err(_) => Err(Error::Busy(format!(
                "another certagent process held {:?} for more than {}s",
                path.display().to_string(),
                timeout.as_secs()
            ))),
        }
    }
}

/// The lock file, created if need be, never through a symlink.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // Never through a symlink, whoever planted it (the directory is checked at
        // config load; this is the last line).
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC).bits())
        .open(path)
        .with_context(|| format!("failed to open lock file {:?}", path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runtime_dir_another_user_made_or_a_planted_lock_symlink_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        // Root can give a directory to a uid nobody has: enough to play another user who
        // created the runtime directory before certagent did.
        let theirs = tmp.path().join("run");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::lchown(&theirs, Some(4242), None).unwrap();
        let e = Lock::acquire(&theirs, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with(&format!(
                "refusing to use the runtime directory: {:?} is owned by uid 4242",
                theirs.display().to_string()
            )),
            "{e}"
        );
        assert!(!theirs.join("lock").exists());

        // Root's directory with a `lock` symlink in it (however it got there): not followed.
        let ours = tmp.path().join("ours");
        let target = tmp.path().join("chosen");
        std::fs::create_dir(&ours).unwrap();
        std::os::unix::fs::symlink(&target, ours.join("lock")).unwrap();
        let e = Lock::acquire(&ours, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("failed to open lock file"), "{e}");
        assert!(std::fs::symlink_metadata(&target).is_err());
    }
}
