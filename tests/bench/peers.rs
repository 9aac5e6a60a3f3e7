//! `cargo bench --bench peers`: certagent side by side with certbot and lego (Debian 12's
//! packages), in one run, against one Pebble and one nginx per client on 127.0.0.1.
//!
//! Every client solves http-01 the same way: **webroot**. One extra nginx listens on the port
//! Pebble's VA connects to and serves `/.well-known/acme-challenge/` from one shared directory;
//! certagent (`webroot =`), certbot (`--webroot -w`) and lego (`--http.webroot`) write their
//! tokens there. Each client has its own TLS nginx serving the files that client manages.
//!
//! 1. issue one ECDSA P-256 certificate for a new name (account registered by a warm-up run);
//! 2. re-key and deploy: new key, new certificate, nginx reloaded, new leaf seen by a TLS probe
//!    (certagent `reissue --now`; certbot `renew --force-renewal --deploy-hook "nginx -s
//!    reload"`; lego `renew --days 99999 --renew-hook "nginx -s reload"`);
//! 3. trigger to served: the key file is deleted; certagent's daemon is timed until nginx
//!    serves a new leaf; the peers have no trigger: their shipped schedule is stated and their
//!    scheduled command is run once after the deletion to show what it does;
//! 4. idle cost per day: certagent's daemon over a 60 s window, extrapolated; `certbot -q
//!    renew --no-random-sleep-on-renew` (Debian's certbot.service) with nothing due, twice a
//!    day (certbot.timer); `lego renew --days 30` with nothing due, once a day (cron);
//! 5. scale (certagent only: the peers have no internal CA): 1,000 and 10,000 certificates on
//!    the embedded CA: daemon start-up, RSS, and re-issue throughput at max_parallel 1, 4, 16.
//!
//! Rounds of scenarios 1, 2 and 4 are interleaved (the order rotates every round) so that
//! background load hits every client alike. Commands run under a small wrapper (this binary
//! re-executed with `__peers_rusage`) that reports the command's wall time and, from
//! `getrusage(RUSAGE_CHILDREN)`, the CPU seconds and peak RSS of its whole process tree
//! (hooks and `nginx -t` included). The TLS probe is the harness's `served_leaf`, polled every
//! 10 ms from the command's start.
//!
//! Prints a table (certagent's value, each peer's, and peer ÷ certagent) and writes every raw
//! sample to `$CARGO_TARGET_DIR/bench/peers.json` (default `target/bench/peers.json`). Peers
//! missing from PATH are installed from Debian with `tests/bench/peers/install.sh` (root only,
//! idempotent). Every process started here is stopped by pid (guards), never by name.
//! Run without `--bench` (e.g. by `cargo test --all-targets`) it does nothing.
//! `CERTAGENT_BENCH_QUICK=1` shrinks every scenario to check the bench itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The benches use only part of the test harness.
#[allow(dead_code, unused_imports)]
#[path = "../common/mod.rs"]
mod common;

#[path = "agent.rs"]
mod agent;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use agent::{
    Agent, BIN, Marker, Stats, clock_ticks_per_sec, cpu_ticks, in_path, loadavg, sched_ns, stats,
    status_field,
};
use common::{
    Env, Nginx, Pebble, PebbleOpts, Site, reserved_port, served_leaf, spki_of_cert_der,
    spki_of_key_pem,
};

const RUSAGE_ARG: &str = "__peers_rusage";
const PREPARE_ARG: &str = "__peers_prepare";
/// Stop adding optional work once this much time has gone by.
const BUDGET: Duration = Duration::from_secs(560);
const PROBE_EVERY: Duration = Duration::from_millis(10);

// =============================================================================================
// The measuring wrapper: `peers __peers_rusage LOG -- argv...`

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn rusage_child(args: &[String]) -> ! {
    assert!(
        args.len() >= 3 && args[1] == "--",
        "usage: {RUSAGE_ARG} LOG -- argv..."
    );
    let log = std::fs::File::create(&args[0]).expect("create command log");
    let err = log.try_clone().expect("dup log");
    let argv = &args[2..];
    let start = unix_ns();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .status();
    let end = unix_ns();
    let code = match status {
        Ok(s) => s.code().unwrap_or(-1),
        Err(e) => {
            eprintln!("cannot run {argv:?}: {e}");
            127
        }
    };
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = tv(u.user_time()) + tv(u.system_time());
    println!(
        "{}",
        json!({ "code": code, "start_ns": start, "end_ns": end, "cpu_s": cpu, "maxrss_kib": u.max_rss() })
    );
    std::process::exit(0);
}

/// One command's outcome, as the wrapper saw it.
#[derive(Clone, Debug)]
struct Measured {
    code: i32,
    start_ns: u64,
    end_ns: u64,
    cpu_s: f64,
    maxrss_kib: u64,
    log: PathBuf,
}

impl Measured {
    fn wall_ms(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e6
    }
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
    fn json(&self) -> Value {
        json!({
            "exit": self.code,
            "wall_ms": self.wall_ms(),
            "cpu_s": self.cpu_s,
            "maxrss_kib": self.maxrss_kib,
        })
    }
}

/// A command for one client.
#[derive(Clone, Debug)]
struct Cmd {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cmd {
    fn new<S: AsRef<str>>(argv: &[S]) -> Cmd {
        Cmd {
            argv: argv.iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
        }
    }
    fn arg(mut self, a: impl AsRef<str>) -> Cmd {
        self.argv.push(a.as_ref().to_owned());
        self
    }
    fn args<S: AsRef<str>>(mut self, a: &[S]) -> Cmd {
        self.argv.extend(a.iter().map(|s| s.as_ref().to_owned()));
        self
    }
    fn env(mut self, k: &str, v: impl AsRef<str>) -> Cmd {
        self.env.push((k.to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Starts the wrapper around this command; `finish` collects its figures.
    fn spawn(&self, log: &Path) -> (std::process::Child, PathBuf) {
        let me = std::env::current_exe().expect("current_exe");
        let mut c = Command::new(me);
        c.arg(RUSAGE_ARG)
            .arg(log)
            .arg("--")
            .args(&self.argv)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        (
            c.spawn().expect("spawn the measuring wrapper"),
            log.to_owned(),
        )
    }

    fn run(&self, log: &Path) -> Measured {
        let (child, log) = self.spawn(log);
        finish(child, log)
    }
}

fn finish(child: std::process::Child, log: PathBuf) -> Measured {
    let out = child.wait_with_output().expect("wait for the wrapper");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("wrapper output is not JSON ({e}): {text}"));
    Measured {
        code: v["code"].as_i64().unwrap_or(-1) as i32,
        start_ns: v["start_ns"].as_u64().unwrap(),
        end_ns: v["end_ns"].as_u64().unwrap(),
        cpu_s: v["cpu_s"].as_f64().unwrap(),
        maxrss_kib: v["maxrss_kib"].as_u64().unwrap_or(0),
        log,
    }
}

/// Runs `cmd` while probing `addr` every 10 ms from its start; returns the command's figures
/// and when (ms after the command started) the probe first saw a leaf other than `old`.
fn run_probed(
    cmd: &Cmd,
    log: &Path,
    addr: &str,
    sni: &str,
    old: &[u8],
) -> (Measured, Option<f64>, Vec<u8>) {
    let (child, log) = cmd.spawn(log);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(finish(child, log));
    });
    let mut measured: Option<Measured> = None;
    let mut seen: Option<(u64, Vec<u8>)> = None;
    let mut exited_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if measured.is_none()
            && let Ok(m) = rx.try_recv()
        {
            measured = Some(m);
            exited_at = Some(Instant::now());
        }
        if seen.is_none()
            && let Some(leaf) = served_leaf(addr, sni)
        {
            let at = unix_ns();
            if leaf != old {
                seen = Some((at, leaf));
            }
        }
        if measured.is_some() && seen.is_some() {
            break;
        }
        // After the command ended, give a reload 10 s to show; then stop looking.
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10))
            || Instant::now() > deadline
        {
            break;
        }
        thread::sleep(PROBE_EVERY);
    }
    let m = measured.unwrap_or_else(|| rx.recv().expect("wrapper result"));
    let served_ms = seen
        .as_ref()
        .map(|(at, _)| at.saturating_sub(m.start_ns) as f64 / 1e6);
    (m, served_ms, seen.map(|(_, l)| l).unwrap_or_default())
}

// =============================================================================================
// Statistics and the report.

fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{v:.3e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// One client's value in a row.
#[derive(Clone, Debug)]
enum V {
    Samples(Vec<f64>),
    Text(String),
}

impl V {
    fn median(&self) -> Option<f64> {
        match self {
            V::Samples(s) if !s.is_empty() => Some(stats(s).median),
            _ => None,
        }
    }
    fn cell(&self) -> String {
        match self {
            V::Samples(s) if s.len() == 1 => num(s[0]),
            V::Samples(s) if !s.is_empty() => {
                let Stats {
                    median: m,
                    min: lo,
                    max: hi,
                } = stats(s);
                format!("{} ({}–{}, n={})", num(m), num(lo), num(hi), s.len())
            }
            V::Samples(_) => "no samples".into(),
            V::Text(t) => t.clone(),
        }
    }
    fn json(&self) -> Value {
        match self {
            V::Samples(s) if !s.is_empty() => {
                let Stats {
                    median: m,
                    min: lo,
                    max: hi,
                } = stats(s);
                json!({ "samples": s, "median": m, "min": lo, "max": hi })
            }
            V::Samples(_) => json!({ "samples": [] }),
            V::Text(t) => json!({ "text": t }),
        }
    }
}

fn na(why: &str) -> V {
    V::Text(why.to_owned())
}

struct Row {
    key: String,
    figure: String,
    unit: String,
    agent: V,
    certbot: V,
    lego: V,
    target: Option<(String, bool, String)>,
}

/// peer ÷ certagent on medians (> 1: certagent is lower, i.e. faster or cheaper).
fn ratio(peer: &V, agent: &V) -> String {
    match (peer.median(), agent.median()) {
        (Some(p), Some(a)) if a > 0.0 => format!("{}×", num(p / a)),
        (Some(p), Some(_)) if p > 0.0 => "∞".into(),
        (Some(_), Some(_)) => "-".into(),
        _ => "n/a".into(),
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    details: serde_json::Map<String, Value>,
}

impl Report {
    fn row(&mut self, key: &str, figure: &str, unit: &str, agent: V, certbot: V, lego: V) {
        self.rows.push(Row {
            key: key.into(),
            figure: figure.into(),
            unit: unit.into(),
            agent,
            certbot,
            lego,
            target: None,
        });
    }
    fn target(&mut self, text: &str, pass: bool, margin: String) {
        if let Some(r) = self.rows.last_mut() {
            r.target = Some((text.into(), pass, margin));
        }
    }
    fn detail(&mut self, key: &str, v: Value) {
        self.details.insert(key.into(), v);
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| figure | unit | certagent | certbot | lego | certbot ÷ certagent | lego ÷ certagent | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let target = match &r.target {
                Some((t, pass, margin)) => format!(
                    "{t}: **{}** ({margin})",
                    if *pass { "met" } else { "MISSED" }
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.figure,
                r.unit,
                r.agent.cell(),
                r.certbot.cell(),
                r.lego.cell(),
                ratio(&r.certbot, &r.agent),
                ratio(&r.lego, &r.agent),
                target
            );
        }
        out
    }

    fn json_rows(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({
                        "key": r.key,
                        "figure": r.figure,
                        "unit": r.unit,
                        "certagent": r.agent.json(),
                        "certbot": r.certbot.json(),
                        "lego": r.lego.json(),
                        "certbot_over_certagent": ratio(&r.certbot, &r.agent),
                        "lego_over_certagent": ratio(&r.lego, &r.agent),
                        "target": r.target.as_ref().map(|(t, pass, margin)| json!({"target": t, "met": pass, "margin": margin})),
                    })
                })
                .collect(),
        )
    }
}

// =============================================================================================
// The test bed.

struct Plan {
    /// Timed rounds of scenarios 1 and 2 (after one warm-up round each).
    rounds: usize,
    /// Timed rounds of scenario 3 (after one warm-up round).
    trigger_rounds: usize,
    /// Runs of each peer's "nothing due" command in scenario 4.
    idle_runs: usize,
    idle_window: Duration,
    sizes: Vec<usize>,
    parallels: Vec<usize>,
    /// Certificates re-issued per throughput measurement.
    batch: usize,
    /// Extra plain start-ups per size (besides one per max_parallel run).
    extra_startups: usize,
}

struct Bed {
    root: tempfile::TempDir,
    pebble: Pebble,
    /// Serves every client's http-01 tokens from one webroot on Pebble's http port.
    acme_nginx: Nginx,
}

impl Bed {
    fn webroot(&self) -> PathBuf {
        self.acme_nginx.webroot()
    }
    fn logs(&self) -> PathBuf {
        self.root.path().join("logs")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.logs().join(name)
    }
}

struct AgentSide {
    env: Env,
    issue_config: PathBuf,
}

struct PeerSide {
    /// State of the one site certificate (scenarios 2–4).
    site_dir: PathBuf,
    /// State of the certificates of scenario 1 (its own account).
    issue_dir: PathBuf,
    name: String,
    nginx: Option<Nginx>,
    port: u16,
}

impl PeerSide {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn reload_hook(&self) -> String {
        self.nginx
            .as_ref()
            .expect("peer nginx")
            .reload_command()
            .join(" ")
    }
}

fn certbot_base(dir: &Path, pebble: &Pebble) -> Cmd {
    Cmd::new(&["certbot"])
        .arg("--config-dir")
        .arg(dir.join("etc").to_str().unwrap())
        .arg("--work-dir")
        .arg(dir.join("work").to_str().unwrap())
        .arg("--logs-dir")
        .arg(dir.join("logs").to_str().unwrap())
        .env("REQUESTS_CA_BUNDLE", pebble.ca_bundle().to_str().unwrap())
}

fn certbot_certonly(bed: &Bed, dir: &Path, name: &str, cert_name: &str) -> Cmd {
    certbot_base(dir, &bed.pebble).args(&[
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--register-unsafely-without-email",
        "--server",
        &bed.pebble.directory_url(),
        "--webroot",
        "-w",
        bed.webroot().to_str().unwrap(),
        "-d",
        name,
        "--cert-name",
        cert_name,
        "--key-type",
        "ecdsa",
        "--elliptic-curve",
        "secp256r1",
    ])
}

fn certbot_live(side: &PeerSide) -> (PathBuf, PathBuf) {
    let live = side.site_dir.join("etc/live").join(&side.name);
    (live.join("fullchain.pem"), live.join("privkey.pem"))
}

fn lego_base(bed: &Bed, dir: &Path, name: &str) -> Cmd {
    Cmd::new(&["lego"])
        .args(&[
            "--server",
            &bed.pebble.directory_url(),
            "--accept-tos",
            "--email",
            "bench@example.com",
            "--path",
            dir.to_str().unwrap(),
            "--http",
            "--http.webroot",
            bed.webroot().to_str().unwrap(),
            "--key-type",
            "ec256",
            "--domains",
            name,
        ])
        .env(
            "LEGO_CA_CERTIFICATES",
            bed.pebble.ca_bundle().to_str().unwrap(),
        )
}

fn lego_files(side: &PeerSide) -> (PathBuf, PathBuf) {
    let d = side.site_dir.join("certificates");
    (
        d.join(format!("{}.crt", side.name)),
        d.join(format!("{}.key", side.name)),
    )
}

fn agent_cmd(config: &Path, args: &[&str]) -> Cmd {
    Cmd::new(&[BIN, "--config", config.to_str().unwrap()]).args(args)
}

fn acme_issuer(bed: &Bed) -> String {
    format!(
        "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nwebroot = \"{}\"\ntimeout = \"60s\"\n",
        bed.pebble.directory_url(),
        bed.pebble.ca_bundle().display(),
        bed.webroot().display()
    )
}

fn must(m: &Measured, what: &str) {
    assert_eq!(
        m.code,
        0,
        "{what} failed (exit {}):\n{}",
        m.code,
        m.log_tail()
    );
}

fn setup_agent(bed: &Bed, plan: &Plan) -> AgentSide {
    let env = Env::new(&["agent.test"], None);
    env.write_config(
        "issuer = \"pebble\"\nkey_type = \"ecdsa-p256\"",
        &acme_issuer(bed),
    );
    // Scenario 1's certificates: their own config, same state (and ACME account).
    let issue = env.dir.path().join("issue");
    std::fs::create_dir_all(&issue).unwrap();
    let mut text = format!(
        "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nlock_timeout = \"5s\"\n\n{}\n",
        env.state_dir().display(),
        env.dir.path().join("run").display(),
        acme_issuer(bed)
    );
    for i in 0..=plan.rounds {
        let _ = write!(
            text,
            "[certificate.i{i:02}]\nnames = [\"i{i:02}.agent.test\"]\nissuer = \"pebble\"\nkey_type = \"ecdsa-p256\"\ncert_file = \"{0}/i{i:02}.pem\"\nkey_file = \"{0}/i{i:02}.key\"\n\n",
            issue.display()
        );
    }
    let issue_config = issue.join("config.toml");
    std::fs::write(&issue_config, text).unwrap();
    // Warm-up: registers the account and takes over the test CA's pair nginx starts with.
    let m = agent_cmd(&env.config, &["reissue", "--now", "site"]).run(&bed.log("agent-warmup.log"));
    must(&m, "certagent warm-up reissue");
    AgentSide { env, issue_config }
}

fn setup_certbot(bed: &Bed) -> PeerSide {
    let base = bed.root.path().join("certbot");
    let mut side = PeerSide {
        site_dir: base.join("site"),
        issue_dir: base.join("issue"),
        name: "certbot.test".into(),
        nginx: None,
        port: reserved_port(),
    };
    // Registers the account and issues the site's first certificate; nginx then serves it.
    let m = certbot_certonly(bed, &side.site_dir, &side.name, &side.name)
        .run(&bed.log("certbot-site-first.log"));
    must(&m, "certbot's first certonly");
    let (cert, key) = certbot_live(&side);
    side.nginx = Some(Nginx::start(
        &base.join("nginx"),
        &[Site {
            port: side.port,
            server_names: vec![side.name.clone()],
            cert_file: cert,
            key_file: key,
        }],
    ));
    side
}

fn setup_lego(bed: &Bed) -> PeerSide {
    let base = bed.root.path().join("lego");
    let mut side = PeerSide {
        site_dir: base.join("site"),
        issue_dir: base.join("issue"),
        name: "lego.test".into(),
        nginx: None,
        port: reserved_port(),
    };
    let m = lego_base(bed, &side.site_dir, &side.name)
        .arg("run")
        .run(&bed.log("lego-site-first.log"));
    must(&m, "lego's first run");
    let (cert, key) = lego_files(&side);
    side.nginx = Some(Nginx::start(
        &base.join("nginx"),
        &[Site {
            port: side.port,
            server_names: vec![side.name.clone()],
            cert_file: cert,
            key_file: key,
        }],
    ));
    side
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Agent,
    Certbot,
    Lego,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Agent => "certagent",
            Who::Certbot => "certbot",
            Who::Lego => "lego",
        }
    }
}

/// The order of round `r`: rotates so that no client always goes first.
fn order(r: usize) -> [Who; 3] {
    let all = [Who::Agent, Who::Certbot, Who::Lego];
    [all[r % 3], all[(r + 1) % 3], all[(r + 2) % 3]]
}

struct PerClient<T> {
    agent: Vec<T>,
    certbot: Vec<T>,
    lego: Vec<T>,
}

impl<T> Default for PerClient<T> {
    fn default() -> Self {
        PerClient {
            agent: Vec::new(),
            certbot: Vec::new(),
            lego: Vec::new(),
        }
    }
}

impl<T> PerClient<T> {
    fn get_mut(&mut self, w: Who) -> &mut Vec<T> {
        match w {
            Who::Agent => &mut self.agent,
            Who::Certbot => &mut self.certbot,
            Who::Lego => &mut self.lego,
        }
    }
}

fn samples<T>(v: &[T], f: impl Fn(&T) -> f64) -> V {
    V::Samples(v.iter().map(f).collect())
}

// =============================================================================================
// Scenario 1: issue one certificate.

fn scenario1(
    bed: &Bed,
    plan: &Plan,
    a: &AgentSide,
    cb: &PeerSide,
    lg: &PeerSide,
    report: &mut Report,
) {
    eprintln!(
        "peers: [1] issue one ECDSA P-256 certificate, 1 warm-up + {} rounds",
        plan.rounds
    );
    let mut got: PerClient<Measured> = PerClient::default();
    for r in 0..=plan.rounds {
        for who in order(r) {
            let log = bed.log(&format!("s1-{}-{r:02}.log", who.name()));
            let m = match who {
                Who::Agent => {
                    agent_cmd(&a.issue_config, &["reissue", "--now", &format!("i{r:02}")]).run(&log)
                }
                Who::Certbot => certbot_certonly(
                    bed,
                    &cb.issue_dir,
                    &format!("i{r:02}.certbot.test"),
                    &format!("i{r:02}"),
                )
                .run(&log),
                Who::Lego => lego_base(bed, &lg.issue_dir, &format!("i{r:02}.lego.test"))
                    .arg("run")
                    .run(&log),
            };
            must(&m, &format!("scenario 1, {} round {r}", who.name()));
            // The certificate is on disk where the client keeps it.
            let file = match who {
                Who::Agent => a.env.dir.path().join(format!("issue/i{r:02}.pem")),
                Who::Certbot => cb.issue_dir.join(format!("etc/live/i{r:02}/fullchain.pem")),
                Who::Lego => lg
                    .issue_dir
                    .join(format!("certificates/i{r:02}.lego.test.crt")),
            };
            assert!(
                std::fs::metadata(&file).is_ok_and(|m| m.len() > 0),
                "{} did not write {}",
                who.name(),
                file.display()
            );
            if r > 0 {
                got.get_mut(who).push(m);
            }
        }
    }
    report.row(
        "s1_issue_ms",
        "1. issue one certificate (new name)",
        "ms",
        samples(&got.agent, Measured::wall_ms),
        samples(&got.certbot, Measured::wall_ms),
        samples(&got.lego, Measured::wall_ms),
    );
    report.row(
        "s1_issue_cpu_s",
        "1b. CPU per issuance (process tree)",
        "s",
        samples(&got.agent, |m| m.cpu_s),
        samples(&got.certbot, |m| m.cpu_s),
        samples(&got.lego, |m| m.cpu_s),
    );
    report.row(
        "s1_issue_maxrss_mib",
        "1c. peak RSS during issuance",
        "MiB",
        samples(&got.agent, |m| m.maxrss_kib as f64 / 1024.0),
        samples(&got.certbot, |m| m.maxrss_kib as f64 / 1024.0),
        samples(&got.lego, |m| m.maxrss_kib as f64 / 1024.0),
    );
    report.detail(
        "s1_rounds",
        json!({
            "certagent": got.agent.iter().map(Measured::json).collect::<Vec<_>>(),
            "certbot": got.certbot.iter().map(Measured::json).collect::<Vec<_>>(),
            "lego": got.lego.iter().map(Measured::json).collect::<Vec<_>>(),
        }),
    );
}

// =============================================================================================
// Scenario 2: re-key and deploy.

#[derive(Clone)]
struct Deploy {
    m: Measured,
    served_ms: f64,
    /// certagent only: the probe, right after the command returned, already saw the new leaf.
    probe_agrees_at_exit: Option<bool>,
}

fn scenario2(
    bed: &Bed,
    plan: &Plan,
    a: &AgentSide,
    cb: &PeerSide,
    lg: &PeerSide,
    report: &mut Report,
) {
    eprintln!(
        "peers: [2] re-key and deploy (new key, new certificate, nginx reloaded, new leaf served), 1 warm-up + {} rounds",
        plan.rounds
    );
    let mut got: PerClient<Deploy> = PerClient::default();
    for r in 0..=plan.rounds {
        for who in order(r) {
            let log = bed.log(&format!("s2-{}-{r:02}.log", who.name()));
            let (addr, sni, key_file, cmd) = match who {
                Who::Agent => (
                    a.env.addr(),
                    a.env.names[0].clone(),
                    a.env.key_file.clone(),
                    agent_cmd(&a.env.config, &["reissue", "--now", "site"]),
                ),
                Who::Certbot => (
                    cb.addr(),
                    cb.name.clone(),
                    certbot_live(cb).1,
                    certbot_base(&cb.site_dir, &bed.pebble).args(&[
                        "renew",
                        "--non-interactive",
                        "--cert-name",
                        &cb.name,
                        "--force-renewal",
                        "--no-random-sleep-on-renew",
                        "--deploy-hook",
                        &cb.reload_hook(),
                    ]),
                ),
                Who::Lego => (
                    lg.addr(),
                    lg.name.clone(),
                    lego_files(lg).1,
                    lego_base(bed, &lg.site_dir, &lg.name).args(&[
                        "renew",
                        "--days",
                        "99999",
                        "--no-random-sleep",
                        "--renew-hook",
                        &lg.reload_hook(),
                    ]),
                ),
            };
            let old = served_leaf(&addr, &sni)
                .unwrap_or_else(|| panic!("{}'s nginx does not answer on {addr}", who.name()));
            let (m, served, leaf) = run_probed(&cmd, &log, &addr, &sni, &old);
            must(&m, &format!("scenario 2, {} round {r}", who.name()));
            let served = served.unwrap_or_else(|| {
                panic!(
                    "scenario 2, {} round {r}: the new leaf was never served:\n{}",
                    who.name(),
                    m.log_tail()
                )
            });
            // Re-keyed, and the key in service is the key on disk.
            let key = std::fs::read_to_string(&key_file).expect("read key file");
            assert_eq!(
                spki_of_cert_der(&leaf),
                spki_of_key_pem(&key),
                "{}: the served leaf is not for the key file",
                who.name()
            );
            assert_ne!(
                spki_of_cert_der(&leaf),
                spki_of_cert_der(&old),
                "{}: not re-keyed",
                who.name()
            );
            let probe_agrees_at_exit = (who == Who::Agent).then(|| served <= m.wall_ms());
            if r > 0 {
                got.get_mut(who).push(Deploy {
                    m,
                    served_ms: served,
                    probe_agrees_at_exit,
                });
            }
        }
    }
    // certagent's figure is when its command returned (it returns only once its own probe saw
    // the new leaf three rounds in a row); the peers' is when our probe first saw it.
    let agent_figure: Vec<f64> = got
        .agent
        .iter()
        .map(|d| d.m.wall_ms().max(d.served_ms))
        .collect();
    report.row(
        "s2_rekey_deploy_ms",
        "2. re-key + deploy → new leaf served (certagent: command returned; peers: probe saw it)",
        "ms",
        V::Samples(agent_figure.clone()),
        samples(&got.certbot, |d| d.served_ms),
        samples(&got.lego, |d| d.served_ms),
    );
    let am = stats(&agent_figure).median;
    let cbm = stats(&got.certbot.iter().map(|d| d.served_ms).collect::<Vec<_>>()).median;
    let lgm = stats(&got.lego.iter().map(|d| d.served_ms).collect::<Vec<_>>()).median;
    report.target(
        "≥ 3× faster than certbot and faster than lego (medians)",
        cbm / am >= 3.0 && lgm > am,
        format!("{:.1}× certbot, {:.1}× lego", cbm / am, lgm / am),
    );
    report.row(
        "s2_probe_ms",
        "2b. same, all by the probe (first sighting of the new leaf)",
        "ms",
        samples(&got.agent, |d| d.served_ms),
        samples(&got.certbot, |d| d.served_ms),
        samples(&got.lego, |d| d.served_ms),
    );
    let served = stats(&got.agent.iter().map(|d| d.served_ms).collect::<Vec<_>>()).median;
    report.target(
        "re-key + deploy → served ≤ 150 ms (median, #20)",
        served <= 150.0,
        format!("{served:.0} ms"),
    );
    report.row(
        "s2_command_ms",
        "2c. command start → exit",
        "ms",
        samples(&got.agent, |d| d.m.wall_ms()),
        samples(&got.certbot, |d| d.m.wall_ms()),
        samples(&got.lego, |d| d.m.wall_ms()),
    );
    let exit = stats(&got.agent.iter().map(|d| d.m.wall_ms()).collect::<Vec<_>>()).median;
    report.target(
        "`reissue --now` → exit (verified) ≤ 300 ms (median, #20)",
        exit <= 300.0,
        format!("{exit:.0} ms"),
    );
    report.row(
        "s2_cpu_s",
        "2d. CPU per re-key + deploy (process tree, hook included)",
        "s",
        samples(&got.agent, |d| d.m.cpu_s),
        samples(&got.certbot, |d| d.m.cpu_s),
        samples(&got.lego, |d| d.m.cpu_s),
    );
    let cpu = stats(&got.agent.iter().map(|d| d.m.cpu_s).collect::<Vec<_>>()).median;
    report.target(
        "≤ 0.04 s (median, `nginx -t` included, #20)",
        cpu <= 0.04,
        format!("{cpu:.3} s"),
    );
    let rounds = |v: &[Deploy]| -> Vec<Value> {
        v.iter()
            .map(|d| {
                let mut j = d.m.json();
                j["served_ms"] = json!(d.served_ms);
                j["probe_saw_new_leaf_before_exit"] = json!(d.probe_agrees_at_exit);
                j
            })
            .collect()
    };
    report.detail("s2_rounds", json!({
        "certagent": rounds(&got.agent),
        "certbot": rounds(&got.certbot),
        "lego": rounds(&got.lego),
        "probe_interval_ms": PROBE_EVERY.as_millis() as u64,
        "commands": {
            "certagent": "certagent reissue --now site  (nginx -t, reload by SIGHUP to the pid file, TLS probe: 3 rounds)",
            "certbot": "certbot renew --cert-name certbot.test --force-renewal --no-random-sleep-on-renew --deploy-hook 'nginx -s reload -p P -c C'",
            "lego": "lego ... --domains lego.test renew --days 99999 --no-random-sleep --renew-hook 'nginx -s reload -p P -c C'",
        },
    }));
}

// =============================================================================================
// Scenario 3: key deleted → new leaf served (certagent's daemon).

fn scenario3(plan: &Plan, a: &AgentSide, report: &mut Report) -> Agent {
    eprintln!(
        "peers: [3] key deleted -> new leaf served, certagent daemon, 1 warm-up + {} rounds",
        plan.trigger_rounds
    );
    // The rounds delete the key more often than the hourly guard allows a host to need.
    let text = std::fs::read_to_string(&a.env.config).expect("read the bench config");
    let text = text.replacen("[agent]\n", "[agent]\nmax_reissues_per_hour = 1000\n", 1);
    std::fs::write(&a.env.config, text).expect("write the bench config");
    let agent = Agent::spawn(&a.env.config, "site daemon");
    agent.wait_hits(Marker::Ready, 1, Duration::from_secs(30));
    let addr = a.env.addr();
    let sni = a.env.names[0].clone();
    let mut served = Vec::new();
    let mut installed = Vec::new();
    for r in 0..=plan.trigger_rounds {
        thread::sleep(Duration::from_millis(200));
        let old = served_leaf(&addr, &sni).expect("nginx answers");
        let n_in = agent.hits(Marker::Installed);
        let t0 = Instant::now();
        std::fs::remove_file(&a.env.key_file).expect("unlink the key file");
        let seen = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no new leaf within 60 s:\n{}",
                agent.tail(30)
            );
            thread::sleep(Duration::from_millis(5));
            let Ok(key) = std::fs::read_to_string(&a.env.key_file) else {
                continue;
            };
            let Some(leaf) = served_leaf(&addr, &sni) else {
                continue;
            };
            let at = Instant::now();
            if leaf != old && spki_of_cert_der(&leaf) == spki_of_key_pem(&key) {
                break at;
            }
        };
        let done = agent.wait_hits(Marker::Installed, n_in + 1, Duration::from_secs(60));
        if r > 0 {
            served.push((seen - t0).as_secs_f64() * 1e3);
            installed.push((done - t0).as_secs_f64() * 1e3);
        }
    }
    let certbot = na(
        "not measurable: no trigger. Schedule: certbot.timer 00:00 and 12:00 + up to 12 h random delay (runs ≤ 24 h apart), and that run does not heal it (3b). Worst case: never (a human must act)",
    );
    let lego = na(
        "not measurable: no trigger, no scheduler (cron by the operator, typically daily), and the run does not heal it (3b). Worst case: the next run after the certificate is due (≤ 30 d left): ≈ 60 d + the cron interval for a 90-day certificate",
    );
    report.row(
        "s3_trigger_to_served_ms",
        "3. key deleted → new leaf served",
        "ms",
        V::Samples(served.clone()),
        certbot,
        lego,
    );
    let m = stats(&served).median;
    report.target(
        "median < 1 s",
        m < 1000.0,
        format!("{:.0} ms, {:.1}× under", m, 1000.0 / m),
    );
    report.detail("s3", json!({
        "certagent_served_ms": served,
        "certagent_daemon_logged_installed_ms": installed,
        "probe_interval_ms": 5,
        "schedules": {
            "certbot": "Debian 12: certbot.timer OnCalendar=*-*-* 00,12:00:00, RandomizedDelaySec=43200, Persistent=true; certbot.service runs `certbot -q renew --no-random-sleep-on-renew`, which renews only lineages within 30 days of expiry (certbot 2.1's renew_before_expiry default). Runs are at most 24 h apart; no run looks at a deleted key.",
            "lego": "Debian 12's lego ships no timer or cron entry: the operator schedules `lego ... renew --days 30` (typically daily). Renews only when fewer than 30 days are left.",
        },
    }));
    agent
}

/// What each peer's own scheduled command does the next time it runs after the key was
/// deleted (measured, after scenario 4 is done with the lineages).
fn scenario3_peers(bed: &Bed, cb: &PeerSide, lg: &PeerSide, report: &mut Report) {
    eprintln!("peers: [3b] key deleted, then each peer's scheduled command once");
    let mut out = serde_json::Map::new();
    let mut cells = Vec::new();
    for who in [Who::Certbot, Who::Lego] {
        let (side, key, cmd) = match who {
            Who::Certbot => (
                cb,
                certbot_live(cb).1,
                certbot_base(&cb.site_dir, &bed.pebble).args(&[
                    "-q",
                    "renew",
                    "--no-random-sleep-on-renew",
                ]),
            ),
            _ => (
                lg,
                lego_files(lg).1,
                lego_base(bed, &lg.site_dir, &lg.name).args(&["renew", "--days", "30"]),
            ),
        };
        let before = served_leaf(&side.addr(), &side.name).expect("peer nginx answers");
        std::fs::remove_file(&key).expect("delete the peer's key file");
        let m = cmd.run(&bed.log(&format!("s3-{}-scheduled.log", who.name())));
        thread::sleep(Duration::from_millis(500));
        let after = served_leaf(&side.addr(), &side.name).expect("peer nginx answers");
        let key_back = key.exists();
        let nginx_t = side
            .nginx
            .as_ref()
            .map(|n| n.run_test().is_ok())
            .unwrap_or(false);
        let tail = m.log_tail();
        let summary = format!(
            "exit {}, key file {}, new leaf served: {}, `nginx -t` {}",
            m.code,
            if key_back {
                "restored"
            } else {
                "still missing"
            },
            if after != before { "yes" } else { "no" },
            if nginx_t {
                "passes"
            } else {
                "FAILS (the next reload or restart takes the site down)"
            },
        );
        eprintln!("peers: [3b] {}: {summary}", who.name());
        out.insert(
            who.name().into(),
            json!({
                "exit": m.code, "key_file_restored": key_back, "new_leaf_served": after != before,
                "nginx_test_passes": nginx_t, "output_tail": tail, "wall_ms": m.wall_ms(),
            }),
        );
        cells.push(na(&summary));
    }
    let lego = cells.pop().unwrap();
    let certbot = cells.pop().unwrap();
    report.row(
        "s3b_peer_scheduled_run",
        "3b. the peer's scheduled command once, after the key was deleted",
        "",
        na("(3.)"),
        certbot,
        lego,
    );
    report.detail("s3b_peers_after_key_deleted", Value::Object(out));
}

// =============================================================================================
// Scenario 4: idle cost per day.

struct IdleWindow {
    ticks: u64,
    sched_ns: u64,
    rss_kib: Vec<u64>,
    secs: f64,
}

fn idle_start(agent: &Agent, window: Duration) -> thread::JoinHandle<IdleWindow> {
    let pid = agent.pid();
    // Settled: the last second without a tick.
    let mut last = cpu_ticks(pid);
    for _ in 0..10 {
        thread::sleep(Duration::from_secs(1));
        let now = cpu_ticks(pid);
        if now == last {
            break;
        }
        last = now;
    }
    // And past the daemon's idle trim, 10 s after its last work (`src/daemon/trim.rs`): that
    // costs a few ms of CPU once after each burst of work, not every minute of the day.
    thread::sleep(Duration::from_secs(11));
    eprintln!(
        "peers: [4] certagent daemon idle window of {window:?} starts (runs alongside the rest)"
    );
    thread::spawn(move || {
        let t0 = Instant::now();
        let (k0, s0) = (cpu_ticks(pid), sched_ns(pid));
        let mut rss = vec![status_field(pid, "VmRSS")];
        let mut k = 1;
        while t0.elapsed() < window {
            let next = t0 + Duration::from_secs(k).min(window);
            thread::sleep(next.saturating_duration_since(Instant::now()));
            rss.push(status_field(pid, "VmRSS"));
            k += 1;
        }
        IdleWindow {
            ticks: cpu_ticks(pid) - k0,
            sched_ns: sched_ns(pid).saturating_sub(s0),
            rss_kib: rss,
            secs: t0.elapsed().as_secs_f64(),
        }
    })
}

fn scenario4_peers(
    bed: &Bed,
    plan: &Plan,
    cb: &PeerSide,
    lg: &PeerSide,
) -> (Vec<Measured>, Vec<Measured>) {
    eprintln!(
        "peers: [4] one scheduled run with nothing due, {} times each (certbot: Debian's certbot.service command; lego: the usual daily cron command)",
        plan.idle_runs
    );
    let mut c = Vec::new();
    let mut l = Vec::new();
    for r in 0..plan.idle_runs {
        let pair = if r.is_multiple_of(2) {
            [Who::Certbot, Who::Lego]
        } else {
            [Who::Lego, Who::Certbot]
        };
        for who in pair {
            let log = bed.log(&format!("s4-{}-{r:02}.log", who.name()));
            if who == Who::Certbot {
                let m = certbot_base(&cb.site_dir, &bed.pebble)
                    .args(&["-q", "renew", "--no-random-sleep-on-renew"])
                    .run(&log);
                must(&m, "certbot renew (nothing due)");
                c.push(m);
            } else {
                let m = lego_base(bed, &lg.site_dir, &lg.name)
                    .args(&["renew", "--days", "30"])
                    .run(&log);
                must(&m, "lego renew (nothing due)");
                assert!(
                    std::fs::read_to_string(&m.log)
                        .unwrap_or_default()
                        .contains("no renewal"),
                    "lego renewed:\n{}",
                    m.log_tail()
                );
                l.push(m);
            }
        }
    }
    (c, l)
}

fn scenario4_report(
    w: IdleWindow,
    agent: &Agent,
    c: &[Measured],
    l: &[Measured],
    report: &mut Report,
) {
    let day = 86_400.0;
    let cpu_window = w.ticks as f64 / (clock_ticks_per_sec() as f64);
    let agent_cpu_day = cpu_window * day / w.secs;
    let agent_sched_day = w.sched_ns as f64 / 1e9 * day / w.secs;
    let rss_mib: Vec<f64> = w.rss_kib.iter().map(|&k| k as f64 / 1024.0).collect();
    let rss_max = rss_mib.iter().cloned().fold(0.0, f64::max);
    let threads = status_field(agent.pid(), "Threads");
    let cpu_c: Vec<f64> = c.iter().map(|m| m.cpu_s * 2.0).collect();
    let cpu_l: Vec<f64> = l.iter().map(|m| m.cpu_s).collect();
    report.row(
        "s4_cpu_s_per_day",
        "4. CPU per day (certagent: daemon, 60 s window × 1440; certbot: 2 runs; lego: 1 run)",
        "s/day",
        V::Samples(vec![agent_cpu_day]),
        V::Samples(cpu_c.clone()),
        V::Samples(cpu_l),
    );
    let cb_med = stats(&cpu_c).median;
    report.target(
        "< 1/10 of certbot's",
        agent_cpu_day < cb_med / 10.0,
        if agent_cpu_day == 0.0 {
            format!(
                "0 ticks in {:.0} s (schedstat: {} µs)",
                w.secs,
                w.sched_ns / 1000
            )
        } else {
            format!("{:.1}× lower", cb_med / agent_cpu_day)
        },
    );
    report.row(
        "s4_rss_peak_mib",
        "4b. resident memory while running (peak)",
        "MiB",
        V::Samples(vec![rss_max]),
        samples(c, |m| m.maxrss_kib as f64 / 1024.0),
        samples(l, |m| m.maxrss_kib as f64 / 1024.0),
    );
    report.row(
        "s4_resident_s_per_day",
        "4c. time resident per day",
        "s/day",
        V::Samples(vec![day]),
        samples(c, |m| 2.0 * m.wall_ms() / 1e3),
        samples(l, |m| m.wall_ms() / 1e3),
    );
    report.row(
        "s4_mib_hours_per_day",
        "4d. memory × time per day (RSS × hours resident)",
        "MiB·h",
        V::Samples(vec![rss_max * 24.0]),
        samples(c, |m| {
            m.maxrss_kib as f64 / 1024.0 * 2.0 * m.wall_ms() / 3.6e6
        }),
        samples(l, |m| m.maxrss_kib as f64 / 1024.0 * m.wall_ms() / 3.6e6),
    );
    report.detail("s4", json!({
        "certagent": {
            "window_s": w.secs, "cpu_ticks": w.ticks, "clock_ticks_per_s": (clock_ticks_per_sec() as f64),
            "sched_ns_live_threads": w.sched_ns, "cpu_s_per_day_from_schedstat": agent_sched_day,
            "rss_kib_each_second": w.rss_kib, "threads": threads,
            "what": "certagent run with the one site certificate (Pebble ACME issuer, nginx server), settled",
        },
        "certbot": { "runs": c.iter().map(Measured::json).collect::<Vec<_>>(), "per_day": 2,
            "command": "certbot -q renew --no-random-sleep-on-renew (Debian 12 certbot.service), one lineage, not due" },
        "lego": { "runs": l.iter().map(Measured::json).collect::<Vec<_>>(), "per_day": 1,
            "command": "lego --path P ... --domains lego.test renew --days 30 (daily cron), not due" },
    }));
}

// =============================================================================================
// Scenario 5: scale on the embedded CA (certagent only).

/// Median latency of writing a 600-byte file with fsync, then fsyncing its directory, in
/// `dir` (10 samples): what each step of an install pays on this disk at this moment.
fn fsync_ms(dir: &Path) -> f64 {
    use std::io::Write as _;
    let probe = dir.join("fsync-probe");
    std::fs::create_dir_all(&probe).unwrap();
    let mut ms = Vec::new();
    for i in 0..10 {
        let t0 = Instant::now();
        let mut f = std::fs::File::create(probe.join(format!("f{i}"))).unwrap();
        f.write_all(&[b'x'; 600]).unwrap();
        f.sync_all().unwrap();
        std::fs::File::open(&probe).unwrap().sync_all().unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&probe);
    stats(&ms).median
}

fn scale_config(dir: &Path, n: usize, par: usize) -> PathBuf {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let ssl = dir.join("ssl");
    let mut text = format!(
        "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nmax_parallel = {par}\nlock_timeout = \"30s\"\n\n",
        dir.join("state").display(),
        dir.join("run").display()
    );
    for i in 0..n {
        let _ = write!(
            text,
            "[certificate.c{i:05}]\nnames = [\"c{i:05}.test\"]\nissuer = \"internal\"\nkey_type = \"ecdsa-p256\"\ncert_file = \"{s}/c{i:05}.pem\"\nkey_file = \"{s}/c{i:05}.key\"\n\n",
            s = ssl.display()
        );
    }
    let path = etc.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates the embedded CA (one certificate issued from the command line with a separate
/// config on the same state), then signs `n` healthy pairs with it in-process, so that the
/// daemon starts with `n` certificates in service without `n` issuances first.
fn scale_prepare(dir: &Path, n: usize) -> f64 {
    let t0 = Instant::now();
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::create_dir_all(dir.join("ssl")).unwrap();
    let cfg = seed.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\n[certificate.seed]\nnames = [\"seed.test\"]\nissuer = \"internal\"\ncert_file = \"{s}/seed.pem\"\nkey_file = \"{s}/seed.key\"\n",
            dir.join("state").display(),
            dir.join("run").display(),
            s = seed.display()
        ),
    )
    .unwrap();
    let run = common::run_certagent(&cfg, &["reissue", "--now", "seed"], &[]);
    assert_eq!(run.code, 0, "seeding the embedded CA failed: {run:?}");
    let ca_dir = dir.join("state/ca/internal");
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca.pem");
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key");
    let ssl = dir.join("ssl");
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    thread::scope(|s| {
        for w in 0..workers {
            let (ca_pem, ca_key, ssl) = (&ca_pem, &ca_key, &ssl);
            s.spawn(move || {
                use std::os::unix::fs::OpenOptionsExt;
                let key = rcgen::KeyPair::from_pem(ca_key).expect("CA key");
                let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, key).expect("CA cert");
                let now = SystemTime::now();
                for i in (w..n).step_by(workers) {
                    let name = format!("c{i:05}.test");
                    let mut p = rcgen::CertificateParams::new(vec![name.clone()]).unwrap();
                    p.distinguished_name
                        .push(rcgen::DnType::CommonName, name.as_str());
                    p.is_ca = rcgen::IsCa::ExplicitNoCa;
                    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
                    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
                    p.use_authority_key_identifier_extension = true;
                    p.not_before = (now - Duration::from_secs(3600)).into();
                    p.not_after = (now + Duration::from_secs(90 * 86_400)).into();
                    let mut serial = vec![0x01];
                    serial.extend_from_slice(&unix_ns().to_be_bytes());
                    serial.extend_from_slice(&(i as u32).to_be_bytes());
                    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
                    let k = rcgen::KeyPair::generate().expect("leaf key");
                    let cert = p.signed_by(&k, &issuer).expect("sign leaf");
                    std::fs::write(
                        ssl.join(format!("c{i:05}.pem")),
                        format!("{}{}", cert.pem(), ca_pem),
                    )
                    .unwrap();
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(ssl.join(format!("c{i:05}.key")))
                        .unwrap();
                    std::io::Write::write_all(&mut f, k.serialize_pem().as_bytes()).unwrap();
                }
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

struct Start {
    ready_ms: f64,
    rss_mib: f64,
    cpu_s_at_ready: f64,
    reissued_at_start: usize,
}

fn start_daemon(config: &Path, what: &str) -> (Agent, Start) {
    let agent = Agent::spawn(config, what);
    let at = agent.wait_hits(Marker::Ready, 1, Duration::from_secs(180));
    let ready_ms = (at - agent.spawned).as_secs_f64() * 1e3;
    let cpu = cpu_ticks(agent.pid()) as f64 / (clock_ticks_per_sec() as f64);
    thread::sleep(Duration::from_secs(1));
    let s = Start {
        ready_ms,
        rss_mib: status_field(agent.pid(), "VmRSS") as f64 / 1024.0,
        cpu_s_at_ready: cpu,
        reissued_at_start: agent.hits(Marker::Reissuing),
    };
    (agent, s)
}

fn scenario5(plan: &Plan, started: Instant, report: &mut Report) {
    let mut per_size = serde_json::Map::new();
    let mut startup_med = BTreeMap::new();
    let mut rss_med = BTreeMap::new();
    let mut rate_by = BTreeMap::new();
    let mut fsync_by = BTreeMap::new();
    let mut cpu_med = BTreeMap::new();
    let peers = || na("n/a (no internal CA)");
    for &n in &plan.sizes {
        if started.elapsed() > BUDGET {
            report.row(
                &format!("s5_{n}"),
                &format!("5. scale, {n} certificates"),
                "",
                na("NOT MEASURED: time budget used up"),
                peers(),
                peers(),
            );
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("certagent-peers-scale-{n}-"))
            .tempdir()
            .unwrap();
        eprintln!("peers: [5] {n} certificates on the embedded CA: preparing {n} healthy pairs");
        let prep_s = scale_prepare(dir.path(), n);
        let mut starts: Vec<Start> = Vec::new();
        let mut runs = Vec::new();
        for (i, &par) in plan.parallels.iter().enumerate() {
            let config = scale_config(dir.path(), n, par);
            let (agent, st) = start_daemon(&config, &format!("scale daemon {n} p{par}"));
            eprintln!(
                "peers: [5] {n} certificates, max_parallel={par}: ready in {:.0} ms, RSS {:.1} MiB; re-issuing {}",
                st.ready_ms, st.rss_mib, plan.batch
            );
            let names: Vec<String> = (i * plan.batch..(i + 1) * plan.batch)
                .map(|k| format!("c{k:05}"))
                .collect();
            let fsync = fsync_ms(dir.path());
            let n_re = agent.hits(Marker::Reissuing);
            let n_in = agent.hits(Marker::Installed);
            let mut args = vec!["reissue", "--now", "--json"];
            args.extend(names.iter().map(String::as_str));
            let t0 = Instant::now();
            let run = common::run_certagent(&config, &args, &[]);
            let cli_s = t0.elapsed().as_secs_f64();
            assert_eq!(
                run.code,
                0,
                "bulk reissue at max_parallel={par} failed: {}",
                &run.stdout[..run.stdout.len().min(2000)]
            );
            let last = agent.wait_hits(
                Marker::Installed,
                n_in + plan.batch,
                Duration::from_secs(120),
            );
            let first = agent.hit_times(Marker::Reissuing)[n_re];
            let span = (last - first).as_secs_f64();
            let rate = plan.batch as f64 / span;
            let rss_after = status_field(agent.pid(), "VmRSS") as f64 / 1024.0;
            let cpu_after = cpu_ticks(agent.pid()) as f64 / (clock_ticks_per_sec() as f64);
            eprintln!(
                "peers: [5] {n} certificates, max_parallel={par}: {} re-issued in {span:.1} s = {rate:.1}/s (CLI {cli_s:.1} s)",
                plan.batch
            );
            runs.push(json!({
                "max_parallel": par, "batch": plan.batch, "seconds_first_reissuing_to_last_installed": span,
                "rate_per_s": rate, "cli_wall_s": cli_s, "rate_by_cli_wall_per_s": plan.batch as f64 / cli_s,
                "rss_mib_after": rss_after, "cpu_s_after": cpu_after, "loadavg": loadavg(),
                "fsync_ms_median_before": fsync,
            }));
            rate_by.insert((n, par), rate);
            fsync_by.insert((n, par), fsync);
            drop(agent);
            starts.push(st);
        }
        for _ in 0..plan.extra_startups {
            let config = scale_config(dir.path(), n, 4);
            let (agent, st) = start_daemon(&config, &format!("scale daemon {n}"));
            drop(agent);
            starts.push(st);
        }
        for s in &starts {
            assert_eq!(
                s.reissued_at_start, 0,
                "a healthy start re-issued something"
            );
        }
        // What every certagent process pays to read this configuration.
        let validate = agent_cmd(&scale_config(dir.path(), n, 4), &["config", "validate"])
            .run(&dir.path().join("validate.log"));
        must(&validate, "config validate");
        let ready: Vec<f64> = starts.iter().map(|s| s.ready_ms).collect();
        let rss: Vec<f64> = starts.iter().map(|s| s.rss_mib).collect();
        startup_med.insert(n, stats(&ready).median);
        let cpu: Vec<f64> = starts.iter().map(|s| s.cpu_s_at_ready).collect();
        cpu_med.insert(n, stats(&cpu).median);
        rss_med.insert(n, stats(&rss).median);
        per_size.insert(
            n.to_string(),
            json!({
                "prepare_s": prep_s,
                "startup_ready_ms": ready,
                "rss_mib_1s_after_ready": rss,
                "cpu_s_at_ready": starts.iter().map(|s| s.cpu_s_at_ready).collect::<Vec<_>>(),
                "throughput": runs,
                "config_validate": validate.json(),
            }),
        );
        report.row(
            &format!("s5_startup_{n}_ms"),
            &format!("5. start-up to ready, {n} certificates"),
            "ms",
            V::Samples(ready),
            peers(),
            peers(),
        );
        if n == 10_000 {
            let m = startup_med[&n];
            report.target(
                "< 3 s",
                m < 3000.0,
                format!("{m:.0} ms, {:.1}× under", 3000.0 / m),
            );
        }
        report.row(
            &format!("s5_startup_cpu_{n}_s"),
            &format!("5a. CPU to ready, {n} certificates"),
            "s",
            V::Samples(cpu),
            peers(),
            peers(),
        );
        report.row(
            &format!("s5_config_{n}_s"),
            &format!("5e. `certagent config validate` (config load of every command), {n} certificates: CPU"),
            "s",
            V::Samples(vec![validate.cpu_s]),
            peers(),
            peers(),
        );
        report.row(
            &format!("s5_rss_{n}_mib"),
            &format!("5b. RSS 1 s after ready, {n} certificates"),
            "MiB",
            V::Samples(rss),
            peers(),
            peers(),
        );
        if n == 10_000 {
            let m = rss_med[&n];
            report.target(
                "< 64 MiB",
                m < 64.0,
                format!("{m:.1} MiB, {:.1}× under", 64.0 / m),
            );
        }
        for &par in &plan.parallels {
            if let Some(r) = rate_by.get(&(n, par)) {
                report.row(
                    &format!("s5_rate_{n}_p{par}"),
                    &format!(
                        "5c. re-issue throughput, {n} loaded, max_parallel={par} ({} re-issued; fsync+dir fsync {:.1} ms)",
                        plan.batch,
                        fsync_by.get(&(n, par)).copied().unwrap_or(0.0)
                    ),
                    "cert/s",
                    V::Samples(vec![*r]),
                    peers(),
                    peers(),
                );
            }
        }
    }
    // Linearity: 10x the certificates should cost at most 10x (fixed costs make it less).
    if let (Some(&s1), Some(&s10), Some(&r1), Some(&r10)) = (
        startup_med.get(&1000),
        startup_med.get(&10_000),
        rss_med.get(&1000),
        rss_med.get(&10_000),
    ) {
        let rates: Vec<(usize, f64, f64)> = plan
            .parallels
            .iter()
            .filter_map(|&p| Some((p, *rate_by.get(&(1000, p))?, *rate_by.get(&(10_000, p))?)))
            .collect();
        let worst_rate = rates
            .iter()
            .map(|(_, a, b)| b / a)
            .fold(f64::INFINITY, f64::min);
        let c_ratio = cpu_med[&10_000] / cpu_med[&1000];
        report.row("s5_linear", "5d. 10,000 vs 1,000: start-up ×, RSS ×, slowest throughput ratio", "ratio",
            na(&format!("start-up {:.2}× (CPU {c_ratio:.2}×), RSS {:.2}×, throughput {:.2}× (10k rate ÷ 1k rate, worst of p1/p4/p16)", s10 / s1, r10 / r1, worst_rate)),
            peers(), peers());
        let linear = s10 / s1 <= 12.5 && c_ratio <= 12.5 && r10 / r1 <= 12.5 && worst_rate >= 0.75;
        report.target(
            "linear: start-up (wall and CPU) and RSS ≤ 10× (+25 %), per-certificate throughput kept (≥ 0.75×)",
            linear,
            format!(
                "RSS per 1,000 certificates: {:.2} MiB; start-up per 1,000: {:.0} ms",
                (r10 - r1) / 9.0,
                (s10 - s1) / 9.0
            ),
        );
        report.detail("s5_linearity", json!({
            "startup_ratio": s10 / s1, "startup_cpu_ratio": c_ratio, "rss_ratio": r10 / r1,
            "rss_mib_per_1000_certs": (r10 - r1) / 9.0, "startup_ms_per_1000_certs": (s10 - s1) / 9.0,
            "rate_10k_over_1k": rates.iter().map(|(p, a, b)| json!({"max_parallel": p, "ratio": b / a})).collect::<Vec<_>>(),
        }));
    }
    report.detail("s5", Value::Object(per_size));
}

// =============================================================================================

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let ver = |p: &str| sh(&format!("dpkg-query -W -f='${{Version}}' {p}"));
    json!({
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "mem_total_mib": mem / 1024,
        "debian": std::fs::read_to_string("/etc/debian_version").unwrap_or_default().trim(),
        "certagent": format!("{} ({})", env!("CARGO_PKG_VERSION"), sh(&format!("git -C {} rev-parse --short HEAD", env!("CARGO_MANIFEST_DIR")))),
        "certbot": ver("certbot"),
        "python3_certbot_nginx": ver("python3-certbot-nginx"),
        "lego": ver("lego"),
        "pebble": ver("pebble"),
        "nginx": ver("nginx"),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(RUSAGE_ARG) {
        rusage_child(&args[2..]);
    }
    // `peers __peers_prepare DIR N [MAX_PARALLEL]`: only build scenario 5's data set (embedded
    // CA, N healthy pairs, config at DIR/etc/config.toml), e.g. to profile a start-up by hand.
    if args.get(1).map(String::as_str) == Some(PREPARE_ARG) {
        let dir = PathBuf::from(args.get(2).expect("DIR"));
        let n: usize = args.get(3).and_then(|v| v.parse().ok()).expect("N");
        let par: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(4);
        common::ensure_crypto_provider();
        let secs = scale_prepare(&dir, n);
        let config = scale_config(&dir, n, par);
        println!(
            "{} ({n} certificates prepared in {secs:.1} s)",
            config.display()
        );
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("peers bench: run it with `cargo bench --bench peers`; nothing to do here");
        return;
    }
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/peers/install.sh");
    let ok = Command::new(&install)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let missing: Vec<&str> = ["certbot", "lego", "pebble", "pebble-challtestsrv", "nginx"]
        .into_iter()
        .filter(|p| !in_path(p))
        .collect();
    if !ok || !missing.is_empty() {
        eprintln!(
            "peers bench: {} could not install what is missing ({}); run `sudo tests/bench/peers/run.sh`",
            install.display(),
            missing.join(", ")
        );
        std::process::exit(2);
    }
    common::ensure_crypto_provider();
    let quick = std::env::var_os("CERTAGENT_BENCH_QUICK").is_some_and(|v| v != "0");
    let plan = if quick {
        Plan {
            rounds: 2,
            trigger_rounds: 3,
            idle_runs: 2,
            idle_window: Duration::from_secs(5),
            sizes: vec![200, 1000],
            parallels: vec![1, 4, 16],
            batch: 40,
            extra_startups: 0,
        }
    } else {
        Plan {
            rounds: 9,
            trigger_rounds: 10,
            idle_runs: 7,
            idle_window: Duration::from_secs(60),
            sizes: vec![1000, 10_000],
            parallels: vec![1, 4, 16],
            batch: 300,
            extra_startups: 2,
        }
    };
    let started = Instant::now();
    let load_start = loadavg();
    let mach = machine();
    eprintln!(
        "peers: certagent vs certbot vs lego{} — {mach}",
        if quick {
            " (QUICK mode: not the benchmark)"
        } else {
            ""
        }
    );
    eprintln!("peers: load average {load_start}");

    let root = tempfile::Builder::new()
        .prefix("certagent-peers-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(root.path().join("logs")).unwrap();
    let pebble = Pebble::start(PebbleOpts::default());
    let acme_nginx = Nginx::start_with_http(
        &root.path().join("acme-nginx"),
        &[],
        Some(pebble.http_port()),
    );
    let bed = Bed {
        root,
        pebble,
        acme_nginx,
    };
    let mut report = Report::default();

    eprintln!(
        "peers: setting up (each client registers its account and gets its site certificate)"
    );
    let a = setup_agent(&bed, &plan);
    let cb = setup_certbot(&bed);
    let lg = setup_lego(&bed);

    scenario1(&bed, &plan, &a, &cb, &lg, &mut report);
    scenario2(&bed, &plan, &a, &cb, &lg, &mut report);
    let daemon = scenario3(&plan, &a, &mut report);
    let idle = idle_start(&daemon, plan.idle_window);
    let (c4, l4) = scenario4_peers(&bed, &plan, &cb, &lg);
    scenario3_peers(&bed, &cb, &lg, &mut report);
    scenario5(&plan, started, &mut report);
    let w = idle.join().expect("idle window");
    scenario4_report(w, &daemon, &c4, &l4, &mut report);
    drop(daemon);

    // Scenario 4's rows go after 3 in the table.
    let pos = |k: &str| -> u8 {
        match k.as_bytes().get(1) {
            Some(b'1') => 1,
            Some(b'2') => 2,
            Some(b'3') => 3,
            Some(b'4') => 4,
            _ => 5,
        }
    };
    report.rows.sort_by_key(|r| pos(&r.key));

    let wall = started.elapsed();
    let table = report.markdown();
    println!("\n{table}");
    println!(
        "machine: {} × {}, kernel {}, {} MiB, Debian {}; certbot {}, lego {}, pebble {}, nginx {}",
        mach["nproc"],
        mach["cpu_model"].as_str().unwrap_or(""),
        mach["kernel"].as_str().unwrap_or(""),
        mach["mem_total_mib"],
        mach["debian"].as_str().unwrap_or(""),
        mach["certbot"].as_str().unwrap_or(""),
        mach["lego"].as_str().unwrap_or(""),
        mach["pebble"].as_str().unwrap_or(""),
        mach["nginx"].as_str().unwrap_or("")
    );
    println!(
        "wall time {:.0} s; load average at start {load_start}, at end {}",
        wall.as_secs_f64(),
        loadavg()
    );
    let missed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.target.as_ref().is_some_and(|t| !t.1))
        .map(|r| r.figure.clone())
        .collect();
    let doc = json!({
        "schema": 1,
        "bench": "peers",
        "quick": quick,
        "machine": mach,
        "http01_method": "webroot for all three clients: one nginx on Pebble's http port serves a shared webroot",
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() - wall.as_secs(),
        "wall_seconds": wall.as_secs_f64(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "git_dirty": !sh(&format!("git -C {} status --porcelain --untracked-files=no", env!("CARGO_MANIFEST_DIR"))).is_empty(),
        "targets_missed": missed,
        "rows": report.json_rows(),
        "details": Value::Object(report.details.clone()),
        "table_markdown": table,
    });
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let out = out_dir.join("peers.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).expect("write peers.json");
    println!("raw samples: {}", out.display());
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", missed.join("; "));
    }
}
