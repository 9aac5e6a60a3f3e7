//! `tests/bench/run.sh fleet` (= `cargo bench --bench fleet`, release profile): a simulated
//! fleet on this machine — a 3-member etcd on loopback, Pebble (always valid), N hosts = N
//! `certagent run` daemons (own state, runtime, webroot and config each; no web server: the
//! certificates are files), C shared certificates `c000`… that every host configures.
//!
//! The figures quoted in the README come from the defaults (10 and 50 hosts, 200 shared
//! certificates, a 120 s idle window; about 7 minutes on 2 cores):
//!
//! ```text
//! tests/bench/run.sh fleet
//! # = FLEET_HOSTS=10,50 FLEET_CERTS=200 FLEET_IDLE_SECS=120 FLEET_TRIGGERS=10 \
//! #   FLEET_MAX_PARALLEL=8 tests/bench/run.sh fleet
//! ```
//!
//! For each fleet size N, from scratch (new etcd, new Pebble, empty hosts):
//!
//! * **first issuance**: h00 starts alone and orders all C (Pebble's orders: expect C), then
//!   the other N-1 start empty and install what it published (no order: still C), timed
//!   until every host's files hold one serial per certificate. Not all N at once by default:
//!   Pebble 2.4.0 (Debian's) hung for good when 50 daemons × 200 certificates started
//!   together (24 orders, then no answer; its goroutine dump had every ACME handler waiting
//!   on the MemoryStore's RWMutex, e.g. in FindValidAuthorization and AddAccount);
//!   `FLEET_START=together` starts all at once (10 × 200 passed that way, with C orders).
//!   Then the fleet must be quiet ("settled": 2 s with only lease keep-alives reaching etcd
//!   and under 0.1 s of CPU used by all daemons together; the time it took is a figure);
//! * **orders per trigger** (expect 1 each): `certagent reissue --now cK` on one host (host K
//!   mod N), FLEET_TRIGGERS times on different certificates one after the other; a names
//!   change of one certificate in every host's config at once (every daemon sees it: one
//!   order); the key of one certificate deleted on every host at once ("local trouble on all
//!   hosts": healed from the published generation, expect 0);
//! * **trigger → every host serving**: from just before `reissue --now` is spawned until the
//!   certificate file of every host holds the new serial (polled every 10 ms); p50 / p99 /
//!   max over the triggers, and the same to the first host; the same for the names change
//!   and (with the old serial back and the key file there) for the key deleted everywhere;
//! * **etcd requests per host per idle hour**: once settled again, gRPC messages received by
//!   the three etcd members (`grpc_server_msg_received_total` by method, from each member's
//!   `/metrics`, summed; a unary call is one message, a stream's every message counts, so a
//!   lease keep-alive is one) over FLEET_IDLE_SECS, × 3600 / window / N; with the streams
//!   opened (`grpc_server_started_total`), the bytes (`etcd_network_client_grpc_{received,
//!   sent}_bytes_total`), leader changes, and whatever the daemons logged in the window.
//!   HTTP/2 pings (etcd-client's keep-alive, every 10 s per connection) are not gRPC
//!   messages and are not counted;
//! * **etcd state**: watch streams and watchers (gauges, summed over members), live leases
//!   (`etcdctl lease list`), keys and key+value bytes under the prefix by kind (published
//!   record, host report, liveness key, …), the database size;
//! * **etcd requests per trigger**: every gRPC message during the `reissue --now` phase,
//!   per trigger, whole fleet (what one re-issue costs the cluster with N hosts);
//! * **RSS per host**: VmRSS of every daemon at the end of the idle window (mean, max), and
//!   the CPU time each used in the window, as seconds per hour.
//!
//! Then how each figure grows from the first size to the last, and what 10,000 hosts with C
//! certificates would cost etcd, computed from the per-host figures of the largest size
//! (requests/s, watch streams, leases, keys, bytes: C published records of the measured
//! mean size + 10,000 × C host reports + 10,000 liveness keys). Everything is printed and
//! written to `target/bench/fleet.json`, with the warnings and failures of every host's log
//! grouped by message. `FLEET_KEEP=1` keeps the hosts' directories (configs, logs, state).
//!
//! The hosts' configs raise `max_reissues_per_hour` to 1000 (the bench triggers more often
//! than a host ever should; start-up counts a first issuance per certificate) and set
//! `max_parallel` to FLEET_MAX_PARALLEL (default 8, the shipped default is 4: h00's 200
//! orders are the slow part). `lease_ttl` and `request_timeout` are the defaults (15 s,
//! 5 s): a keep-alive every 5 s per lease. The hosts' directories are under FLEET_DIR
//! (default /dev/shm: 50 × 200 certificates are ~100,000 files; fsync on tmpfs costs
//! nothing, so the times are certagent's and etcd's, not a shared disk's); etcd's data is in
//! $TMPDIR (on disk, fsync real). Needs `etcd`, `etcdctl`, `pebble` and
//! `pebble-challtestsrv`. Every process started here is stopped by pid. Run without
//! `--bench` (e.g. by `cargo test --all-targets`) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The benches use only part of the test harness.
#[allow(dead_code, unused_imports)]
#[path = "../common/mod.rs"]
mod common;

#[path = "agent.rs"]
mod agent;

#[path = "fleet_etcd.rs"]
mod fleet_etcd;

#[path = "fleet_env.rs"]
mod fleet_env;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use agent::{BIN, clock_ticks_per_sec, cpu_ticks, loadavg, rss_kib};
use common::{cert_serial_hex, san_dns_names};
use fleet_env::{FleetEnv, Host, cert_name};
use fleet_etcd::percentile;

const PREFIX: &str = "/bench";

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the bench started.
fn note(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("fleet bench [{t:7.1} s] {msg}");
}

struct Params {
    sizes: Vec<usize>,
    certs: usize,
    idle: Duration,
    triggers: usize,
    max_parallel: usize,
    root: PathBuf,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

impl Params {
    fn from_env() -> Params {
        let sizes = std::env::var("FLEET_HOSTS").unwrap_or_else(|_| "10,50".into());
        let sizes = sizes
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("FLEET_HOSTS: numbers, comma-separated")
            })
            .collect();
        let root = std::env::var_os("FLEET_DIR").map_or_else(
            || {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            },
            PathBuf::from,
        );
        Params {
            sizes,
            certs: env_num("FLEET_CERTS", 200) as usize,
            idle: Duration::from_secs(env_num("FLEET_IDLE_SECS", 120)),
            triggers: env_num("FLEET_TRIGGERS", 10) as usize,
            max_parallel: env_num("FLEET_MAX_PARALLEL", 8) as usize,
            root,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One fleet size, measured from scratch.

fn measure(p: &Params, n: usize) -> Value {
    let c_all = p.certs;
    note(&format!(
        "N = {n} hosts, C = {c_all} certificates: starting etcd, Pebble"
    ));
    let mut fleet = FleetEnv::start(p, n);
    let mut problems: Vec<String> = Vec::new();
    let mut out = serde_json::Map::new();
    out.insert("hosts".into(), json!(n));
    out.insert("certs".into(), json!(c_all));

    // --- First issuance. By default one host starts first and orders every certificate
    // alone, then the other N-1 start empty and install what it published (Pebble 2.4.0
    // deadlocks under many concurrent orders from many accounts: see the doc comment);
    // FLEET_START=together starts every daemon at once.
    let at_start = fleet.scrape();
    let together = std::env::var("FLEET_START").is_ok_and(|v| v == "together");
    let stall = Duration::from_secs(env_num("FLEET_STALL_SECS", 180));
    let t0 = Instant::now();
    let seed_secs = if together {
        fleet.spawn(0..n);
        None
    } else {
        fleet.spawn(0..1);
        match fleet.wait_issued(1, t0, stall) {
            Ok(d) => Some(d.as_secs_f64()),
            Err(e) => {
                problems.push(format!("first issuance on the first host: {e}"));
                None
            }
        }
    };
    let seed_orders = fleet.pebble.orders_created();
    if let Some(s) = seed_secs {
        note(&format!(
            "h00 alone: all {c_all} certificates after {s:.1} s, {seed_orders} orders; starting the other {}",
            n - 1
        ));
    }
    let t1 = Instant::now();
    if !together {
        fleet.spawn(1..n);
    }
    let ready = t1.elapsed();
    let joined = match fleet.wait_issued(n, t1, stall) {
        Ok(d) => Some(d.as_secs_f64()),
        Err(e) => {
            problems.push(format!("first issuance: {e}"));
            None
        }
    };
    std::thread::sleep(Duration::from_secs(3));
    let first_orders = fleet.pebble.orders_created();
    note(&format!(
        "first issuance: every host serves all {c_all} after {:?} s, {first_orders} orders (expect {c_all})",
        joined
    ));
    if first_orders != c_all {
        problems.push(format!(
            "first issuance: {first_orders} orders for {c_all} certificates"
        ));
    }
    let settled_first = settle(&fleet);
    let first_leader_changes = fleet.scrape().delta(&at_start).leader_changes();
    note(&format!("settled after {settled_first:.1} s"));
    out.insert(
        "first_issuance".into(),
        json!({
            "start": if together { "together" } else { "h00 first, then the others" },
            "first_host_alone_secs": seed_secs,
            "first_host_alone_orders": seed_orders,
            "daemons_ready_secs": ready.as_secs_f64(),
            "settled_after_secs": settled_first,
            "etcd_leader_changes": first_leader_changes,
            "all_hosts_serving_secs": joined,
            "orders": first_orders,
            "expected_orders": c_all,
            "log_counts": fleet.log_counts(),
        }),
    );

    // --- `reissue --now` on one host, on different certificates one after the other.
    let triggers = p.triggers.min(c_all);
    note(&format!(
        "{triggers} x reissue --now, one host each, sequentially"
    ));
    let before = fleet.scrape();
    let orders_before = fleet.pebble.orders_created();
    let (mut to_all, mut to_first, mut deltas) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..triggers {
        let host = &fleet.hosts[k % n];
        let old = fleet.serials(k);
        let orders = fleet.pebble.orders_created();
        let config = host.config.clone();
        let name = cert_name(k);
        let t0 = Instant::now();
        let cli = std::thread::spawn(move || {
            Command::new(BIN)
                .arg("--config")
                .arg(&config)
                .args(["reissue", "--now", &name])
                .output()
                .expect("run certagent reissue")
        });
        let waited = fleet.wait_all(k, t0, Duration::from_secs(180), |h, leaf| {
            let i = fleet.hosts.iter().position(|x| x.node == h.node).unwrap();
            old[i].as_deref() != Some(cert_serial_hex(leaf).as_str())
        });
        let run = cli.join().expect("reissue thread");
        if !run.status.success() {
            problems.push(format!(
                "reissue --now {} on {}: {}: {}",
                cert_name(k),
                host.node,
                run.status,
                String::from_utf8_lossy(&run.stderr).trim()
            ));
        }
        let delta = fleet.pebble.orders_created() - orders;
        deltas.push(delta);
        match waited {
            Ok(c) => {
                to_all.push(c.all.as_secs_f64() * 1000.0);
                to_first.push(c.first.as_secs_f64() * 1000.0);
                note(&format!(
                    "  {}: first host {:.0} ms, every host {:.0} ms, {delta} order(s)",
                    cert_name(k),
                    c.first.as_secs_f64() * 1e3,
                    c.all.as_secs_f64() * 1e3
                ));
            }
            Err(e) => problems.push(format!("reissue --now: {e}")),
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = fleet.scrape();
    let reissue_orders = fleet.pebble.orders_created() - orders_before;
    if reissue_orders != triggers || deltas.iter().any(|d| *d != 1) {
        problems.push(format!("reissue --now: {reissue_orders} orders for {triggers} triggers (per trigger at convergence: {deltas:?})"));
    }
    let phase = after.delta(&before);
    let t = triggers.max(1) as f64;
    out.insert("reissue_now".into(), json!({
        "triggers": triggers,
        "orders": reissue_orders,
        "orders_at_convergence": deltas,
        "to_every_host_ms": to_all,
        "to_first_host_ms": to_first,
        "p50_ms": percentile(&to_all, 50.0),
        "p99_ms": percentile(&to_all, 99.0),
        "max_ms": percentile(&to_all, 100.0),
        "first_host_p50_ms": percentile(&to_first, 50.0),
        "etcd_messages_per_trigger": phase.requests_by_method(t),
        "etcd_leader_changes": phase.leader_changes(),
        "etcd_messages_per_trigger_total": phase.sum("grpc_server_msg_received_total") / t,
        "etcd_bytes_sent_per_trigger": phase.sum("etcd_network_client_grpc_sent_bytes_total") / t,
    }));

    // --- A names change in every host's config at once: one order for the fleet.
    let c = c_all - 1;
    note(&format!(
        "names change of {} on every host at once",
        cert_name(c)
    ));
    let orders = fleet.pebble.orders_created();
    let t0 = Instant::now();
    for h in &fleet.hosts {
        h.write_config(&fleet, c_all, p.max_parallel, Some(c));
    }
    let alt = format!("alt.{}.test", cert_name(c));
    let waited = fleet.wait_all(c, t0, Duration::from_secs(180), |_, leaf| {
        san_dns_names(leaf).contains(&alt)
    });
    std::thread::sleep(Duration::from_secs(5));
    let names_orders = fleet.pebble.orders_created() - orders;
    if names_orders != 1 {
        problems.push(format!("names change on every host: {names_orders} orders"));
    }
    if let Err(e) = &waited {
        problems.push(format!("names change: {e}"));
    }
    out.insert(
        "names_change_all_hosts".into(),
        json!({
            "orders": names_orders,
            "to_every_host_ms": waited.as_ref().ok().map(|c| c.all.as_secs_f64() * 1e3),
        }),
    );

    // --- Local trouble on every host: the key of one certificate deleted everywhere.
    let c = c_all / 2;
    note(&format!(
        "key of {} deleted on every host at once",
        cert_name(c)
    ));
    let old = fleet.serials(c);
    let orders = fleet.pebble.orders_created();
    let t0 = Instant::now();
    for h in &fleet.hosts {
        std::fs::remove_file(h.key_file(c)).expect("delete key");
    }
    let waited = fleet.wait_all(c, t0, Duration::from_secs(120), |h, leaf| {
        h.key_file(c).exists() && old[0].as_deref() == Some(cert_serial_hex(leaf).as_str())
    });
    std::thread::sleep(Duration::from_secs(5));
    let heal_orders = fleet.pebble.orders_created() - orders;
    if heal_orders != 0 {
        problems.push(format!(
            "key deleted on every host: {heal_orders} orders (expect 0)"
        ));
    }
    if let Err(e) = &waited {
        problems.push(format!("heal: {e}"));
    }
    out.insert(
        "key_deleted_all_hosts".into(),
        json!({
            "orders": heal_orders,
            "to_every_host_healed_ms": waited.as_ref().ok().map(|c| c.all.as_secs_f64() * 1e3),
        }),
    );

    // --- Idle: etcd's counters over a window, RSS and CPU of every daemon.
    let settled = settle(&fleet);
    note(&format!("settled after {settled:.1} s; the idle window"));
    let marks = fleet.log_marks();
    let orders = fleet.pebble.orders_created();
    let pids: Vec<u32> = fleet.hosts.iter().map(Host::pid).collect();
    let ticks0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let s0 = fleet.scrape();
    let w0 = Instant::now();
    std::thread::sleep(p.idle);
    let s1 = fleet.scrape();
    let window = w0.elapsed().as_secs_f64();
    let ticks1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let rss: Vec<f64> = pids.iter().map(|p| rss_kib(*p) as f64 / 1024.0).collect();
    if fleet.pebble.orders_created() != orders {
        problems.push("orders during the idle window".into());
    }
    let idle = s1.delta(&s0);
    let per_host_hour = 3600.0 / window / n as f64;
    let cpu: Vec<f64> = ticks0
        .iter()
        .zip(&ticks1)
        .map(|(a, b)| (b - a) as f64 / clock_ticks_per_sec() as f64 * 3600.0 / window)
        .collect();
    let state = fleet_etcd::etcd_state(&fleet.etcd, PREFIX, &s1, n);
    out.insert("idle".into(), json!({
        "window_secs": window,
        "settled_after_secs": settled,
        "etcd_leader_changes": idle.leader_changes(),
        "logged": fleet.logged_since(&marks),
        "etcd_messages_per_host_hour": idle.requests_by_method(1.0 / per_host_hour),
        "etcd_messages_per_host_hour_total": idle.sum("grpc_server_msg_received_total") * per_host_hour,
        "etcd_streams_opened_per_host_hour": idle.by_method("grpc_server_started_total", 1.0 / per_host_hour),
        "etcd_bytes_received_per_host_hour": idle.sum("etcd_network_client_grpc_received_bytes_total") * per_host_hour,
        "etcd_bytes_sent_per_host_hour": idle.sum("etcd_network_client_grpc_sent_bytes_total") * per_host_hour,
        "etcd_lease_renewals_per_host_hour": idle.sum("etcd_debugging_lease_renewed_total") * per_host_hour,
        "rss_mib": rss,
        "rss_mib_mean": rss.iter().sum::<f64>() / n as f64,
        "rss_mib_max": percentile(&rss, 100.0),
        "cpu_secs_per_host_hour_mean": cpu.iter().sum::<f64>() / n as f64,
        "cpu_secs_per_host_hour_max": percentile(&cpu, 100.0),
    }));
    out.insert("etcd_state".into(), state);
    out.insert("log_counts".into(), fleet.log_counts());
    out.insert("trouble".into(), fleet.trouble());
    out.insert("problems".into(), json!(problems));
    for pr in &problems {
        note(&format!("PROBLEM: {pr}"));
    }
    note(&format!("N = {n} done; stopping the fleet"));
    drop(fleet);
    Value::Object(out)
}

/// Waits until, for 2 s, etcd receives nothing but lease keep-alives and the daemons use
/// less than 0.1 s of CPU between them (at most 120 s); the seconds it took.
fn settle(fleet: &FleetEnv) -> f64 {
    let t0 = Instant::now();
    let ticks = || -> u64 { fleet.hosts.iter().map(|h| cpu_ticks(h.pid())).sum() };
    let (mut last, mut cpu) = (fleet.scrape(), ticks());
    while t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(2));
        let (now, cpu_now) = (fleet.scrape(), ticks());
        let busy = (cpu_now - cpu) as f64 / clock_ticks_per_sec() as f64;
        if now.delta(&last).non_keepalive() == 0.0 && busy < 0.1 {
            break;
        }
        (last, cpu) = (now, cpu_now);
    }
    t0.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet bench: run it with `cargo bench --bench fleet`; nothing to do here");
        return;
    }
    START.get_or_init(Instant::now);
    let p = Params::from_env();
    assert!(p.certs >= 3, "FLEET_CERTS must be at least 3");
    let load_start = loadavg();
    let mut runs = Vec::new();
    for &n in &p.sizes {
        runs.push(measure(&p, n));
    }
    let doc = json!({
        "command": format!(
            "FLEET_HOSTS={} FLEET_CERTS={} FLEET_IDLE_SECS={} FLEET_TRIGGERS={} FLEET_MAX_PARALLEL={} tests/bench/run.sh fleet",
            p.sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            p.certs, p.idle.as_secs(), p.triggers, p.max_parallel
        ),
        "hosts_dir": p.root,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "runs": runs,
        "extrapolation_10000_hosts": fleet_etcd::extrapolate(runs.last().expect("a size"), 10_000),
    });
    fleet_etcd::print_report(&doc);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let out = out_dir.join("fleet.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("JSON")).expect("write JSON");
    println!("raw figures: {}", out.display());
}
