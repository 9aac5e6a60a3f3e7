//! `cargo bench --bench daemon`: how fast and how cheap `certagent run` is, measured on the
//! real release binary against real Pebble and nginx on 127.0.0.1.
//!
//! 1. trigger latency: key file unlinked -> the daemon's "re-issuing" log line (embedded CA,
//!    no server);
//! 2. key unlinked -> nginx serves a leaf for the new key (Pebble as the ACME CA, ECDSA P-256),
//!    seen by polling TLS handshakes every 5 ms;
//! 3. idle cost: RSS and CPU ticks of a settled daemon with 10 certificates (60 s window), RSS
//!    with 10,000;
//! 4. start-up with 10,000 healthy certificates (spawn -> "daemon ready"), and the first
//!    issuance of 10,000 at `max_parallel` = 1, 4, 16 (certificates/s).
//!
//! The daemon's stderr is read through a pipe by a thread that stamps each line with
//! `Instant::now()` on arrival (certagent's lines carry no timestamps). Every sample is written
//! to `target/bench/daemon.json`; a table with each figure, its target and PASS/FAIL is
//! printed. Every process started here is stopped by pid (guards), nothing by name.
//!
//! Bounded in time: the measured part gets 540 s. The first issuance at `max_parallel` = 4 runs
//! to completion (start-up is measured on its 10,000 healthy certificates); the runs at 16 and
//! 1 share what is left, and a run cut short reports its rate over what it installed, marked
//! INCOMPLETE. The 60 s idle window runs while [4] works: CPU ticks are the idle daemon's own.
//!
//! Where files live: scenarios 1-3 and a 1,000-certificate first issuance under `$TMPDIR`
//! (default /tmp, on disk: fsync is real); the 10,000-certificate runs under /dev/shm (tmpfs)
//! or `$CERTAGENT_BENCH_BULK_DIR`, because removing their ~100,000 files from a busy disk can
//! take minutes (see `bulk_root`).
//!
//! Needs `pebble`, `pebble-challtestsrv` and `nginx` on PATH (`.ci/run` installs them). Run
//! without `--bench` (e.g. by `cargo test --all-targets`) it does nothing.
//! `CERTAGENT_BENCH_QUICK=1` shrinks every scenario (1,000 certificates, 5 s idle window,
//! fewer samples) for checking the bench itself; its figures are not the benchmark.

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
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use agent::{
    Agent, BIN, Marker, Stats, clock_ticks_per_sec, cpu_ticks, in_path, loadavg, rss_kib, stats,
    threads,
};
use common::{Env, Pebble, PebbleOpts, served_leaf, spki_of_cert_der, spki_of_key_pem};

/// The whole run must end within 10 minutes: the measured part gets this much, the rest is
/// for tearing down (removing ~100,000 files per 10,000 certificates) and the report.
const BUDGET: Duration = Duration::from_secs(540);
/// The daemon pages out the code its last work used after 10 s without work
/// (`src/daemon/trim.rs`); idle readings are taken after that, with a second to spare.
const IDLE_TRIM: Duration = Duration::from_secs(11);

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the bench started.
fn note(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench [{t:6.1} s] {msg}");
}

// ---------------------------------------------------------------------------------------------
// The daemon, with its stderr timestamped line by line.

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// /proc/PID/smaps_rollup as `field -> kB`.
fn smaps_rollup(pid: u32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.contains(' ') {
                return None; // the "start-end ---p ... [rollup]" header
            }
            Some((k.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// CPU and I/O pressure (PSI "some" averages), to tell a quiet machine from a busy one.
fn pressure() -> Value {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/proc/pressure/{what}"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
    };
    json!({ "cpu": read("cpu"), "io": read("io") })
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report.

/// One row of the table: a figure, its target, and whether it was met.
struct Row {
    figure: String,
    unit: &'static str,
    n: usize,
    stats: Option<Stats>,
    target: String,
    pass: Option<bool>,
    note: String,
}

struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
    /// Seconds each removal of a bulk directory took.
    removals: Vec<f64>,
}

/// What a target is compared with.
#[derive(Clone, Copy)]
enum Target {
    /// Informational only.
    None,
    /// The median must be below this.
    MedianBelow(f64),
    /// Every sample must be below this.
    MaxBelow(f64),
}

impl Report {
    /// A row for `samples` whose median must be below `below` (or that is informational).
    fn samples(
        &mut self,
        key: &str,
        figure: &str,
        unit: &'static str,
        samples: &[f64],
        target: Target,
        extra: Value,
    ) {
        let st = stats(samples);
        let (pass, label) = match target {
            Target::None => (None, "-".to_owned()),
            Target::MedianBelow(b) => (Some(st.median < b), format!("median < {b}")),
            Target::MaxBelow(b) => (Some(st.max < b), format!("max < {b}")),
        };
        self.json.insert(
            key.to_owned(),
            json!({
                "unit": unit,
                "samples": samples,
                "median": st.median,
                "min": st.min,
                "max": st.max,
                "target": (pass.is_some()).then(|| format!("{label} {unit}")),
                "pass": pass,
                "detail": extra,
            }),
        );
        self.rows.push(Row {
            figure: figure.to_owned(),
            unit,
            n: samples.len(),
            stats: Some(st),
            target: label,
            pass,
            note: String::new(),
        });
    }

    /// A figure that could not be measured: a missed target if it has one.
    fn skipped(&mut self, key: &str, figure: &str, why: &str, has_target: bool) {
        self.json
            .insert(key.to_owned(), json!({ "skipped": why, "pass": null }));
        self.rows.push(Row {
            figure: figure.to_owned(),
            unit: "",
            n: 0,
            stats: None,
            target: "-".to_owned(),
            pass: has_target.then_some(false),
            note: format!("NOT MEASURED: {why}"),
        });
    }

    fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<62} {:>3} {:>9} {:>9} {:>9}  {:<14} result",
            "figure", "n", "median", "min", "max", "target"
        );
        let _ = writeln!(out, "{}", "-".repeat(119));
        for r in &self.rows {
            let verdict = match r.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "info",
            };
            match &r.stats {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{:<62} {:>3} {:>9} {:>9} {:>9}  {:<14} {} {}",
                        format!("{} [{}]", r.figure, r.unit),
                        r.n,
                        fmt_num(s.median),
                        fmt_num(s.min),
                        fmt_num(s.max),
                        r.target,
                        verdict,
                        r.note
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<62} {}", r.figure, r.note);
                }
            }
        }
        println!("{out}");
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Configurations.

/// `[agent]` for a bench directory: everything (state, runtime, compromised_dir) inside it.
fn agent_table(dir: &Path, max_parallel: usize) -> String {
    format!(
        "[agent]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\ncompromised_dir = \"{}\"\nmax_parallel = {max_parallel}\nlock_timeout = \"30s\"\n# the bench deletes keys more often than a host ever should\nmax_reissues_per_hour = 1000\n\n",
        dir.join("state").display(),
        dir.join("run").display(),
        dir.join("compromised").display(),
    )
}

/// A config with `n` certificates `cNNNNN` from the embedded CA, install only (no server),
/// their files in `DIR/ssl/`. Returns the config path.
fn bulk_config(dir: &Path, n: usize, max_parallel: usize) -> PathBuf {
    let etc = dir.join("etc");
    let ssl = dir.join("ssl");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&ssl).unwrap();
    std::fs::create_dir_all(dir.join("compromised")).unwrap();
    let mut text = agent_table(dir, max_parallel);
    for i in 0..n {
        let _ = write!(
            text,
            "[certificate.c{i:05}]\nnames = [\"c{i:05}.test\"]\nissuer = \"internal\"\nkey_type = \"ecdsa-p256\"\ncert_file = \"{ssl}/c{i:05}.pem\"\nkey_file = \"{ssl}/c{i:05}.key\"\n\n",
            ssl = ssl.display()
        );
    }
    let path = etc.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates the embedded CA in `DIR/state` with one certificate issued from the command line
/// (a separate config with the same state and runtime dirs, so the bulk config's certificates
/// are all still to be issued), so that creating the CA is not part of what is timed. (Before
/// c25d6f9 the CA was created without a lock, and parallel first issuances on an empty state
/// dir could leave `ca.key` and `ca.pem` from different creators; now it is created under
/// `STATE/ca.lock`.)
fn seed_ca(dir: &Path) {
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let mut text = agent_table(dir, 1);
    let _ = write!(
        text,
        "[certificate.seed]\nnames = [\"seed.test\"]\nissuer = \"internal\"\ncert_file = \"{0}/seed.pem\"\nkey_file = \"{0}/seed.key\"\n",
        seed.display()
    );
    let config = seed.join("config.toml");
    std::fs::write(&config, text).unwrap();
    let run = common::run_certagent(&config, &["reissue", "--now", "seed"], &[]);
    assert_eq!(run.code, 0, "seeding the embedded CA failed: {run:?}");
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempdir_in(&std::env::temp_dir(), prefix)
}

fn tempdir_in(root: &Path, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", root.display()))
}

/// The type of the filesystem `path` is on (longest matching mount point in /proc/mounts).
fn fs_type(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_owned(), |(_, kind)| kind)
}

/// Where the 10,000-certificate runs keep their files: `$CERTAGENT_BENCH_BULK_DIR`, else
/// /dev/shm (tmpfs) where it exists. Removing 100,000 files from this machine's ext4 (mounted
/// with `discard`) took from 3 s to over 250 s depending on what else used the disk, which no
/// time bound survives; on tmpfs, fsync costs nothing, so these runs measure certagent's own
/// work, and one smaller run on `$TMPDIR` (disk) shows what fsync adds.
fn bulk_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CERTAGENT_BENCH_BULK_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && fs_type(shm) == "tmpfs" {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

struct Plan {
    trigger_samples: usize,
    served_samples: usize,
    idle_window: Duration,
    bulk: usize,
    startup_samples: usize,
    parallels: Vec<usize>,
    /// The measured part ends by then (the whole run must stay under 10 minutes).
    budget: Duration,
    /// Kept for the start-up samples.
    startup_reserve: Duration,
    /// Least time given to each first-issuance run after the first.
    min_run: Duration,
    /// Most time given to any first-issuance run.
    max_run: Duration,
    /// Certificates in the first issuance on disk.
    disk_bulk: usize,
    /// Kept for it (half to run, half to remove its files).
    disk_reserve: Duration,
}

/// 1. Unlink of the key file -> "re-issuing" line (one certificate, embedded CA, no server).
fn trigger_latency(plan: &Plan, report: &mut Report) {
    note(&format!(
        "[1] trigger latency, {} samples",
        plan.trigger_samples
    ));
    let dir = tempdir("certagent-bench-trigger-");
    let config = bulk_config(dir.path(), 1, 4);
    let key = dir.path().join("ssl/c00000.key");
    let agent = Agent::spawn(&config, "trigger daemon");
    // Nothing is on disk yet: the daemon issues generation 0 at start.
    agent.wait_hits(Marker::Installed, 1, Duration::from_secs(30));
    let mut detect = Vec::new();
    let mut installed = Vec::new();
    // One warm-up round (not counted), then the samples.
    for round in 0..=plan.trigger_samples {
        // Let the events of the previous install (our own flip) pass first.
        thread::sleep(Duration::from_millis(150));
        let n_re = agent.hits(Marker::Reissuing);
        let n_in = agent.hits(Marker::Installed);
        let t0 = Instant::now();
        std::fs::remove_file(&key).expect("unlink key file");
        let seen = agent.wait_hits(Marker::Reissuing, n_re + 1, Duration::from_secs(10));
        let done = agent.wait_hits(Marker::Installed, n_in + 1, Duration::from_secs(30));
        if round > 0 {
            detect.push(ms(seen - t0));
            installed.push(ms(done - t0));
        }
    }
    report.samples(
        "trigger_latency_ms",
        "1. key unlinked -> \"re-issuing\" logged",
        "ms",
        &detect,
        Target::MedianBelow(100.0),
        json!({ "unlink_to_installed_ms": installed, "daemon_pid": agent.pid() }),
    );
    report.samples(
        "trigger_to_installed_ms",
        "1b. key unlinked -> installed (embedded CA)",
        "ms",
        &installed,
        Target::None,
        Value::Null,
    );
}

/// 2. Unlink of the key file -> nginx serves a leaf for the new key (Pebble, ECDSA P-256).
fn served_latency(plan: &Plan, report: &mut Report) {
    note(&format!(
        "[2] key deleted -> new leaf served by nginx (Pebble), {} samples",
        plan.served_samples
    ));
    let pebble = Pebble::start(PebbleOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "issuer = \"pebble\"\nkey_type = \"ecdsa-p256\"",
        &pebble.issuer_table(),
    );
    // The samples delete the key more often than the hourly guard allows a host to need.
    let text = std::fs::read_to_string(&env.config).expect("read the bench config");
    let text = text.replacen("[agent]\n", "[agent]\nmax_reissues_per_hour = 1000\n", 1);
    std::fs::write(&env.config, text).expect("write the bench config");
    let agent = Agent::spawn(&env.config, "served daemon");
    agent.wait_hits(Marker::Ready, 1, Duration::from_secs(30));
    let addr = env.addr();
    let sni = env.names[0].clone();
    let mut served = Vec::new();
    let mut detect = Vec::new();
    let mut flipped = Vec::new();
    let mut installed = Vec::new();
    let mut polls = Vec::new();
    let mut warmup = Value::Null;
    for round in 0..=plan.served_samples {
        thread::sleep(Duration::from_millis(200));
        let old = served_leaf(&addr, &sni).expect("nginx answers");
        let (n_re, n_fl, n_in) = (
            agent.hits(Marker::Reissuing),
            agent.hits(Marker::Flipped),
            agent.hits(Marker::Installed),
        );
        let t0 = Instant::now();
        std::fs::remove_file(&env.key_file).expect("unlink key file");
        let mut k = 0u32;
        let seen_at = loop {
            k += 1;
            let next = t0 + Duration::from_millis(5) * k;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the new leaf was not served within 60 s:\n{}\n{}",
                agent.tail(40),
                pebble.log()
            );
            let Ok(key_pem) = std::fs::read_to_string(&env.key_file) else {
                continue;
            };
            let Some(leaf) = served_leaf(&addr, &sni) else {
                continue;
            };
            let at = Instant::now();
            if leaf != old && spki_of_cert_der(&leaf) == spki_of_key_pem(&key_pem) {
                break at;
            }
        };
        let re = agent.wait_hits(Marker::Reissuing, n_re + 1, Duration::from_secs(30));
        let fl = agent.wait_hits(Marker::Flipped, n_fl + 1, Duration::from_secs(30));
        let done = agent.wait_hits(Marker::Installed, n_in + 1, Duration::from_secs(60));
        if round == 0 {
            // The first issuance also registers the ACME account.
            warmup = json!({
                "served_ms": ms(seen_at - t0),
                "reissuing_ms": ms(re - t0),
                "flipped_ms": ms(fl - t0),
                "installed_ms": ms(done - t0),
            });
            continue;
        }
        served.push(ms(seen_at - t0));
        detect.push(ms(re - t0));
        flipped.push(ms(fl - t0));
        installed.push(ms(done - t0));
        polls.push(k);
    }
    report.samples(
        "key_deleted_to_served_ms",
        "2. key unlinked -> new leaf served (Pebble, P-256)",
        "ms",
        &served,
        Target::MedianBelow(1000.0),
        json!({
            "unlink_to_reissuing_ms": detect,
            "unlink_to_flipped_ms": flipped,
            "unlink_to_installed_ms": installed,
            "handshake_polls": polls,
            "warmup_with_account_registration": warmup,
            "poll_interval_ms": 5,
        }),
    );
    report.samples(
        "served_unlink_to_flipped_ms",
        "2b. key unlinked -> new pair flipped in (Pebble)",
        "ms",
        &flipped,
        Target::None,
        Value::Null,
    );
    report.samples(
        "served_unlink_to_installed_ms",
        "2c. key unlinked -> daemon logs \"installed\"",
        "ms",
        &installed,
        Target::None,
        Value::Null,
    );
}

/// 3a. A settled daemon with 10 healthy certificates, and the thread that watches it for the
/// idle window (one RSS reading a second, CPU ticks at both ends).
struct Idle {
    _dir: tempfile::TempDir,
    ssl: PathBuf,
    config: PathBuf,
    agent: Agent,
    ticks_start: u64,
    window_start: Instant,
    window: thread::JoinHandle<IdleWindow>,
}

struct IdleWindow {
    ticks_end: u64,
    rss_kib: Vec<u64>,
    length: Duration,
}

fn idle_start(plan: &Plan) -> Idle {
    note(&format!(
        "[3] idle cost, 10 certificates, {:?} window (runs alongside [4]; CPU ticks are the daemon's own)",
        plan.idle_window
    ));
    let dir = tempdir("certagent-bench-idle-");
    let config = bulk_config(dir.path(), 10, 4);
    // Issued from the command line (serially) first: the daemon starts with 10 healthy pairs.
    let run = common::run_certagent(&config, &["reissue", "--now", "--all"], &[]);
    assert_eq!(run.code, 0, "issuing the 10 certificates failed: {run:?}");
    let agent = Agent::spawn(&config, "idle daemon (10)");
    let ssl = dir.path().join("ssl");
    agent.wait_hits(Marker::Ready, 1, Duration::from_secs(30));
    assert_eq!(agent.hits(Marker::Reissuing), 0, "{}", agent.tail(20));
    // Settled: at least two seconds after ready, the last of them without a tick.
    thread::sleep(Duration::from_secs(1));
    let pid = agent.pid();
    let mut last = cpu_ticks(pid);
    for _ in 0..10 {
        thread::sleep(Duration::from_secs(1));
        let now = cpu_ticks(pid);
        if now == last {
            break;
        }
        last = now;
    }
    // Idle means after the daemon's idle trim too (`src/daemon/trim.rs`: the code its start-up
    // paged in is given back after 10 s without work).
    thread::sleep(IDLE_TRIM);
    let ticks_start = cpu_ticks(pid);
    let window_start = Instant::now();
    let len = plan.idle_window;
    let window = thread::spawn(move || {
        let mut rss = vec![rss_kib(pid)];
        let mut k = 1;
        while window_start.elapsed() < len {
            let next = window_start + Duration::from_secs(k).min(len);
            thread::sleep(next.saturating_duration_since(Instant::now()));
            rss.push(rss_kib(pid));
            k += 1;
        }
        let ticks_end = cpu_ticks(pid);
        IdleWindow {
            ticks_end,
            rss_kib: rss,
            length: window_start.elapsed(),
        }
    });
    Idle {
        _dir: dir,
        ssl,
        config,
        agent,
        ticks_start,
        window_start,
        window,
    }
}

fn idle_finish(idle: Idle, report: &mut Report) {
    let w = idle.window.join().expect("idle window thread");
    let pid = idle.agent.pid();
    let span = idle.window_start.elapsed();
    let ticks_span = cpu_ticks(pid) - idle.ticks_start;
    let smaps = smaps_rollup(pid);
    let thr = threads(pid);
    let ticks = w.ticks_end - idle.ticks_start;
    let rss_mib: Vec<f64> = w.rss_kib.iter().map(|&k| k as f64 / 1024.0).collect();
    note(&format!(
        "[3] idle (10): {ticks} ticks in {:.1} s ({ticks_span} in {:.1} s), RSS max {} KiB, {thr} threads",
        w.length.as_secs_f64(),
        span.as_secs_f64(),
        w.rss_kib.iter().max().copied().unwrap_or(0)
    ));
    report.samples(
        "idle10_rss_mib",
        "3a. RSS, 10 certificates, settled (1/s)",
        "MiB",
        &rss_mib,
        Target::MaxBelow(8.0),
        json!({ "rss_kib": w.rss_kib, "smaps_rollup_kib_at_end": smaps, "threads": thr }),
    );
    report.samples(
        "idle10_cpu_ticks",
        &format!(
            "3b. CPU ticks in {:.0} s idle, 10 certificates",
            w.length.as_secs_f64()
        ),
        "ticks",
        &[ticks as f64],
        Target::MaxBelow(0.5),
        json!({
            "window_s": w.length.as_secs_f64(),
            "clock_ticks_per_s": clock_ticks_per_sec(),
            "whole_observed_span_s": span.as_secs_f64(),
            "ticks_in_whole_span": ticks_span,
        }),
    );
    if let Some(row) = report.rows.last_mut() {
        row.target = "== 0".to_owned();
    }
    let mut agent = idle.agent;
    after_activity(&agent, &idle.ssl, &idle.config, report);
    agent.stop();
}

/// The daemon after five heals (a key deleted, re-issued by the daemon) and one re-issue from
/// the command line, idle again for the trim delay: what it keeps resident after work.
fn after_activity(agent: &Agent, ssl: &Path, config: &Path, report: &mut Report) {
    let pid = agent.pid();
    let busy = rss_kib(pid);
    for heal in 1..=5 {
        let installed = agent.hits(Marker::Installed);
        std::fs::remove_file(ssl.join(format!("c{heal:05}.key"))).expect("delete a key");
        agent.wait_hits(Marker::Installed, installed + 1, Duration::from_secs(30));
    }
    let run = common::run_certagent(config, &["reissue", "--now", "c00000"], &[]);
    assert_eq!(run.code, 0, "the CLI re-issue failed: {run:?}");
    let worked = rss_kib(pid);
    thread::sleep(IDLE_TRIM);
    let rested = rss_kib(pid);
    note(&format!(
        "[3] after 5 heals + 1 CLI re-issue: RSS {worked} KiB right after, {rested} KiB {} s later (idle before: {busy} KiB)",
        IDLE_TRIM.as_secs()
    ));
    report.samples(
        "idle10_after_work_rss_mib",
        "3d. RSS, 10 certificates, idle again after 5 heals + 1 CLI re-issue",
        "MiB",
        &[rested as f64 / 1024.0],
        Target::MaxBelow(8.0),
        json!({ "rss_kib_right_after": worked, "rss_kib_idle_again": rested, "rss_kib_before": busy, "smaps_rollup_kib": smaps_rollup(pid) }),
    );
}

/// 4b. First issuance of `plan.bulk` certificates by a fresh daemon at `max_parallel` = `par`,
/// given at most `cap` (the rate is then over what was installed, and the row says so).
/// Returns the directory if every certificate was installed (all healthy), else removes it.
/// Where a first-issuance run keeps its files, and how many certificates it issues.
struct Batch<'a> {
    root: &'a Path,
    n: usize,
    /// JSON key prefix: "" or "disk_".
    label: &'a str,
}

fn first_issuance(
    report: &mut Report,
    batch: &Batch,
    par: usize,
    cap: Duration,
) -> Option<tempfile::TempDir> {
    let fs = fs_type(batch.root);
    let key = format!("first_issuance_{}p{par}", batch.label);
    let figure = format!(
        "4b. first issuance of {} ({fs}), max_parallel={par}",
        batch.n
    );
    if cap < Duration::from_secs(20) {
        note(&format!(
            "[4] {} on {fs}, max_parallel={par}: skipped, time budget used up",
            batch.n
        ));
        report.skipped(&key, &figure, "time budget used up", false);
        return None;
    }
    note(&format!(
        "[4] first issuance of {} certificates on {fs} ({}), max_parallel={par} (at most {:.0} s)",
        batch.n,
        batch.root.display(),
        cap.as_secs_f64()
    ));
    let dir = tempdir_in(batch.root, &format!("certagent-bench-bulk-p{par}-"));
    let config = bulk_config(dir.path(), batch.n, par);
    seed_ca(dir.path());
    let ld0 = loadavg();
    let mut agent = Agent::spawn(&config, &format!("bulk daemon (max_parallel={par})"));
    let t0 = agent.spawned;
    let done = agent.try_wait_hits(Marker::Installed, batch.n, cap, Some(Marker::Failed));
    let pid = agent.pid();
    let (rss, thr, ticks) = (rss_kib(pid), threads(pid), cpu_ticks(pid));
    let smaps = smaps_rollup(pid);
    let ready = agent.hit_times(Marker::Ready).first().map(|&r| ms(r - t0));
    let first = agent
        .hit_times(Marker::Reissuing)
        .first()
        .map(|&r| ms(r - t0));
    let n = agent.hits(Marker::Installed);
    let failed = agent.hits(Marker::Failed);
    let first_failure = agent.first_line("event=failed");
    let elapsed = done.map_or_else(|| t0.elapsed(), |d| d - t0);
    // A daemon with thousands of re-issues still queued takes long to reach its safe point
    // (queued jobs still start); that is not what is measured here.
    let stopping = Instant::now();
    let exit = agent.stop_within(Duration::from_secs(if done.is_some() { 60 } else { 10 }));
    let stop_s = stopping.elapsed().as_secs_f64();
    let rate = n as f64 / elapsed.as_secs_f64();
    let cpu_s = ticks as f64 / clock_ticks_per_sec() as f64;
    let complete = done.is_some();
    note(&format!(
        "[4] max_parallel={par}: {n} installed in {:.1} s = {rate:.1}/s{}, {failed} failed, CPU {cpu_s:.1} s, RSS {rss} KiB, {thr} threads; stopped in {stop_s:.1} s",
        elapsed.as_secs_f64(),
        if complete { "" } else { " (INCOMPLETE)" },
    ));
    let detail = json!({
        "max_parallel": par,
        "certificates": batch.n,
        "dir": dir.path(),
        "filesystem": fs,
        "installed": n,
        "failed": failed,
        "first_failure": first_failure,
        "complete": complete,
        "seconds_spawn_to_last_installed": elapsed.as_secs_f64(),
        "ms_spawn_to_ready": ready,
        "ms_spawn_to_first_reissuing": first,
        "cpu_seconds": cpu_s,
        "rss_kib_after": rss,
        "smaps_rollup_kib_after": smaps,
        "threads_after": thr,
        "seconds_to_stop": stop_s,
        "exit_code_after_sigterm": exit,
        "loadavg_before": ld0,
        "loadavg_after": loadavg(),
    });
    report.samples(&key, &figure, "cert/s", &[rate], Target::None, detail);
    if !complete {
        report.rows.last_mut().expect("row").note =
            format!("INCOMPLETE: {n}/{} installed, {failed} failed", batch.n);
        report.removals.push(remove(dir).as_secs_f64());
        return None;
    }
    Some(dir)
}

/// Removes a bench directory now (timed: 10,000 certificates are ~100,000 files).
fn remove(dir: tempfile::TempDir) -> Duration {
    let t = Instant::now();
    let path = dir.path().display().to_string();
    drop(dir);
    let took = t.elapsed();
    note(&format!("removed {path} in {:.1} s", took.as_secs_f64()));
    took
}

/// 4a/3c. Start-up with `plan.bulk` healthy certificates: spawn -> "ready"; RSS after it.
fn startup(plan: &Plan, report: &mut Report, dir: Option<tempfile::TempDir>, budget_end: Instant) {
    let Some(dir) = dir else {
        let why = "no complete first issuance to start from";
        report.skipped("startup_ms", "4a. start-up to ready", why, true);
        report.skipped(
            "idle_bulk_rss_mib",
            "3c. RSS with many certificates",
            why,
            true,
        );
        return;
    };
    note(&format!(
        "[4] start-up with {} healthy certificates, {} samples",
        plan.bulk, plan.startup_samples
    ));
    let config = dir.path().join("etc/config.toml");
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    let mut thr = Vec::new();
    let mut smaps = Value::Null;
    for i in 0..plan.startup_samples {
        if i >= 3 && Instant::now() > budget_end {
            note(&format!("time budget used up after {i} start-up samples"));
            break;
        }
        let mut agent = Agent::spawn(&config, "start-up daemon");
        let at = agent.wait_hits(Marker::Ready, 1, Duration::from_secs(120));
        ready.push(ms(at - agent.spawned));
        let cpu_at_ready = cpu_ticks(agent.pid());
        // Settled: one second after ready.
        thread::sleep(Duration::from_secs(1));
        let pid = agent.pid();
        assert_eq!(
            agent.hits(Marker::Reissuing),
            0,
            "start-up daemon re-issued:\n{}",
            agent.tail(20)
        );
        rss.push(rss_kib(pid) as f64 / 1024.0);
        cpu.push(cpu_at_ready as f64 / clock_ticks_per_sec() as f64);
        thr.push(threads(pid));
        if i == 0 {
            smaps = json!(smaps_rollup(pid));
        }
        agent.stop();
    }
    report.removals.push(remove(dir).as_secs_f64());
    report.samples(
        "startup_ms",
        &format!("4a. start-up with {} certificates -> ready", plan.bulk),
        "ms",
        &ready,
        Target::MedianBelow(3000.0),
        json!({
            "cpu_seconds_at_ready": cpu,
            "threads_after_ready": thr,
            "filesystem": fs_type(&config),
        }),
    );
    report.samples(
        "idle_bulk_rss_mib",
        &format!("3c. RSS, {} certificates, 1 s after ready", plan.bulk),
        "MiB",
        &rss,
        Target::MaxBelow(64.0),
        json!({ "smaps_rollup_kib_first_sample": smaps, "threads": thr }),
    );
}

// ---------------------------------------------------------------------------------------------

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("daemon bench: run it with `cargo bench --bench daemon`; nothing to do here");
        return;
    }
    let missing: Vec<&str> = ["pebble", "pebble-challtestsrv", "nginx"]
        .into_iter()
        .filter(|p| !in_path(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "daemon bench: {} not found on PATH; install them (as root: apt-get install pebble nginx, or run .ci/run once)",
            missing.join(", ")
        );
        std::process::exit(2);
    }
    if !Path::new(BIN).is_file() {
        eprintln!(
            "daemon bench: the certagent binary {BIN} is missing; run `cargo bench --bench daemon`, which builds it"
        );
        std::process::exit(2);
    }
    common::ensure_crypto_provider();

    let quick = std::env::var_os("CERTAGENT_BENCH_QUICK").is_some_and(|v| v != "0");
    let plan = if quick {
        Plan {
            trigger_samples: 5,
            served_samples: 3,
            idle_window: Duration::from_secs(5),
            bulk: 1000,
            startup_samples: 3,
            parallels: vec![4, 16, 1],
            budget: Duration::from_secs(300),
            startup_reserve: Duration::from_secs(10),
            min_run: Duration::from_secs(20),
            max_run: Duration::from_secs(40),
            disk_bulk: 200,
            disk_reserve: Duration::from_secs(60),
        }
    } else {
        Plan {
            trigger_samples: 20,
            served_samples: 12,
            idle_window: Duration::from_secs(60),
            bulk: 10_000,
            startup_samples: 10,
            parallels: vec![4, 16, 1],
            budget: BUDGET,
            startup_reserve: Duration::from_secs(90),
            min_run: Duration::from_secs(60),
            max_run: Duration::from_secs(240),
            disk_bulk: 1000,
            disk_reserve: Duration::from_secs(90),
        }
    };
    let started = *START.get_or_init(Instant::now);
    let load_start = loadavg();
    let pressure_start = pressure();
    note(&format!(
        "certagent daemon benchmark{} — binary {BIN}, load average {load_start}",
        if quick {
            " (QUICK mode: not the benchmark)"
        } else {
            ""
        }
    ));
    let mut report = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
        removals: Vec::new(),
    };

    trigger_latency(&plan, &mut report);
    served_latency(&plan, &mut report);
    let idle = idle_start(&plan);
    // The first max_parallel's complete run is the healthy state start-up is measured on;
    // start-up comes before the other runs, which share what is left of the budget.
    let budget_end = started + plan.budget;
    let reserve =
        plan.startup_reserve + plan.min_run * (plan.parallels.len() as u32 - 1) + plan.disk_reserve;
    let (&first_par, rest) = plan.parallels.split_first().expect("parallels");
    let cap = budget_end
        .saturating_duration_since(Instant::now())
        .saturating_sub(reserve)
        .min(plan.max_run);
    let root = bulk_root();
    let bulk = Batch {
        root: &root,
        n: plan.bulk,
        label: "",
    };
    let healthy = first_issuance(&mut report, &bulk, first_par, cap);
    startup(
        &plan,
        &mut report,
        healthy,
        budget_end - plan.min_run * rest.len() as u32,
    );
    idle_finish(idle, &mut report);
    for (i, &par) in rest.iter().enumerate() {
        // Each run's directory is removed after it, within the budget: as long as the last
        // removal took.
        let removal = Duration::from_secs_f64(report.removals.last().copied().unwrap_or(0.0));
        let left = budget_end
            .saturating_duration_since(Instant::now())
            .saturating_sub(plan.disk_reserve);
        let cap = (left / (rest.len() - i) as u32)
            .saturating_sub(removal)
            .min(plan.max_run);
        if let Some(dir) = first_issuance(&mut report, &bulk, par, cap) {
            report.removals.push(remove(dir).as_secs_f64());
        }
    }
    // The same on disk, smaller: what fsync adds (and removal there is slow when the disk is
    // busy: half the reserve is kept for it).
    let disk_root = std::env::temp_dir();
    let disk = Batch {
        root: &disk_root,
        n: plan.disk_bulk,
        label: "disk_",
    };
    let cap = budget_end
        .saturating_duration_since(Instant::now())
        .saturating_sub(plan.disk_reserve / 2)
        .min(plan.disk_reserve / 2);
    if let Some(dir) = first_issuance(&mut report, &disk, first_par, cap) {
        report.removals.push(remove(dir).as_secs_f64());
    }

    let wall = started.elapsed();
    report.print();
    println!(
        "wall time {:.1} s; load average at start {load_start}, at end {}",
        wall.as_secs_f64(),
        loadavg()
    );
    let failed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.pass == Some(false))
        .map(|r| r.figure.as_str())
        .collect();

    let doc = json!({
        "schema": 1,
        "bench": "daemon",
        "quick": quick,
        "binary": BIN,
        "git_head": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() - wall.as_secs(),
        "wall_seconds": wall.as_secs_f64(),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "bulk_dir": bulk_root(),
        "bulk_filesystem": fs_type(&bulk_root()),
        "tmpdir": std::env::temp_dir(),
        "tmpdir_filesystem": fs_type(&std::env::temp_dir()),
        "loadavg_start": load_start,
        "pressure_start": pressure_start,
        "pressure_end": pressure(),
        "loadavg_end": loadavg(),
        "seconds_removing_bulk_dirs": report.removals,
        "targets_missed": failed,
        "results": Value::Object(report.json),
    });
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let out = out_dir.join("daemon.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("JSON")).expect("write JSON");
    println!("raw samples: {}", out.display());
    if failed.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", failed.join("; "));
    }
}
