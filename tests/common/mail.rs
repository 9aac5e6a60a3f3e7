//! Private mail servers on loopback for the STARTTLS tests: a Postfix master
//! ([`Postfix`]: its own config directory, queue, data directory and log, one
//! `smtpd` on 127.0.0.1 offering STARTTLS) and a Dovecot ([`Dovecot`]: its own
//! config file, base and state directories and log, IMAP and POP3 on
//! 127.0.0.1 with STARTTLS). Both run in the foreground as children of the
//! test (`master -d`, `dovecot -F`) and are stopped by that pid.
//!
//! [`starttls_leaf`] reads what such a port presents with `openssl s_client
//! -starttls`, independently of certagent's own STARTTLS code.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{Child, send_signal, wait_until};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// A running Postfix master (`master -d`, not detached) with one `smtpd` on
/// `127.0.0.1:port` (`smtpd_tls_security_level = may`). Dropping it sends
/// SIGTERM to the master (which stops its children), then SIGKILL by pid.
pub struct Postfix {
    master: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Postfix {
    /// Writes `dir/conf/{main,master}.cf` with the TLS pair `cert`/`key`,
    /// creates the queue and data directories Postfix expects (owned by the
    /// `postfix` user where Postfix needs it), starts the master and waits
    /// until its pid file names it and the port accepts connections.
    pub fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> Postfix {
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&conf, &data, &queue.join("pid")] {
            mkdir(d);
        }
        let main = format!(
            "compatibility_level = 3.6\n\
             config_directory = {conf}\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mail.test\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             smtpd_tls_cert_file = {cert}\n\
             smtpd_tls_key_file = {key}\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_session_cache_database =\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n",
            conf = conf.display(),
            queue = queue.display(),
            data = data.display(),
            cert = cert.display(),
            key = key.display(),
            log = dir.join("maillog").display(),
            dir = dir.display(),
        );
        write(&conf.join("main.cf"), &main);
        write(
            &conf.join("master.cf"),
            &format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 tlsmgr unix - - n 1000? 1 tlsmgr\n\
                 anvil unix - - n - 1 anvil\n\
                 cleanup unix n - n - 0 cleanup\n\
                 proxymap unix - - n - - proxymap\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        );
        // tlsmgr keeps its state in the data directory, as the postfix user.
        run(Command::new("chown").arg("postfix").arg(&data));
        // `postfix check` creates the queue's subdirectories with the owners and modes
        // Postfix expects (private/ and public/ for its services' sockets among them).
        run(Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("check")
            .stdout(Stdio::null()));
        let out = std::fs::File::create(dir.join("master.out")).expect("create master.out");
        let err = out.try_clone().expect("dup master.out");
        let master = Child::spawn(
            "postfix master",
            Command::new("/usr/lib/postfix/sbin/master")
                .arg("-c")
                .arg(&conf)
                .arg("-d")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let mut postfix = Postfix {
            master,
            dir: dir.to_path_buf(),
            port,
        };
        let pid_file = queue.join("pid/master.pid");
        let pid = postfix.master.pid().to_string();
        let up = wait_until(STARTUP_TIMEOUT, || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid) && tcp_accepts(port)
        });
        assert!(
            up && postfix.master.is_running(),
            "postfix did not start: {}",
            postfix.log()
        );
        postfix
    }

    /// `postfix -c CONF reload`: the master re-reads its configuration and new
    /// `smtpd` processes load the certificate again.
    pub fn reload_command(&self) -> Vec<String> {
        self.postfix_command("reload")
    }

    /// `postfix -c CONF check`: Postfix's own configuration and permission check.
    pub fn test_command(&self) -> Vec<String> {
        self.postfix_command("check")
    }

    fn postfix_command(&self, verb: &str) -> Vec<String> {
        vec![
            "postfix".into(),
            "-c".into(),
            self.dir.join("conf").display().to_string(),
            verb.into(),
        ]
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The mail log and the master's own output.
    pub fn log(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!(
            "--- maillog ---\n{}\n--- master.out ---\n{}",
            read("maillog"),
            read("master.out")
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.master.is_running() {
            send_signal(self.master.pid(), "TERM");
            self.master.wait_timeout(Duration::from_secs(5));
        }
        self.master.kill();
    }
}

/// A running Dovecot (`dovecot -F`) with IMAP on `imap_port` and POP3 on
/// `pop3_port`, both on 127.0.0.1 with STARTTLS (no imaps/pop3s). Dropping it
/// sends SIGTERM to the master, then SIGKILL by pid.
pub struct Dovecot {
    master: Child,
    dir: PathBuf,
}

impl Dovecot {
    pub fn start(dir: &Path, imap_port: u16, pop3_port: u16, cert: &Path, key: &Path) -> Dovecot {
        for d in ["run", "state"] {
            mkdir(&dir.join(d));
        }
        let conf = format!(
            "base_dir = {dir}/run\n\
             state_dir = {dir}/state\n\
             log_path = {dir}/dovecot.log\n\
             instance_name = certagent-test-{imap_port}\n\
             protocols = imap pop3\n\
             listen = 127.0.0.1\n\
             ssl = yes\n\
             ssl_cert = <{cert}\n\
             ssl_key = <{key}\n\
             mail_location = maildir:{dir}/mail/%u\n\
             passdb {{\n  driver = static\n  args = password=unused\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={dir}/home/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service pop3-login {{\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {pop3_port}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        );
        write(&dir.join("dovecot.conf"), &conf);
        let out = std::fs::File::create(dir.join("dovecot.out")).expect("create dovecot.out");
        let err = out.try_clone().expect("dup dovecot.out");
        let master = Child::spawn(
            "dovecot",
            Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(dir.join("dovecot.conf"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let mut dovecot = Dovecot {
            master,
            dir: dir.to_path_buf(),
        };
        let up = wait_until(STARTUP_TIMEOUT, || {
            tcp_accepts(imap_port) && tcp_accepts(pop3_port)
        });
        assert!(
            up && dovecot.master.is_running(),
            "dovecot did not start: {}",
            dovecot.log()
        );
        dovecot
    }

    fn conf(&self) -> String {
        self.dir.join("dovecot.conf").display().to_string()
    }

    /// `doveadm -c CONF reload`.
    pub fn reload_command(&self) -> Vec<String> {
        vec!["doveadm".into(), "-c".into(), self.conf(), "reload".into()]
    }

    /// `doveconf -c CONF -n`: parses the configuration (and reads `ssl_cert`/`ssl_key`).
    pub fn test_command(&self) -> Vec<String> {
        vec!["doveconf".into(), "-c".into(), self.conf(), "-n".into()]
    }

    pub fn log(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!(
            "--- dovecot.log ---\n{}\n--- dovecot.out ---\n{}",
            read("dovecot.log"),
            read("dovecot.out")
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if self.master.is_running() {
            send_signal(self.master.pid(), "TERM");
            self.master.wait_timeout(Duration::from_secs(5));
        }
        self.master.kill();
    }
}

/// The leaf (DER) a STARTTLS port presents after `proto`'s upgrade ("smtp",
/// "imap", "pop3"), read with `openssl s_client -starttls PROTO`; `None` when
/// the upgrade or the handshake fails.
pub fn starttls_leaf(addr: &str, proto: &str, sni: &str) -> Option<Vec<u8>> {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", addr])
        .args(["-starttls", proto, "-servername", sni])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[begin..].find("-----END CERTIFICATE-----")? + begin;
    let pem = &text[begin..end + "-----END CERTIFICATE-----".len()];
    Some(super::tls::pem_to_der(pem))
}
