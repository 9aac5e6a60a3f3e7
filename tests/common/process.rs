//! Process and port helpers: [`reserved_port`], [`wait_until`], the [`Child`]
//! guard, and pid-based signalling/liveness checks.
//!
//! Only processes spawned by the harness are ever signalled, always by pid.

use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Where [`reserved_port`] takes its ports: outside Linux's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), so that the kernel never gives one
/// to another socket (a `bind` to port 0, an outgoing connection), and above 10000, clear of
/// the ports services conventionally use. The larger of the two gaps around the ephemeral
/// range (20000–32767 by default, as the span is capped at 12768 ports).
fn reservable_ports() -> std::ops::Range<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("read /proc/sys/net/ipv4/ip_local_port_range");
    let mut bounds = range.split_whitespace().map(|n| n.parse::<u32>());
    let (Some(Ok(lo)), Some(Ok(hi))) = (bounds.next(), bounds.next()) else {
        panic!("unexpected ip_local_port_range {range:?}");
    };
    let below = 10_000.max(lo.saturating_sub(12_768))..lo.max(10_000);
    let above = (hi + 1)..65_536.min(hi + 1 + 12_768);
    let gap = if below.len() >= above.len() {
        below
    } else {
        above
    };
    assert!(
        gap.len() >= 1_000,
        "the ephemeral port range {lo}-{hi} leaves too few ports for the tests' servers \
         (they need 1000 outside it, above 10000): narrow net.ipv4.ip_local_port_range"
    );
    gap
}

/// A TCP and UDP port on 127.0.0.1 that no other test, in this process or any other test
/// process on the machine, is given until this process exits: for servers that are given their
/// port on a command line or in a config (nginx, Apache, Pebble, a script), which cannot be
/// handed a bound socket. (In-process servers bind `127.0.0.1:0` and keep the listener.)
///
/// Race-free where binding port 0 and dropping the listener is not: the port is outside the
/// kernel's ephemeral range (see [`reservable_ports`]), and it is reserved by an exclusive
/// `flock` on `$TMPDIR/certagent-test-ports/PORT`, held for the rest of this process's life
/// (the kernel releases it at exit, however the process ends). A port some other program
/// listens on already is skipped; only a program that binds a fixed port in the range later,
/// outside the tests, could still collide.
pub fn reserved_port() -> u16 {
    use nix::fcntl::{Flock, FlockArg};
    static HELD: std::sync::Mutex<Vec<Flock<std::fs::File>>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("certagent-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let ports = reservable_ports();
    let span = ports.end - ports.start;
    // Start at a random place so that concurrent test processes rarely contend.
    let first = rand::random_range(0..span);
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = u16::try_from(ports.start + (first + i) % span).expect("a port number");
        let path = dir.join(port.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // another test process holds it
        };
        // Not in use by anything outside the tests (the lock only keeps tests apart).
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            held.push(lock);
            return port;
        }
    }
    panic!("no free port in {ports:?}");
}

/// Polls `f` (every 25 ms) until it returns `true` or `timeout` has elapsed.
/// Returns whether `f` succeeded. `f` is always called at least once, and once
/// more after the deadline.
///
/// Only for waiting on external processes in tests.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a process with this pid exists and is not a zombie (Linux
/// `/proc/<pid>/stat`).
pub fn pid_alive(pid: u32) -> bool {
    match proc_stat(pid) {
        Some((state, _ppid)) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// State letter and parent pid of `pid`, from `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Pids of the live (non-zombie) children of `parent`, found by scanning
/// `/proc`.
pub(crate) fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, ppid)) if ppid == parent && s != 'Z'))
        .collect()
}

/// Sends `signal` (a name such as `"TERM"`, `"QUIT"`, `"HUP"`, `"KILL"`) to
/// `pid` using `kill(1)`. Returns whether `kill` reported success.
///
/// Only use this on pids the test itself started.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Guard around a spawned [`std::process::Child`]: on drop the process is
/// killed by pid (SIGKILL) and reaped.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    name: String,
}

impl Child {
    /// Spawns `cmd`; panics with `name` in the message if that fails.
    pub fn spawn(name: &str, cmd: &mut Command) -> Child {
        let inner = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {name} ({cmd:?}): {e}"));
        Child {
            inner,
            name: name.to_owned(),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// `None` while running, `Some(status)` once it has exited (and is reaped).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.inner
            .try_wait()
            .unwrap_or_else(|e| panic!("try_wait on {} failed: {e}", self.name))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// status if it did. Never panics (usable from `Drop`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.inner.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        // Never panics (also used from Drop): errors only mean that the
        // process has already exited.
        if let Ok(None) = self.inner.try_wait() {
            let _ = self.inner.kill();
        }
        let _ = self.inner.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}
