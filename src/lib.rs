//! certagent keeps a web server's TLS certificates healthy without a human.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//!
//! Functional core, imperative shell: `core` decides (pure), everything else observes and acts.

pub mod cli; //        command line definitions and subcommands
pub mod config; //     config.toml + conf.d drop-ins -> validated Config, all errors at once
pub mod core; //       pure decisions: reasons, renewal window, retry delay
pub mod error; //      the error type and the exit codes
pub mod executor; //   observe a certificate; the re-issue and install transaction
pub mod failpoint; //  crash points for fault-injection tests (feature "failpoints")
pub mod issuer; //     ACME and the embedded local CA
pub mod keys; //       keys, CSRs, chains, pair checks, bounded PEM parsing
pub mod logging; //    journald or stderr, with structured fields
pub mod output; //     the --json documents
pub mod server; //     nginx / command servers: config test, reload, TLS probe
pub mod store; //      state directory: journal, generations, atomic flip, lock
