//! `certagent reissue --now`: new key, new certificate, installed and proven, now.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::ReasonArg;
use crate::core::Reason;
use crate::error::{Error, Result, exit};
use crate::executor::Executor;
use crate::output::{self, ReissueDoc, ReissueResult, rfc3339};
use crate::store::Lock;

#[derive(Args, Debug)]
pub struct ReissueArgs {
    /// Re-issue immediately (required: a re-issue from the command line is always now).
    #[arg(long, required = true)]
    pub now: bool,
    /// Certificates to re-issue.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub names: Vec<String>,
    /// Re-issue every configured certificate.
    #[arg(long)]
    pub all: bool,
    /// Why; recorded in the journal and logs.
    #[arg(long, value_enum, default_value = "superseded")]
    pub reason: ReasonArg,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn core_reason(r: ReasonArg) -> Reason {
    match r {
        ReasonArg::KeyCompromise => Reason::KeyCompromised,
        ReasonArg::KeyLost => Reason::KeyMissing,
        ReasonArg::KeyChange => Reason::KeyTypeChanged,
        ReasonArg::NamesChange => Reason::NamesChanged,
        ReasonArg::Superseded => Reason::Forced,
    }
}

pub async fn reissue(config_path: &Path, args: &ReissueArgs) -> Result<u8> {
    let config = super::load_config(config_path)?;
    let certs = super::select(&config, if args.all { &[] } else { &args.names })?;
    if certs.is_empty() {
        return Err(Error::msg("no certificates configured")
            .with_hint("add a [certificate.NAME] table to the configuration"));
    }
    let reason = core_reason(args.reason);
    if reason == Reason::KeyCompromised {
        log::warn!(
            "this version replaces a compromised key but does not revoke the old certificate or quarantine the old key: revoke it at the CA"
        );
    }
    let _lock = Lock::acquire(
        &config.agent.runtime_dir,
        Duration::from_secs(config.agent.lock_timeout.0.max(0) as u64),
    )
    .await?;
    let executor = Executor::new(&config)?;
    let mut results = Vec::new();
    for cert in certs {
        log::info!(cert = cert.name.as_str(), reason = reason.as_str(); "re-issuing");
        let r = match executor.reissue(cert, reason).await {
            Ok(i) => ReissueResult {
                name: cert.name.clone(),
                result: if i.loaded || cert.server.is_none() {
                    "installed"
                } else {
                    "installed-not-loaded"
                },
                changed: true,
                reason: reason.as_str(),
                serial: Some(i.serial),
                not_after: Some(rfc3339(i.not_after)),
                generation: Some(i.generation),
                error: None,
                hint: None,
            },
            Err(e) => {
                let journal = executor.store.journal(&cert.name).ok();
                let rolled_back = journal
                    .as_ref()
                    .and_then(|j| j.last.as_ref())
                    .is_some_and(|l| l.result == crate::store::OutcomeKind::RolledBack);
                ReissueResult {
                    name: cert.name.clone(),
                    result: if rolled_back { "rolled-back" } else { "failed" },
                    // A rollback restores the old pair, but files on the host did change hands.
                    changed: false,
                    reason: reason.as_str(),
                    serial: None,
                    not_after: None,
                    generation: None,
                    error: Some(e.to_string()),
                    hint: e.hint().map(str::to_string),
                }
            }
        };
        results.push(r);
    }
    let ok = results.iter().all(|r| r.error.is_none());
    if args.json {
        let changed = results.iter().any(|r| r.changed);
        output::print_json(&ReissueDoc {
            schema: output::SCHEMA,
            changed,
            ok,
            certificates: results,
        });
    } else {
        for r in &results {
            match &r.error {
                None => println!(
                    "{}: {} serial {} (generation {}), expires {}",
                    r.name,
                    if r.result == "installed" {
                        "installed and verified in service:"
                    } else {
                        "installed, not loaded (web server not running):"
                    },
                    r.serial.as_deref().unwrap_or("?"),
                    r.generation.unwrap_or_default(),
                    r.not_after.as_deref().unwrap_or("?")
                ),
                Some(e) => {
                    eprintln!("certagent: {}: {e}", r.name);
                    if let Some(h) = &r.hint {
                        eprintln!("  hint: {h}");
                    }
                }
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::ERROR })
}
