//! Integration-test harness for certagent.
//!
//! Everything an integration test needs to stand up a realistic environment on
//! loopback only, with no state shared between tests:
//!
//! * [`reserved_port`], [`wait_until`] and the [`Child`] process guard
//!   (`process.rs`);
//! * [`TlsCa`]: a throw-away CA generated with rcgen at test time, plus
//!   helpers to inspect certificates and keys ([`served_leaf`],
//!   [`spki_of_cert_der`], [`spki_of_key_pem`], [`san_dns_names`], ...)
//!   (`tls.rs`);
//! * [`Pebble`]: a Pebble ACME server with `pebble-challtestsrv` as its DNS
//!   (`pebble.rs`);
//! * [`Nginx`]: a private nginx master with one TLS server per [`Site`] and an
//!   optional plain-HTTP listener serving an http-01 webroot (`nginx.rs`);
//! * [`Apache`]: a private Apache parent (Debian's apache2) with one TLS
//!   `<VirtualHost>` per [`Site`], on a temporary ServerRoot (`apache.rs`);
//! * [`https_get`]: a blocking HTTPS GET that trusts one given CA (`http.rs`);
//! * [`Front`]: an HTTPS reverse proxy in front of Pebble adding ACME Renewal Information
//!   (`renewalInfo`, `replaces`, `alreadyReplaced`) and a CRL server (`front.rs`);
//! * [`TestUser`]: an unprivileged local user for one test, removed on drop (`user.rs`);
//! * [`FakeDnsimple`]: an in-process fake of DNSimple's API v2 (Let's Encrypt certificates
//!   with DNSimple-generated keys, zone records mirrored to `pebble-challtestsrv`, fault
//!   injection) (`dnsimple.rs`).
//! * [`Haproxy`]: a private HAProxy master-worker serving one bundle, with a pid file and
//!   its runtime API socket (`haproxy.rs`);
//! * [`Postfix`], [`Dovecot`]: private mail servers offering STARTTLS on loopback, and
//!   [`starttls_leaf`] to read what they present (`mail.rs`).
//! * [`Named`]: a private BIND primary taking TSIG-signed RFC 2136 updates, for dns-01
//!   (`named.rs`).
//! * [`fleet::FleetRig`] (feature `fleet`): three hosts (nginx + certagent daemon each) sharing
//!   a certificate through a 3-member etcd ([`etcd::EtcdCluster`]), Pebble validating through
//!   a round-robin TCP [`balancer::Balancer`] in front of them (`fleet.rs`, `balancer.rs`).
//!
//! All helpers are synchronous and panic with a descriptive message (including
//! the relevant server logs) when the environment cannot be set up; they are
//! meant for test code only. Every process the harness spawns is owned by a
//! guard that ends it *by pid* on drop; nothing is ever killed by name.
//!
//! The integration tests (`tests/integration/main.rs`) include it as their module `common`;
//! the benches include it with `#[path]` too, and allow what they leave unused.

// Test support: a failed `expect` is a test failure with a message, which is
// exactly what we want here.
#![allow(clippy::expect_used)]

mod agent;
mod apache;
#[cfg(feature = "fleet")]
pub mod balancer;
mod dnsimple;
#[cfg(feature = "fleet")]
pub mod etcd;
#[cfg(feature = "fleet")]
pub mod fleet;
mod front;
mod haproxy;
mod http;
mod http1;
mod mail;
mod named;
mod nginx;
mod pebble;
mod process;
mod tls;
mod user;

pub use agent::{
    Daemon, Env, Run, run_certagent, run_certagent_under, toml_list, with_unit_capabilities,
};
pub use apache::Apache;
pub use dnsimple::*;
pub use front::*;
pub use haproxy::Haproxy;
pub use http::{http_get, https_get};
pub use mail::{Dovecot, Postfix, starttls_leaf};
pub use named::Named;
pub use nginx::{Nginx, Site};
pub use pebble::{Pebble, PebbleOpts};
pub use process::{Child, pid_alive, reserved_port, send_signal, wait_until};
pub use tls::{
    Leaf, TlsCa, cert_serial_hex, cert_validity, ensure_crypto_provider, hold_connection,
    pem_to_der, san_dns_names, san_ip_addresses, served_leaf, spki_of_cert_der, spki_of_key_pem,
};
pub use user::TestUser;
// Only the fault tests (a failpoints module) hold it themselves.
#[cfg(feature = "failpoints")]
pub use user::user_db_lock;
