//! One exclusive lock shared by every certagent process (daemon, CLI, config management):
//! `flock` on `RUNTIME_DIR/lock`. Released when the process exits, however it exits.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Context, Error, Result};

pub struct Lock {
    _held: Flock<std::fs::File>,
}

impl Lock {
    /// Take the lock, waiting up to `timeout` for another holder to finish; `Error::Busy` then.
    pub async fn acquire(runtime_dir: &Path, timeout: Duration) -> Result<Lock> {
        super::fsutil::ensure_dir(runtime_dir, 0o700)?;
        let path = runtime_dir.join("lock");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                // Never through a symlink, whoever planted it (the directory is checked at
                // config load; this is the last line).
                .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC).bits())
                .open(&path)
                .with_context(|| {
                    format!("failed to open lock file {:?}", path.display().to_string())
                })
        };
        match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
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
        let file = open()?;
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
