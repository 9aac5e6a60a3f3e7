//! `certagent check` and `certagent status`: read-only views of every certificate. With a
//! daemon running they ask it (it knows what is in flight); otherwise they read the disk.

use std::path::Path;

use clap::Args;

use crate::clock::Clock;
use crate::control::{self, Request};
use crate::error::Result;
use crate::ops;
use crate::output::{self, CheckDoc};

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Certificates to look at (default: all).
    #[arg(value_name = "NAME")]
    pub(crate) names: Vec<String>,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

async fn doc(config_path: &Path, args: &CheckArgs, status: bool) -> Result<(CheckDoc, u8)> {
    let config = crate::config::Config::load(config_path)?;
    let req = if status {
        Request::Status {
            names: args.names.clone(),
        }
    } else {
        Request::Check {
            names: args.names.clone(),
        }
    };
    if let Some(resp) = control::request(&config.agent.runtime_dir, &req).await? {
        return resp.into_document();
    }
    let certs = ops::select(&config, &args.names)?;
    Ok(ops::check_doc(&config, &certs, Clock::new().now()))
}

pub(crate) async fn check(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let (doc, code) = doc(config_path, args, false).await?;
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_check(&doc, Clock::new().now());
    }
    Ok(code)
}

pub(crate) async fn status(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let (doc, _) = doc(config_path, args, true).await?;
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_status(&doc, Clock::new().now());
    }
    Ok(crate::error::exit::OK)
}
