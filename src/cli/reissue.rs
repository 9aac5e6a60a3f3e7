//! `certagent reissue --now`: new key, new certificate, installed and proven, now. With a
//! daemon running the daemon does it (so the two never interleave); otherwise it runs here,
//! under the lock every certagent process shares.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::ReasonArg;
use crate::clock::Clock;
use crate::control::{self, Request};
use crate::core::Requested;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::ops;
use crate::output::{self, ReissueDoc};
use crate::store::Lock;

#[derive(Args, Debug)]
pub(crate) struct ReissueArgs {
    /// Required: replace the key and certificate in service now, whatever their state.
    /// certagent already re-issues by itself when a certificate needs it (`certagent check`
    /// says whether one does and why); --now is the operator saying "anyway, at once".
    #[arg(long, conflicts_with = "dry_run")]
    pub(crate) now: bool,
    /// Rehearse: issue a certificate as a re-issue would (from the issuer's
    /// staging_directory when it has one), check it, and throw it away. Nothing on this host
    /// changes.
    #[arg(long, conflicts_with_all = ["no_wait", "reason"])]
    pub(crate) dry_run: bool,
    /// Certificates to re-issue.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub(crate) names: Vec<String>,
    /// Re-issue every configured certificate.
    #[arg(long)]
    pub(crate) all: bool,
    /// Why; recorded in the journal and logs.
    #[arg(long, value_enum, default_value = "superseded")]
    pub(crate) reason: ReasonArg,
    /// Return once the daemon has started the re-issue instead of waiting for the outcome
    /// (needs a running daemon).
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `reissue` without `--now`: say why the flag exists and what to run instead.
fn now_missing(args: &ReissueArgs) -> Error {
    let target = if args.all {
        "--all".to_string()
    } else {
        args.names.join(" ")
    };
    Error::msg(
        "reissue needs --now: it replaces the key and certificate in service at once, even a healthy one",
    )
    .with_hint(format!(
        "certagent re-issues by itself when a certificate needs it; `certagent check` says whether one does and why; to replace it anyway: `certagent reissue --now {target}`; to rehearse without changing anything: `certagent reissue --dry-run {target}`"
    ))
}

pub(crate) fn requested(r: ReasonArg) -> Requested {
    match r {
        ReasonArg::KeyCompromise => Requested::KeyCompromise,
        ReasonArg::KeyLost => Requested::KeyLost,
        ReasonArg::KeyChange => Requested::KeyChange,
        ReasonArg::NamesChange => Requested::NamesChange,
        ReasonArg::Superseded => Requested::Superseded,
    }
}

pub(crate) async fn reissue(config_path: &Path, args: &ReissueArgs) -> Result<u8> {
    if args.dry_run {
        return dry_run(config_path, args).await;
    }
    if !args.now {
        return Err(now_missing(args));
    }
    let config = crate::config::Config::load(config_path)?;
    let certs = selected(&config, args)?;
    let names: &[String] = if args.all { &[] } else { &args.names };
    ops::preflight(&config, &certs).await?;
    let requested = requested(args.reason);
    let reason = requested.reason();
    let req = Request::Reissue {
        names: names.to_vec(),
        all: args.all,
        reason,
        wait: !args.no_wait,
        requested: Some(requested),
    };
    let (doc, code) = match control::request(&config.agent.runtime_dir, &req).await? {
        Some(resp) => resp.into_document::<ReissueDoc>()?,
        None if args.no_wait => {
            return Err(Error::msg("--no-wait needs a running daemon")
                .with_hint("start it with `systemctl start certagent`, or drop --no-wait"));
        }
        None => {
            let names: Vec<String> = certs.iter().map(|c| c.name.clone()).collect();
            let lock_wait = Duration::from_secs(config.agent.lock_timeout.0.max(0) as u64);
            let _lock = Lock::acquire(&config.agent.runtime_dir, lock_wait).await?;
            let config = Arc::new(config);
            let (_keep, never) = tokio::sync::watch::channel(false);
            let executor = Executor::new(config.clone(), Clock::new(), never)?;
            let mut results = Vec::new();
            for name in &names {
                if let Some(cert) = config.certificate(name) {
                    let (outcome, asked) =
                        ops::reissue_one(&executor, cert, reason, Some(requested)).await;
                    results.push(ops::reissue_document(&cert.name, reason, &asked, &outcome));
                }
            }
            ops::reissue_doc(results)
        }
    };
    print(&doc, args.json);
    Ok(code)
}

/// The certificates the arguments select (by name, or `--all`); none is an error.
fn selected<'c>(
    config: &'c crate::config::Config,
    args: &ReissueArgs,
) -> Result<Vec<&'c crate::config::Certificate>> {
    let names: &[String] = if args.all { &[] } else { &args.names };
    let certs = ops::select(config, names)?;
    if certs.is_empty() {
        return Err(Error::msg("no certificates configured")
            .with_hint("add a [certificate.NAME] table to the configuration"));
    }
    Ok(certs)
}

fn print(doc: &ReissueDoc, json: bool) {
    if json {
        output::print_json(doc);
    } else {
        ops::render_reissue(doc);
    }
}

/// `reissue --dry-run`: in this process, daemon or not, without the lock (it changes
/// nothing another process reads; see `executor::dry_run`).
async fn dry_run(config_path: &Path, args: &ReissueArgs) -> Result<u8> {
    let config = crate::config::Config::load(config_path)?;
    let certs = selected(&config, args)?;
    ops::dry_run_supported(&config, &certs)?;
    let names: Vec<String> = certs.iter().map(|c| c.name.clone()).collect();
    let config = Arc::new(config);
    let (_keep, never) = tokio::sync::watch::channel(false);
    let executor = Executor::new(config.clone(), Clock::new(), never)?;
    let certs: Vec<_> = names.iter().filter_map(|n| config.certificate(n)).collect();
    let (doc, code) = ops::dry_run(&executor, &certs).await;
    print(&doc, args.json);
    Ok(code)
}
