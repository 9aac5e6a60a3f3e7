//! [`FleetRig`]: a fleet on loopback with real parts, for the fleet scenario tests — a
//! 3-member etcd cluster, Pebble validating http-01 for real through a round-robin TCP
//! [`Balancer`] in front of three hosts' plain-HTTP ports, and three hosts, each with its own
//! temp dir, state and runtime dirs, nginx (a TLS site for the shared name and a plain-HTTP
//! server with its own webroot), certagent config (`[cluster]`, `shared = true`) and, once
//! started, certagent daemon. Every process is ended by pid on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use certagent::cluster::{HostReport, LockRecord, Published};

use super::balancer::Balancer;
use super::etcd::EtcdCluster;
use super::{
    Daemon, Nginx, Pebble, PebbleOpts, Run, Site, TlsCa, reserved_port, run_certagent, served_leaf,
    toml_list, wait_until,
};

/// The DNS name the fleet shares.
pub const NAME: &str = "www.fleet.test";
/// The certificate's name in every host's config.
pub const CERT: &str = "www";
/// The etcd prefix of the fleet.
pub const PREFIX: &str = "/fleet";
/// `lease_ttl` of every host.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// One host of the fleet.
pub struct Host {
    // Dropped in declaration order: the daemon before its nginx, both before the directory.
    daemon: Option<Daemon>,
    pub nginx: Nginx,
    pub node: String,
    pub tls_port: u16,
    pub http_port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub config: PathBuf,
    /// The (wrong) leaf the host serves before certagent ran: another name, another CA.
    pub initial_leaf: Vec<u8>,
    stopped: bool,
    starts: usize,
    /// Logs of daemons of this host that are gone.
    past_logs: String,
    pub dir: tempfile::TempDir,
}

/// What a host's config needs from the rest of the rig.
struct Parts<'a> {
    pebble: &'a Pebble,
    endpoints: Vec<String>,
    fleet_key: &'a Path,
}

impl Host {
    fn new(i: usize, http_port: u16) -> Host {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fleet-h{i}-"))
            .tempdir()
            .expect("create a host tempdir");
        let ca = TlsCa::new(&dir.path().join("testca"));
        let ssl = dir.path().join("ssl");
        std::fs::create_dir_all(&ssl).expect("mkdir ssl");
        let cert_file = ssl.join("www.pem");
        let key_file = ssl.join("www.key");
        let now = SystemTime::now();
        let leaf = ca.issue_leaf(
            &["wrong.fleet.test"],
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(60 * 86_400),
        );
        leaf.write(&cert_file, &key_file);
        let tls_port = reserved_port();
        let site = Site {
            port: tls_port,
            server_names: vec![NAME.to_string()],
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let nginx = Nginx::start_with_http(&dir.path().join("nginx"), &[site], Some(http_port));
        for sub in ["etc", "compromised"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir in the host dir");
        }
        Host {
            daemon: None,
            nginx,
            node: format!("h{i}"),
            tls_port,
            http_port,
            cert_file,
            key_file,
            config: dir.path().join("etc/config.toml"),
            initial_leaf: leaf.cert_der,
            stopped: false,
            starts: 0,
            past_logs: String::new(),
            dir,
        }
    }

    /// Writes this host's config: `[cluster]` and `shared = true` when `shared`, else a plain
    /// certificate; http-01 files go to `webroot` (default: this host's nginx webroot).
    fn write_config(&self, parts: &Parts, shared: bool, webroot: Option<&Path>) {
        let webroot = webroot.map_or_else(|| self.nginx.webroot(), Path::to_path_buf);
        let cluster = if shared {
            format!(
                "shared = true\n\n[cluster]\nkind = \"etcd\"\nendpoints = {endpoints}\nprefix = \"{PREFIX}\"\nnode = \"{node}\"\nlease_ttl = \"{ttl}s\"\nrequest_timeout = \"2s\"\nfleet_key_file = \"{key}\"\n",
                endpoints = toml_list(&parts.endpoints),
                node = self.node,
                ttl = LEASE_TTL.as_secs(),
                key = parts.fleet_key.display(),
            )
        } else {
            String::new()
        };
        let text = format!(
            r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"
lock_timeout = "5s"
compromised_dir = "{compromised}"

[server.web]
kind = "nginx"
verify = ["{addr}"]
pid_file = "{pid}"
verify_timeout = "5s"
test_command = {test}

[issuer.pebble]
kind = "acme"
directory = "{directory}"
ca_bundle = "{bundle}"
challenge = "http-01"
webroot = "{webroot}"
timeout = "60s"

[certificate.{CERT}]
names = ["{NAME}"]
server = "web"
cert_file = "{cert}"
key_file = "{key}"
issuer = "pebble"
{cluster}"#,
            state = self.state_dir().display(),
            run = self.dir.path().join("run").display(),
            compromised = self.compromised_dir().display(),
            addr = self.addr(),
            pid = self.nginx.pid_file().display(),
            test = toml_list(&self.nginx.test_command()),
            directory = parts.pebble.directory_url(),
            bundle = parts.pebble.ca_bundle().display(),
            webroot = webroot.display(),
            cert = self.cert_file.display(),
            key = self.key_file.display(),
        );
        std::fs::write(&self.config, text).expect("write a host config");
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn compromised_dir(&self) -> PathBuf {
        self.dir.path().join("compromised")
    }

    /// Where http-01 files are served from: `webroot/.well-known/acme-challenge/TOKEN`.
    pub fn challenge_dir(&self) -> PathBuf {
        self.nginx.webroot().join(".well-known/acme-challenge")
    }

    /// The http-01 files this host's webroot serves now, sorted.
    pub fn tokens(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.challenge_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The host's TLS address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// The leaf this host's nginx presents for the shared name (`None`: no handshake).
    pub fn served(&self) -> Option<Vec<u8>> {
        served_leaf(&self.addr(), NAME)
    }

    /// Runs the certagent CLI with this host's config.
    pub fn certagent(&self, args: &[&str]) -> Run {
        run_certagent(&self.config, args, &[])
    }

    /// Starts this host's daemon (a fresh log file per start).
    pub fn start_daemon(&mut self) {
        assert!(
            self.daemon.is_none(),
            "{}: a daemon runs already",
            self.node
        );
        self.starts += 1;
        let log = self.dir.path().join(format!("daemon-{}.log", self.starts));
        self.daemon = Some(Daemon::start(&self.config, &log, &[]));
        self.stopped = false;
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no daemon runs", self.node))
    }

    /// Everything this host's daemons logged, the current one last.
    pub fn log(&self) -> String {
        let current = self.daemon.as_ref().map(Daemon::log).unwrap_or_default();
        format!("{}{current}", self.past_logs)
    }

    /// SIGKILLs the daemon (by pid) and waits until it is gone.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self
            .daemon
            .take()
            .unwrap_or_else(|| panic!("{}: no daemon to kill", self.node));
        daemon.signal("KILL");
        let gone = wait_until(Duration::from_secs(10), || !daemon.is_running());
        assert!(gone, "{}: the daemon outlived SIGKILL", self.node);
        self.past_logs
            .push_str(&format!("--- {} daemon SIGKILLed ---\n", self.node));
        self.past_logs.push_str(&daemon.log());
        self.stopped = false;
    }

    /// SIGSTOPs the daemon: it stops answering (etcd keep-alives included) until SIGCONT.
    pub fn pause_daemon(&mut self) {
        self.daemon().signal("STOP");
        self.stopped = true;
    }

    /// SIGCONT after [`Host::pause_daemon`].
    pub fn resume_daemon(&mut self) {
        self.daemon().signal("CONT");
        self.stopped = false;
    }

    /// SIGTERM (the daemon is waited for), then a new daemon.
    pub fn restart_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            if self.stopped {
                daemon.signal("CONT");
            }
            daemon.stop();
            self.past_logs.push_str(&daemon.log());
        }
        self.start_daemon();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A stopped daemon would sit out SIGTERM's grace period.
        if self.stopped
            && let Some(d) = &self.daemon
        {
            super::send_signal(d.pid(), "CONT");
        }
    }
}

/// The fleet: etcd, Pebble behind the balancer, three hosts.
pub struct FleetRig {
    // Dropped in declaration order: daemons and nginx first, the directory last.
    pub hosts: Vec<Host>,
    pub pebble: Pebble,
    pub balancer: Balancer,
    pub etcd: EtcdCluster,
    pub fleet_key: PathBuf,
    pub dir: tempfile::TempDir,
}

impl FleetRig {
    /// Everything but the daemons: etcd (3 members), three hosts serving a wrong certificate,
    /// the balancer in front of their plain-HTTP ports, Pebble validating through it, one
    /// fleet key, and every host's config with `shared = true`.
    pub fn start() -> FleetRig {
        let dir = tempfile::Builder::new()
            .prefix("fleet-")
            .tempdir()
            .expect("create the rig tempdir");
        let etcd = EtcdCluster::start(3);
        let http_ports: Vec<u16> = (0..3).map(|_| reserved_port()).collect();
        let hosts: Vec<Host> = http_ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Host::new(i, port))
            .collect();
        let balancer = Balancer::start(&http_ports);
        let pebble = Pebble::start(PebbleOpts {
            http_port: Some(balancer.port),
            ..PebbleOpts::default()
        });
        let fleet_key = dir.path().join("fleet.key");
        std::fs::write(&fleet_key, rand::random::<[u8; 32]>()).expect("write the fleet key");
        std::fs::set_permissions(
            &fleet_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod the fleet key");
        let rig = FleetRig {
            hosts,
            pebble,
            balancer,
            etcd,
            fleet_key,
            dir,
        };
        for i in 0..3 {
            rig.write_config(i, true, None);
        }
        rig
    }

    /// Rewrites host `i`'s config (see [`Host`]): shared or plain, and where http-01 files go.
    pub fn write_config(&self, i: usize, shared: bool, webroot: Option<&Path>) {
        let parts = Parts {
            pebble: &self.pebble,
            endpoints: self.etcd.endpoints(),
            fleet_key: &self.fleet_key,
        };
        self.hosts[i].write_config(&parts, shared, webroot);
    }

    /// Starts the three daemons.
    pub fn start_daemons(&mut self) {
        for h in &mut self.hosts {
            h.start_daemon();
        }
    }

    /// Starts the three daemons with Pebble's validation requests held in the balancer until
    /// every host serves the same http-01 tokens (the first daemon up orders before the others
    /// run: a host without a daemon cannot serve the token the CA asks it for). Panics if the
    /// hosts never serve the same non-empty set of tokens.
    pub fn start_daemons_then_validate(&mut self) {
        self.balancer.hold();
        self.start_daemons();
        let mut last = Vec::new();
        let all_serve = wait_until(Duration::from_secs(30), || {
            last = self.hosts.iter().map(Host::tokens).collect();
            !last[0].is_empty() && last.iter().all(|t| *t == last[0])
        });
        self.balancer.release();
        assert!(
            all_serve,
            "the hosts do not serve the same http-01 tokens: {last:?}\n{}",
            self.diagnostics()
        );
    }

    /// Replaces every host's `.well-known/acme-challenge` with a link to one directory (for
    /// a plain certagent's webroot: its files are then served whichever host is reached).
    /// Returns the webroot to configure.
    pub fn share_challenge_dirs(&self) -> PathBuf {
        let webroot = self.dir.path().join("shared-webroot");
        let challenges = webroot.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenges).expect("mkdir the shared challenge dir");
        for h in &self.hosts {
            std::fs::remove_dir_all(h.challenge_dir()).expect("remove a host's challenge dir");
            std::os::unix::fs::symlink(&challenges, h.challenge_dir())
                .expect("link a host's challenge dir");
        }
        webroot
    }

    /// What each host serves now.
    pub fn served(&self) -> Vec<Option<Vec<u8>>> {
        self.hosts.iter().map(Host::served).collect()
    }

    /// Waits until all three hosts serve one and the same leaf, issued by Pebble, and none
    /// of `different_from`; returns it. Panics with the rig's logs after `timeout`.
    pub fn wait_all_serve_one_leaf(&self, different_from: &[&[u8]], timeout: Duration) -> Vec<u8> {
        let mut last = Vec::new();
        let found = wait_until(timeout, || {
            last = self.served();
            let Some(Some(first)) = last.first() else {
                return false;
            };
            last.iter().all(|l| l.as_ref() == Some(first))
                && !different_from.contains(&first.as_slice())
                && self
                    .pebble
                    .cert_status(&super::cert_serial_hex(first))
                    .is_some()
        });
        if !found {
            let serials: Vec<String> = last
                .iter()
                .map(|l| l.as_deref().map_or("none".into(), super::cert_serial_hex))
                .collect();
            panic!(
                "the hosts do not serve one new Pebble leaf within {timeout:?}: serials {serials:?}\n{}",
                self.diagnostics()
            );
        }
        last.swap_remove(0).expect("checked above")
    }

    /// Orders Pebble created so far.
    pub fn orders(&self) -> usize {
        self.pebble.orders_created()
    }

    /// `etcdctl get` of the whole keyspace, keys and values as etcd holds them.
    pub fn etcd_dump(&self) -> String {
        let out = self.etcd.etcdctl(&["get", "", "--from-key"]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of one key under the prefix (`None`: no such key).
    pub fn etcd_value(&self, key: &str) -> Option<String> {
        let out = self
            .etcd
            .etcdctl(&["get", &format!("{PREFIX}/{key}"), "--print-value-only"]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!value.is_empty()).then_some(value)
    }

    /// The published record of the shared certificate.
    pub fn published(&self) -> Option<Published> {
        let v = self.etcd_value(&format!("certs/{CERT}/published"))?;
        Some(serde_json::from_str(&v).unwrap_or_else(|e| panic!("published record ({e}): {v}")))
    }

    /// What host `i` last reported under `hosts/NODE/NAME`.
    pub fn report(&self, i: usize) -> Option<HostReport> {
        let v = self.etcd_value(&format!("hosts/{}/{CERT}", self.hosts[i].node))?;
        Some(serde_json::from_str(&v).unwrap_or_else(|e| panic!("host report ({e}): {v}")))
    }

    /// Waits until a generation is published and every host reports serving it, proven and
    /// without error; returns the record. The positive signal that the fleet is done with a
    /// trigger (before counting orders).
    pub fn wait_settled(&self, timeout: Duration) -> Published {
        let mut last = None;
        let settled = wait_until(timeout, || {
            let Some(p) = self.published() else {
                return false;
            };
            let done = (0..self.hosts.len()).all(|i| {
                self.report(i).is_some_and(|r| {
                    r.serial.as_deref() == Some(p.serial.as_str())
                        && r.verified_at.is_some()
                        && r.error.is_none()
                })
            });
            last = Some(p);
            done
        });
        if !settled {
            let reports: Vec<_> = (0..self.hosts.len()).map(|i| self.report(i)).collect();
            panic!(
                "the fleet did not settle within {timeout:?}: published {:?}, reports {reports:?}\n{}",
                last.map(|p| (p.generation, p.serial)),
                self.diagnostics()
            );
        }
        last.expect("settled on a record")
    }

    /// The node holding the shared certificate's lock.
    pub fn lock_holder(&self) -> Option<String> {
        let v = self.etcd_value(&format!("locks/{CERT}"))?;
        let r: LockRecord =
            serde_json::from_str(&v).unwrap_or_else(|e| panic!("lock record ({e}): {v}"));
        Some(r.node)
    }

    /// Every daemon's log, Pebble's log and the keys in etcd, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            s.push_str(&format!(
                "===== {} daemon log =====\n{}\n",
                h.node,
                tail(&h.log(), 80)
            ));
        }
        s.push_str(&format!(
            "===== pebble log =====\n{}\n",
            tail(&self.pebble.pebble_log(), 40)
        ));
        s.push_str(&format!(
            "===== balancer: {:?} =====\n",
            self.balancer.counts()
        ));
        let keys = self.etcd.etcdctl(&["get", "", "--from-key", "--keys-only"]);
        s.push_str(&format!(
            "===== etcd keys =====\n{}{}",
            String::from_utf8_lossy(&keys.stdout),
            String::from_utf8_lossy(&keys.stderr)
        ));
        s
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
