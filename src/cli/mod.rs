//! The command line: definitions (clap) and dispatch. Each subcommand lives in its own file
//! and returns the process exit code.

mod check;
mod config_cmd;
mod discover;
mod import;
pub(crate) mod install;
mod reissue;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG;
use crate::error::{Error, Result, exit};

/// Exit codes, for `--help` and the man page (values from `error::exit`).
pub const EXIT_CODES: [(u8, &str); 8] = [
    (exit::OK, "success / everything healthy"),
    (
        exit::NEEDS_ACTION,
        "check: at least one certificate needs action",
    ),
    (exit::ERROR, "error (details on stderr, and in --json)"),
    (
        exit::BUSY,
        "busy: another certagent process held the lock for too long",
    ),
    (
        exit::USAGE,
        "usage: reissue --dry-run of a certificate whose issuer has nothing to rehearse (manual, DNSimple)",
    ),
    (
        exit::PENDING,
        "pending: waiting on the CA or on a human; or etcd did not answer",
    ),
    (
        exit::NOT_ROOT,
        "not root: the command must run as root (sudo)",
    ),
    (exit::CONFIG, "configuration invalid"),
];

pub const EXAMPLES: [(&str, &str); 8] = [
    (
        "certagent config validate",
        "check /etc/certagent/config.toml and conf.d/*.toml",
    ),
    (
        "certagent check",
        "what is wrong with each certificate, changing nothing",
    ),
    (
        "certagent reissue --now www",
        "new key + certificate for [certificate.www], installed and proven",
    ),
    (
        "certagent reissue --now --all --json",
        "the same for every certificate, as JSON for config management",
    ),
    (
        "certagent status --fleet --json",
        "fleets: what etcd published for each shared certificate and what every host serves",
    ),
    (
        "certagent discover > conf.d/found.toml",
        "adopt the certificates nginx/Apache already serve",
    ),
    (
        "certagent import www signed.pem",
        "hand in the certificate a manual CA issued",
    ),
    ("certagent install", "set up and start the systemd service"),
];

pub const FILES: [(&str, &str); 5] = [
    (
        "/etc/certagent/config.toml",
        "the configuration; conf.d/*.toml beside it are merged in file-name order",
    ),
    (
        "/etc/certagent/credentials/",
        "secret files; under systemd the service reads them as credentials",
    ),
    (
        "/var/lib/certagent/",
        "state: journals, key and certificate generations, ACME accounts",
    ),
    (
        "/run/certagent/",
        "the lock every certagent process shares, the daemon's control socket",
    ),
    (
        "certagent.service",
        "the hardened systemd unit (Type=notify; reload re-reads the config)",
    ),
];

fn listing(title: &str, rows: &[(String, &str)], width: usize) -> String {
    let mut out = format!("{title}:");
    for (left, right) in rows {
        out.push_str(&format!("\n  {left:width$} {right}"));
    }
    out
}

/// A listing whose entries are too long to share a line with their description (commands,
/// paths): each on its own line, the description indented below it, so no line wraps at 100
/// columns.
fn stacked(title: &str, rows: &[(String, &str)]) -> String {
    let mut out = format!("{title}:");
    for (left, right) in rows {
        out.push_str(&format!("\n  {left}\n      {right}"));
    }
    out
}

/// A subcommand's `after_help`: examples, then the commands and files that go with it.
fn sub_help(examples: &[(&str, &str)], see_also: &str) -> String {
    let rows: Vec<(String, &str)> = examples.iter().map(|(c, m)| (c.to_string(), *m)).collect();
    format!("{}\n\nSee also: {see_also}", stacked("Examples", &rows))
}

/// Exit codes and examples (`-h`).
fn after_help() -> String {
    let codes: Vec<(String, &str)> = EXIT_CODES
        .iter()
        .map(|(c, m)| (c.to_string(), *m))
        .collect();
    let examples: Vec<(String, &str)> = EXAMPLES.iter().map(|(c, m)| (c.to_string(), *m)).collect();
    format!(
        "{}\n\n{}",
        listing("Exit codes", &codes, 3),
        stacked("Examples", &examples)
    )
}

/// `--help` adds where things are.
fn after_long_help() -> String {
    let files: Vec<(String, &str)> = FILES.iter().map(|(p, m)| (p.to_string(), *m)).collect();
    format!("{}\n\n{}", after_help(), stacked("Files", &files))
}

/// The heading global options are listed under, in every command's help.
const GLOBAL: &str = "Global options";

/// Keeps a web server's TLS certificates healthy: re-keys and re-issues when a key is missing,
/// mismatched or compromised, when a certificate expires or no longer matches the config;
/// installs atomically, reloads the server, proves the new certificate is served, and rolls
/// back if it is not.
#[derive(Parser, Debug)]
#[command(
    name = "certagent",
    version,
    after_help = after_help(),
    after_long_help = after_long_help(),
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file; drop-ins in conf.d/ beside it are merged in file-name order.
    #[arg(long, global = true, env = "CERTAGENT_CONFIG", default_value = DEFAULT_CONFIG, value_name = "PATH", help_heading = GLOBAL)]
    pub(crate) config: PathBuf,

    /// More detail on stderr (-vv for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// The daemon, in the foreground (systemd Type=notify).
    ///
    /// Watches every configured certificate and key (inotify), the config and its drop-ins,
    /// and acts at once when one is deleted, replaced or no longer matches; re-issues when a
    /// renewal window opens; answers `reissue`, `status` and `check` on the control socket.
    /// SIGHUP re-reads the config (keeping the old one if the new one is invalid); SIGTERM
    /// stops at a safe point.
    #[command(after_help = sub_help(
        &[
            ("certagent -v run", "the daemon in a terminal, with debug detail (Ctrl-C stops it)"),
            ("systemctl reload certagent", "re-read the configuration (SIGHUP)"),
        ],
        "certagent status (asks the running daemon), journalctl -u certagent",
    ))]
    Run,
    /// Report each certificate's health and what would be done; changes nothing.
    ///
    /// Reads the configured certificate and key files and decides, for each certificate,
    /// whether it needs a re-issue and why: key-missing, key-mismatch, cert-missing, expiring,
    /// names-changed, key-type-changed. Exits 1 if any certificate needs action.
    #[command(after_help = sub_help(
        &[
            ("certagent check", "one line per certificate: healthy, or what is wrong"),
            ("certagent check www --json", "the same for [certificate.www], as JSON"),
        ],
        "certagent status (what is in service and in flight), certagent reissue --now",
    ))]
    Check(check::CheckArgs),
    /// Show state: current generation, serial, expiry, pending work, last outcome, next check.
    ///
    /// With --fleet, the fleet's view from etcd ([cluster]) instead: for each shared
    /// certificate the generation and serial published, which node holds the lock, and per
    /// host what it serves (generation, serial, last verified, error, stale when the host is
    /// no longer alive). Exits 75 when etcd does not answer, 78 without [cluster].
    #[command(after_help = sub_help(
        &[
            ("certagent status", "every certificate: in service, pending, last outcome"),
            ("certagent status www --json", "the same for [certificate.www], as JSON"),
            (
                "certagent status --fleet www",
                "what every host of the fleet serves for the shared certificate www, from etcd",
            ),
        ],
        "certagent check (health only), certagent run (the daemon status asks)",
    ))]
    Status(check::StatusArgs),
    /// Re-issue with a new key now, install it, and prove it is served.
    ///
    /// Generates a new key and CSR on this host, obtains the certificate from the configured
    /// issuer, installs it atomically, tests and reloads the web server, and verifies by TLS
    /// handshake that the new certificate is served; rolls back if it is not. Exits 0 only
    /// when the new certificate is verified in service. A run that is interrupted (killed,
    /// power cut) is resumed by the next one without ordering again.
    #[command(
        override_usage = "certagent reissue --now <NAME>... [OPTIONS]\n       certagent reissue --now --all [OPTIONS]\n       certagent reissue --dry-run <NAME>...|--all [--json]"
    )]
    #[command(after_help = sub_help(
        &[
            ("certagent reissue --now www", "new key and certificate for [certificate.www]"),
            (
                "certagent reissue --now www --reason key-compromise",
                "the key leaked: also revoke the old certificate and never use its key again",
            ),
            ("certagent reissue --now --all --json", "every certificate, as JSON"),
            (
                "certagent reissue --dry-run www",
                "rehearse: issue from the issuer's staging_directory (else the issuer), check, discard",
            ),
        ],
        "certagent check (what would be re-issued by itself, and why), certagent status",
    ))]
    Reissue(reissue::ReissueArgs),
    /// Hand in the certificate for a pending manual re-issue (CA approval done).
    ///
    /// The certificate must be for the key of the pending re-issue and carry exactly the
    /// configured names; otherwise nothing is installed. Dropping the file into STATE/inbox/
    /// does the same while the daemon runs.
    #[command(after_help = sub_help(
        &[("certagent import www signed.pem", "install the certificate the CA sent for the pending CSR")],
        "certagent status (the pending re-issue), STATE/outbox/NAME.csr (the CSR to submit)",
    ))]
    Import(import::ImportArgs),
    /// Print the certificates nginx and Apache already serve, as certagent configuration.
    ///
    /// Reads the servers' configuration files as they do (include files, globs, paths
    /// relative to the nginx prefix or Apache's ServerRoot), finds every TLS site's
    /// certificate and key, reads each certificate (names, key type, expiry) and prints
    /// ready-to-paste [server.*] and [certificate.*] TOML for conf.d/, or --json. Changes
    /// nothing.
    #[command(after_help = sub_help(
        &[
            ("certagent discover > /etc/certagent/conf.d/found.toml", "adopt what nginx and Apache serve"),
            ("certagent discover --json", "the same, as JSON"),
        ],
        "certagent config validate (after pasting), certagent check",
    ))]
    Discover(discover::DiscoverArgs),
    /// Validate the configuration and its drop-ins.
    #[command(after_help = sub_help(
        &[("certagent config validate", "every error in config.toml and conf.d/*.toml at once")],
        "certagent check",
    ))]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Set certagent up as a systemd service on this host, idempotently.
    ///
    /// For hosts where certagent came from a tarball or `cargo install` (packages do this
    /// themselves): writes the hardened unit with ExecStart pointing at this binary, creates
    /// /etc/certagent (conf.d, credentials), /var/lib/certagent and /etc/ssl/certagent, puts
    /// config.example.toml in place (never touching config.toml), grants the directories the
    /// configuration writes to in a unit drop-in, enables the service and, once the
    /// configuration validates, starts it (restarts it when its unit changed). A second run
    /// changes nothing and reports "changed": false.
    #[command(after_help = sub_help(
        &[
            ("certagent install --dry-run", "what would change, changing nothing"),
            ("certagent install --json", "set up the service; \"changed\" says whether anything did"),
        ],
        "certagent uninstall, certagent config validate, systemctl status certagent",
    ))]
    Install(install::InstallArgs),
    /// Stop and disable the service and remove what `install` put in place.
    ///
    /// Keeps the configuration and the state (keys and certificates in service) unless
    /// --purge is given.
    #[command(after_help = sub_help(
        &[("certagent uninstall", "stop and remove the service; keep config and state")],
        "certagent install",
    ))]
    Uninstall(install::UninstallArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Report every error in the config and drop-ins at once, each with file, line and key.
    ///
    /// With --with FILE --as PATH, FILE's content stands in for PATH (the config file or a
    /// drop-in, which need not exist yet): config management validates a file this way
    /// before putting it in place (Ansible: validate: "certagent config validate --with %s
    /// --as /etc/certagent/conf.d/www.toml").
    #[command(after_help = sub_help(
        &[
            ("certagent config validate", "every error at once, each with file, line and key"),
            (
                "certagent config validate --with new.toml --as /etc/certagent/conf.d/www.toml",
                "validate a candidate before putting it in place",
            ),
        ],
        "certagent check, certagent run (keeps the old config while the new one is invalid)",
    ))]
    Validate {
        /// Print a JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// A candidate file to validate in place of --as PATH.
        #[arg(long, value_name = "FILE", requires = "as_path")]
        with: Option<PathBuf>,
        /// Where the candidate will go: the config file or a .toml file in its conf.d/.
        #[arg(long = "as", id = "as_path", value_name = "PATH", requires = "with")]
        as_path: Option<PathBuf>,
    },
}

/// Operator reasons for `reissue --reason`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ReasonArg {
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

pub async fn run(cli: Cli) -> Result<u8> {
    if needs_root(&cli.command) && !nix::unistd::geteuid().is_root() {
        let mut args: Vec<String> = std::env::args().collect();
        // sudo does not pass $CERTAGENT_CONFIG on: the path goes on the command line.
        if std::env::var_os("CERTAGENT_CONFIG").is_some()
            && !args
                .iter()
                .any(|a| a == "--config" || a.starts_with("--config="))
        {
            let at = 1.min(args.len());
            args.splice(
                at..at,
                ["--config".into(), cli.config.display().to_string()],
            );
        }
        return Err(Error::NotRoot {
            command: format!("sudo {}", command_line(args.into_iter())),
        });
    }
    match cli.command {
        Command::Run => crate::daemon::run_service(&cli.config).await,
        Command::Check(args) => check::check(&cli.config, &args).await,
        Command::Status(args) => check::status(&cli.config, &args).await,
        Command::Reissue(args) => reissue::reissue(&cli.config, &args).await,
        Command::Import(args) => import::import(&cli.config, &args).await,
        Command::Discover(args) => discover::discover(&args),
        Command::Config {
            command:
                ConfigCommand::Validate {
                    json,
                    with,
                    as_path,
                },
        } => {
            let candidate = as_path.as_deref().zip(with.as_deref());
            config_cmd::validate(&cli.config, json, candidate)
        }
        Command::Install(args) => install::install(&cli.config, &args),
        Command::Uninstall(args) => install::uninstall(&cli.config, &args),
    }
}

/// Every command works on root's files (keys, state, the lock, the control socket) except
/// those that only read: `discover` reads the servers' configuration and certificates,
/// `config validate` the configuration (which says so when it is not readable).
fn needs_root(command: &Command) -> bool {
    !matches!(command, Command::Discover(_) | Command::Config { .. })
}

/// `args` as a shell would need them typed: arguments with spaces, quotes or other
/// characters the shell treats specially in single quotes, control characters escaped.
fn command_line(args: impl Iterator<Item = String>) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    };
    args.map(|a| {
        let a = crate::error::shown(&a).into_owned();
        if plain(&a) {
            a
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// Whether the command is the daemon (`run`): its log lines carry timestamps off the journal.
pub fn is_daemon(cli: &Cli) -> bool {
    matches!(cli.command, Command::Run)
}

/// Whether the command works on one certificate, so one thread runs it all: the daemon and
/// commands over several certificates (whose keys, signatures and file syncs overlap on
/// two threads) use two. A second thread costs a re-issue about a tenth of its CPU in
/// wake-ups and hand-offs between the threads (perf, `reissue --now` of one certificate).
pub fn one_thread(cli: &Cli) -> bool {
    match &cli.command {
        Command::Reissue(a) => !a.all && a.names.len() == 1,
        Command::Import(_) => true,
        _ => false,
    }
}

/// Whether the command asked for JSON (for error output before the command runs).
pub fn wants_json(cli: &Cli) -> bool {
    match &cli.command {
        Command::Check(a) => a.json,
        Command::Status(a) => a.check.json,
        Command::Reissue(a) => a.json,
        Command::Import(a) => a.json,
        Command::Discover(a) => a.json,
        Command::Run => false,
        Command::Config {
            command: ConfigCommand::Validate { json, .. },
        } => *json,
        Command::Install(a) => a.json,
        Command::Uninstall(a) => a.json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(args: &[&str]) -> bool {
        let argv = std::iter::once("certagent").chain(args.iter().copied());
        #[allow(clippy::unwrap_used)]
        one_thread(&Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn one_certificate_runs_on_one_thread_the_daemon_and_several_on_two() {
        assert!(threads(&["reissue", "--now", "www"]));
        assert!(threads(&["reissue", "--dry-run", "www", "--json"]));
        assert!(!threads(&["reissue", "--now", "www", "shop"]));
        assert!(!threads(&["reissue", "--now", "--all"]));
        assert!(!threads(&["run"]));
        assert!(threads(&["import", "www", "signed.pem"]));
        assert!(!threads(&["check"]));
    }
}
