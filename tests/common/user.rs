//! [`TestUser`]: an unprivileged local user, created for one test and removed when it ends.
//!
//! The hardening tests play a hostile local user against certagent running as root, as in
//! production: the user owns files and directories it plants, and runs commands of its own.
//! Tests run as root (CI does); the user is a system account with its own group, no home and no
//! login shell, named uniquely per process and test so parallel tests never share one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Held while this process adds or removes a user, and by a test that needs /etc/passwd,
/// /etc/group and /etc/shadow unchanged for a while (the fault test comparing /etc/shadow
/// before and after certagent ran): all tests share one process, so another test's `useradd`
/// would otherwise change the file under it.
pub fn user_db_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// Creates the user (and its group). `useradd` takes a lock on /etc/passwd; tests that
    /// create users in parallel retry while another holds it.
    pub fn create() -> TestUser {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cat{}u{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut last = String::new();
        for _ in 0..100 {
            let lock = user_db_lock();
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", &name])
                .output()
                .expect("run useradd");
            if out.status.success() {
                let id = |flag: &str| -> u32 {
                    let out = Command::new("id").args([flag, &name]).output().expect("id");
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .expect("numeric id")
                };
                return TestUser {
                    uid: id("-u"),
                    gid: id("-g"),
                    name,
                };
            }
            drop(lock);
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            // Exit 10: cannot lock /etc/passwd (another test is adding or removing a user).
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("useradd {name} failed: {last}");
    }

    /// Makes `path` (file, directory or symlink itself) owned by this user and its group.
    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }

    /// Runs `argv` as this user (no supplementary groups, no capabilities).
    pub fn run(&self, argv: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .args(argv)
            .output()
            .expect("run setpriv")
    }

    /// Whether `path` (not followed) is owned by this user.
    pub fn owns(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == self.uid)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..100 {
            let status = {
                let _lock = user_db_lock();
                Command::new("userdel").arg(&self.name).output()
            };
            match status {
                Ok(out) if out.status.success() => return,
                // 6: no such user (already gone).
                Ok(out) if out.status.code() == Some(6) => return,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!("warning: could not remove test user {}", self.name);
    }
}
