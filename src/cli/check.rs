//! `certagent check` and `certagent status`: read-only views of every certificate. With a
//! daemon running they ask it (it knows what is in flight); otherwise they read the disk.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::clock::Clock;
use crate::control::{self, Request};
use crate::error::{Error, Result};
use crate::ops;
use crate::output::{self, CheckDoc, DaemonReport};

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Certificates to look at (default: all).
    #[arg(value_name = "NAME")]
    pub(crate) names: Vec<String>,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) check: CheckArgs,
    /// The fleet's view from etcd instead of this host's: for each shared certificate, the
    /// generation and serial published, who holds the lock, and what every host serves.
    #[arg(long)]
    pub(crate) fleet: bool,
}

/// `check`'s document: the daemon's when one answers, else read from disk.
async fn check_doc(config_path: &Path, args: &CheckArgs) -> Result<(CheckDoc, u8)> {
    let config = crate::config::Config::load(config_path)?;
    let req = Request::Check {
        names: args.names.clone(),
    };
    if let Some(resp) = control::request(&config.agent.runtime_dir, &req).await? {
        return resp.into_document();
    }
    let certs = ops::select(&config, &args.names)?;
    Ok(ops::check_doc(&config, &certs, Clock::new().now()))
}

/// The daemon's status document, marked as its view.
fn daemon_view(resp: control::Response, config_errors: Vec<String>) -> Result<CheckDoc> {
    let (mut doc, _): (CheckDoc, u8) = resp.into_document()?;
    doc.daemon = Some(DaemonReport {
        running: true,
        config_errors,
    });
    Ok(doc)
}

/// Where the daemon's control socket is when the configuration does not load: the main
/// file's `[agent] runtime_dir` if the file is at least TOML, else the default.
fn runtime_dir_of(config_path: &Path) -> PathBuf {
    std::fs::read_to_string(config_path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("agent")?
                .get("runtime_dir")?
                .as_str()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/run/certagent"))
}

pub(crate) async fn check(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let (doc, code) = check_doc(config_path, args).await?;
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_check(&doc, Clock::new().now());
    }
    Ok(code)
}

/// `status` answers with the daemon's view whenever a daemon answers, and says whether one
/// does. While the files on disk do not load, a daemon still runs on the configuration it
/// read before: its view is shown with a warning, exit 0 (status reports state; whether the
/// files are valid is `config validate`'s exit code, 78). With no daemon to ask it is 78.
pub(crate) async fn status(config_path: &Path, args: &StatusArgs) -> Result<u8> {
    if args.fleet {
        return fleet_status(config_path, &args.check).await;
    }
    let args = &args.check;
    let req = Request::Status {
        names: args.names.clone(),
    };
    let mut doc = match crate::config::Config::load(config_path) {
        Ok(config) => match control::request(&config.agent.runtime_dir, &req).await? {
            Some(resp) => daemon_view(resp, Vec::new())?,
            None => {
                let certs = ops::select(&config, &args.names)?;
                let (mut doc, _) = ops::check_doc(&config, &certs, Clock::new().now());
                doc.daemon = Some(DaemonReport {
                    running: false,
                    config_errors: Vec::new(),
                });
                doc
            }
        },
        Err(errors) => {
            let runtime_dir = runtime_dir_of(config_path);
            let Ok(Some(resp)) = control::request(&runtime_dir, &req).await else {
                return Err(Error::Config(errors));
            };
            let listed: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            eprintln!(
                "certagent: warning: the configuration on disk is invalid; the daemon runs on the configuration it read before:\n{errors}\n  hint: fix the file (`certagent config validate`); the daemon takes it up once it is valid"
            );
            daemon_view(resp, listed)?
        }
    };
    if doc.daemon.is_none() {
        doc.daemon = Some(DaemonReport {
            running: true,
            config_errors: Vec::new(),
        });
    }
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_status(&doc, Clock::new().now());
    }
    Ok(crate::error::exit::OK)
}

/// `status --fleet`: read from etcd, whether or not a daemon runs (exit 0; 78 without
/// `[cluster]`, 75 when etcd does not answer).
#[cfg(feature = "fleet")]
async fn fleet_status(config_path: &Path, args: &CheckArgs) -> Result<u8> {
    let config = crate::config::Config::load(config_path)?;
    ops::cluster_of(&config)?;
    let certs = ops::select_shared(&config, &args.names)?;
    let doc = ops::fleet_doc(&config, &certs).await?;
    if args.json {
        output::print_json(&doc);
    } else {
        ops::render_fleet(&doc, Clock::new().now());
    }
    Ok(crate::error::exit::OK)
}

/// A build without fleets cannot read etcd: refused before the configuration is read.
#[cfg(not(feature = "fleet"))]
async fn fleet_status(_config_path: &Path, _args: &CheckArgs) -> Result<u8> {
    Err(Error::msg(
        "`status --fleet` is not available: this certagent was built without fleets (the `fleet` feature)",
    )
    .with_hint("use a certagent built with its default features (packages are)"))
}

#[cfg(all(test, not(feature = "fleet")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_build_without_fleets_refuses_status_fleet_before_reading_the_config() {
        let args = StatusArgs {
            check: CheckArgs {
                names: Vec::new(),
                json: false,
            },
            fleet: true,
        };
        let err = status(Path::new("/nonexistent/config.toml"), &args)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::ERROR);
        assert!(
            err.to_string()
                .contains("this certagent was built without fleets (the `fleet` feature)"),
            "{err}"
        );
    }
}
