//! certagent's integration tests, as one test binary (one link, one copy of the harness in
//! `tests/common/`). Each former `tests/NAME.rs` is the module `NAME` here, so a test keeps
//! its name under that module path (`cargo test --test integration acme::`).
//!
//! The tests of all modules share this process: nothing may change process-global state
//! (environment, umask, current directory, signal dispositions); resources that cannot be
//! shared (a mount point, the immutable flag) are serialized where they are used.

#[path = "../common/mod.rs"]
mod common;

mod acme;
mod apache;
mod compromise;
#[cfg(feature = "failpoints")]
mod crash;
mod daemon;
mod discover;
mod dnsimple;
mod dnsimple_selftest;
mod dry_run;
mod failover;
#[cfg(feature = "failpoints")]
mod faults;
#[cfg(feature = "fleet")]
mod fleet;
#[cfg(feature = "fleet")]
mod fleet_daemon;
#[cfg(feature = "fleet")]
mod fleet_etcd;
#[cfg(feature = "fleet")]
mod fleet_selftest;
#[cfg(feature = "fleet")]
mod fleet_status;
mod front_selftest;
mod haproxy;
mod hardening;
mod hardening_dirs;
mod hardening_inputs;
#[cfg(feature = "failpoints")]
mod hardening_loops;
mod harness;
mod install;
mod ip_names;
mod mail;
mod manual;
mod messages;
mod notify;
mod operator;
mod profiles;
mod reissue;
mod revocation;
mod rfc2136;
mod schedule;
mod servers;
