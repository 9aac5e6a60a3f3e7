//! `status --fleet`: what the fleet's etcd says about each shared certificate — the
//! generation published, who holds the lock, an order in flight, and what every host reports
//! it serves. Read-only: this host takes no lease and writes nothing.

use std::collections::BTreeMap;

use crate::cluster::{Fleet, HostStatus};
use crate::config::{Certificate, ClusterConfig, Config};
use crate::core::{Timestamp, humanize};
use crate::error::{Error, Result};
use crate::output::{
    self, FleetCertificate, FleetDoc, FleetHost, FleetLockReport, FleetPending, FleetPublished,
    rfc3339,
};

const FLEET_HINT: &str = "add [cluster] with endpoints and fleet_key_file, and shared = true on each certificate the fleet shares (see certagent.toml(5))";

/// The shared certificates `names` asks for (all of them when empty). A name that is
/// configured but not shared is an error that says so.
pub(crate) fn select_shared<'c>(
    config: &'c Config,
    names: &[String],
) -> Result<Vec<&'c Certificate>> {
    let certs = super::select(config, names)?;
    if names.is_empty() {
        return Ok(certs.into_iter().filter(|c| c.shared).collect());
    }
    if let Some(own) = certs.iter().find(|c| !c.shared) {
        let shared: Vec<&str> = config
            .certificates
            .values()
            .filter(|c| c.shared)
            .map(|c| c.name.as_str())
            .collect();
        let list = if shared.is_empty() {
            "none".to_string()
        } else {
            shared.join(", ")
        };
        return Err(Error::msg(format!(
            "certificate {:?} is not shared: it is this host's own, the fleet has no record of it",
            own.name
        ))
        .with_hint(format!(
            "`certagent status {}` shows it; shared certificates (shared = true): {list}",
            own.name
        )));
    }
    Ok(certs)
}

/// The `[cluster]` table, or why `--fleet` has nothing to ask (exit 78).
pub(crate) fn cluster_of(config: &Config) -> Result<&ClusterConfig> {
    config.cluster.as_ref().ok_or_else(|| Error::Mismatch {
        message: "no [cluster] in the configuration: this host is not part of a fleet".into(),
        hint: Some(FLEET_HINT.into()),
    })
}

/// Reads the fleet's records of `certs` from etcd. A cluster that does not answer is a
/// temporary failure (exit 75) that names the endpoints asked.
pub(crate) async fn fleet_doc(config: &Config, certs: &[&Certificate]) -> Result<FleetDoc> {
    let cluster = cluster_of(config)?;
    let mut doc = FleetDoc {
        schema: output::SCHEMA,
        changed: false,
        node: cluster.node.clone(),
        endpoints: cluster.endpoints.clone(),
        prefix: cluster.prefix.clone(),
        certificates: Vec::new(),
    };
    if certs.is_empty() {
        return Ok(doc);
    }
    let fleet = Fleet::connect(cluster).await?;
    let at = format!(
        "failed to read the fleet from etcd at {}",
        cluster.endpoints.join(", ")
    );
    let mut reports: BTreeMap<String, Vec<HostStatus>> = BTreeMap::new();
    for status in fleet.reports(None).await.map_err(|e| e.context(&at))? {
        reports
            .entry(status.report.name.clone())
            .or_default()
            .push(status);
    }
    for cert in certs {
        let (published, _) = fleet
            .published(&cert.name)
            .await
            .map_err(|e| e.context(&at))?;
        let lock = fleet
            .lock_holder(&cert.name)
            .await
            .map_err(|e| e.context(&at))?;
        let pending = fleet
            .pending(&cert.name)
            .await
            .map_err(|e| e.context(&at))?;
        let serial = published.as_ref().map(|p| p.serial.as_str());
        let mut hosts: Vec<FleetHost> = reports
            .remove(&cert.name)
            .unwrap_or_default()
            .into_iter()
            .map(|s| FleetHost {
                current: serial.is_some() && s.report.serial.as_deref() == serial,
                node: s.report.node,
                generation: s.report.generation,
                serial: s.report.serial,
                verified_at: s.report.verified_at.map(rfc3339),
                error: s.report.error,
                stale: !s.alive,
            })
            .collect();
        hosts.sort_by(|a, b| a.node.cmp(&b.node));
        let in_sync = serial.is_some()
            && hosts
                .iter()
                .filter(|h| !h.stale)
                .all(|h| h.current && h.error.is_none());
        doc.certificates.push(FleetCertificate {
            name: cert.name.clone(),
            published: published.map(|p| FleetPublished {
                generation: p.generation,
                serial: p.serial,
                node: p.node,
                published_at: rfc3339(p.published_at),
                reason: p.reason,
            }),
            lock: lock.map(|l| FleetLockReport {
                node: l.node,
                acquired_at: rfc3339(l.acquired_at),
            }),
            pending: pending.map(|p| FleetPending {
                generation: p.generation,
                node: p.node,
                reason: p.reason,
                started_at: rfc3339(p.started_at),
                order_url: p.order_url,
            }),
            hosts,
            in_sync,
        });
    }
    Ok(doc)
}

/// `2026-12-03T04:00:00Z (5m ago)`.
fn when(ts: &str, now: Timestamp) -> String {
    match time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.unix_timestamp() < now => {
            format!("{ts} ({} ago)", humanize(now - t.unix_timestamp()))
        }
        _ => ts.to_string(),
    }
}

pub(crate) fn render_fleet(doc: &FleetDoc, now: Timestamp) {
    out!(
        "fleet: this host is node {}; etcd {} (prefix {})",
        doc.node,
        doc.endpoints.join(", "),
        doc.prefix
    );
    if doc.certificates.is_empty() {
        out!("no shared certificates configured (shared = true)");
    }
    for c in &doc.certificates {
        out!(
            "{}{}",
            c.name,
            if c.in_sync {
                ": in sync"
            } else {
                ": not in sync"
            }
        );
        match &c.published {
            Some(p) => out!(
                "  published:   generation {}, serial {}, by {} at {} ({})",
                p.generation,
                p.serial,
                p.node,
                when(&p.published_at, now),
                p.reason
            ),
            None => out!("  published:   nothing yet"),
        }
        match &c.lock {
            Some(l) => out!(
                "  lock:        held by {} since {}",
                l.node,
                when(&l.acquired_at, now)
            ),
            None => out!("  lock:        free"),
        }
        if let Some(p) = &c.pending {
            out!(
                "  pending:     generation {} ({}) started by {} at {}{}",
                p.generation,
                p.reason,
                p.node,
                when(&p.started_at, now),
                p.order_url
                    .as_deref()
                    .map(|u| format!(", order {u}"))
                    .unwrap_or_default()
            );
        }
        if c.hosts.is_empty() {
            out!("  hosts:       none reported");
        }
        for h in &c.hosts {
            let mut line = format!(
                "  host:        {}: generation {}, serial {}",
                h.node,
                h.generation
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                h.serial.as_deref().unwrap_or("-")
            );
            if c.published.is_some() && !h.current {
                line.push_str(" (differs from the published serial)");
            }
            match &h.verified_at {
                Some(v) => line.push_str(&format!(", verified {}", when(v, now))),
                None => line.push_str(", never verified"),
            }
            if let Some(e) = &h.error {
                line.push_str(&format!(", error: {e}"));
            }
            if h.stale {
                line.push_str(" [stale: the host is not alive in etcd; its last report]");
            }
            out!("{line}");
        }
    }
}
