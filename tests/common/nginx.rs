//! A private nginx instance: its own prefix, config, pid file and logs, one
//! TLS `server` per [`Site`] on 127.0.0.1, and optionally a plain-HTTP
//! listener serving `/.well-known/acme-challenge/` from a webroot.
//!
//! The config is self-contained: it includes nothing from `/etc/nginx` (no
//! `mime.types`, no `modules-enabled`), and every path nginx writes to lives
//! under the prefix. nginx runs with `daemon off`, so the spawned process is
//! the master.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{Child, child_pids, pid_alive, send_signal, wait_until};

/// A bound on a positive signal: generous, since a busy machine (CI beside other load) can
/// take many seconds to start a server, and a server that is up returns at once.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// One TLS virtual server: `listen 127.0.0.1:<port> ssl` with these names and
/// certificate/key files. Several sites may share a port (SNI selects).
#[derive(Clone, Debug)]
pub struct Site {
    pub port: u16,
    pub server_names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A running nginx master. Dropping it stops nginx (SIGTERM to the master,
/// which stops its workers; SIGKILL by pid as a fallback) and leaves the
/// prefix directory in place.
pub struct Nginx {
    master: Child,
    prefix: PathBuf,
    conf_path: PathBuf,
    sites: Vec<Site>,
    http_port: Option<u16>,
    /// Ports of a config written by the test itself ([`Nginx::start_custom`]).
    custom_ports: Vec<u16>,
}

/// Quotes a path for nginx.conf.
fn q(path: &Path) -> String {
    let s = path.to_str().expect("nginx paths must be UTF-8");
    assert!(
        !s.contains('"') && !s.contains('\\'),
        "unsupported character in nginx path {s:?}"
    );
    format!("\"{s}\"")
}

/// Whether this process runs with effective uid 0 (from /proc/self/status).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            let euid = uids.split_whitespace().nth(2)?.to_owned();
            Some(euid == "0")
        })
        .unwrap_or(false)
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl Nginx {
    /// Starts nginx with the TLS `sites` and no plain-HTTP listener, using
    /// `dir` (created if needed) as its prefix. See [`Nginx::start_with_http`].
    pub fn start(dir: &Path, sites: &[Site]) -> Nginx {
        Nginx::start_with_http(dir, sites, None)
    }

    /// Writes `dir/nginx.conf`, starts `nginx -p dir -c dir/nginx.conf` and
    /// waits (up to 10 s) until the pid file names the master and every port
    /// accepts TCP. With `http_port`, a plain-HTTP server on
    /// `127.0.0.1:http_port` serves `/.well-known/acme-challenge/` from
    /// [`Nginx::webroot`]. Panics with nginx's logs if startup fails.
    pub fn start_with_http(dir: &Path, sites: &[Site], http_port: Option<u16>) -> Nginx {
        let prefix = dir.to_owned();
        let conf_path = prefix.join("nginx.conf");
        for sub in ["tmp", "webroot/.well-known/acme-challenge"] {
            let d = prefix.join(sub);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let pid_file = prefix.join("nginx.pid");
        // A stale pid file would make the readiness check lie.
        let _ = std::fs::remove_file(&pid_file);

        let conf = render_config(&prefix, sites, http_port);
        std::fs::write(&conf_path, conf)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));

        let stderr_path = prefix.join("stderr.log");
        let out = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let err = out.try_clone().expect("dup nginx stderr.log handle");
        let master = Child::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );

        let mut nginx = Nginx {
            master,
            prefix,
            conf_path,
            sites: sites.to_vec(),
            http_port,
            custom_ports: Vec::new(),
        };
        nginx.wait_ready();
        nginx
    }

    /// Starts `nginx -p dir -c conf` with a config the test wrote itself (it must say
    /// `daemon off;` and `pid DIR/nginx.pid;`), and waits until `ports` accept TCP.
    pub fn start_custom(dir: &Path, conf: &Path, ports: &[u16]) -> Nginx {
        let prefix = dir.to_owned();
        std::fs::create_dir_all(prefix.join("tmp")).expect("create nginx tmp dir");
        let _ = std::fs::remove_file(prefix.join("nginx.pid"));
        let stderr_path = prefix.join("stderr.log");
        let out = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let err = out.try_clone().expect("dup nginx stderr.log handle");
        let master = Child::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let mut nginx = Nginx {
            master,
            prefix,
            conf_path: conf.to_owned(),
            sites: Vec::new(),
            http_port: None,
            custom_ports: ports.to_vec(),
        };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let mut ports: Vec<u16> = self.sites.iter().map(|s| s.port).collect();
        ports.extend(self.http_port);
        ports.extend(&self.custom_ports);
        ports.sort_unstable();
        ports.dedup();
        let master_pid = self.master.pid().to_string();
        let pid_file = self.pid_file();
        let mut exited = None;
        let up = wait_until(STARTUP_TIMEOUT, || {
            if let Some(status) = self.master.try_wait() {
                exited = Some(status);
                return true;
            }
            let pid_ok = std::fs::read_to_string(&pid_file)
                .is_ok_and(|content| content.trim() == master_pid);
            pid_ok && ports.iter().all(|&p| tcp_accepts(p))
        });
        if let Some(status) = exited {
            panic!("nginx exited during startup ({status}):\n{}", self.log());
        }
        if !up {
            panic!(
                "nginx not ready within {STARTUP_TIMEOUT:?} (pid file {}, ports {ports:?}):\n{}",
                pid_file.display(),
                self.log()
            );
        }
    }

    /// Path of the generated `nginx.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// `PREFIX/nginx.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.prefix.join("nginx.pid")
    }

    /// Pid of the master (the process the harness spawned).
    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// Whether the master process is still running.
    pub fn is_alive(&self) -> bool {
        pid_alive(self.master.pid())
    }

    /// Pids of the master's current (live) worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        child_pids(self.master.pid())
    }

    /// Directory served at `http://127.0.0.1:<http_port>/.well-known/acme-challenge/`
    /// (i.e. challenge files go to `webroot/.well-known/acme-challenge/<token>`).
    pub fn webroot(&self) -> PathBuf {
        self.prefix.join("webroot")
    }

    /// `["nginx", "-t", "-q", "-p", PREFIX, "-c", CONF]`.
    pub fn test_command(&self) -> Vec<String> {
        self.command(&["-t", "-q"])
    }

    /// `["nginx", "-s", "reload", "-p", PREFIX, "-c", CONF]`.
    pub fn reload_command(&self) -> Vec<String> {
        self.command(&["-s", "reload"])
    }

    fn command(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec!["nginx".to_owned()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd.push("-p".to_owned());
        cmd.push(self.prefix.to_str().expect("UTF-8 prefix").to_owned());
        cmd.push("-c".to_owned());
        cmd.push(self.conf_path.to_str().expect("UTF-8 conf path").to_owned());
        cmd
    }

    /// Runs [`Nginx::test_command`]; `Err` carries nginx's output.
    pub fn run_test(&self) -> Result<(), String> {
        run(&self.test_command())
    }

    /// Runs [`Nginx::reload_command`]; `Err` carries nginx's output. The
    /// reload itself is asynchronous: poll for its effect.
    pub fn reload(&self) -> Result<(), String> {
        run(&self.reload_command())
    }

    /// Reloads and waits until the workers from before the reload no longer accept
    /// connections (nginx renames a worker "shutting down" once it closed its listeners), so
    /// that what a probe sees next is what every probe sees. `Err` carries nginx's output, or
    /// says the old workers did not retire within `timeout`.
    pub fn reload_and_wait_retired(&self, timeout: Duration) -> Result<(), String> {
        let old = self.worker_pids();
        self.reload()?;
        let retired = super::wait_until(timeout, || {
            old.iter().all(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| {
                    c.is_empty() || String::from_utf8_lossy(&c).contains("shutting down")
                })
            })
        });
        if retired {
            Ok(())
        } else {
            Err(format!(
                "nginx's old workers {old:?} still accept after {timeout:?}"
            ))
        }
    }

    /// Contents of `PREFIX/error.log`.
    pub fn error_log(&self) -> String {
        read_or_note(&self.prefix.join("error.log"))
    }

    /// `error.log` plus the master's stdout/stderr, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "===== nginx error.log =====\n{}\n===== nginx stdout/stderr =====\n{}",
            self.error_log(),
            read_or_note(&self.prefix.join("stderr.log"))
        )
    }

    /// Stops nginx: SIGTERM to the master (a fast shutdown that also stops
    /// the workers), then, if it has not exited within 5 s, SIGKILL to the
    /// master and to the workers it had. Idempotent; also run on drop.
    pub fn stop(&mut self) {
        let master = self.master.pid();
        if self.master.wait_timeout(Duration::ZERO).is_some() {
            return;
        }
        // Workers do not die with a SIGKILLed master (they get re-parented),
        // so remember them for the fallback.
        let workers = child_pids(master);
        send_signal(master, "TERM");
        if self.master.wait_timeout(SHUTDOWN_TIMEOUT).is_none() {
            self.master.kill();
        }
        for w in workers {
            let is_nginx = std::fs::read_to_string(format!("/proc/{w}/comm"))
                .is_ok_and(|comm| comm.trim() == "nginx");
            if is_nginx && pid_alive(w) {
                send_signal(w, "KILL");
                // Signal delivery is asynchronous.
                wait_until(SHUTDOWN_TIMEOUT, || !pid_alive(w));
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Renders the self-contained nginx.conf.
fn render_config(prefix: &Path, sites: &[Site], http_port: Option<u16>) -> String {
    let p = |sub: &str| q(&prefix.join(sub));
    let mut c = String::new();
    // `writeln!` into a String cannot fail.
    let _ = writeln!(c, "# Generated by the certagent integration-test harness.");
    let _ = writeln!(c, "daemon off;");
    let _ = writeln!(c, "master_process on;");
    let _ = writeln!(c, "worker_processes 1;");
    let _ = writeln!(c, "pid {};", p("nginx.pid"));
    let _ = writeln!(c, "error_log {} info;", p("error.log"));
    if running_as_root() {
        // Otherwise workers run as `nobody`, which cannot read files under
        // 0700 temp dirs (e.g. the http-01 webroot).
        let _ = writeln!(c, "user root;");
    }
    let _ = writeln!(c, "events {{ worker_connections 64; }}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "    access_log off;");
    let _ = writeln!(c, "    default_type text/plain;");
    for (directive, dir) in [
        ("client_body_temp_path", "tmp/client_body"),
        ("proxy_temp_path", "tmp/proxy"),
        ("fastcgi_temp_path", "tmp/fastcgi"),
        ("uwsgi_temp_path", "tmp/uwsgi"),
        ("scgi_temp_path", "tmp/scgi"),
    ] {
        let _ = writeln!(c, "    {directive} {};", p(dir));
    }
    for site in sites {
        let names = if site.server_names.is_empty() {
            "\"\"".to_owned()
        } else {
            site.server_names.join(" ")
        };
        let _ = writeln!(c, "    server {{");
        let _ = writeln!(c, "        listen 127.0.0.1:{} ssl;", site.port);
        let _ = writeln!(c, "        server_name {names};");
        let _ = writeln!(c, "        ssl_certificate {};", q(&site.cert_file));
        let _ = writeln!(c, "        ssl_certificate_key {};", q(&site.key_file));
        let _ = writeln!(c, "    }}");
    }
    if let Some(port) = http_port {
        let _ = writeln!(c, "    server {{");
        let _ = writeln!(c, "        listen 127.0.0.1:{port};");
        let _ = writeln!(c, "        server_name _;");
        let _ = writeln!(c, "        location /.well-known/acme-challenge/ {{");
        let _ = writeln!(c, "            root {};", p("webroot"));
        let _ = writeln!(c, "        }}");
        let _ = writeln!(c, "    }}");
    }
    let _ = writeln!(c, "}}");
    c
}

fn run(argv: &[String]) -> Result<(), String> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {argv:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{argv:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn read_or_note(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
