//! `certagent import NAME FILE`: hand in the certificate a CA (or a human) issued for a
//! pending manual re-issue. Accepted only if it is for the pending key and the configured
//! names; then installed with the full transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::clock::Clock;
use crate::control::{self, Request};
use crate::core::Reason;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::ops;
use crate::output::{self, ReissueDoc};
use crate::store::{Lock, fsutil};

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The certificate (as configured) whose re-issue is pending.
    pub(crate) name: String,
    /// PEM file with the certificate (and, ideally, its intermediates).
    pub(crate) file: PathBuf,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn import(config_path: &Path, args: &ImportArgs) -> Result<u8> {
    let config = crate::config::Config::load(config_path)?;
    let cert = ops::select(&config, std::slice::from_ref(&args.name))?[0].clone();
    let data = fsutil::read_capped(&args.file, crate::keys::MAX_PEM_BYTES)?.ok_or_else(|| {
        Error::msg(format!(
            "failed to read {:?}: no such file",
            args.file.display().to_string()
        ))
    })?;
    let text = String::from_utf8(data.clone())
        .map_err(|_| Error::msg("the certificate file is not PEM text"))?;
    let req = Request::Import {
        name: cert.name.clone(),
        certificate: text,
    };
    let (doc, code) = match control::request(&config.agent.runtime_dir, &req).await? {
        Some(resp) => resp.into_document::<ReissueDoc>()?,
        None => {
            let lock_wait = Duration::from_secs(config.agent.lock_timeout.0.max(0) as u64);
            let _lock = Lock::acquire(&config.agent.runtime_dir, lock_wait).await?;
            let config = Arc::new(config);
            let (_keep, never) = tokio::sync::watch::channel(false);
            let executor = Executor::new(config.clone(), Clock::new(), never)?;
            let outcome = ops::import_one(&executor, &cert, &data).await;
            ops::reissue_doc(vec![ops::document(&cert.name, Reason::Forced, &outcome)])
        }
    };
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_reissue(&doc);
    }
    Ok(code)
}
