//! A private Apache httpd (Debian's `apache2`): its own ServerRoot, config, pid file and
//! logs, one TLS `<VirtualHost>` per [`Site`] on 127.0.0.1.
//!
//! The config is self-contained: it loads the few modules it needs from
//! `/usr/lib/apache2/modules` and includes nothing from `/etc/apache2`. Apache runs with
//! `-D FOREGROUND`, so the spawned process is the parent (the one a graceful restart
//! re-reads the config in, and the one that exits when the new config cannot be loaded).
//! Children run as `nobody`; they never read the certificate files (the parent does).
//!
//! `<IfDefine CERTAGENT_FAIL_TEST>` holds an unknown directive: a config test run with
//! `-D CERTAGENT_FAIL_TEST` fails for real while the running server is unaffected.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::nginx::Site;
use super::process::{Child, child_pids, pid_alive, send_signal, wait_until};

/// A bound on a positive signal: generous, since a busy machine (CI beside other load) can
/// take many seconds to start a server, and a server that is up returns at once.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const MODULES: &str = "/usr/lib/apache2/modules";

/// A running Apache parent. Dropping it stops Apache (SIGTERM to the parent, which stops its
/// children; SIGKILL by pid as a fallback) and leaves the ServerRoot in place.
pub struct Apache {
    parent: Option<Child>,
    root: PathBuf,
    sites: Vec<Site>,
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl Apache {
    /// Writes `dir/apache2.conf` for `sites` without starting Apache (for tests of a server
    /// that is not running).
    pub fn configure(dir: &Path, sites: &[Site]) -> Apache {
        std::fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let apache = Apache {
            parent: None,
            root: dir.to_owned(),
            sites: sites.to_vec(),
        };
        // A stale pid file would make the readiness check lie.
        let _ = std::fs::remove_file(apache.pid_file());
        std::fs::write(apache.conf_path(), render_config(dir, sites))
            .unwrap_or_else(|e| panic!("write {}: {e}", apache.conf_path().display()));
        apache
    }

    /// Starts Apache with a config the test wrote itself at `DIR/apache2.conf` (its PidFile
    /// must be `DIR/apache2.pid`), and waits until `ports` accept TCP.
    pub fn start_custom(dir: &Path, ports: &[u16]) -> Apache {
        std::fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut apache = Apache {
            parent: None,
            root: dir.to_owned(),
            sites: ports
                .iter()
                .map(|&port| Site {
                    port,
                    server_names: Vec::new(),
                    cert_file: PathBuf::new(),
                    key_file: PathBuf::new(),
                })
                .collect(),
        };
        let _ = std::fs::remove_file(apache.pid_file());
        apache.launch();
        apache
    }

    /// Writes the config and starts `apache2 -d DIR -f DIR/apache2.conf -D FOREGROUND`;
    /// waits (up to 10 s) until the pid file names the parent and every port accepts TCP.
    /// Panics with Apache's logs if startup fails.
    pub fn start(dir: &Path, sites: &[Site]) -> Apache {
        let mut apache = Apache::configure(dir, sites);
        apache.launch();
        apache
    }

    fn launch(&mut self) {
        let out_path = self.root.join("logs/stdout.log");
        let out = std::fs::File::create(&out_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
        let err = out.try_clone().expect("dup apache stdout.log handle");
        let parent = Child::spawn(
            "apache2",
            Command::new("apache2")
                .arg("-d")
                .arg(&self.root)
                .arg("-f")
                .arg(self.conf_path())
                .arg("-D")
                .arg("FOREGROUND")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        self.parent = Some(parent);
        let mut ports: Vec<u16> = self.sites.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        let parent_pid = self.parent_pid().to_string();
        let pid_file = self.pid_file();
        let mut exited = None;
        let up = wait_until(STARTUP_TIMEOUT, || {
            if let Some(status) = self.parent.as_mut().and_then(|p| p.try_wait()) {
                exited = Some(status);
                return true;
            }
            let pid_ok = std::fs::read_to_string(&pid_file)
                .is_ok_and(|content| content.trim() == parent_pid);
            pid_ok && ports.iter().all(|&p| tcp_accepts(p))
        });
        if let Some(status) = exited {
            panic!("apache2 exited during startup ({status}):\n{}", self.log());
        }
        assert!(
            up,
            "apache2 not ready within {STARTUP_TIMEOUT:?} (ports {ports:?}):\n{}",
            self.log()
        );
    }

    pub fn conf_path(&self) -> PathBuf {
        self.root.join("apache2.conf")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("apache2.pid")
    }

    /// Pid of the parent (the process the harness spawned).
    pub fn parent_pid(&self) -> u32 {
        self.parent.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Whether the parent process is still running (it exits when a graceful restart
    /// cannot load the new config).
    pub fn is_alive(&mut self) -> bool {
        self.parent.as_mut().is_some_and(|p| p.is_running())
    }

    /// Pids of the parent's live children.
    pub fn children(&self) -> Vec<u32> {
        child_pids(self.parent_pid())
    }

    /// `["apache2", "-d", ROOT, "-f", CONF, "-t"]`.
    pub fn test_command(&self) -> Vec<String> {
        self.command(&["-t"])
    }

    /// `["apache2", "-d", ROOT, "-f", CONF, "-k", "graceful"]`: starts Apache when it is not
    /// running (what certagent must never let happen).
    pub fn graceful_command(&self) -> Vec<String> {
        self.command(&["-k", "graceful"])
    }

    pub fn command(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec!["apache2".to_owned(), "-d".to_owned()];
        cmd.push(self.root.to_str().expect("UTF-8 root").to_owned());
        cmd.push("-f".to_owned());
        cmd.push(self.conf_path().to_str().expect("UTF-8 conf").to_owned());
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd
    }

    /// Runs `argv`; `(exit code, stdout + stderr)`.
    pub fn run(argv: &[String]) -> (i32, String) {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/error.log")).unwrap_or_default()
    }

    /// error.log plus the parent's stdout/stderr, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "===== apache error.log =====\n{}\n===== apache stdout/stderr =====\n{}",
            self.error_log(),
            std::fs::read_to_string(self.root.join("logs/stdout.log")).unwrap_or_default()
        )
    }

    /// Stops Apache: SIGTERM to the parent, then SIGKILL to it and the children it had if it
    /// has not exited within 5 s. Idempotent; also run on drop.
    pub fn stop(&mut self) {
        let Some(parent) = self.parent.as_mut() else {
            return;
        };
        if parent.wait_timeout(Duration::ZERO).is_some() {
            return;
        }
        let pid = parent.pid();
        let children = child_pids(pid);
        send_signal(pid, "TERM");
        if parent.wait_timeout(SHUTDOWN_TIMEOUT).is_none() {
            parent.kill();
        }
        for c in children {
            let is_apache = std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|comm| comm.trim() == "apache2");
            if is_apache && pid_alive(c) {
                send_signal(c, "KILL");
                wait_until(SHUTDOWN_TIMEOUT, || !pid_alive(c));
            }
        }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
    }
}

fn q(path: &Path) -> String {
    let s = path.to_str().expect("apache paths must be UTF-8");
    assert!(
        !s.contains('"') && !s.contains('\\'),
        "unsupported character in apache path {s:?}"
    );
    format!("\"{s}\"")
}

/// The self-contained apache2.conf.
fn render_config(root: &Path, sites: &[Site]) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# Generated by the certagent integration-test harness.");
    let _ = writeln!(c, "ServerRoot {}", q(root));
    let _ = writeln!(c, "ServerName 127.0.0.1");
    for (module, file) in [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("socache_shmcb_module", "mod_socache_shmcb.so"),
        ("ssl_module", "mod_ssl.so"),
    ] {
        let _ = writeln!(c, "LoadModule {module} {MODULES}/{file}");
    }
    let _ = writeln!(c, "PidFile {}", q(&root.join("apache2.pid")));
    let _ = writeln!(c, "ErrorLog {}", q(&root.join("logs/error.log")));
    let _ = writeln!(c, "LogLevel info");
    let _ = writeln!(c, "DefaultRuntimeDir {}", q(root));
    let _ = writeln!(c, "User nobody");
    let _ = writeln!(c, "Group nogroup");
    let _ = writeln!(c, "StartServers 1");
    let _ = writeln!(c, "SSLSessionCache none");
    let _ = writeln!(c, "<IfDefine CERTAGENT_FAIL_TEST>");
    let _ = writeln!(c, "    CertagentNoSuchDirective on");
    let _ = writeln!(c, "</IfDefine>");
    let mut ports: Vec<u16> = sites.iter().map(|s| s.port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let _ = writeln!(c, "Listen 127.0.0.1:{port}");
    }
    for site in sites {
        let _ = writeln!(c, "<VirtualHost 127.0.0.1:{}>", site.port);
        if let Some((first, rest)) = site.server_names.split_first() {
            let _ = writeln!(c, "    ServerName {first}");
            if !rest.is_empty() {
                let _ = writeln!(c, "    ServerAlias {}", rest.join(" "));
            }
        }
        let _ = writeln!(c, "    SSLEngine on");
        let _ = writeln!(c, "    SSLCertificateFile {}", q(&site.cert_file));
        let _ = writeln!(c, "    SSLCertificateKeyFile {}", q(&site.key_file));
        let _ = writeln!(c, "</VirtualHost>");
    }
    c
}
