//! certagent: parse the command line, set up logging, run, map the result to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use certagent::cli::{self, Cli};
use certagent::error::Error;
use certagent::output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    certagent::logging::init(cli.verbose, cli.quiet, cli::is_daemon(&cli));
    // Key material must never end up in a core file.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let json = cli::wants_json(&cli);
    let mut builder = if cli::one_thread(&cli) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certagent: failed to start: {e}");
            return ExitCode::from(certagent::error::exit::ERROR);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // A lock waiter may still block in a thread; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, json);
            ExitCode::from(e.exit_code())
        }
    }
}

fn report(e: &Error, json: bool) {
    if json {
        let errors = match e {
            Error::Config(c) => c.0.clone(),
            _ => Vec::new(),
        };
        output::print_json(&output::ErrorDoc {
            schema: output::SCHEMA,
            changed: false,
            error: e.to_string(),
            hint: e.hint().map(str::to_string),
            errors,
        });
    }
    eprintln!("certagent: {e}");
    if let Some(hint) = e.hint() {
        eprintln!("  hint: {hint}");
    }
}
