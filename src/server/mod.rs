//! Web servers (nginx, Apache, any server driven by commands): configuration test, reload,
//! and proof by TLS handshake that a given leaf is being served. Commands run without a
//! shell, with a timeout, their output captured for the error report. Nothing here ever
//! starts a server that is not running.

pub(crate) mod apache;
pub(crate) mod haproxy;
pub(crate) mod probe;
pub(crate) mod starttls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::{ApacheLayout, Server, ServerKind, Starttls};
use crate::core::CertName;
use crate::error::{Error, Result};

pub(crate) struct WebServer {
    cfg: Server,
    /// Apache only: the layout in force (configured, else detected).
    layout: ApacheLayout,
}

/// The result of looking at what every endpoint serves.
#[derive(Debug, PartialEq)]
pub(crate) enum Served {
    /// Every endpoint presents the wanted leaf.
    All,
    /// At least one endpoint does not; the text says which and what it saw.
    Not(String),
}

/// How long a `verify` endpoint has to accept a TCP connection before a re-issue (and in
/// `check`): on the host itself a refusal is immediate, so this only bounds a filtered port.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a `verify` endpoint accepts a TCP connection (no TLS: the certificate it serves
/// is not the question before a re-issue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Answered,
    /// Connection refused: nothing listens there.
    Refused(String),
    /// Timed out, unreachable, ...: something is in the way, or the host is slow.
    Silent(String),
}

/// Connect to `addr` (blocking, at most `timeout`): for `check`, off the event loop.
pub(crate) fn answer(addr: std::net::SocketAddr, timeout: Duration) -> Answer {
    match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Answer::Answered,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Answer::Refused(format!("connect to {addr}: {e}"))
        }
        Err(e) => Answer::Silent(format!("connect to {addr}: {e}")),
    }
}

/// The processes serving before a reload, to wait for after it.
pub(crate) struct OldWorkers {
    master: Option<Pid>,
    pids: Vec<Pid>,
}

impl WebServer {
    pub(crate) fn new(cfg: &Server) -> WebServer {
        let layout = match (cfg.kind, cfg.layout) {
            (_, Some(l)) => l,
            (ServerKind::Apache, None) => ApacheLayout::detect(),
            (_, None) => ApacheLayout::Debian, // unused for other kinds
        };
        WebServer {
            cfg: cfg.clone(),
            layout,
        }
    }

    pub(crate) fn kind(&self) -> ServerKind {
        self.cfg.kind
    }

    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    fn under_systemd() -> bool {
        Path::new("/run/systemd/system").is_dir()
    }

    /// nginx, Apache and HAProxy are reloaded through systemd when nothing else is configured.
    fn via_systemd(&self) -> bool {
        matches!(
            self.cfg.kind,
            ServerKind::Nginx | ServerKind::Apache | ServerKind::Haproxy
        ) && self.cfg.pid_file.is_none()
            && self.cfg.reload_command.is_none()
            && Self::under_systemd()
    }

    fn default_pid_file(&self) -> Option<PathBuf> {
        match self.cfg.kind {
            ServerKind::Nginx => Some(
                self.cfg
                    .pid_file
                    .clone()
                    .unwrap_or_else(|| "/run/nginx.pid".into()),
            ),
            ServerKind::Apache => Some(apache::default_pid_file(
                self.layout,
                self.cfg.pid_file.as_deref(),
            )),
            _ => self.cfg.pid_file.clone(),
        }
    }

    fn master(&self) -> Option<Pid> {
        self.default_pid_file().and_then(|p| read_pid(&p))
    }

    /// Whether the server's master process is alive: `Some(false)` means certagent must not
    /// reload (and never starts it); `None` means it cannot tell (no pid file configured).
    pub(crate) fn is_running(&self) -> Option<bool> {
        if self.cfg.kind == ServerKind::None {
            return Some(false);
        }
        if self.via_systemd() {
            return None; // systemctl knows; `systemctl reload` refuses an inactive unit
        }
        let pid_file = self.default_pid_file()?;
        Some(read_pid(&pid_file).is_some_and(|pid| kill(pid, None).is_ok()))
    }

    /// The pid file certagent reads for this server, if any (for messages).
    pub(crate) fn pid_file(&self) -> Option<PathBuf> {
        self.default_pid_file()
    }

    /// nginx with neither `pid_file` nor `reload_command`, on a host run by systemd: reloads
    /// go through `systemctl reload nginx`.
    fn reloads_through_systemctl(&self) -> bool {
        self.cfg.kind == ServerKind::Nginx && self.via_systemd()
    }

    /// Run the configuration test (`nginx -t`, `apache2ctl -t`, or `test_command`). Ok when
    /// there is none.
    ///
    /// When nginx is reloaded through systemctl the reload is the test: nginx.service's
    /// `ExecReload` (`nginx -s reload`) parses the whole configuration, certificate and key
    /// included, and refuses to signal the master when it is broken, so the failure comes back
    /// from `systemctl reload` and is rolled back like a failed test. Running `nginx -t` here
    /// as well would need write access to nginx's pid file and error logs, which certagent's
    /// hardened unit does not grant. A configured `test_command` always runs.
    pub(crate) async fn config_test(&self) -> Result<()> {
        let argv = match (&self.cfg.test_command, self.cfg.kind) {
            (Some(cmd), _) => cmd.clone(),
            (None, ServerKind::Nginx) if self.reloads_through_systemctl() => return Ok(()),
            (None, ServerKind::Nginx) => vec!["nginx".into(), "-t".into(), "-q".into()],
            (None, ServerKind::Apache) => self.layout.test_command(),
            (None, ServerKind::Haproxy) => haproxy::test_command(),
            (None, _) => return Ok(()),
        };
        run(&argv, self.timeout()).await.map_err(|e| {
            e.context(format!(
                "configuration test of server {:?} failed",
                self.cfg.name
            ))
        })
    }

    /// Ask the server to load the files again: `reload_command`; else `systemctl reload`
    /// under systemd when no pid file is configured; else a signal to the master from the
    /// pid file (nginx SIGHUP, Apache SIGUSR1 — a graceful restart, HAProxy's master (`-W`)
    /// SIGUSR2).
    pub(crate) async fn reload(&self) -> Result<()> {
        let fail = |e: Error| e.context(format!("reload of server {:?} failed", self.cfg.name));
        if let Some(cmd) = &self.cfg.reload_command {
            return run(cmd, self.timeout()).await.map_err(fail);
        }
        let (unit, signal) = match self.cfg.kind {
            ServerKind::None | ServerKind::Command => return Ok(()),
            ServerKind::Nginx => ("nginx", Signal::SIGHUP),
            ServerKind::Apache => (self.layout.unit(), Signal::SIGUSR1),
            ServerKind::Haproxy => ("haproxy", Signal::SIGUSR2),
        };
        if self.via_systemd() {
            let argv = ["systemctl", "reload", unit].map(String::from).to_vec();
            return run(&argv, self.timeout()).await.map_err(fail);
        }
        let Some(pid_file) = self.default_pid_file() else {
            return Ok(());
        };
        let shown = pid_file.display().to_string();
        let pid =
            read_pid(&pid_file).ok_or_else(|| fail(Error::msg(format!("no pid in {shown:?}"))))?;
        if self.cfg.kind == ServerKind::Apache
            && let Some((false, exe)) = apache::is_apache(pid)
        {
            // A recycled pid must never get Apache's signal.
            return Err(fail(Error::msg(format!(
                "pid {pid} from {shown:?} is {:?}, not Apache; not signalling it",
                exe.display().to_string()
            )))
            .with_hint("the pid file is stale: check pid_file, or that Apache is running"));
        }
        if self.cfg.kind == ServerKind::Nginx && !is_nginx(pid) {
            // A recycled pid must never get nginx's signal either.
            return Err(fail(Error::msg(format!(
                "pid {pid} from {shown:?} is not an nginx master; not signalling it"
            )))
            .with_hint("the pid file is stale: check pid_file, or that nginx is running"));
        }
        if self.cfg.kind == ServerKind::Haproxy && !haproxy::is_haproxy(pid) {
            return Err(fail(Error::msg(format!(
                "pid {pid} from {shown:?} is not HAProxy; not signalling it"
            )))
            .with_hint(
                "the pid file is stale: check pid_file (the master's, haproxy -W), or that HAProxy is running",
            ));
        }
        kill(pid, signal).map_err(|e| fail(Error::msg(format!("failed to signal pid {pid}: {e}"))))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.command_timeout.0.max(1) as u64)
    }

    /// HAProxy's runtime API socket, when certificates are swapped through it.
    pub(crate) fn runtime_socket(&self) -> Option<&Path> {
        self.cfg.runtime_socket.as_deref()
    }

    /// Swap the certificate HAProxy loaded from `crt_path` for `pem` through the runtime API
    /// (no reload). An error when there is no runtime socket.
    pub(crate) async fn hot_swap(&self, crt_path: &Path, pem: &str) -> Result<()> {
        let Some(socket) = self.runtime_socket() else {
            return Err(Error::msg(format!(
                "server {:?} has no runtime_socket",
                self.cfg.name
            )));
        };
        haproxy::swap(socket, crt_path, pem, self.timeout())
            .await
            .map_err(|e| e.context(format!("hot swap on server {:?} failed", self.cfg.name)))
    }

    pub(crate) fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.verify_timeout.0.max(1) as u64)
    }

    /// The nginx workers or Apache children serving now (children of the master in the pid
    /// file). Taken before a reload, so that afterwards we can wait for exactly these to
    /// retire.
    pub(crate) fn workers(&self) -> OldWorkers {
        let master = match self.cfg.kind {
            ServerKind::Nginx | ServerKind::Apache => self.master(),
            _ => None,
        };
        OldWorkers {
            master,
            pids: master.map(children_of).unwrap_or_default(),
        }
    }

    /// Wait until the old workers no longer accept connections. nginx renames a worker
    /// "worker process is shutting down" right after it closes its listening sockets; an
    /// Apache child of the old generation closes them on the graceful restart (see
    /// `apache::wait_retired`). Without this, a probe can meet a new worker while the next
    /// client still meets an old one (seen in tests).
    ///
    /// Returns how long `wait_served` must then see the new leaf without a break: zero when
    /// the retirement was seen, `verify_settle` when it was not — `kind = "command"` (certagent
    /// knows nothing of its processes), old workers that could not be found or read, or the
    /// deadline passed.
    pub(crate) async fn wait_retired(&self, old: &OldWorkers, within: Duration) -> Duration {
        let started = Instant::now();
        let retired = match (self.cfg.kind, old.master) {
            (ServerKind::Apache, Some(master)) if !old.pids.is_empty() => {
                apache::wait_retired(master, &old.pids, within).await
            }
            (ServerKind::Nginx, Some(_)) if !old.pids.is_empty() => {
                wait_nginx_retired(&old.pids, within).await
            }
            _ => None,
        };
        let server = self.cfg.name.as_str();
        match retired {
            Some(true) => {
                log::debug!(server, workers = old.pids.len(), waited_ms = started.elapsed().as_millis() as u64; "old workers stopped accepting connections");
            }
            Some(false) => {
                log::warn!(server; "old {} workers still accept connections after the reload", self.cfg.kind.as_str());
            }
            None => {
                log::debug!(server; "cannot see the old workers retire; the endpoints are watched for {}", self.cfg.verify_settle);
            }
        }
        if retired == Some(true) {
            Duration::ZERO
        } else {
            Duration::from_secs(self.cfg.verify_settle.0.max(0) as u64)
        }
    }

    /// Before anything is generated: every `verify` endpoint of the certificate with `names`
    /// must accept a TCP connection while the server runs, or the re-issue would only end,
    /// after `verify_timeout`, in a rollback. Refused is a configuration that does not match
    /// the host (exit 78); an endpoint that does not answer in time is let through with a
    /// warning (a firewall or a slow host may still let the TLS probe through later). Not
    /// checked while the server is not running (the certificate is installed, not loaded:
    /// the first install of `packaging/demo.sh`), nor while no certificate is in service
    /// yet (`in_service`: the new one may be what lets the server listen there).
    pub(crate) async fn preflight(
        &self,
        cert_name: &str,
        names: &[CertName],
        in_service: bool,
    ) -> Result<()> {
        let running = self.is_running();
        if running == Some(false) || !in_service {
            return Ok(());
        }
        let mut refused = Vec::new();
        for Target { addr, .. } in self.endpoints_for(names) {
            let probe = tokio::task::spawn_blocking(move || answer(addr, ANSWER_TIMEOUT));
            match probe.await {
                Ok(Answer::Answered) => {}
                Ok(Answer::Refused(_)) => refused.push(addr.to_string()),
                Ok(Answer::Silent(why)) => {
                    log::warn!(cert = cert_name, server = self.cfg.name.as_str(); "verify endpoint does not answer, re-issuing anyway: {why}")
                }
                Err(e) => log::warn!(cert = cert_name; "failed to probe the verify endpoints: {e}"),
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        let kind = match self.cfg.kind {
            ServerKind::Command => "the server",
            other => other.as_str(),
        };
        let key = format!("server.{}.verify", self.cfg.name);
        // Without a pid file (systemd runs the server) certagent cannot tell whether it runs.
        let state = match running {
            Some(_) => format!(", although {kind} is running"),
            None => format!(" (is {kind} running?)"),
        };
        Err(Error::Mismatch {
            message: format!(
                "failed to re-issue {cert_name:?}: nothing listens on {} (connection refused), the verify endpoint{} of {key}{state}; nothing was generated, ordered or changed",
                refused.join(", "),
                if refused.len() > 1 { "s" } else { "" },
            ),
            hint: Some(format!(
                "set {key} to the address:port {kind} serves this certificate on with TLS (its `listen ... ssl` or `Listen` lines), or make {kind} listen there; `certagent check` probes every endpoint"
            )),
        })
    }

    /// The endpoints to probe for a certificate with `names`, each with its SNI.
    pub(crate) fn endpoints_for(&self, names: &[CertName]) -> Vec<Target> {
        self.cfg
            .verify
            .iter()
            .filter_map(|e| {
                Some(Target {
                    addr: e.address,
                    sni: e.sni_for(names)?,
                    starttls: e.starttls,
                })
            })
            .collect()
    }

    /// Probe every endpoint of the certificate with `names` until each presents `leaf_der`
    /// in `CONFIRM_ROUNDS` consecutive rounds spanning at least `settle`, or `within` + `settle`
    /// passes.
    /// Nothing reports that a reload finished, so this looks; it never just sleeps and hopes.
    /// One sighting is not enough: after a reload old and new workers accept connections side
    /// by side for a while (nginx's master starts the new workers and waits 100 ms before it
    /// tells the old ones to stop), so a handshake can show the new leaf while the next shows
    /// the old one. When the old workers were seen to retire, `settle` is zero; otherwise
    /// the new leaf must be served without a break for `settle`.
    pub(crate) async fn wait_served(
        &self,
        names: &[CertName],
        leaf_der: &[u8],
        within: Duration,
        settle: Duration,
    ) -> Served {
        const CONFIRM_ROUNDS: u32 = 3;
        let endpoints = self.endpoints_for(names);
        if endpoints.is_empty() {
            // Config validation refuses this; a drop-in edited under a running daemon may not.
            return Served::Not(format!(
                "none of server {:?}'s verify endpoints is for these names",
                self.cfg.name
            ));
        }
        let deadline = Instant::now() + within + settle;
        let mut confirmed = 0;
        let mut since = Instant::now();
        loop {
            let round = Instant::now();
            let last = probe_round(&endpoints, leaf_der, deadline).await;
            match last {
                None => {
                    if confirmed == 0 {
                        since = round;
                    }
                    confirmed += 1;
                }
                Some(why) if Instant::now() >= deadline => return Served::Not(why),
                Some(_) => confirmed = 0,
            }
            if confirmed >= CONFIRM_ROUNDS && since.elapsed() >= settle {
                return Served::All;
            }
            // Once the old workers are gone (`settle` zero) no connection can meet one, so the
            // confirming rounds follow each other at once: spacing them only delayed the
            // answer by 40 ms. Otherwise the rounds must span `settle`, and a round that saw
            // the old leaf waits a little before the next look.
            if confirmed == 0 || !settle.is_zero() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A `verify` endpoint as probed for one certificate.
pub(crate) struct Target {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) sni: String,
    pub(crate) starttls: Option<Starttls>,
}

/// Probe every endpoint once; why the last one that does not serve `leaf_der` does not,
/// `None` when all do.
async fn probe_round(endpoints: &[Target], leaf_der: &[u8], deadline: Instant) -> Option<String> {
    let mut last = None;
    for Target {
        addr,
        sni,
        starttls,
    } in endpoints
    {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let timeout = left.min(Duration::from_secs(5));
        match probe::served_leaf(*addr, sni, *starttls, timeout).await {
            Ok(der) if der == leaf_der => {}
            Ok(der) => {
                let serial = crate::keys::leaf_facts(&der)
                    .map(|l| l.serial)
                    .unwrap_or_else(|_| "?".into());
                last = Some(format!("{addr} (SNI {sni}) serves serial {serial}"));
            }
            Err(e) => last = Some(format!("{e} (SNI {sni})")),
        }
    }
    last
}

async fn wait_nginx_retired(old: &[Pid], within: Duration) -> Option<bool> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let busy = old.iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                !c.is_empty() && !String::from_utf8_lossy(&c).contains("shutting down")
            })
        });
        if !busy {
            return Some(true);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(false)
}

/// Processes whose parent is `parent`, from /proc (no helper binaries, no shell).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// The parent of `pid` from `/proc/PID/stat` ("pid (comm) state ppid ..."; comm may contain
/// spaces and ')'). One read of its head: comm is at most 16 bytes, so 128 bytes always reach
/// the ppid, and every process of the host is read this way.
fn parent_of(pid: i32) -> Option<i32> {
    use std::io::Read as _;
    let mut buf = [0u8; 128];
    let n = std::fs::File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    let head = &buf[..n];
    let close = head.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&head[close + 1..]).ok()?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs nginx, by the name of its executable: the basename of
/// `/proc/PID/exe`, or when that cannot be read (another user's process, or a master with
/// more capabilities than the hardened unit grants) the kernel's `comm`, which is the same
/// name. Never the command line: any process can mention nginx there ("tail -f
/// /var/log/nginx/access.log").
fn is_nginx(pid: Pid) -> bool {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe.file_name().is_some_and(|n| {
            // After a package upgrade the running master's binary is " (deleted)".
            let name = n.to_string_lossy();
            is_nginx_name(name.strip_suffix(" (deleted)").unwrap_or(&name))
        }),
        Err(_) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| is_nginx_name(comm.trim_end_matches('\n'))),
    }
}

/// `nginx`, or a distribution's variant such as `nginx-debug`.
fn is_nginx_name(name: &str) -> bool {
    name == "nginx" || name.starts_with("nginx-")
}

fn read_pid(path: &Path) -> Option<Pid> {
    let text = crate::store::fsutil::read_capped(path, 64).ok()??;
    let pid: i32 = String::from_utf8_lossy(&text).trim().parse().ok()?;
    (pid > 1).then(|| Pid::from_raw(pid))
}

/// Run `argv` without a shell; error with the exit status and the captured output.
pub(crate) async fn run(argv: &[String], timeout: Duration) -> Result<()> {
    run_with_env(argv, &[], timeout).await
}

/// `run` with extra environment variables (hooks get the certificate's facts this way).
pub(crate) async fn run_with_env(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<()> {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::msg("failed to run a command: the argv is empty"));
    };
    let mut cmd = crate::child::command(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    let out = match tokio::time::timeout(timeout, crate::child::output(&mut cmd)).await {
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
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    let tail = out.message_tail(true);
    if tail.is_empty() {
        return Err(Error::msg(format!(
            "`{shown}` failed with {status} and printed nothing"
        )));
    }
    Err(Error::msg(format!(
        "`{shown}` failed with {status}: {tail}"
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
        // 3-byte characters: a cut 4096 bytes from the end falls inside one.
        let err = run(
            &[
                "sh".into(),
                "-c".into(),
                "printf '€%.0s' $(seq 2000); exit 1".into(),
            ],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let shown = err.to_string();
        assert!(shown.ends_with("€€€"), "{shown}");
        let output = shown.rsplit(": ").next().unwrap();
        assert_eq!(output.matches('€').count(), 4095 / 3);
        let err = run(&["false".into()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`false` failed with exit status 1 and printed nothing"
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

    /// A child of the test, killed and reaped (by its pid) when the test ends, panics included.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn only_a_process_whose_executable_is_nginx_is_taken_for_nginx() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("nginx/access.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "").unwrap();
        let decoy = Reaped(
            std::process::Command::new("tail")
                .arg("-f")
                .arg(&log)
                .spawn()
                .unwrap(),
        );
        let decoy_pid = Pid::from_raw(decoy.0.id() as i32);
        // What the old check matched on: the command line mentions nginx. The parent resumes
        // inside execve(2), before the kernel has set up the new argv: wait until it is there.
        let deadline = Instant::now() + Duration::from_secs(30);
        let cmdline = loop {
            let c = std::fs::read(format!("/proc/{decoy_pid}/cmdline")).unwrap();
            if !c.is_empty() || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            String::from_utf8_lossy(&cmdline).contains("/nginx/access.log"),
            "{cmdline:?}"
        );
        assert!(!is_nginx(decoy_pid));

        // A binary named nginx is, also once it is deleted (upgraded under the master).
        let binary = tmp.path().join("nginx-debug");
        std::fs::copy("/bin/sleep", &binary).unwrap();
        let spawn = || loop {
            match std::process::Command::new(&binary).arg("30").spawn() {
                // Another test thread may hold a copy's write descriptor across its fork.
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => continue,
                other => break other.unwrap(),
            }
        };
        let real = Reaped(spawn());
        let pid = Pid::from_raw(real.0.id() as i32);
        assert!(is_nginx(pid));
        std::fs::remove_file(&binary).unwrap();
        assert!(is_nginx(pid));
        assert!(is_nginx_name("nginx"));
        assert!(!is_nginx_name("nginxfoo"));
        assert!(!is_nginx_name("tail"));
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
        // A name with ") 1 " in it does not shift the fields after it (the kernel names a
        // process after the path it was started by, here a link to sleep).
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x) 1 2 (y");
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("5").spawn().unwrap();
        assert_eq!(parent_of(child.id() as i32), Some(me.as_raw()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
