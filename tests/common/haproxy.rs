//! A private HAProxy (Debian's `haproxy`) in master-worker mode (`-W -db`, in the foreground
//! as a child of the test, stopped by that pid): one TLS frontend on 127.0.0.1 whose `crt` is
//! a bundle (key + leaf + chain), a pid file naming the master, and the runtime API on a UNIX
//! socket with `level admin`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{Child, child_pids, send_signal, wait_until};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Haproxy {
    master: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Haproxy {
    /// Writes `dir/haproxy.cfg` serving `bundle` on `127.0.0.1:port`, starts the master and
    /// waits until its pid file names it, a worker runs and the port accepts connections.
    /// `more`: further frontends, each `(port, bundle)`.
    pub fn start(dir: &Path, port: u16, bundle: &Path, more: &[(u16, &Path)]) -> Haproxy {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut cfg = format!(
            "global\n    stats socket {sock} mode 600 level admin\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n",
            sock = dir.join("admin.sock").display(),
        );
        for (i, (p, b)) in std::iter::once((port, bundle))
            .chain(more.iter().copied())
            .enumerate()
        {
            cfg.push_str(&format!(
                "\nfrontend fe{i}\n    bind 127.0.0.1:{p} ssl crt {b}\n    http-request return status 200 content-type text/plain string ok\n",
                b = b.display(),
            ));
        }
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, cfg).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let pid_file = dir.join("haproxy.pid");
        let _ = std::fs::remove_file(&pid_file);
        let out = std::fs::File::create(dir.join("haproxy.out")).expect("create haproxy.out");
        let err = out.try_clone().expect("dup haproxy.out");
        let master = Child::spawn(
            "haproxy",
            Command::new("haproxy")
                .args(["-W", "-db", "-f"])
                .arg(&conf)
                .arg("-p")
                .arg(&pid_file)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let mut haproxy = Haproxy {
            master,
            dir: dir.to_path_buf(),
            port,
        };
        let pid = haproxy.master.pid().to_string();
        let up = wait_until(STARTUP_TIMEOUT, || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid)
                && !haproxy.workers().is_empty()
                && TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
        });
        assert!(
            up && haproxy.master.is_running(),
            "haproxy did not start: {}",
            haproxy.log()
        );
        haproxy
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// The worker processes (children of the master) now.
    pub fn workers(&self) -> Vec<u32> {
        let mut pids = child_pids(self.master.pid());
        pids.sort_unstable();
        pids
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    pub fn runtime_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `haproxy -c -q -f CONFIG`.
    pub fn test_command(&self) -> Vec<String> {
        vec![
            "haproxy".into(),
            "-c".into(),
            "-q".into(),
            "-f".into(),
            self.dir.join("haproxy.cfg").display().to_string(),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.out")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // The master stops its workers on SIGTERM.
        if self.master.is_running() {
            send_signal(self.master.pid(), "TERM");
            self.master.wait_timeout(Duration::from_secs(5));
        }
        self.master.kill();
    }
}
