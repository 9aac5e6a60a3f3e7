//! Running the real `certagent` binary against a test environment: a temp directory with a
//! state dir, a runtime dir, an nginx serving an initial certificate, and a config file the
//! test can rewrite.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use super::{Nginx, Site, TlsCa, reserved_port, served_leaf, spki_of_cert_der, spki_of_key_pem};

/// The outcome of one certagent run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// When `CERTAGENT_TEST_OUTPUT_DIR` is set, a new file there (created with the directory) that
/// gets everything one certagent process prints, after a header line (`#% capture: `, which
/// the scan skips) naming the test binary, the test and the command line; CI scans these files
/// for secrets (`tests/secrets.sh`). `None` when the variable is unset.
fn capture_file(kind: &str, config: &Path, args: &[&str]) -> Option<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(std::env::var_os("CERTAGENT_TEST_OUTPUT_DIR")?);
    std::fs::create_dir_all(&dir).expect("create CERTAGENT_TEST_OUTPUT_DIR");
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        "{exe}.{}.{nanos}.{seq}.{kind}.log",
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    writeln!(
        f,
        "#% capture: {exe} {test}: certagent --config {} {}",
        config.display(),
        args.join(" ")
    )
    .expect("write capture file");
    Some(f)
}

pub fn run_certagent(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_certagent_under(&[], config, args, env)
}

/// `setpriv` argv that runs a command as root with only the capabilities of the shipped unit
/// (`CapabilityBoundingSet=` of systemd/certagent.service), for `run_certagent_under`.
pub fn with_unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/certagent.service"
    ))
    .expect("read systemd/certagent.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.iter().any(|c| c == "+sys_ptrace"), "{caps:?}");
    [
        "setpriv",
        &format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// `run_certagent` with the binary run by `wrapper` (e.g. `setpriv` with the unit's
/// capabilities): `wrapper... certagent --config CONFIG args...`.
pub fn run_certagent_under(
    wrapper: &[&str],
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let bin = env!("CARGO_BIN_EXE_certagent");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        // The harness's, not certagent's (hooks would see it among their CERTAGENT_* vars).
        .env_remove("CERTAGENT_TEST_OUTPUT_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run certagent");
    if let Some(mut f) = capture_file("run", config, args) {
        let _ = writeln!(f, "exit {:?}\n--- stdout", out.status.code());
        let _ = f.write_all(&out.stdout);
        let _ = f.write_all(b"\n--- stderr\n");
        let _ = f.write_all(&out.stderr);
    }
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A web server with one TLS site on loopback, an initial certificate from a test CA, and a
/// certagent config pointing at it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub nginx: Nginx,
    pub port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub config: PathBuf,
    pub initial_leaf: Vec<u8>,
    pub names: Vec<String>,
}

impl Env {
    /// nginx serving a certificate for `names` (valid for 60 days from 10 days ago).
    pub fn new(names: &[&str], http_port: Option<u16>) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TlsCa::new(&dir.path().join("testca"));
        let ssl = dir.path().join("ssl");
        std::fs::create_dir_all(&ssl).expect("mkdir ssl");
        let cert_file = ssl.join("site.pem");
        let key_file = ssl.join("site.key");
        let now = SystemTime::now();
        let leaf = ca.issue_leaf(
            names,
            now - Duration::from_secs(10 * 86_400),
            now + Duration::from_secs(60 * 86_400),
        );
        leaf.write(&cert_file, &key_file);
        let port = reserved_port();
        let site = Site {
            port,
            server_names: names.iter().map(|s| s.to_string()).collect(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let nginx = Nginx::start_with_http(&dir.path().join("nginx"), &[site], http_port);
        let config = dir.path().join("etc").join("config.toml");
        std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir etc");
        Env {
            dir,
            nginx,
            port,
            cert_file,
            key_file,
            config,
            initial_leaf: leaf.cert_der.clone(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Replaces the certificate file (a link into the state, once certagent installed) with a
    /// plain file: a leaf for the key in service and the first name, from "Other Test CA".
    pub fn swap_in_another_cas_leaf(&self) -> super::tls::Leaf {
        let other = TlsCa::named(
            &self.dir.path().join("other"),
            &[(rcgen::DnType::CommonName, "Other Test CA")],
        );
        let key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(&self.key_file).expect("key file"))
                .expect("key");
        let now = SystemTime::now();
        let swapped = other.issue_leaf_for_key(
            &[self.names[0].as_str()],
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(60 * 86_400),
            &key,
        );
        std::fs::remove_file(&self.cert_file).expect("remove cert file");
        std::fs::write(&self.cert_file, &swapped.cert_pem).expect("write cert file");
        swapped
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Write the config: `[agent]`, `[server.web]` for our nginx, `[certificate.site]` with the
    /// given extra lines, plus any extra tables (issuers).
    pub fn write_config(&self, cert_extra: &str, extra_tables: &str) {
        self.write_config_with_server(
            cert_extra,
            extra_tables,
            &format!("test_command = {}", toml_list(&self.nginx.test_command())),
        );
    }

    pub fn write_config_with_server(
        &self,
        cert_extra: &str,
        extra_tables: &str,
        server_extra: &str,
    ) {
        // The test CA's certificate is in service: the local CA must be asked for by name.
        let cert_extra = if cert_extra.contains("issuer") {
            cert_extra.to_string()
        } else {
            format!("issuer = \"internal\"\n{cert_extra}")
        };
        let text = format!(
            r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"
lock_timeout = "5s"

[server.web]
kind = "nginx"
verify = ["{addr}"]
pid_file = "{pid}"
verify_timeout = "5s"
{server_extra}

[certificate.site]
names = {names}
server = "web"
cert_file = "{cert}"
key_file = "{key}"
{cert_extra}

{extra_tables}
"#,
            state = self.state_dir().display(),
            run = self.dir.path().join("run").display(),
            addr = self.addr(),
            pid = self.nginx.pid_file().display(),
            names = toml_list(&self.names),
            cert = self.cert_file.display(),
            key = self.key_file.display(),
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn certagent(&self, args: &[&str]) -> Run {
        run_certagent(&self.config, args, &[])
    }

    /// The leaf nginx presents now.
    pub fn served(&self) -> Vec<u8> {
        served_leaf(&self.addr(), &self.names[0]).unwrap_or_else(|| {
            panic!(
                "nginx does not answer on {}\n{}",
                self.addr(),
                self.nginx.log()
            )
        })
    }

    /// True when nginx serves a leaf whose key is the one in the key file.
    pub fn serves_key_file(&self) -> bool {
        let key = std::fs::read_to_string(&self.key_file).expect("read key file");
        spki_of_cert_der(&self.served()) == spki_of_key_pem(&key)
    }
}

pub fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `certagent run` as a child process, its stderr in a file. Dropping it sends SIGTERM and
/// waits (SIGKILL by pid after 10 s).
pub struct Daemon {
    child: Option<std::process::Child>,
    log: PathBuf,
    /// With `CERTAGENT_TEST_OUTPUT_DIR`: the capture file (it gets the daemon's stdout as it
    /// goes) and a handle on the log, copied into it when the daemon has stopped (the handle
    /// keeps the log readable even if the test's temp dir is gone by then).
    capture: Option<(std::fs::File, std::fs::File)>,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let err = std::fs::File::create(log).expect("daemon log file");
        let capture = capture_file("daemon", config, &["-v", "run"]).map(|f| {
            let log = std::fs::File::open(log).expect("daemon log file");
            (f, log)
        });
        let stdout = match &capture {
            Some((f, _)) => std::process::Stdio::from(f.try_clone().expect("capture file")),
            None => std::process::Stdio::null(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certagent"));
        cmd.arg("--config")
            .arg(config)
            .arg("-v")
            .arg("run")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CERTAGENT_TEST_OUTPUT_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .expect("spawn daemon");
        let d = Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            capture,
        };
        d.wait_log("certagent daemon ready", Duration::from_secs(20));
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (panics with the log after `timeout`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let found = super::wait_until(timeout, || self.log().contains(needle));
        assert!(found, "daemon log never said {needle:?}:\n{}", self.log());
    }

    /// Wait until `needle` appears in the log after byte `offset` (from `log_len`).
    pub fn wait_log_after(&self, offset: usize, needle: &str, timeout: Duration) {
        let found = super::wait_until(timeout, || {
            self.log().get(offset..).is_some_and(|l| l.contains(needle))
        });
        assert!(
            found,
            "daemon log never said {needle:?} after byte {offset}:\n{}",
            self.log()
        );
    }

    /// How much the daemon has logged so far.
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// A positive signal that the daemon has handled every file change made before this
    /// call: rewrite `config` with the same bytes (a change the daemon reads and finds
    /// unchanged), and wait for the end of the batch that carried it. inotify reports events
    /// in order, so every earlier change was in that batch or an earlier one, and whatever
    /// work they called for has been started (and logged) by then. Check that something did
    /// not happen only after this.
    pub fn quiesce(&self, config: &Path) {
        let offset = self.log_len();
        let bytes = std::fs::read(config).expect("read config");
        std::fs::write(config, bytes).expect("rewrite config");
        let found = super::wait_until(Duration::from_secs(20), || {
            let log = self.log();
            let Some(tail) = log.get(offset..) else {
                return false;
            };
            tail.find("their content did not")
                .is_some_and(|i| tail[i..].contains("file changes handled"))
        });
        assert!(found, "the daemon did not settle:\n{}", self.log());
    }

    pub fn signal(&self, sig: &str) {
        assert!(
            super::send_signal(self.pid(), sig),
            "failed to send SIG{sig}"
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM and wait for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let code = self.stop_child();
        if let Some((mut f, mut log)) = self.capture.take() {
            let mut text = Vec::new();
            let _ = log.rewind().and_then(|_| log.read_to_end(&mut text));
            let _ = f.write_all(b"\n--- stderr\n");
            let _ = f.write_all(&text);
        }
        code
    }

    fn stop_child(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        super::send_signal(child.id(), "TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
