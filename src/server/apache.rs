//! Apache httpd: the defaults of the Debian and RHEL layouts, the pid-file check before a
//! graceful restart, and how to tell that the children of the old generation stopped
//! accepting connections.
//!
//! Apache is the dangerous server: `apache2 -t` says "Syntax OK" for a mismatched, truncated
//! or garbage certificate/key pair, and the graceful restart that follows makes the parent
//! exit (site down). Nothing here may protect against that — the executor's pair check on
//! the staged files does, before the flip. And `apachectl -k graceful` starts an Apache that
//! is not running, so the reload here never goes through it: SIGUSR1 to a parent that was
//! checked to be alive and to be Apache, or `systemctl reload`, which refuses an inactive
//! unit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::ApacheLayout;

impl ApacheLayout {
    /// The layout of this host: Debian when an `apache2` binary exists, RHEL when only
    /// `httpd` does, Debian when neither (its commands then fail with a clear message).
    pub(crate) fn detect() -> ApacheLayout {
        Self::detect_with(|name| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(name).is_file())
        })
    }

    pub(crate) fn detect_with(installed: impl Fn(&str) -> bool) -> ApacheLayout {
        if installed("apache2") {
            ApacheLayout::Debian
        } else if installed("httpd") {
            ApacheLayout::Rhel
        } else {
            ApacheLayout::Debian
        }
    }

    /// The configuration test. Debian's `apache2ctl` reads `/etc/apache2/envvars` (the
    /// `APACHE_*` variables the config refers to), which running `apache2` directly would not.
    pub(crate) fn test_command(self) -> Vec<String> {
        match self {
            ApacheLayout::Debian => vec!["apache2ctl".into(), "-t".into()],
            ApacheLayout::Rhel => vec!["apachectl".into(), "-t".into()],
        }
    }

    /// The systemd unit.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            ApacheLayout::Debian => "apache2",
            ApacheLayout::Rhel => "httpd",
        }
    }

    /// Where the parent writes its pid by default.
    pub(crate) fn pid_file(self) -> PathBuf {
        match self {
            ApacheLayout::Debian => "/run/apache2/apache2.pid".into(),
            ApacheLayout::Rhel => "/run/httpd/httpd.pid".into(),
        }
    }
}

/// Whether `/proc/PID/exe` looks like Apache. `None` when it cannot be read (another user's
/// process without CAP_SYS_PTRACE): then the signal itself will say whether we may send it.
pub(crate) fn is_apache(pid: Pid) -> Option<(bool, PathBuf)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some((
        name.starts_with("apache2") || name.starts_with("httpd"),
        exe,
    ))
}

/// Inodes of the listening TCP sockets in the network namespace of `pid`.
fn listening_inodes(pid: Pid) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode"
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9).and_then(|i| i.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether `pid` still holds one of `listeners` open: `Some(false)` once it exited or closed
/// them, `None` when its descriptors cannot be read. Reading them takes CAP_SYS_PTRACE for
/// another user's process, which certagent's unit does not grant: the directory lists, each
/// link answers EACCES, so a denied link is "cannot tell", never "not a listener".
fn holds_listener(pid: Pid, listeners: &HashSet<u64>) -> Option<bool> {
    let entries = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    for fd in entries.flatten() {
        let target = match std::fs::read_link(fd.path()) {
            Ok(t) => t,
            // Closed since the directory was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok());
        if inode.is_some_and(|i| listeners.contains(&i)) {
            return Some(true);
        }
    }
    Some(false)
}

/// Wait until none of the children of the old generation (`old`, taken before the graceful
/// restart) can accept a connection any more. A graceful restart tells them to finish; each
/// closes its listening sockets within milliseconds and exits once its connections are done
/// (seconds, with keep-alive). From the moment they have closed the listeners, every new
/// connection reaches a child of the new generation, which has the new certificate: so
/// that, not their exit, is what is waited for. Returns `Some(false)` at the deadline, and
/// `None` when it cannot tell: the parent's listening sockets or a child's descriptors could
/// not be read (certagent not root), so the caller watches the endpoints for longer.
pub(crate) async fn wait_retired(parent: Pid, old: &[Pid], within: Duration) -> Option<bool> {
    let listeners = listening_inodes(parent);
    if listeners.is_empty() {
        return None;
    }
    let deadline = Instant::now() + within;
    loop {
        let mut unknown = false;
        let mut busy = false;
        for pid in old {
            match holds_listener(*pid, &listeners) {
                Some(true) => busy = true,
                Some(false) => {}
                None => unknown = true,
            }
        }
        if !busy {
            return if unknown { None } else { Some(true) };
        }
        if Instant::now() >= deadline {
            return Some(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The default pid file when none is configured.
pub(crate) fn default_pid_file(layout: ApacheLayout, configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| layout.pid_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_follows_the_installed_binary() {
        assert_eq!(
            ApacheLayout::detect_with(|b| b == "apache2"),
            ApacheLayout::Debian
        );
        assert_eq!(
            ApacheLayout::detect_with(|b| b == "httpd"),
            ApacheLayout::Rhel
        );
        assert_eq!(ApacheLayout::detect_with(|_| false), ApacheLayout::Debian);
        assert_eq!(ApacheLayout::Rhel.test_command(), ["apachectl", "-t"]);
        assert_eq!(ApacheLayout::Debian.test_command(), ["apache2ctl", "-t"]);
        assert_eq!(ApacheLayout::Rhel.unit(), "httpd");
        assert_eq!(
            ApacheLayout::Debian.pid_file(),
            Path::new("/run/apache2/apache2.pid")
        );
    }

    #[test]
    fn a_process_holding_a_listening_socket_is_seen_until_it_closes_it() {
        use std::os::fd::AsRawFd;
        let me = Pid::this();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode: u64 = link.to_str().unwrap()[8..]
            .trim_end_matches(']')
            .parse()
            .unwrap();
        assert!(listening_inodes(me).contains(&inode));
        let ours = HashSet::from([inode]);
        assert_eq!(holds_listener(me, &ours), Some(true));
        drop(listener);
        assert_eq!(holds_listener(me, &ours), Some(false));
        assert_eq!(
            holds_listener(Pid::from_raw(i32::MAX - 1), &ours),
            Some(false)
        );
    }

    #[test]
    fn our_own_process_is_not_apache() {
        let (apache, exe) = is_apache(Pid::this()).unwrap();
        assert!(!apache, "{exe:?}");
    }
}
