//! Fleets at the daemon level with light parts: a 3-member etcd, Pebble (always valid: the
//! http-01 relay through a load balancer is `fleet.rs`'s), and three certagent daemons whose
//! shared certificate has no web server (files only). What is checked is the fleet's
//! bookkeeping: one order per trigger, every host on the published serial, local trouble
//! healed without an order, and etcd down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::etcd::EtcdCluster;
use crate::common::{Daemon, Pebble, PebbleOpts, cert_serial_hex, run_certagent, wait_until};

const NAME: &str = "fleet.test";

struct Host {
    dir: PathBuf,
    config: PathBuf,
    daemon: Option<Daemon>,
}

impl Host {
    fn cert_file(&self) -> PathBuf {
        self.dir.join("ssl").join("site.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("ssl").join("site.key")
    }

    fn start(&mut self) {
        let log = self.dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        self.daemon = Some(Daemon::start(&self.config, &log, &[]));
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// The serial of the certificate file, if it parses and the key file is there too (the
    /// certificate's link is made first, so a host whose certificate is in place may be a
    /// moment from having its key).
    fn serial(&self) -> Option<String> {
        let key = std::fs::read_to_string(self.key_file()).ok()?;
        certagent::keys::PrivateKey::from_pem(&key).ok()?;
        let pem = std::fs::read(self.cert_file()).ok()?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        Some(cert_serial_hex(&block.contents))
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    etcd: EtcdCluster,
    pebble: Pebble,
    hosts: Vec<Host>,
}

impl Rig {
    fn start(n: usize) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = EtcdCluster::start(3);
        let pebble = Pebble::start(PebbleOpts {
            always_valid: true,
            validity_period_secs: Some(30 * 86_400),
            ..PebbleOpts::default()
        });
        let fleet_key = dir.path().join("fleet.key");
        std::fs::write(&fleet_key, [7u8; 32]).expect("fleet key");
        set_mode(&fleet_key, 0o600);
        let endpoints = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let hosts = (0..n)
            .map(|i| {
                let hdir = dir.path().join(format!("h{i}"));
                std::fs::create_dir_all(hdir.join("ssl")).expect("mkdir ssl");
                std::fs::create_dir_all(hdir.join("etc")).expect("mkdir etc");
                // Where config management drops compromise flags: there before the daemon
                // starts, so it watches it.
                std::fs::create_dir_all(hdir.join("compromised")).expect("mkdir flags");
                let config = hdir.join("etc").join("config.toml");
                // Pebble is always valid here, but the issuer needs a responder: a port
                // nobody asks.
                let issuer = pebble.issuer_table().replace(
                    &format!("listen = \"127.0.0.1:{}\"", pebble.http_port()),
                    &format!("webroot = \"{}\"", hdir.join("www").display()),
                );
                let text = format!(
                    r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"
lock_timeout = "5s"
compromised_dir = "{flags}"

[cluster]
endpoints = [{endpoints}]
prefix = "/fleet-daemon"
node = "h{i}"
lease_ttl = "3s"
request_timeout = "2s"
fleet_key_file = "{key}"
{fallback}

{issuer}
[certificate.site]
names = ["{NAME}"]
issuer = "pebble"
shared = true
cert_file = "{cert}"
key_file = "{keyf}"
"#,
                    state = hdir.join("state").display(),
                    flags = hdir.join("compromised").display(),
                    // h2 may re-issue alone with etcd down: its 30-day certificates are always
                    // within 60 days of expiry.
                    fallback = if i == 2 {
                        "fallback_before = \"60d\""
                    } else {
                        ""
                    },
                    run = hdir.join("run").display(),
                    key = fleet_key.display(),
                    cert = hdir.join("ssl").join("site.pem").display(),
                    keyf = hdir.join("ssl").join("site.key").display(),
                );
                std::fs::write(&config, text).expect("write config");
                Host {
                    dir: hdir,
                    config,
                    daemon: None,
                }
            })
            .collect();
        Rig {
            _dir: dir,
            etcd,
            pebble,
            hosts,
        }
    }

    fn logs(&self) -> String {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("--- h{i} ---\n{}", h.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every host has the same certificate, other than `not`; returns its serial.
    fn wait_converged(&self, not: Option<&str>, what: &str) -> String {
        let mut serial = None;
        let ok = wait_until(Duration::from_secs(60), || {
            let serials: Vec<Option<String>> = self.hosts.iter().map(Host::serial).collect();
            let first = serials[0].clone();
            let same =
                first.is_some() && serials.iter().all(|s| *s == first) && first.as_deref() != not;
            if same {
                serial = first;
            }
            same
        });
        assert!(ok, "{what}: the hosts did not converge\n{}", self.logs());
        serial.expect("a serial")
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn three_hosts_share_one_order_heal_locally_and_keep_serving_without_etcd() {
    let mut rig = Rig::start(3);
    for h in &mut rig.hosts {
        h.start();
    }
    // First issuance: all three need a certificate; one order, one leaf everywhere.
    let first = rig.wait_converged(None, "first issuance");
    assert_eq!(
        rig.pebble.orders_created(),
        1,
        "one order for the fleet\n{}",
        rig.logs()
    );

    // A key deleted on one host: healed from the published generation, no order.
    std::fs::remove_file(rig.hosts[1].key_file()).expect("delete key");
    let ok = wait_until(Duration::from_secs(30), || rig.hosts[1].key_file().exists());
    assert!(ok, "the key was not healed\n{}", rig.logs());
    assert_eq!(rig.wait_converged(None, "after the heal"), first);
    assert_eq!(
        rig.pebble.orders_created(),
        1,
        "a heal orders nothing\n{}",
        rig.logs()
    );

    // An operator's re-issue on one host: one order, every host on the new leaf.
    let run = run_certagent(&rig.hosts[2].config, &["reissue", "--now", "site"], &[]);
    assert_eq!(run.code, 0, "reissue --now: {}\n{}", run.stderr, rig.logs());
    let second = rig.wait_converged(Some(&first), "after reissue --now");
    assert_ne!(second, first);
    assert_eq!(
        rig.pebble.orders_created(),
        2,
        "one more order\n{}",
        rig.logs()
    );

    // A compromise flagged on one host: one new key and order for the fleet, the old
    // certificate revoked once (by the holder), the old key remembered on every host.
    let purged: Vec<usize> = rig
        .hosts
        .iter()
        .map(|h| h.log().matches("event=quarantined").count())
        .collect();
    let old_key = std::fs::read_to_string(rig.hosts[0].key_file()).expect("key");
    let spki = |pem: &str| {
        certagent::keys::PrivateKey::from_pem(pem)
            .expect("key")
            .spki_sha256()
    };
    let old_spki = spki(&old_key);
    let flags = rig.hosts[1].dir.join("compromised");
    std::fs::write(flags.join("site"), "compromised\n").expect("flag");
    let third = rig.wait_converged(Some(&second), "after the compromise flag");
    // Every host ends its response by purging the old key from its kept generations,
    // after the revocation when it does one: once all have, the count is final.
    let revocations = || -> usize {
        rig.hosts
            .iter()
            .map(|h| h.log().matches("event=revoked").count())
            .sum()
    };
    let ok = wait_until(Duration::from_secs(30), || {
        revocations() >= 1
            && rig
                .hosts
                .iter()
                .zip(&purged)
                .all(|(h, n)| h.log().matches("event=quarantined").count() > *n)
    });
    assert!(
        ok,
        "every host purged the compromised key and one revoked it\n{}",
        rig.logs()
    );
    assert_ne!(third, second);
    assert_eq!(
        rig.pebble.orders_created(),
        3,
        "one order for the compromise\n{}",
        rig.logs()
    );
    let revoked: usize = rig
        .hosts
        .iter()
        .map(|h| h.log().matches("event=revoked").count())
        .sum();
    assert_eq!(
        revoked,
        1,
        "the old certificate is revoked once\n{}",
        rig.logs()
    );
    for (i, h) in rig.hosts.iter().enumerate() {
        let memory = std::fs::read_to_string(h.dir.join("state").join("compromised-keys"))
            .unwrap_or_default();
        assert!(
            memory.contains(&old_spki),
            "h{i} remembers the compromised key\n{}",
            rig.logs()
        );
        let key = std::fs::read_to_string(h.key_file()).expect("key");
        assert_ne!(spki(&key), old_spki, "h{i} serves a new key");
    }
    let second = third;

    // etcd gone: a lost key is healed from the host's own copy; an order is refused.
    rig.etcd.stop_all();
    std::fs::remove_file(rig.hosts[0].key_file()).expect("delete key");
    let ok = wait_until(Duration::from_secs(30), || rig.hosts[0].key_file().exists());
    assert!(ok, "the key was not healed without etcd\n{}", rig.logs());
    assert_eq!(rig.hosts[0].serial().as_deref(), Some(second.as_str()));
    // The generation healed answers a compromise: that response is not run again against
    // the key it installed (which would mark a good key compromised and revoke it).
    let healed_key = std::fs::read_to_string(rig.hosts[0].key_file()).expect("key");
    let memory = std::fs::read_to_string(rig.hosts[0].dir.join("state").join("compromised-keys"))
        .unwrap_or_default();
    assert!(
        !memory.contains(&spki(&healed_key)),
        "the healed key was taken for the compromised one\n{}",
        rig.logs()
    );
    // (On another host: h0's daemon may still be finishing the heal, and a forced re-issue
    // asked for meanwhile is answered by that job's outcome.)
    let run = run_certagent(&rig.hosts[1].config, &["reissue", "--now", "site"], &[]);
    assert!(
        run.code == 2 || run.code == 75,
        "reissue without etcd exits 2 or 75, not {}: {}{}\n{}",
        run.code,
        run.stdout,
        run.stderr,
        rig.logs()
    );
    assert!(
        run.stderr.contains("etcd"),
        "the error names etcd: {}",
        run.stderr
    );
    assert_eq!(rig.pebble.orders_created(), 3, "no order without etcd");

    // ... unless the operator allowed a host to re-issue alone close to expiry: loudly.
    let run = run_certagent(&rig.hosts[2].config, &["reissue", "--now", "site"], &[]);
    assert_eq!(
        run.code,
        0,
        "fallback_before: {}\n{}",
        run.stderr,
        rig.logs()
    );
    assert_eq!(rig.pebble.orders_created(), 4, "one order, alone");
    assert!(
        rig.hosts[2].log().contains("event=fleet-fallback"),
        "the fallback is logged\n{}",
        rig.logs()
    );
    assert_ne!(
        rig.hosts[2].serial(),
        rig.hosts[1].serial(),
        "h2 alone has a new certificate"
    );
}
