//! The fleet bench's etcd side (included by `fleet.rs`): the members' Prometheus counters,
//! what is stored under the prefix, the report and the extrapolation to 10,000 hosts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::common::etcd::EtcdCluster;

/// The metric families kept from `/metrics`.
const KEPT: [&str; 6] = [
    "etcd_server_leader_changes_seen_total",
    "grpc_server_",
    "etcd_network_client_grpc_",
    "etcd_debugging_mvcc_",
    "etcd_debugging_lease_",
    "etcd_mvcc_db_total_size",
];

/// One reading of every member's `/metrics`: `(metric, grpc_method)` summed over the label
/// sets and the members (`sum`), and the largest member's value (`max`, for what every
/// member holds whole: keys, database size).
#[derive(Default)]
pub struct Scrape {
    sum: BTreeMap<(String, String), f64>,
    max: BTreeMap<(String, String), f64>,
}

impl Scrape {
    pub fn take(ports: &[u16]) -> Scrape {
        let mut s = Scrape::default();
        for port in ports {
            let body = match super::common::http_get(*port, "/metrics") {
                Ok(r) if r.status == 200 => r.body,
                Ok(r) => panic!("etcd :{port}/metrics: HTTP {}", r.status),
                Err(e) => panic!("etcd :{port}/metrics: {e}"),
            };
            let mut member: BTreeMap<(String, String), f64> = BTreeMap::new();
            for line in body.lines().filter(|l| !l.starts_with('#')) {
                let Some((head, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(value) = value.parse::<f64>() else {
                    continue;
                };
                let (name, labels) = head.split_once('{').unwrap_or((head, ""));
                if !KEPT.iter().any(|k| name.starts_with(k)) {
                    continue;
                }
                let method = labels
                    .split("grpc_method=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                *member.entry((name.into(), method.into())).or_default() += value;
            }
            for (k, v) in member {
                *s.sum.entry(k.clone()).or_default() += v;
                let m = s.max.entry(k).or_default();
                *m = m.max(v);
            }
        }
        s
    }

    /// `self - before`, for counters.
    pub fn delta(&self, before: &Scrape) -> Scrape {
        let sub = |a: &BTreeMap<(String, String), f64>, b: &BTreeMap<(String, String), f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .collect()
        };
        Scrape {
            sum: sub(&self.sum, &before.sum),
            max: sub(&self.max, &before.max),
        }
    }

    /// `metric` by gRPC method, each divided by `divisor`, zeros left out.
    pub fn by_method(&self, metric: &str, divisor: f64) -> Value {
        let map: serde_json::Map<String, Value> = self
            .sum
            .iter()
            .filter(|((m, method), v)| m == metric && !method.is_empty() && **v != 0.0)
            .map(|((_, method), v)| (method.clone(), json!(round(v / divisor))))
            .collect();
        Value::Object(map)
    }

    /// gRPC messages received by method (a unary call is one; every message of a stream,
    /// e.g. each lease keep-alive, is one), divided by `divisor`.
    pub fn requests_by_method(&self, divisor: f64) -> Value {
        self.by_method("grpc_server_msg_received_total", divisor)
    }

    /// `metric` summed over methods and members.
    pub fn sum(&self, metric: &str) -> f64 {
        self.sum
            .iter()
            .filter(|((m, _), _)| m == metric)
            .map(|(_, v)| v)
            .sum()
    }

    /// Leader changes any member saw (in a delta: during the interval).
    pub fn leader_changes(&self) -> f64 {
        self.max_of("etcd_server_leader_changes_seen_total")
    }

    /// gRPC messages other than lease keep-alives.
    pub fn non_keepalive(&self) -> f64 {
        self.sum("grpc_server_msg_received_total")
            - self
                .sum
                .get(&(
                    "grpc_server_msg_received_total".into(),
                    "LeaseKeepAlive".into(),
                ))
                .copied()
                .unwrap_or(0.0)
    }

    fn max_of(&self, metric: &str) -> f64 {
        self.max
            .iter()
            .filter(|((m, _), _)| m == metric)
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Nearest-rank percentile; `None` without samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(round(s[rank.min(s.len()) - 1]))
}

/// What etcd holds for a fleet of `hosts`: watch streams and watchers (summed over the
/// members), live leases, keys and bytes under `prefix` by kind, the database size.
pub fn etcd_state(etcd: &EtcdCluster, prefix: &str, now: &Scrape, hosts: usize) -> Value {
    let out = etcd.etcdctl(&["lease", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let leases = listed
        .lines()
        .find_map(|l| {
            l.strip_prefix("found ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0usize);
    let out = etcd.etcdctl(&["get", prefix, "--prefix", "-w", "json"]);
    assert!(
        out.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("etcdctl get -w json");
    // kind -> (count, value bytes, key bytes)
    let mut kinds: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for kv in doc["kvs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let key = b64_len(kv["key"].as_str().unwrap_or(""));
        let key_text = b64_text(kv["key"].as_str().unwrap_or(""));
        let value = b64_len(kv["value"].as_str().unwrap_or(""));
        let rest = key_text.strip_prefix(prefix).unwrap_or(&key_text);
        let kind = match rest.trim_start_matches('/').split('/').next().unwrap_or("") {
            "certs" if rest.ends_with("/published") => "published",
            "certs" if rest.ends_with("/pending") => "pending",
            "hosts" => "host_report",
            "alive" => "alive",
            "locks" => "lock",
            "challenges" => "challenge",
            "acks" => "ack",
            "accounts" => "account",
            _ => "other",
        };
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += value;
        e.2 += key;
    }
    let by_kind: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|(k, (n, v, kb))| {
            let mean = (*v + *kb) as f64 / (*n).max(1) as f64;
            (
                k.to_string(),
                json!({ "keys": n, "value_bytes": v, "key_bytes": kb, "mean_bytes": round(mean) }),
            )
        })
        .collect();
    let h = hosts as f64;
    json!({
        "watch_streams": now.sum("etcd_debugging_mvcc_watch_stream_total"),
        "watchers": now.sum("etcd_debugging_mvcc_watcher_total"),
        "watch_streams_per_host": round(now.sum("etcd_debugging_mvcc_watch_stream_total") / h),
        "watchers_per_host": round(now.sum("etcd_debugging_mvcc_watcher_total") / h),
        "leases": leases,
        "leases_per_host": round(leases as f64 / h),
        "keys_total": kinds.values().map(|k| k.0).sum::<usize>(),
        "bytes_total": kinds.values().map(|k| k.1 + k.2).sum::<usize>(),
        "by_kind": by_kind,
        "db_size_bytes": now.max_of("etcd_mvcc_db_total_size_in_bytes"),
        "db_size_in_use_bytes": now.max_of("etcd_mvcc_db_total_size_in_use_in_bytes"),
    })
}

fn b64_len(s: &str) -> usize {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    s.len() / 4 * 3 - pad
}

fn b64_text(s: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// What `hosts` hosts with the run's C certificates would cost etcd, from the run's per-host
/// figures (every per-host figure taken as constant; stored bytes from the mean sizes).
pub fn extrapolate(run: &Value, hosts: usize) -> Value {
    let n = num(run, "/hosts").unwrap_or(1.0);
    let c = num(run, "/certs").unwrap_or(0.0);
    let h = hosts as f64;
    let kind = |k: &str| num(run, &format!("/etcd_state/by_kind/{k}/mean_bytes")).unwrap_or(0.0);
    let per_host_hour = num(run, "/idle/etcd_messages_per_host_hour_total").unwrap_or(0.0);
    let keepalive = num(run, "/idle/etcd_messages_per_host_hour/LeaseKeepAlive").unwrap_or(0.0);
    let streams = num(run, "/etcd_state/watch_streams_per_host").unwrap_or(0.0) * h;
    let watchers = num(run, "/etcd_state/watchers_per_host").unwrap_or(0.0) * h;
    let leases = num(run, "/etcd_state/leases_per_host").unwrap_or(0.0) * h;
    let keys = c + h * c + h;
    let bytes = kind("published") * c + kind("host_report") * h * c + kind("alive") * h;
    let per_trigger = num(run, "/reissue_now/etcd_messages_per_trigger_total").unwrap_or(0.0);
    let sent_per_trigger = num(run, "/reissue_now/etcd_bytes_sent_per_trigger").unwrap_or(0.0);
    let rx_hour = num(run, "/idle/etcd_bytes_received_per_host_hour").unwrap_or(0.0);
    let out = json!({
        "hosts": hosts,
        "certs": c,
        "from_run_with_hosts": n,
        "idle_requests_per_sec": round(per_host_hour * h / 3600.0),
        "idle_lease_keepalives_per_sec": round(keepalive * h / 3600.0),
        "idle_bytes_received_per_sec": round(rx_hour * h / 3600.0),
        "watch_streams": streams,
        "watchers": watchers,
        "leases": leases,
        "keys": keys,
        "bytes_stored": bytes,
        "messages_per_trigger": round(per_trigger / n * h),
        "bytes_sent_per_trigger": round(sent_per_trigger / n * h),
    });
    let text = format!(
        "{hosts} hosts sharing {c:.0} certificates, from the per-host figures measured with {n:.0} hosts: \
         idle, etcd receives {:.0} gRPC messages/s ({:.0}/s lease keep-alives, {:.0} bytes/s); it keeps \
         {streams:.0} watch streams with {watchers:.0} watchers and {leases:.0} leases; it stores {keys:.0} keys \
         ({c:.0} published records of ~{:.0} B, {:.0} host reports of ~{:.0} B, {hosts} liveness keys), \
         {:.1} MiB of keys and values before history; one re-issue costs ~{:.0} gRPC messages and ~{:.1} MiB \
         sent to the hosts (every host receives the published record and writes its report).",
        per_host_hour * h / 3600.0,
        keepalive * h / 3600.0,
        rx_hour * h / 3600.0,
        kind("published"),
        h * c,
        kind("host_report"),
        bytes / 1048576.0,
        per_trigger / n * h,
        sent_per_trigger / n * h / 1048576.0,
    );
    let mut out = out;
    out["summary"] = json!(text);
    out
}

/// The rows of the growth table: label, JSON pointer into a run.
const ROWS: [(&str, &str); 25] = [
    (
        "orders, first issuance (expect C)",
        "/first_issuance/orders",
    ),
    (
        "h00 alone orders all C, serves them [s]",
        "/first_issuance/first_host_alone_secs",
    ),
    (
        "then N-1 empty hosts start: all serve all C [s]",
        "/first_issuance/all_hosts_serving_secs",
    ),
    (
        "then quiet (keep-alives only) after [s]",
        "/first_issuance/settled_after_secs",
    ),
    (
        "etcd leader changes during the first issuance",
        "/first_issuance/etcd_leader_changes",
    ),
    (
        "orders, T x reissue --now (expect T)",
        "/reissue_now/orders",
    ),
    (
        "reissue --now -> every host serving, p50 [ms]",
        "/reissue_now/p50_ms",
    ),
    (
        "reissue --now -> every host serving, p99 [ms]",
        "/reissue_now/p99_ms",
    ),
    (
        "reissue --now -> first host serving, p50 [ms]",
        "/reissue_now/first_host_p50_ms",
    ),
    (
        "orders, names change on all hosts (expect 1)",
        "/names_change_all_hosts/orders",
    ),
    (
        "names change -> every host serving [ms]",
        "/names_change_all_hosts/to_every_host_ms",
    ),
    (
        "orders, key deleted on all hosts (expect 0)",
        "/key_deleted_all_hosts/orders",
    ),
    (
        "key deleted -> every host healed [ms]",
        "/key_deleted_all_hosts/to_every_host_healed_ms",
    ),
    (
        "etcd msgs per host per idle hour",
        "/idle/etcd_messages_per_host_hour_total",
    ),
    (
        "  of which LeaseKeepAlive",
        "/idle/etcd_messages_per_host_hour/LeaseKeepAlive",
    ),
    (
        "etcd bytes in per host per idle hour",
        "/idle/etcd_bytes_received_per_host_hour",
    ),
    (
        "etcd watch streams per host",
        "/etcd_state/watch_streams_per_host",
    ),
    ("etcd watchers per host", "/etcd_state/watchers_per_host"),
    ("etcd live leases per host", "/etcd_state/leases_per_host"),
    ("etcd keys under the prefix", "/etcd_state/keys_total"),
    (
        "etcd key+value bytes under the prefix",
        "/etcd_state/bytes_total",
    ),
    (
        "etcd msgs per reissue --now (whole fleet)",
        "/reissue_now/etcd_messages_per_trigger_total",
    ),
    ("RSS per host, mean [MiB]", "/idle/rss_mib_mean"),
    ("RSS per host, max [MiB]", "/idle/rss_mib_max"),
    (
        "CPU per host per idle hour [s]",
        "/idle/cpu_secs_per_host_hour_mean",
    ),
];

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 || v == v.trunc() => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

pub fn print_report(doc: &Value) {
    let runs = doc["runs"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfleet bench: {}",
        doc["command"].as_str().unwrap_or("")
    );
    let _ = write!(out, "\n{:<48}", "figure");
    for r in &runs {
        let _ = write!(out, " {:>12}", format!("N={}", r["hosts"]));
    }
    let _ = writeln!(out, " {:>9}", "growth");
    let _ = writeln!(out, "{}", "-".repeat(48 + 13 * runs.len() + 10));
    for (label, pointer) in ROWS {
        let vals: Vec<Option<f64>> = runs.iter().map(|r| num(r, pointer)).collect();
        let _ = write!(out, "{label:<48}");
        for v in &vals {
            let _ = write!(out, " {:>12}", fmt(*v));
        }
        let growth = match (
            vals.first().copied().flatten(),
            vals.last().copied().flatten(),
        ) {
            (Some(a), Some(b)) if runs.len() > 1 && a != 0.0 => format!("x{:.2}", b / a),
            _ => "-".into(),
        };
        let _ = writeln!(out, " {growth:>9}");
    }
    for r in &runs {
        let _ = writeln!(
            out,
            "\nN={}: idle etcd messages per host per hour by method: {}",
            r["hosts"], r["idle"]["etcd_messages_per_host_hour"]
        );
        let _ = writeln!(
            out,
            "N={}: etcd messages per reissue --now by method: {}",
            r["hosts"], r["reissue_now"]["etcd_messages_per_trigger"]
        );
        let _ = writeln!(
            out,
            "N={}: keys by kind: {}",
            r["hosts"], r["etcd_state"]["by_kind"]
        );
        for (what, key) in [
            ("trouble in the logs", "/trouble"),
            ("logged during the idle window", "/idle/logged"),
        ] {
            let Some(groups) = r.pointer(key).and_then(Value::as_object) else {
                continue;
            };
            let mut groups: Vec<(&String, &Value)> = groups.iter().collect();
            groups.sort_by_key(|(_, v)| std::cmp::Reverse(v[0].as_u64().unwrap_or(0)));
            for (_, v) in groups.iter().take(8) {
                let example: String = v[1].as_str().unwrap_or("").chars().take(260).collect();
                let _ = writeln!(out, "N={}: {what}: {} x {example}", r["hosts"], v[0]);
            }
        }
        for pr in r["problems"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let _ = writeln!(
                out,
                "N={}: PROBLEM: {}",
                r["hosts"],
                pr.as_str().unwrap_or("")
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        doc["extrapolation_10000_hosts"]["summary"]
            .as_str()
            .unwrap_or("")
    );
    println!("{out}");
}
