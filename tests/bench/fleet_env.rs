//! The fleet bench's hosts (included by `fleet.rs`): one `certagent run` daemon per host with
//! its own directories and config, and the fleet around them (etcd, Pebble, the hosts), with
//! the waits and readings the bench makes of it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::agent::BIN;
use super::common::etcd::EtcdCluster;
use super::common::{Pebble, PebbleOpts, cert_serial_hex};
use super::fleet_etcd::Scrape;
use super::{PREFIX, Params};

pub fn cert_name(c: usize) -> String {
    format!("c{c:03}")
}

// ---------------------------------------------------------------------------------------------
// One host: a daemon with its own directories and config.

pub struct Host {
    pub node: String,
    dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Host {
    pub fn cert_file(&self, c: usize) -> PathBuf {
        self.dir.join("ssl").join(format!("{}.pem", cert_name(c)))
    }

    pub fn key_file(&self, c: usize) -> PathBuf {
        self.dir.join("ssl").join(format!("{}.key", cert_name(c)))
    }

    /// The leaf (DER) of certificate `c`'s file, if it parses.
    pub fn leaf(&self, c: usize) -> Option<Vec<u8>> {
        let pem = std::fs::read(self.cert_file(c)).ok()?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        Some(block.contents)
    }

    pub fn serial(&self, c: usize) -> Option<String> {
        self.leaf(c).map(|der| cert_serial_hex(&der))
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("daemon log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes the config; `alt` adds a second name to certificate `alt`.
    pub fn write_config(
        &self,
        fleet: &FleetEnv,
        certs: usize,
        max_parallel: usize,
        alt: Option<usize>,
    ) {
        let d = &self.dir;
        // Pebble validates nothing here; http-01 goes through a webroot (the tokens are
        // relayed through etcd and acknowledged by every host, as in a real fleet).
        let issuer = fleet.pebble.issuer_table().replace(
            &format!("listen = \"127.0.0.1:{}\"", fleet.pebble.http_port()),
            &format!("webroot = \"{}\"", d.join("www").display()),
        );
        let mut text = format!(
            "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\ncompromised_dir = \"{}\"\n\
             lock_timeout = \"30s\"\nmax_parallel = {max_parallel}\n\
             # the bench triggers more often than a host ever should\n\
             max_reissues_per_hour = 1000\n\n\
             [cluster]\nendpoints = [{}]\nprefix = \"{PREFIX}\"\nnode = \"{}\"\nfleet_key_file = \"{}\"\n\n{issuer}\n",
            d.join("state").display(),
            d.join("run").display(),
            d.join("compromised").display(),
            fleet.endpoints,
            self.node,
            fleet.fleet_key.display(),
        );
        for c in 0..certs {
            let name = cert_name(c);
            let names = if alt == Some(c) {
                format!("\"{name}.test\", \"alt.{name}.test\"")
            } else {
                format!("\"{name}.test\"")
            };
            let _ = write!(
                text,
                "[certificate.{name}]\nnames = [{names}]\nissuer = \"pebble\"\nshared = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n",
                self.cert_file(c).display(),
                self.key_file(c).display(),
            );
        }
        // Atomically: a daemon must never read half a config.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet: etcd, Pebble, N hosts.

pub struct FleetEnv {
    pub hosts: Vec<Host>,
    pub etcd: EtcdCluster,
    pub pebble: Pebble,
    endpoints: String,
    fleet_key: PathBuf,
    certs: usize,
    /// Removed on drop unless FLEET_KEEP=1.
    dir: Option<tempfile::TempDir>,
}

impl Drop for FleetEnv {
    fn drop(&mut self) {
        // SIGTERM every daemon (by pid), then wait for all, SIGKILL (by pid) after 30 s.
        for h in &self.hosts {
            if h.pid() != 0 {
                let pid = nix::unistd::Pid::from_raw(h.pid() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for h in &mut self.hosts {
            let Some(mut child) = h.child.take() else {
                continue;
            };
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    eprintln!("fleet bench: {} did not stop within 30 s: SIGKILL", h.node);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::env::var("FLEET_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("fleet bench: kept {}", dir.keep().display());
        }
    }
}

/// Outcome of waiting for every host to serve something.
pub struct Converged {
    pub first: Duration,
    pub all: Duration,
}

impl FleetEnv {
    pub fn start(p: &Params, n: usize) -> FleetEnv {
        let dir = tempfile::Builder::new()
            .prefix("certagent-bench-fleet-")
            .tempdir_in(&p.root)
            .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", p.root.display()));
        let etcd = EtcdCluster::start(3);
        let pebble = Pebble::start(PebbleOpts {
            always_valid: true,
            ..PebbleOpts::default()
        });
        let fleet_key = dir.path().join("fleet.key");
        std::fs::write(&fleet_key, [7u8; 32]).expect("fleet key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fleet_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let endpoints = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let hosts = (0..n)
            .map(|i| {
                let hdir = dir.path().join(format!("h{i:02}"));
                for sub in ["ssl", "etc", "compromised"] {
                    std::fs::create_dir_all(hdir.join(sub)).expect("mkdir");
                }
                Host {
                    node: format!("h{i:02}"),
                    config: hdir.join("etc").join("config.toml"),
                    log: hdir.join("daemon.log"),
                    dir: hdir,
                    child: None,
                }
            })
            .collect();
        let fleet = FleetEnv {
            hosts,
            etcd,
            pebble,
            endpoints,
            fleet_key,
            certs: p.certs,
            dir: Some(dir),
        };
        for h in &fleet.hosts {
            h.write_config(&fleet, p.certs, p.max_parallel, None);
        }
        fleet
    }

    pub fn member_ports(&self) -> Vec<u16> {
        self.etcd.members.iter().map(|m| m.client_port).collect()
    }

    pub fn scrape(&self) -> Scrape {
        Scrape::take(&self.member_ports())
    }

    /// Waits until every host's certificate `c` satisfies `ok` and all serve one serial.
    /// `first`: when the first host did; `all`: when every host did.
    pub fn wait_all(
        &self,
        c: usize,
        t0: Instant,
        timeout: Duration,
        ok: impl Fn(&Host, &[u8]) -> bool,
    ) -> Result<Converged, String> {
        let mut first = None;
        loop {
            let leaves: Vec<Option<Vec<u8>>> = self.hosts.iter().map(|h| h.leaf(c)).collect();
            let good: Vec<bool> = self
                .hosts
                .iter()
                .zip(&leaves)
                .map(|(h, l)| l.as_deref().is_some_and(|l| ok(h, l)))
                .collect();
            if first.is_none() && good.iter().any(|g| *g) {
                first = Some(t0.elapsed());
            }
            let serials: Vec<Option<String>> = leaves
                .iter()
                .map(|l| l.as_deref().map(cert_serial_hex))
                .collect();
            if good.iter().all(|g| *g) && serials.iter().all(|s| *s == serials[0]) {
                let all = t0.elapsed();
                return Ok(Converged {
                    first: first.unwrap_or(all),
                    all,
                });
            }
            if t0.elapsed() > timeout {
                let behind: Vec<&str> = self
                    .hosts
                    .iter()
                    .zip(&good)
                    .filter(|(_, g)| !**g)
                    .map(|(h, _)| h.node.as_str())
                    .collect();
                return Err(format!(
                    "{}: {} of {} hosts not there after {timeout:?}: {behind:?}",
                    cert_name(c),
                    behind.len(),
                    self.hosts.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn serials(&self, c: usize) -> Vec<Option<String>> {
        self.hosts.iter().map(|h| h.serial(c)).collect()
    }

    /// Every host serves every certificate, one serial per certificate fleet-wide.
    pub fn all_served(&self, hosts: std::ops::Range<usize>) -> (bool, usize) {
        let mut done = 0;
        for c in 0..self.certs {
            let s: Vec<Option<String>> = self.hosts[hosts.clone()]
                .iter()
                .map(|h| h.serial(c))
                .collect();
            if s[0].is_some() && s.iter().all(|x| *x == s[0]) {
                done += 1;
            }
        }
        (done == self.certs, done)
    }

    /// Spawns `hosts` at once and waits until each says it is ready.
    pub fn spawn(&mut self, hosts: std::ops::Range<usize>) {
        for h in &mut self.hosts[hosts.clone()] {
            h.spawn();
        }
        for h in &self.hosts[hosts] {
            let ok = super::common::wait_until(Duration::from_secs(120), || {
                h.log().contains("certagent daemon ready")
            });
            assert!(ok, "{} did not get ready:\n{}", h.node, h.log());
        }
    }

    /// Waits until hosts `0..upto` serve every certificate, one serial per certificate;
    /// the time since `t0`, or an error once nothing moved for `stall` (no certificate
    /// more on every host, no order more).
    pub fn wait_issued(
        &self,
        upto: usize,
        t0: Instant,
        stall: Duration,
    ) -> Result<Duration, String> {
        let mut last = (usize::MAX, usize::MAX);
        let (mut moved, mut noted) = (Instant::now(), Instant::now());
        loop {
            let (done, k) = self.all_served(0..upto);
            if done {
                return Ok(t0.elapsed());
            }
            let orders = self.pebble.orders_created();
            if (k, orders) != last {
                last = (k, orders);
                moved = Instant::now();
            }
            if moved.elapsed() > stall {
                return Err(format!(
                    "stalled: {k} of {} certificates on every one of {upto} hosts, {orders} orders, nothing moved for {stall:?}",
                    self.certs
                ));
            }
            if noted.elapsed() > Duration::from_secs(30) {
                super::note(&format!(
                    "  {k} of {} certificates on every one of {upto} hosts; {orders} orders",
                    self.certs
                ));
                noted = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Counts of notable log lines over every host's log.
    pub fn log_counts(&self) -> Value {
        let needles = [
            ("fleet_lock", "event=fleet-lock"),
            ("fleet_published", "event=fleet-published"),
            ("fleet_install", "event=fleet-install"),
            ("fleet_heal", "event=fleet-heal"),
            ("fleet_fenced", "event=fleet-fenced"),
            ("failed", "event=failed"),
            ("warnings", "certagent: warning:"),
            ("errors", "certagent: error:"),
        ];
        let logs: Vec<String> = self.hosts.iter().map(Host::log).collect();
        let mut out = serde_json::Map::new();
        for (key, needle) in needles {
            let n: usize = logs.iter().map(|l| l.matches(needle).count()).sum();
            out.insert(key.into(), json!(n));
        }
        Value::Object(out)
    }

    /// Warnings, errors and failed jobs of every host, grouped by message (the time stamp
    /// dropped, certificate names and numbers masked): `{message: [count, first example]}`.
    pub fn trouble(&self) -> Value {
        let mut groups: std::collections::BTreeMap<String, (usize, String)> = Default::default();
        for h in &self.hosts {
            for l in h.log().lines() {
                let bad = l.contains("certagent: warning:")
                    || l.contains("certagent: error:")
                    || l.contains("event=failed");
                if !bad {
                    continue;
                }
                let text = l.split_once("certagent: ").map_or(l, |(_, t)| t);
                let e = groups
                    .entry(mask(text))
                    .or_insert((0, format!("{}: {l}", h.node)));
                e.0 += 1;
            }
        }
        json!(groups)
    }

    /// Every host's log length now (for `logged_since`).
    pub fn log_marks(&self) -> Vec<usize> {
        self.hosts.iter().map(|h| h.log().len()).collect()
    }

    /// The lines logged since `marks`, grouped like `trouble`.
    pub fn logged_since(&self, marks: &[usize]) -> Value {
        let mut groups: std::collections::BTreeMap<String, (usize, String)> = Default::default();
        for (h, m) in self.hosts.iter().zip(marks) {
            let log = h.log();
            for l in log.get(*m..).unwrap_or("").lines() {
                let text = l.split_once("certagent: ").map_or(l, |(_, t)| t);
                let e = groups
                    .entry(mask(text))
                    .or_insert((0, format!("{}: {l}", h.node)));
                e.0 += 1;
            }
        }
        json!(groups)
    }
}

/// A log message with what varies between hosts and certificates masked: digits become `#`,
/// quoted paths are cut to their file name.
fn mask(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    text.chars().take(300).collect()
}
