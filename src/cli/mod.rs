//! The command line: definitions (clap) and dispatch. Each subcommand lives in its own file
//! and returns the process exit code.

mod check;
mod config_cmd;
mod discover;
mod import;
mod reissue;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::error::{Error, Result};

const AFTER_HELP: &str = "\
Exit codes:
  0   success / everything healthy
  1   check: at least one certificate needs action
  2   error (details on stderr, and in --json)
  3   busy: another certagent process held the lock for too long
  75  pending: waiting on the CA or on a human
  78  configuration invalid

Examples:
  certagent config validate             check /etc/certagent/config.toml and conf.d/*.toml
  certagent check                       what is wrong with each certificate, changing nothing
  certagent reissue --now www           new key + certificate for [certificate.www], installed and proven
  certagent reissue --now --all --json  the same for every certificate, as JSON for config management
  certagent discover > conf.d/found.toml  adopt the certificates nginx/Apache already serve";

/// Keeps a web server's TLS certificates healthy: re-keys and re-issues when a key is missing,
/// mismatched or compromised, when a certificate expires or no longer matches the config;
/// installs atomically, reloads the server, proves the new certificate is served, and rolls
/// back if it is not.
#[derive(Parser, Debug)]
#[command(name = "certagent", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Configuration file; drop-ins in conf.d/ beside it are merged in file-name order.
    #[arg(long, global = true, env = "CERTAGENT_CONFIG", default_value = DEFAULT_CONFIG, value_name = "PATH")]
    pub config: PathBuf,

    /// More detail on stderr (-vv for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon, in the foreground (systemd Type=notify).
    ///
    /// Watches every configured certificate and key (inotify), the config and its drop-ins,
    /// and acts at once when one is deleted, replaced or no longer matches; re-issues when a
    /// renewal window opens; answers `reissue`, `status` and `check` on the control socket.
    /// SIGHUP re-reads the config (keeping the old one if the new one is invalid); SIGTERM
    /// stops at a safe point.
    Run,
    /// Report each certificate's health and what would be done; changes nothing.
    ///
    /// Reads the configured certificate and key files and decides, for each certificate,
    /// whether it needs a re-issue and why: key-missing, key-mismatch, cert-missing, expiring,
    /// names-changed, key-type-changed. Exits 1 if any certificate needs action.
    Check(check::CheckArgs),
    /// Show state: current generation, serial, expiry, pending work, last outcome, next check.
    Status(check::CheckArgs),
    /// Re-issue with a new key now, install it, and prove it is served.
    ///
    /// Generates a new key and CSR on this host, obtains the certificate from the configured
    /// issuer, installs it atomically, tests and reloads the web server, and verifies by TLS
    /// handshake that the new certificate is served; rolls back if it is not. Exits 0 only
    /// when the new certificate is verified in service. A run that is interrupted (killed,
    /// power cut) is resumed by the next one without ordering again.
    Reissue(reissue::ReissueArgs),
    /// Hand in the certificate for a pending manual re-issue (CA approval done).
    ///
    /// The certificate must be for the key of the pending re-issue and carry exactly the
    /// configured names; otherwise nothing is installed. Dropping the file into STATE/inbox/
    /// does the same while the daemon runs.
    Import(import::ImportArgs),
    /// Print the certificates nginx and Apache already serve, as certagent configuration.
    ///
    /// Reads the servers' configuration files as they do (include files, globs, paths
    /// relative to the nginx prefix or Apache's ServerRoot), finds every TLS site's
    /// certificate and key, reads each certificate (names, key type, expiry) and prints
    /// ready-to-paste [server.*] and [certificate.*] TOML for conf.d/, or --json. Changes
    /// nothing.
    Discover(discover::DiscoverArgs),
    /// Validate the configuration and its drop-ins.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Report every error in the config and drop-ins at once, each with file, line and key.
    Validate {
        /// Print a JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Operator reasons for `reissue --reason`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReasonArg {
    /// The key is (or may be) in someone else's hands.
    KeyCompromise,
    /// The key was lost.
    KeyLost,
    /// Change the key type or size.
    KeyChange,
    /// Change the names.
    NamesChange,
    /// Routine replacement.
    Superseded,
}

pub fn load_config(path: &std::path::Path) -> Result<Config> {
    let mut config = Config::load(path).map_err(Error::Config)?;
    config.files = vec![path.to_path_buf()];
    Ok(config)
}

pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run => crate::daemon::run_service(&cli.config).await,
        Command::Check(args) => check::check(&cli.config, &args).await,
        Command::Status(args) => check::status(&cli.config, &args).await,
        Command::Reissue(args) => reissue::reissue(&cli.config, &args).await,
        Command::Import(args) => import::import(&cli.config, &args).await,
        Command::Discover(args) => discover::discover(&args),
        Command::Config {
            command: ConfigCommand::Validate { json },
        } => config_cmd::validate(&cli.config, json),
    }
}

/// Whether the command asked for JSON (for error output before the command runs).
pub fn wants_json(cli: &Cli) -> bool {
    match &cli.command {
        Command::Check(a) | Command::Status(a) => a.json,
        Command::Reissue(a) => a.json,
        Command::Import(a) => a.json,
        Command::Discover(a) => a.json,
        Command::Run => false,
        Command::Config {
            command: ConfigCommand::Validate { json },
        } => *json,
    }
}
