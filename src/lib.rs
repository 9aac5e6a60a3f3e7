//! certagent keeps a web server's TLS certificates healthy without a human.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//!
//! Functional core, imperative shell: `core` decides (pure), everything else observes and acts.
//! Public only what `main`, the tests, the fuzz targets and the asset generator use; the rest
//! is crate-private, so the compiler reports what nothing uses.

mod adopt; // taking over files at the configured paths, never through a planted link
mod child; // every child process: scrubbed environment, output tail kept
pub mod cli; // command line definitions and subcommands
pub mod clock; // wall time derived from tokio's clock (pausable in tests)
#[cfg(feature = "fleet")]
pub mod cluster; // fleets: etcd lock with fencing, published/pending records, sealed keys
mod compromise; // compromised keys: flag files and blocklists
pub mod config; // config.toml + conf.d drop-ins -> validated Config, all errors at once
pub mod control; // control socket protocol between the CLI and the daemon
pub mod core; // pure decisions: reasons, renewal window, the lifecycle, retry delay
pub mod daemon; // the event loop: inotify, deadlines, control socket, signals, sd_notify
mod discover; // the certificates nginx and Apache already serve, as certagent config
pub mod error; // the error type and the exit codes
mod executor; // observe a certificate; the re-issue and install transaction, by phase
mod failpoint; // crash points for fault-injection tests (feature "failpoints")
mod files; // crash-safe writes, no-follow walks, trusted directories
#[cfg(feature = "fleet")]
mod fleet; // shared certificates: heal from what is published, order under the lock, publish
mod http; // the one outbound HTTP client: ACME, DNSimple, CRLs, webhooks
mod issuer; // ACME, DNSimple, the embedded local CA, manual CAs
pub mod keys; // keys, CSRs, chains, pair checks, bounded PEM parsing
mod lifecycle; // what comes next for a certificate: the core's answer from the disk's facts
pub mod logging; // journald or stderr, with structured fields
mod metrics; // Prometheus textfile for fleets, rewritten on every state change
mod notify; // webhook and command notifications of events
mod ops; // check / status / reissue documents, shared by CLI and daemon
pub mod output; // the --json documents
pub mod revocation; // CRL lookups and ACME Renewal Information (RFC 9773)
mod server; // nginx / Apache / command servers: config test, reload, TLS probe
mod store; // state directory: journal, generations, atomic flip, lock, quarantine
mod systemd; // sd_notify: READY, STATUS, RELOADING, STOPPING, WATCHDOG
