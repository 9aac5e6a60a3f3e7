//! `certagent check` and `certagent status`: read-only views of every certificate.

use std::path::Path;

use clap::Args;

use crate::config::Certificate;
use crate::core::humanize;
use crate::error::{Result, exit};
use crate::executor::{now, observe};
use crate::output::{self, CertificateReport, CheckDoc, LastReport, PendingReport, rfc3339};
use crate::store::{Journal, Store};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Certificates to look at (default: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn journal_of(state_dir: &Path, name: &str) -> Option<Journal> {
    // Read-only: never create the state directory just to look.
    state_dir
        .is_dir()
        .then(|| Store::open(state_dir).ok()?.journal(name).ok())
        .flatten()
}

fn report(cert: &Certificate, journal: Option<&Journal>, now: i64) -> CertificateReport {
    let obs = observe(cert, now);
    let pending = journal.and_then(|j| j.pending.as_ref());
    let action = match (obs.decision.is_healthy(), pending.is_some()) {
        (_, true) => "resume",
        (false, false) => "reissue",
        (true, false) => "none",
    };
    let problems = [obs.cert_problem.clone(), obs.key_problem.clone()]
        .into_iter()
        .flatten()
        .collect();
    CertificateReport {
        name: cert.name.clone(),
        healthy: obs.decision.is_healthy(),
        reason: obs.decision.reason().map(|r| r.as_str()),
        reasons: obs.decision.reasons.iter().map(|r| r.as_str()).collect(),
        action,
        names: cert.names.iter().map(|n| n.to_string()).collect(),
        key_type: cert.key_type.as_str(),
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        serial: obs.leaf.as_ref().map(|l| l.serial.clone()),
        not_after: obs.decision.not_after.map(rfc3339),
        renew_at: obs.decision.renew_at.map(rfc3339),
        problems,
        generation: journal.and_then(|j| j.current),
        pending: pending.map(|p| PendingReport {
            reason: p.reason.as_str(),
            since: rfc3339(p.started_at),
            issuer: p.issuer.clone(),
            attempts: p.attempts,
            order_url: p.order_url.clone(),
            issued: p.issued,
        }),
        last: journal.and_then(|j| j.last.as_ref()).map(|l| LastReport {
            at: rfc3339(l.at),
            result: match l.result {
                crate::store::OutcomeKind::Installed => "installed",
                crate::store::OutcomeKind::InstalledNotLoaded => "installed-not-loaded",
                crate::store::OutcomeKind::Failed => "failed",
                crate::store::OutcomeKind::RolledBack => "rolled-back",
            },
            reason: l.reason.as_str(),
            message: l.message.clone(),
            serial: l.serial.clone(),
            generation: l.generation,
        }),
    }
}

fn reports(config_path: &Path, args: &CheckArgs) -> Result<(Vec<CertificateReport>, i64)> {
    let config = super::load_config(config_path)?;
    let certs = super::select(&config, &args.names)?;
    let now = now();
    let out = certs
        .into_iter()
        .map(|c| {
            report(
                c,
                journal_of(&config.agent.state_dir, &c.name).as_ref(),
                now,
            )
        })
        .collect();
    Ok((out, now))
}

pub fn check(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let (reports, now) = reports(config_path, args)?;
    let healthy = reports.iter().all(|r| r.healthy);
    if args.json {
        output::print_json(&CheckDoc {
            schema: output::SCHEMA,
            changed: false,
            healthy,
            certificates: reports,
        });
    } else {
        if reports.is_empty() {
            println!("no certificates configured");
        }
        for r in &reports {
            println!("{}", check_line(r, now));
        }
    }
    Ok(if healthy {
        exit::OK
    } else {
        exit::NEEDS_ACTION
    })
}

fn check_line(r: &CertificateReport, now: i64) -> String {
    if r.healthy {
        let expiry = match (&r.not_after, &r.renew_at) {
            (Some(na), Some(ra)) => format!(", expires {na}, renews {}", relative(ra, now)),
            _ => String::new(),
        };
        return format!(
            "{}: healthy (serial {}{expiry})",
            r.name,
            r.serial.as_deref().unwrap_or("?")
        );
    }
    let mut line = format!("{}: needs re-issue: {}", r.name, r.reasons.join(", "));
    if !r.problems.is_empty() {
        line.push_str(&format!(" ({})", r.problems.join("; ")));
    }
    if r.action == "resume" {
        line.push_str("; a re-issue is pending and will be resumed");
    }
    line
}

fn relative(ts: &str, now: i64) -> String {
    match time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.unix_timestamp() > now => format!("in {}", humanize(t.unix_timestamp() - now)),
        Ok(_) => "now".into(),
        Err(_) => ts.to_string(),
    }
}

pub fn status(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let (reports, now) = reports(config_path, args)?;
    if args.json {
        let healthy = reports.iter().all(|r| r.healthy);
        output::print_json(&CheckDoc {
            schema: output::SCHEMA,
            changed: false,
            healthy,
            certificates: reports,
        });
        return Ok(exit::OK);
    }
    for r in &reports {
        println!("{}", r.name);
        println!("  names:       {}", r.names.join(", "));
        println!("  key type:    {}", r.key_type);
        println!(
            "  health:      {}",
            if r.healthy {
                "healthy".to_string()
            } else {
                r.reasons.join(", ")
            }
        );
        println!(
            "  in service:  generation {}, serial {}, expires {}",
            r.generation
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            r.serial.as_deref().unwrap_or("-"),
            r.not_after.as_deref().unwrap_or("-")
        );
        match (&r.pending, r.healthy, &r.renew_at) {
            (Some(p), _, _) => println!(
                "  pending:     re-issue ({}) since {}, {} attempt(s){}",
                p.reason,
                p.since,
                p.attempts,
                if p.issued {
                    ", certificate issued, not yet installed"
                } else {
                    ""
                }
            ),
            (None, true, Some(ra)) => println!("  next check:  {ra} ({})", relative(ra, now)),
            (None, _, _) => println!("  next check:  now"),
        }
        if let Some(l) = &r.last {
            println!(
                "  last:        {} {} ({}): {}",
                l.at, l.result, l.reason, l.message
            );
        }
    }
    Ok(exit::OK)
}
