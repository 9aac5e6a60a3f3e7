//! Web servers: configuration test, reload, and proof by TLS handshake that a given leaf is
//! being served. Commands run without a shell, with a timeout, their output captured for the
//! error report.

pub mod probe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::{Server, ServerKind};
use crate::error::{Error, Result};

/// Output kept from a failing command (the tail is what explains the failure).
const MAX_OUTPUT: usize = 4096;

pub struct WebServer {
    cfg: Server,
}

/// The result of looking at what every endpoint serves.
#[derive(Debug, PartialEq)]
pub enum Served {
    /// Every endpoint presents the wanted leaf.
    All,
    /// At least one endpoint does not; the text says which and what it saw.
    Not(String),
}

impl WebServer {
    pub fn new(cfg: &Server) -> WebServer {
        WebServer { cfg: cfg.clone() }
    }

    pub fn kind(&self) -> ServerKind {
        self.cfg.kind
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn under_systemd() -> bool {
        Path::new("/run/systemd/system").is_dir()
    }

    fn default_pid_file(&self) -> Option<PathBuf> {
        match self.cfg.kind {
            ServerKind::Nginx => Some(
                self.cfg
                    .pid_file
                    .clone()
                    .unwrap_or_else(|| "/run/nginx.pid".into()),
            ),
            _ => self.cfg.pid_file.clone(),
        }
    }

    /// Whether the server's master process is alive: `Some(false)` means certagent must not
    /// reload (and never starts it); `None` means it cannot tell (no pid file configured).
    pub fn is_running(&self) -> Option<bool> {
        if self.cfg.kind == ServerKind::None {
            return Some(false);
        }
        if self.reloads_through_systemctl() {
            return None; // systemctl knows; `systemctl reload` refuses an inactive unit
        }
        let pid_file = self.default_pid_file()?;
        Some(read_pid(&pid_file).is_some_and(|pid| kill(pid, None).is_ok()))
    }

    /// nginx with neither `pid_file` nor `reload_command`, on a host run by systemd: reloads
    /// go through `systemctl reload nginx`.
    fn reloads_through_systemctl(&self) -> bool {
        self.cfg.kind == ServerKind::Nginx
            && self.cfg.pid_file.is_none()
            && self.cfg.reload_command.is_none()
            && Self::under_systemd()
    }

    /// Run the configuration test (`nginx -t`, or `test_command`). Ok when there is none.
    ///
    /// When nginx is reloaded through systemctl the reload is the test: nginx.service's
    /// `ExecReload` (`nginx -s reload`) parses the whole configuration, certificate and key
    /// included, and refuses to signal the master when it is broken, so the failure comes back
    /// from `systemctl reload` and is rolled back like a failed test. Running `nginx -t` here
    /// as well would need write access to nginx's pid file and error logs, which certagent's
    /// hardened unit does not grant. A configured `test_command` always runs.
    pub async fn config_test(&self) -> Result<()> {
        let argv = match (&self.cfg.test_command, self.cfg.kind) {
            (Some(cmd), _) => cmd.clone(),
            (None, ServerKind::Nginx) if self.reloads_through_systemctl() => return Ok(()),
            (None, ServerKind::Nginx) => vec!["nginx".into(), "-t".into(), "-q".into()],
            (None, _) => return Ok(()),
        };
        run(&argv, self.timeout()).await.map_err(|e| {
            e.context(format!(
                "configuration test of server {:?} failed",
                self.cfg.name
            ))
        })
    }

    /// Ask the server to load the files again: `reload_command`, else (nginx) SIGHUP to the
    /// master from `pid_file`, else `systemctl reload nginx` under systemd.
    pub async fn reload(&self) -> Result<()> {
        let fail = |e: Error| e.context(format!("reload of server {:?} failed", self.cfg.name));
        if let Some(cmd) = &self.cfg.reload_command {
            return run(cmd, self.timeout()).await.map_err(fail);
        }
        match self.cfg.kind {
            ServerKind::None | ServerKind::Command => Ok(()),
            ServerKind::Nginx => {
                if self.reloads_through_systemctl() {
                    let argv = ["systemctl", "reload", "nginx"].map(String::from).to_vec();
                    return run(&argv, self.timeout()).await.map_err(fail);
                }
                let Some(pid_file) = self.default_pid_file() else {
                    return Ok(());
                };
                let pid = read_pid(&pid_file).ok_or_else(|| {
                    fail(Error::msg(format!(
                        "no pid in {:?}",
                        pid_file.display().to_string()
                    )))
                })?;
                kill(pid, Signal::SIGHUP)
                    .map_err(|e| fail(Error::msg(format!("failed to signal pid {pid}: {e}"))))
            }
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.command_timeout.0.max(1) as u64)
    }

    pub fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.verify_timeout.0.max(1) as u64)
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.cfg.verify
    }

    /// The nginx worker processes serving now (children of the master in the pid file).
    /// Taken before a reload, so that afterwards we can wait for exactly these to retire.
    pub fn workers(&self) -> Vec<Pid> {
        if self.cfg.kind != ServerKind::Nginx {
            return Vec::new();
        }
        let Some(master) = self.default_pid_file().and_then(|p| read_pid(&p)) else {
            return Vec::new();
        };
        children_of(master)
    }

    /// Wait until each of `old` has exited or renamed itself "worker process is shutting
    /// down" — nginx does that right after it closes its listening sockets, so from then on
    /// only new workers (with the new certificate) accept connections. Without this, a probe
    /// can meet the new worker while the next client still meets an old one (seen in tests).
    pub async fn wait_retired(&self, old: &[Pid], within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let busy = old.iter().any(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    !c.is_empty() && !String::from_utf8_lossy(&c).contains("shutting down")
                })
            });
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        log::warn!(server = self.cfg.name.as_str(); "old nginx workers still accept connections after the reload");
    }

    /// Probe every endpoint until each presents `leaf_der` in `CONFIRM_ROUNDS` consecutive
    /// rounds, or `within` passes. Nothing reports that a reload finished, so this looks; it
    /// never just sleeps and hopes. One sighting is not enough: for a few milliseconds after a
    /// reload nginx's old workers still accept connections next to the new ones (seen in the
    /// tests), so a single handshake can show the new leaf while the next shows the old one.
    pub async fn wait_served(&self, sni: &str, leaf_der: &[u8], within: Duration) -> Served {
        const CONFIRM_ROUNDS: u32 = 3;
        let deadline = Instant::now() + within;
        let mut confirmed = 0;
        loop {
            let mut last = None;
            for addr in &self.cfg.verify {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(200));
                match probe::served_leaf(*addr, sni, left.min(Duration::from_secs(5))).await {
                    Ok(der) if der == leaf_der => {}
                    Ok(der) => {
                        let serial = crate::keys::leaf_facts(&der)
                            .map(|l| l.serial)
                            .unwrap_or_else(|_| "?".into());
                        last = Some(format!("{addr} serves serial {serial}"));
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                None => confirmed += 1,
                Some(why) if Instant::now() >= deadline => return Served::Not(why),
                Some(_) => confirmed = 0,
            }
            if confirmed == CONFIRM_ROUNDS {
                return Served::All;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The SNI to probe with: the first configured name (a wildcard gets a concrete label).
pub fn probe_sni(first_name: &str) -> String {
    match first_name.strip_prefix("*.") {
        Some(rest) => format!("certagent-probe.{rest}"),
        None => first_name.to_string(),
    }
}

/// Processes whose parent is `parent`, from /proc (no helper binaries, no shell).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may contain spaces and ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                        == Some(parent.as_raw())
                })
        })
        .map(Pid::from_raw)
        .collect()
}

fn read_pid(path: &Path) -> Option<Pid> {
    let text = crate::store::fsutil::read_capped(path, 64).ok()??;
    let pid: i32 = String::from_utf8_lossy(&text).trim().parse().ok()?;
    (pid > 1).then(|| Pid::from_raw(pid))
}

/// Run `argv` without a shell; error with the exit status and the captured output.
pub async fn run(argv: &[String], timeout: Duration) -> Result<()> {
    let shown = argv.join(" ");
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(Error::msg(format!(
                "`{shown}` did not finish within {}s and was killed",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(Error::msg(format!("failed to run `{shown}`: {e}"))),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let text = text.trim();
    let tail = if text.len() > MAX_OUTPUT {
        &text[text.len() - MAX_OUTPUT..]
    } else {
        text
    };
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    Err(Error::msg(format!(
        "`{shown}` failed with {status}: {}",
        tail.replace('\n', " | ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_report_status_output_and_timeouts() {
        let ok = run(&["true".into()], Duration::from_secs(5)).await;
        assert!(ok.is_ok());
        let err = run(
            &["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c echo boom >&2; exit 3` failed with exit status 3: boom"
        );
        let err = run(&["sleep".into(), "5".into()], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sleep 5` did not finish within 0s and was killed"
        );
        let err = run(&["/nonexistent/x".into()], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to run `/nonexistent/x`"),
            "{err}"
        );
    }

    #[test]
    fn children_are_found_by_parent_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = Pid::from_raw(std::process::id() as i32);
        let kids = children_of(me);
        assert!(kids.contains(&Pid::from_raw(child.id() as i32)), "{kids:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn wildcard_names_get_a_concrete_sni() {
        assert_eq!(probe_sni("*.example.com"), "certagent-probe.example.com");
        assert_eq!(probe_sni("www.example.com"), "www.example.com");
    }
}
