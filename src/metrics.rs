//! Metrics for fleets: a Prometheus textfile (node_exporter's textfile collector) that the
//! daemon rewrites atomically on every state change. Built from the journals and the
//! certificates on disk; it changes nothing and never decides anything.

use std::fmt::Write as _;

use crate::config::{Certificate, Config};
use crate::core::Timestamp;
use crate::error::Result;
use crate::keys::{self, Chain};
use crate::ops::{journal_of, outcome_str};
use crate::store::Journal;
use crate::store::fsutil::{self, Perms};

/// What the metrics say about one certificate.
pub(crate) struct CertFacts<'a> {
    pub(crate) name: &'a str,
    /// Expiry of the certificate in `cert_file`, when it parses.
    pub(crate) not_after: Option<Timestamp>,
    pub(crate) journal: Option<Journal>,
    /// What the daemon's last look found: `Some(None)` healthy, `Some(Some(reason))` not;
    /// `None` before it looked.
    pub(crate) health: Option<Option<&'static str>>,
}

/// Read what the metrics need and replace `metrics_file` (when configured) in one rename, so
/// a scrape never sees half a file.
pub(crate) fn write(
    config: &Config,
    now: Timestamp,
    health: &dyn Fn(&str) -> Option<Option<&'static str>>,
) -> Result<()> {
    let Some(path) = &config.agent.metrics_file else {
        return Ok(());
    };
    let facts: Vec<CertFacts> = config
        .certificates
        .values()
        .map(|cert| CertFacts {
            name: &cert.name,
            not_after: not_after(cert),
            journal: journal_of(&config.agent.state_dir, &cert.name),
            health: health(&cert.name),
        })
        .collect();
    let text = render(&facts, now);
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, 0o755)?;
    }
    fsutil::replace_file(path, text.as_bytes(), Perms::mode(0o644))
}

fn not_after(cert: &Certificate) -> Option<Timestamp> {
    let bytes = fsutil::read_capped(&cert.cert_file, keys::MAX_PEM_BYTES)
        .ok()
        .flatten()?;
    Some(Chain::from_pem(&bytes).ok()?.leaf().ok()?.not_after)
}

/// A per-certificate gauge: its value for a certificate at a time, `None` for no sample.
type Gauge = fn(&CertFacts, Timestamp) -> Option<i64>;

/// The per-certificate gauges in the order they are written: name, help, value.
const GAUGES: [(&str, &str, Gauge); 5] = [
    (
        "certagent_certificate_not_after_timestamp_seconds",
        "Expiry of the certificate in service (Unix time).",
        |c, _| c.not_after,
    ),
    (
        "certagent_certificate_pending_seconds",
        "How long the pending re-issue had been waiting when this file was written (0: none).",
        |c, now| Some(pending_since(c).map_or(0, |t| (now - t).max(0))),
    ),
    (
        "certagent_certificate_pending_since_timestamp_seconds",
        "When the pending re-issue started (Unix time; absent when none is pending).",
        |c, _| pending_since(c),
    ),
    (
        "certagent_certificate_failures",
        "Consecutive failed re-issue attempts (0 after a success).",
        |c, _| Some(c.journal.as_ref().map_or(0, |j| j.failures.into())),
    ),
    (
        "certagent_certificate_last_success_timestamp_seconds",
        "When a new certificate was last installed (Unix time).",
        |c, _| c.journal.as_ref()?.last_success,
    ),
];

/// The textfile (exposition format 0.0.4), one family after another, certificates in name
/// order.
pub(crate) fn render(certs: &[CertFacts], now: Timestamp) -> String {
    let mut out = String::new();
    for (name, help, value) in GAUGES {
        let samples = certs
            .iter()
            .filter_map(|c| Some((cert_label(c), value(c, now)?)))
            .collect();
        family(&mut out, name, "gauge", help, samples);
    }
    family(
        &mut out,
        "certagent_certificate_healthy",
        "gauge",
        "1 when the certificate needs nothing, 0 when it needs work (the reason as a label); absent before the daemon looked.",
        certs
            .iter()
            .filter_map(|c| match c.health? {
                None => Some((cert_label(c), 1)),
                Some(reason) => Some((
                    format!("{},reason=\"{}\"", cert_label(c), escape(reason)),
                    0,
                )),
            })
            .collect(),
    );
    family(
        &mut out,
        "certagent_reissues_total",
        "counter",
        "Finished re-issue attempts by reason and outcome.",
        reissue_samples(certs),
    );
    let _ = writeln!(
        out,
        "# HELP certagent_metrics_written_timestamp_seconds When certagent wrote this file (Unix time).\n\
         # TYPE certagent_metrics_written_timestamp_seconds gauge\n\
         certagent_metrics_written_timestamp_seconds {now}"
    );
    out
}

/// One metric family: its HELP and TYPE lines, then a line per sample (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, i64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn cert_label(c: &CertFacts) -> String {
    format!("certificate=\"{}\"", escape(c.name))
}

fn pending_since(c: &CertFacts) -> Option<Timestamp> {
    c.journal
        .as_ref()
        .and_then(|j| j.pending.as_ref())
        .map(|p| p.started_at)
}

/// The re-issue counts of every certificate, by reason and outcome.
fn reissue_samples(certs: &[CertFacts]) -> Vec<(String, i64)> {
    let mut reissues = Vec::new();
    for c in certs {
        let Some(j) = &c.journal else { continue };
        for (reason, outcomes) in &j.tally {
            for (outcome, n) in outcomes {
                let labels = format!(
                    "{},reason=\"{}\",outcome=\"{}\"",
                    cert_label(c),
                    reason.as_str(),
                    outcome_str(*outcome)
                );
                reissues.push((labels, i64::try_from(*n).unwrap_or(i64::MAX)));
            }
        }
    }
    reissues
}

/// Label values: backslash, double quote and newline escaped (exposition format).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{KeySpec, Reason};
    use crate::store::{Outcome, OutcomeKind, Pending};

    fn outcome(at: Timestamp, reason: Reason, result: OutcomeKind) -> Outcome {
        Outcome {
            asked: None,
            at,
            result,
            reason,
            message: String::new(),
            serial: None,
            generation: None,
        }
    }

    #[test]
    fn the_textfile_has_expiry_pending_time_tallies_last_success_and_health() {
        let mut www = Journal::default();
        www.record_outcome(outcome(100, Reason::KeyMissing, OutcomeKind::Failed));
        www.record_outcome(outcome(200, Reason::KeyMissing, OutcomeKind::Installed));
        www.record_outcome(outcome(300, Reason::Expiring, OutcomeKind::RolledBack));
        www.failures = 1;
        let shop = Journal {
            pending: Some(Pending {
                requested: None,
                reason: Reason::Forced,
                started_at: 940,
                issuer: "internal".into(),
                key_spec: KeySpec::EcdsaP256,
                key_spki_sha256: String::new(),
                names: vec![],
                attempts: 1,
                order_url: None,
                issued: false,
                compromise: None,
                reminders: 0,
                next_look: None,
                profile_asked: None,
                profile: None,
            }),
            ..Journal::default()
        };
        let facts = [
            CertFacts {
                name: "shop",
                not_after: None,
                journal: Some(shop),
                health: Some(Some("expiring")),
            },
            CertFacts {
                name: "www",
                not_after: Some(1_800_000_000),
                journal: Some(www),
                health: Some(None),
            },
            CertFacts {
                name: "new",
                not_after: None,
                journal: None,
                health: None,
            },
        ];
        let text = render(&facts, 1_000);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"certagent_certificate_not_after_timestamp_seconds{certificate="www"} 1800000000"#,
                r#"certagent_certificate_pending_seconds{certificate="shop"} 60"#,
                r#"certagent_certificate_pending_seconds{certificate="www"} 0"#,
                r#"certagent_certificate_pending_seconds{certificate="new"} 0"#,
                r#"certagent_certificate_pending_since_timestamp_seconds{certificate="shop"} 940"#,
                r#"certagent_certificate_failures{certificate="shop"} 0"#,
                r#"certagent_certificate_failures{certificate="www"} 1"#,
                r#"certagent_certificate_failures{certificate="new"} 0"#,
                r#"certagent_certificate_last_success_timestamp_seconds{certificate="www"} 200"#,
                r#"certagent_certificate_healthy{certificate="shop",reason="expiring"} 0"#,
                r#"certagent_certificate_healthy{certificate="www"} 1"#,
                r#"certagent_reissues_total{certificate="www",reason="key-missing",outcome="installed"} 1"#,
                r#"certagent_reissues_total{certificate="www",reason="key-missing",outcome="failed"} 1"#,
                r#"certagent_reissues_total{certificate="www",reason="expiring",outcome="rolled-back"} 1"#,
                "certagent_metrics_written_timestamp_seconds 1000",
            ]
        );
        assert!(text.contains("# TYPE certagent_reissues_total counter\n"));
        assert_eq!(text.matches("# HELP ").count(), 8);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
