//! The daemon in-process with tokio's clock paused: hours of schedule run in milliseconds.
//! Proves that renewal happens at the deadline the core computes (and not by polling), and
//! that failures back off exponentially with jitter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use certagent::clock::Clock;

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    metrics: PathBuf,
}

fn setup(issuer: &str, cert_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("ssl")).unwrap();
    std::fs::create_dir_all(p.join("etc")).unwrap();
    let config = p.join("etc/config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{s}\"\nruntime_dir = \"{r}\"\nmetrics_file = \"{m}\"\n\n{issuer}\n[certificate.site]\nnames = [\"a.test\"]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n{cert_extra}\n",
            s = p.join("state").display(),
            r = p.join("run").display(),
            m = p.join("textfile/certagent.prom").display(),
            c = p.join("ssl/site.pem").display(),
            k = p.join("ssl/site.key").display(),
        ),
    )
    .unwrap();
    Setup {
        state: p.join("state"),
        metrics: p.join("textfile/certagent.prom"),
        config,
        _dir: dir,
    }
}

fn journal(state: &Path) -> serde_json::Value {
    std::fs::read_to_string(state.join("certs/site/state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Run the daemon for `span` of (paused) time, sampling `probe` every `step`; returns the
/// virtual second at which each new value of `probe` was first seen.
async fn observe_changes(
    setup: &Setup,
    span: Duration,
    step: Duration,
    probe: impl Fn(&serde_json::Value) -> Option<u64>,
) -> Vec<(u64, u64)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = setup.config.clone();
    let daemon = tokio::spawn(async move {
        certagent::daemon::run(&config, Clock::new(), async {
            let _ = stopped.await;
        })
        .await
    });
    let start = tokio::time::Instant::now();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    while start.elapsed() < span {
        tokio::time::sleep(step).await;
        if let Some(v) = probe(&journal(&setup.state))
            && seen.last().is_none_or(|(_, last)| *last != v)
        {
            seen.push((start.elapsed().as_secs(), v));
        }
    }
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    seen
}

#[tokio::test(start_paused = true)]
async fn renewal_happens_at_the_computed_deadline() {
    // 2-hour certificates renewed 1 hour before expiry: one re-issue per hour.
    let setup = setup(
        "[issuer.internal]\nkind = \"internal\"\nvalidity = \"2h\"\n",
        "renew_before = \"1h\"",
    );
    let seen = observe_changes(
        &setup,
        Duration::from_secs(5 * 3600 + 600),
        Duration::from_secs(30),
        |j| j["current"].as_u64(),
    )
    .await;
    let generations: Vec<u64> = seen.iter().map(|(_, g)| *g).collect();
    assert_eq!(generations, vec![0, 1, 2, 3, 4, 5], "{seen:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            (3_540..=3_700).contains(&gap),
            "re-issued after {gap}s, not after an hour: {seen:?}"
        );
    }
    // The metrics file followed every install: one for the missing key, five renewals.
    let metrics = std::fs::read_to_string(&setup.metrics).unwrap();
    for line in [
        r#"certagent_reissues_total{certificate="site",reason="key-missing",outcome="installed"} 1"#,
        r#"certagent_reissues_total{certificate="site",reason="expiring",outcome="installed"} 5"#,
        r#"certagent_certificate_pending_seconds{certificate="site"} 0"#,
        r#"certagent_certificate_failures{certificate="site"} 0"#,
        r#"certagent_certificate_healthy{certificate="site"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    let sample = |name: &str| -> i64 {
        let prefix = format!("{name}{{certificate=\"site\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
            .parse()
            .unwrap()
    };
    let expiry = sample("certagent_certificate_not_after_timestamp_seconds");
    let success = sample("certagent_certificate_last_success_timestamp_seconds");
    assert!(
        (7_100..=7_200).contains(&(expiry - success)),
        "the newest certificate was installed when it was issued: {metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_certificate_is_renewed_halfway_through_its_lifetime() {
    // 4-hour certificates and no renew_before: under ten days of lifetime, renewal starts
    // when half of it is left (2/3 elapsed would be the rule for longer ones): every 2 hours.
    let setup = setup(
        "[issuer.internal]\nkind = \"internal\"\nvalidity = \"4h\"\n",
        "",
    );
    let seen = observe_changes(
        &setup,
        Duration::from_secs(6 * 3600 + 600),
        Duration::from_secs(30),
        |j| j["current"].as_u64(),
    )
    .await;
    let generations: Vec<u64> = seen.iter().map(|(_, g)| *g).collect();
    assert_eq!(generations, vec![0, 1, 2, 3], "{seen:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // The local CA back-dates by a minute: half of 4 h + 1 min from issuance.
        assert!(
            (7_170..=7_300).contains(&gap),
            "re-issued after {gap}s, not after two hours: {seen:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter() {
    // An ACME CA that refuses connections: every attempt fails at once. The port is bound
    // (so nothing else can take it) but not listening (so connections are refused).
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = refusing.local_addr().unwrap().port();
    // Never reached (the directory request fails first); reserved all the same.
    let listen = crate::common::reserved_port();
    let issuer = format!(
        "[issuer.down]\nkind = \"acme\"\ndirectory = \"https://127.0.0.1:{port}/dir\"\nlisten = \"127.0.0.1:{listen}\"\n"
    );
    let setup = setup(&issuer, "issuer = \"down\"");
    // The fifth attempt comes at most 2 + 1.2 * (60 + 120 + 240 + 480) = 1082 s in, the sixth
    // no earlier than 2 + 0.8 * (60 + ... + 960) = 1490 s: watch until between the two.
    let seen = observe_changes(
        &setup,
        Duration::from_secs(1_300),
        Duration::from_secs(2),
        |j| j["failures"].as_u64(),
    )
    .await;
    let failures: Vec<u64> = seen.iter().map(|(_, f)| *f).collect();
    assert_eq!(failures, vec![1, 2, 3, 4, 5], "{seen:?}");
    // Delays: 60 s, 120 s, 240 s, 480 s, each ±20 % (plus the sampling step).
    for (i, pair) in seen.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let base = 60u64 << i;
        let (lo, hi) = (base * 8 / 10, base * 12 / 10 + 4);
        assert!(
            (lo..=hi).contains(&gap),
            "retry {} after {gap}s, expected {lo}..{hi}: {seen:?}",
            i + 2
        );
    }
    let j = journal(&setup.state);
    assert!(
        j["last"]["message"]
            .as_str()
            .unwrap()
            .contains("failed to obtain a certificate"),
        "{j}"
    );
    assert!(
        j["pending"]["key_spki_sha256"].is_string(),
        "the key is kept for the retry: {j}"
    );
    let metrics = std::fs::read_to_string(&setup.metrics).unwrap();
    for line in [
        r#"certagent_reissues_total{certificate="site",reason="key-missing",outcome="failed"} 5"#,
        r#"certagent_certificate_failures{certificate="site"} 5"#,
        r#"certagent_certificate_healthy{certificate="site",reason="key-missing"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "certagent_certificate_pending_since_timestamp_seconds{certificate=\"site\"} "
        ),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_approval_reminds_on_schedule() {
    let setup = setup(
        "[issuer.ca]\nkind = \"manual\"\nremind_every = \"1h\"\n",
        "issuer = \"ca\"",
    );
    let seen = observe_changes(
        &setup,
        Duration::from_secs(3 * 3600 + 1800),
        Duration::from_secs(60),
        |j| j["pending"]["reminders"].as_u64(),
    )
    .await;
    let counts: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![0, 1, 2, 3], "{seen:?}");
    for (i, (at, _)) in seen.iter().enumerate().skip(1) {
        let want = i as u64 * 3600;
        assert!(
            (want..=want + 120).contains(at),
            "reminder {i} at {at}s, expected about {want}s: {seen:?}"
        );
    }
    // Still pending, still the same key: a reminder is not a new request.
    let j = journal(&setup.state);
    assert_eq!(j["last"]["result"], "pending", "{j}");
}

#[tokio::test(start_paused = true)]
async fn a_certificate_due_again_at_once_is_reissued_at_most_the_hourly_limit() {
    // 1-hour certificates renewed 59m59s before expiry: each is due a second after it is
    // issued. Validation cannot know every such case (an ACME CA's lifetimes); the guard can.
    let setup = setup(
        "[issuer.internal]\nkind = \"internal\"\nvalidity = \"1h\"\n",
        "renew_before = \"59m59s\"",
    );
    let seen = observe_changes(
        &setup,
        Duration::from_secs(3600 + 1800),
        Duration::from_secs(10),
        |j| j["next_generation"].as_u64(),
    )
    .await;
    // Five in the first hour (the default max_reissues_per_hour), five more once the first
    // have left the hour, then held again.
    let at = |secs: u64| {
        seen.iter()
            .take_while(|(t, _)| *t <= secs)
            .last()
            .map(|(_, n)| *n)
    };
    assert_eq!(at(1800), Some(5), "{seen:?}");
    assert_eq!(at(5400), Some(10), "{seen:?}");
    let j = journal(&setup.state);
    let started = j["auto_reissues"].as_array().unwrap();
    assert_eq!(started.len(), 5, "{j}");
}
