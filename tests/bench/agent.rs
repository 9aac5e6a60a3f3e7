//! What both benchmarks need around certagent's daemon: the process with its stderr read line
//! by line and timestamped on arrival (certagent's lines carry no timestamps), the /proc
//! readings taken of it, and median/min/max. Included with `#[path]` by `daemon.rs` and
//! `peers.rs`; each uses part of it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_certagent");

/// Log lines counted (with the arrival time of each occurrence) as they arrive.
#[derive(Clone, Copy, Debug)]
pub enum Marker {
    Ready,
    Reissuing,
    Flipped,
    Installed,
    Failed,
}

const MARKERS: [(Marker, &str); 5] = [
    (Marker::Ready, "certagent daemon ready"),
    (Marker::Reissuing, ": re-issuing cert="),
    (Marker::Flipped, "event=flipped"),
    (Marker::Installed, "event=installed"),
    (Marker::Failed, "event=failed"),
];

#[derive(Default)]
struct LogState {
    lines: Vec<(Instant, String)>,
    hits: [Vec<Instant>; MARKERS.len()],
    eof: bool,
}

#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    cv: Condvar,
}

/// `certagent --config C run` with stderr piped into a timestamping reader thread. Dropping it
/// sends SIGTERM to its pid and waits (SIGKILL by pid after 60 s).
pub struct Agent {
    child: Option<std::process::Child>,
    log: Arc<Log>,
    reader: Option<thread::JoinHandle<()>>,
    pub what: String,
    pub spawned: Instant,
}

impl Agent {
    pub fn spawn(config: &Path, what: &str) -> Agent {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Log::default());
        let log2 = log.clone();
        let reader = thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let at = Instant::now();
                        let mut s = log2.state.lock().unwrap();
                        for (i, (_, needle)) in MARKERS.iter().enumerate() {
                            if line.contains(needle) {
                                s.hits[i].push(at);
                            }
                        }
                        s.lines.push((at, line.trim_end().to_owned()));
                        drop(s);
                        log2.cv.notify_all();
                    }
                }
            }
            log2.state.lock().unwrap().eof = true;
            log2.cv.notify_all();
        });
        Agent {
            child: Some(child),
            log,
            reader: Some(reader),
            what: what.to_owned(),
            spawned,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn hits(&self, m: Marker) -> usize {
        self.log.state.lock().unwrap().hits[m as usize].len()
    }

    pub fn hit_times(&self, m: Marker) -> Vec<Instant> {
        self.log.state.lock().unwrap().hits[m as usize].clone()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let s = self.log.state.lock().unwrap();
        let from = s.lines.len().saturating_sub(n);
        s.lines[from..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first line containing `needle`, if any.
    pub fn first_line(&self, needle: &str) -> Option<String> {
        let s = self.log.state.lock().unwrap();
        s.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
    }

    /// Waits until marker `m` has been seen `n` times; returns when the n-th arrived, or
    /// `None` on timeout, on end of output, or as soon as `abort_on` has been seen at all.
    pub fn try_wait_hits(
        &self,
        m: Marker,
        n: usize,
        timeout: Duration,
        abort_on: Option<Marker>,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut s = self.log.state.lock().unwrap();
        loop {
            if let Some(&at) = s.hits[m as usize].get(n.wrapping_sub(1)) {
                return Some(at);
            }
            if s.eof || abort_on.is_some_and(|a| !s.hits[a as usize].is_empty()) {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self.log.cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Like `try_wait_hits`, aborting on a failure event; panics with the log's tail.
    pub fn wait_hits(&self, m: Marker, n: usize, timeout: Duration) -> Instant {
        self.try_wait_hits(m, n, timeout, Some(Marker::Failed))
            .unwrap_or_else(|| {
                panic!(
                    "{}: {m:?} was not logged {n} times within {timeout:?} (seen {}); last lines:\n{}",
                    self.what,
                    self.hits(m),
                    self.tail(40)
                )
            })
    }

    /// SIGTERM, wait for the exit (SIGKILL by pid after 60 s); the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.stop_within(Duration::from_secs(60))
    }

    /// SIGTERM, wait up to `grace` for the exit, then SIGKILL by pid; the exit code.
    pub fn stop_within(&mut self, grace: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        let code = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.code();
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: {} did not stop within {grace:?}: SIGKILL",
                    self.what
                );
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        code
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime and stime are fields 14 and 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Sum of the on-CPU nanoseconds of every live thread (/proc/PID/task/*/schedstat).
pub fn sched_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A `Key:   N kB` (or plain number) field of /proc/PID/status; panics when the process or
/// the field is gone (a figure of a dead process would be a wrong figure).
pub fn status_field(pid: u32, key: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
}

pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads")
}

pub fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

// ---------------------------------------------------------------------------------------------
// Statistics.

pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(samples: &[f64]) -> Stats {
    assert!(!samples.is_empty(), "no samples");
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    };
    Stats {
        median,
        min: s[0],
        max: s[s.len() - 1],
    }
}
