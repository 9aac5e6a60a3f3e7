//! A private etcd cluster on loopback for the fleet tests ([`EtcdCluster`]), and a TCP
//! [`Gate`] between one client and it that can be closed and reopened to play a paused or
//! cut-off host. Members are ended by pid on drop; nothing is killed by name.
//!
//! Ports are not picked by bind-then-drop: the members are started on random ports below
//! the kernel's ephemeral range, and a cluster whose member finds its port taken is stopped
//! and started again on other ports.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::process::{Child, wait_until};

/// One etcd member: its ports, data directory, log and process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// A 3-member (or n-member) etcd cluster, data directories in a tempdir.
pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

/// A port in 20000..32000 (below Linux's ephemeral range, so no outgoing connection takes
/// it), spread by pid, time and a counter so parallel tests rarely meet.
fn random_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos() as u64;
    let mix = (u64::from(std::process::id()) * 7919 + nanos / 1000 + n * 104_729) % 12_000;
    20_000 + mix as u16
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy; starts them again on other
    /// ports if one could not bind its own.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("create a tempdir for etcd");
        for attempt in 0..8 {
            let mut members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: random_port(),
                    peer_port: random_port(),
                    log: dir.path().join(format!("a{attempt}-m{i}.log")),
                    child: None,
                })
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                let data = dir.path().join(format!("a{attempt}-{}", m.name));
                m.child = Some(spawn_member(m, &data, &initial));
            }
            if wait_healthy(&mut members) {
                return EtcdCluster { _dir: dir, members };
            }
            let logs = logs(&members);
            for m in &mut members {
                if let Some(mut c) = m.child.take() {
                    c.kill();
                }
            }
            assert!(
                logs.contains("address already in use"),
                "etcd did not start:\n{logs}"
            );
        }
        panic!("etcd: no free ports after 8 attempts")
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Runs `etcdctl` (API v3) against the members still running.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.members, args)
    }

    /// Compacts the history up to the current revision (what an operator's
    /// `--auto-compaction` does), and returns that revision.
    pub fn compact_now(&self) -> i64 {
        let out = self.etcdctl(&["put", "/compaction-marker", "x", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("etcdctl put -w json prints JSON");
        let revision = doc["header"]["revision"]
            .as_i64()
            .expect("a header revision in etcdctl output");
        let out = self.etcdctl(&["compact", &revision.to_string(), "--physical"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        revision
    }

    /// SIGKILLs member `i` (by pid) and waits until it is gone.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// Waits until the members still running answer `endpoint health` (which needs a
    /// leader: after a member was killed, the survivors have elected one).
    pub fn wait_leader(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.etcdctl(&["endpoint", "health"]).status.success()
        })
    }

    /// Stops every member (by pid).
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs `etcdctl` (API v3) against the members still running.
fn etcdctl(members: &[Member], args: &[&str]) -> Output {
    let endpoints: Vec<String> = members
        .iter()
        .filter(|m| m.child.is_some())
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// Waits until every member answers `endpoint health`; false if one exits or 30 s pass.
fn wait_healthy(members: &mut [Member]) -> bool {
    let mut exited = false;
    wait_until(Duration::from_secs(30), || {
        exited = members
            .iter_mut()
            .any(|m| m.child.as_mut().is_some_and(|c| !c.is_running()));
        exited || etcdctl(members, &["endpoint", "health"]).status.success()
    }) && !exited
}

fn logs(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            format!("--- {} ---\n{}", m.name, tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn spawn_member(m: &Member, data: &Path, initial: &str) -> Child {
    let log = std::fs::File::create(&m.log).expect("create an etcd log file");
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    Child::spawn(
        &format!("etcd {}", m.name),
        Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=certagent-test")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the etcd log file handle"))
            .stderr(log),
    )
}

/// A TCP relay to one etcd member that can be closed (bytes stop moving both ways, as
/// with a SIGSTOPped or partitioned host) and opened again.
pub struct Gate {
    pub port: u16,
    closed: Arc<AtomicBool>,
}

impl Gate {
    /// Listens on a kernel-chosen loopback port (kept bound: no race) and relays to `target`.
    pub fn new(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the gate");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                relay(
                    inbound.try_clone().expect("clone the inbound stream"),
                    outbound.try_clone().expect("clone the outbound stream"),
                    flag.clone(),
                );
                relay(outbound, inbound, flag.clone());
            }
        });
        Gate { port, closed }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding every chunk while the gate is closed.
fn relay(mut from: TcpStream, mut to: TcpStream, closed: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while closed.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while closed.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
