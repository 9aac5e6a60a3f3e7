//! HAProxy (`kind = "haproxy"`, a real Debian haproxy in master-worker mode on loopback)
//! serving a `bundle_file` (key + leaf + chain): re-issued and reloaded through the master's
//! pid file; re-issued and hot-swapped through the runtime API with no reload (same workers);
//! a swap HAProxy refuses rolled back with the old certificate still served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{
    Haproxy, Leaf, TlsCa, cert_serial_hex, reserved_port, run_certagent, served_leaf,
    spki_of_cert_der, spki_of_key_pem,
};

const NAME: &str = "lb.test";

struct Rig {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    initial: Leaf,
    haproxy: Haproxy,
}

/// HAProxy serving a test CA's leaf for lb.test from `ssl/lb.bundle.pem`; the same pair also
/// as `ssl/lb.pem` and `ssl/lb.key`.
fn rig() -> Rig {
    rig_with_decoy(None)
}

/// [`rig`], with a second frontend on `decoy` serving another leaf for lb.test from a bundle
/// of its own, which certagent never touches.
fn rig_with_decoy(decoy: Option<u16>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ca = TlsCa::new(&dir.path().join("testca"));
    let ssl = dir.path().join("ssl");
    std::fs::create_dir_all(&ssl).unwrap();
    let now = SystemTime::now();
    let initial = ca.issue_leaf(
        &[NAME],
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(60 * 86_400),
    );
    let (cert, key, bundle) = (
        ssl.join("lb.pem"),
        ssl.join("lb.key"),
        ssl.join("lb.bundle.pem"),
    );
    initial.write(&cert, &key);
    std::fs::write(&bundle, format!("{}{}", initial.key_pem, initial.cert_pem)).unwrap();
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o600)).unwrap();
    let decoy_bundle = ssl.join("decoy.bundle.pem");
    let other = ca.issue_leaf(
        &[NAME],
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(60 * 86_400),
    );
    std::fs::write(
        &decoy_bundle,
        format!("{}{}", other.key_pem, other.cert_pem),
    )
    .unwrap();
    let more: Vec<(u16, &std::path::Path)> =
        decoy.iter().map(|p| (*p, decoy_bundle.as_path())).collect();
    let haproxy = Haproxy::start(&dir.path().join("haproxy"), reserved_port(), &bundle, &more);
    Rig {
        dir,
        cert,
        key,
        bundle,
        initial,
        haproxy,
    }
}

impl Rig {
    /// `server_extra` goes into `[server.lb]` (pid_file or runtime_socket).
    fn write_config(&self, server_extra: &str) -> PathBuf {
        self.write_config_verifying(&self.haproxy.addr(), server_extra)
    }

    fn write_config_verifying(&self, verify: &str, server_extra: &str) -> PathBuf {
        let d = self.dir.path();
        let text = format!(
            r#"[agent]
state_dir = "{state}"
runtime_dir = "{run}"

[server.lb]
kind = "haproxy"
verify = ["{addr}"]
test_command = {test}
verify_timeout = "5s"
{server_extra}

[certificate.lb]
names = ["{NAME}"]
issuer = "internal"
server = "lb"
cert_file = "{cert}"
key_file = "{key}"
bundle_file = "{bundle}"
"#,
            state = d.join("state").display(),
            run = d.join("run").display(),
            addr = verify,
            test = common::toml_list(&self.haproxy.test_command()),
            cert = self.cert.display(),
            key = self.key.display(),
            bundle = self.bundle.display(),
        );
        let config = d.join("config.toml");
        std::fs::write(&config, text).unwrap();
        config
    }

    fn served(&self) -> Vec<u8> {
        served_leaf(&self.haproxy.addr(), NAME).expect("haproxy answers")
    }

    /// The bundle as HAProxy reads it: the key file's key, then the certificate file's chain.
    fn assert_bundle_is_key_and_chain(&self) {
        let bundle = std::fs::read_to_string(&self.bundle).unwrap();
        let key = std::fs::read_to_string(&self.key).unwrap();
        let chain = std::fs::read_to_string(&self.cert).unwrap();
        assert_eq!(bundle, format!("{key}{chain}"));
        assert!(
            std::fs::symlink_metadata(&self.bundle)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = std::fs::metadata(&self.bundle)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn haproxy_is_reloaded_through_its_master_and_serves_the_new_bundle() {
    let rig = rig();
    assert_eq!(rig.served(), rig.initial.cert_der);
    let workers = rig.haproxy.workers();
    let config = rig.write_config(&format!(
        "pid_file = \"{}\"",
        rig.haproxy.pid_file().display()
    ));
    let run = run_certagent(&config, &["reissue", "--now", "lb", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.haproxy.log());
    let serial = run.json()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let served = rig.served();
    assert_eq!(cert_serial_hex(&served), serial);
    assert_eq!(
        spki_of_cert_der(&served),
        spki_of_key_pem(&std::fs::read_to_string(&rig.key).unwrap())
    );
    rig.assert_bundle_is_key_and_chain();
    // A reload: the same master, a new worker.
    assert!(common::pid_alive(rig.haproxy.master_pid()));
    assert!(
        rig.haproxy.workers().iter().any(|w| !workers.contains(w)),
        "{:?} → {:?}",
        workers,
        rig.haproxy.workers()
    );
}

#[test]
fn haproxy_gets_the_new_bundle_through_its_runtime_api_without_a_reload() {
    let rig = rig();
    let workers = rig.haproxy.workers();
    let config = rig.write_config(&format!(
        "runtime_socket = \"{}\"",
        rig.haproxy.runtime_socket().display()
    ));
    let run = run_certagent(&config, &["reissue", "--now", "lb", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.haproxy.log());
    let serial = run.json()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cert_serial_hex(&rig.served()), serial);
    rig.assert_bundle_is_key_and_chain();
    // No reload: the worker that served the old certificate serves the new one.
    assert_eq!(rig.haproxy.workers(), workers);

    // A second re-issue swaps again (the transaction names the same crt path).
    let run = run_certagent(&config, &["reissue", "--now", "lb", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.haproxy.log());
    let second = run.json()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, serial);
    assert_eq!(cert_serial_hex(&rig.served()), second);
    assert_eq!(rig.haproxy.workers(), workers);
}

#[test]
fn a_certificate_on_a_runtime_socket_needs_a_bundle_file() {
    let rig = rig();
    let config = rig.write_config("runtime_socket = \"/run/haproxy/admin.sock\"");
    let text = std::fs::read_to_string(&config).unwrap();
    let bundle_line = format!("bundle_file = \"{}\"\n", rig.bundle.display());
    std::fs::write(&config, text.replace(&bundle_line, "")).unwrap();
    let run = run_certagent(&config, &["config", "validate"], &[]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.contains("certificate.lb.bundle_file: missing; server \"lb\" swaps certificates through its runtime_socket, which needs the bundle HAProxy loaded"),
        "{run:?}"
    );
}

/// HAProxy refuses the swap (failpoint `haproxy-foreign-key`: the bundle sent carries another
/// key): the transaction is aborted, the old generation is back, HAProxy serves the old leaf.
#[cfg(feature = "failpoints")]
#[test]
fn a_swap_haproxy_refuses_is_rolled_back() {
    let rig = rig();
    let old_cert = std::fs::read(&rig.cert).unwrap();
    let old_key = std::fs::read(&rig.key).unwrap();
    let config = rig.write_config(&format!(
        "runtime_socket = \"{}\"",
        rig.haproxy.runtime_socket().display()
    ));
    let run = run_certagent(
        &config,
        &["reissue", "--now", "lb", "--json"],
        &[("CERTAGENT_FAILPOINT", "haproxy-foreign-key")],
    );
    assert_eq!(run.code, 2, "{run:?}\n{}", rig.haproxy.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "rolled-back");
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "hot swap on server \"lb\" failed: HAProxy refused `commit ssl cert {}`",
            rig.bundle.display()
        )) && error.contains("inconsistencies between private key and certificate")
            && error.ends_with("; rolled back to generation 0"),
        "{error}"
    );
    assert_eq!(std::fs::read(&rig.cert).unwrap(), old_cert);
    assert_eq!(std::fs::read(&rig.key).unwrap(), old_key);
    assert_eq!(rig.served(), rig.initial.cert_der);
    rig.assert_bundle_is_key_and_chain();
}

/// The swap succeeds but the endpoint probed (a second frontend with a bundle of its own)
/// never shows the new leaf: the rollback swaps the previous bundle back through the runtime
/// API, so the frontend that had taken the new leaf serves the old one again, with no reload.
#[test]
fn a_swapped_certificate_not_served_is_swapped_back() {
    let decoy = reserved_port();
    let rig = rig_with_decoy(Some(decoy));
    let workers = rig.haproxy.workers();
    let config = rig.write_config_verifying(
        &format!("127.0.0.1:{decoy}"),
        &format!(
            "runtime_socket = \"{}\"\nverify_settle = \"0s\"",
            rig.haproxy.runtime_socket().display()
        ),
    );
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("verify_timeout = \"5s\"", "verify_timeout = \"1s\""),
    )
    .unwrap();
    let run = run_certagent(&config, &["reissue", "--now", "lb", "--json"], &[]);
    assert_eq!(run.code, 2, "{run:?}\n{}", rig.haproxy.log());
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "rolled-back");
    let error = doc["certificates"][0]["error"].as_str().unwrap();
    assert!(
        error.ends_with("; rolled back to generation 0, reloaded the previous certificate"),
        "{error}"
    );
    // The log shows the new leaf was swapped in (twice: the retry) before being swapped out.
    assert!(
        run.stderr
            .contains("new certificate not served after reload"),
        "{run:?}"
    );
    assert_eq!(rig.served(), rig.initial.cert_der);
    assert_eq!(rig.haproxy.workers(), workers);
}
