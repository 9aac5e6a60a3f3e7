//! `certagent install` / `uninstall` against a scratch root (`--root`, which leaves systemd
//! alone): what lands where, with which modes; a second run changes nothing; config.toml is
//! never touched; the drop-in follows the configuration; uninstall keeps state and config
//! unless --purge. The real thing (systemctl enable/start) runs in the container test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

fn certagent(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_certagent"))
        .args(args)
        .arg("--root")
        .arg(root)
        .env_remove("CERTAGENT_CONFIG")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn changed_targets(doc: &serde_json::Value) -> Vec<String> {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["changed"] == true)
        .map(|s| s["target"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn install_puts_everything_in_place_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    let dry = certagent(root, &["install", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    let doc = dry.json();
    assert_eq!(
        (doc["changed"].clone(), doc["dry_run"].clone()),
        (true.into(), true.into())
    );
    assert!(
        std::fs::read_dir(root).unwrap().next().is_none(),
        "--dry-run wrote something"
    );

    let first = certagent(root, &["install", "--json"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let doc = first.json();
    assert_eq!(doc["changed"], true);
    assert_eq!(
        changed_targets(&doc),
        changed_targets(&dry.json()),
        "--dry-run announced exactly what install then did"
    );
    assert_eq!(doc["service"]["enabled"], true);
    assert_eq!(doc["service"]["active"], serde_json::Value::Null);
    assert!(
        doc["service"]["note"]
            .as_str()
            .unwrap()
            .starts_with("not started: there is no /etc/certagent/config.toml yet"),
        "{doc}"
    );

    let unit = std::fs::read_to_string(root.join("etc/systemd/system/certagent.service")).unwrap();
    let exec = format!("\nExecStart={} run\n", env!("CARGO_BIN_EXE_certagent"));
    assert!(unit.contains(&exec), "{unit}");
    assert_eq!(
        std::fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants/certagent.service")
        )
        .unwrap(),
        Path::new("/etc/systemd/system/certagent.service")
    );
    for (dir, want) in [
        ("etc/certagent", 0o700),
        ("etc/certagent/conf.d", 0o755),
        ("etc/certagent/credentials", 0o700),
        ("var/lib/certagent", 0o711),
        ("etc/ssl/certagent", 0o755),
    ] {
        assert_eq!(mode(&root.join(dir)), want, "{dir}");
    }
    assert_eq!(
        std::fs::read_to_string(root.join("etc/certagent/config.example.toml")).unwrap(),
        include_str!("../../config.example.toml")
    );
    assert!(!root.join("etc/certagent/config.toml").exists());

    let again = certagent(root, &["install", "--json"]);
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["changed"], false, "{}", again.stdout);
    let text = certagent(root, &["install"]);
    assert!(
        text.stdout.starts_with("nothing to do\n"),
        "{}",
        text.stdout
    );
}

#[test]
fn the_configuration_decides_the_dropin_and_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = root.join("etc/certagent/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let text = "[certificate.site]\nnames = [\"site.test\"]\ncert_file = \"/etc/nginx/ssl/site.pem\"\nkey_file = \"/etc/nginx/ssl/site.key\"\n";
    std::fs::write(&config, text).unwrap();
    // The directories the certificates go into exist (validation refuses them otherwise).
    std::fs::create_dir_all(root.join("etc/nginx/ssl")).unwrap();

    let first = certagent(root, &["install", "--json"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    let dropin = root.join("etc/systemd/system/certagent.service.d/certificate-paths.conf");
    let granted = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        granted.ends_with("[Service]\nReadWritePaths=-/etc/nginx/ssl\n"),
        "{granted}"
    );
    assert_eq!(
        certagent(root, &["install", "--json"]).json()["changed"],
        false
    );

    // Certificates moved into the directory the unit already allows: no drop-in needed.
    std::fs::write(
        &config,
        text.replace("/etc/nginx/ssl", "/etc/ssl/certagent"),
    )
    .unwrap();
    let moved = certagent(root, &["install", "--json"]).json();
    assert_eq!(
        changed_targets(&moved),
        ["/etc/systemd/system/certagent.service.d/certificate-paths.conf"]
    );
    assert!(!dropin.exists());

    // An invalid configuration: files in place, service not started, exit 78 with the errors.
    std::fs::write(
        root.join("etc/certagent/conf.d/bad.toml"),
        "[certificate.x]\nnames = 1\n",
    )
    .unwrap();
    let invalid = certagent(root, &["install", "--json"]);
    assert_eq!(invalid.code, 78, "{}{}", invalid.stdout, invalid.stderr);
    let doc = invalid.json();
    assert_eq!(doc["changed"], false);
    assert!(
        doc["errors"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("conf.d/bad.toml"),
        "{doc}"
    );
}

#[test]
fn uninstall_keeps_state_and_config_and_purge_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    assert_eq!(certagent(root, &["install"]).code, 0);
    let config = root.join("etc/certagent/config.toml");
    std::fs::write(&config, "[agent]\nkeep_generations = 2\n").unwrap();
    std::fs::write(root.join("var/lib/certagent/marker"), "state").unwrap();
    // A link certagent made, into its state, for a configured certificate: purge removes it.
    std::fs::write(
        root.join("etc/certagent/conf.d/site.toml"),
        "[certificate.site]\nnames = [\"site.test\"]\ncert_file = \"/etc/ssl/certagent/site.pem\"\nkey_file = \"/etc/ssl/certagent/site.key\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/var/lib/certagent/live/site/current/key.pem",
        root.join("etc/ssl/certagent/site.key"),
    )
    .unwrap();

    let removed = certagent(root, &["uninstall", "--json"]);
    assert_eq!(removed.code, 0, "{}{}", removed.stdout, removed.stderr);
    assert_eq!(
        changed_targets(&removed.json()),
        [
            "/etc/systemd/system/multi-user.target.wants/certagent.service",
            "/etc/systemd/system/certagent.service",
            "/etc/certagent/config.example.toml",
        ]
    );
    assert!(config.exists() && root.join("var/lib/certagent/marker").exists());
    assert_eq!(
        certagent(root, &["uninstall", "--json"]).json()["changed"],
        false
    );

    let purged = certagent(root, &["uninstall", "--purge", "--json"]);
    assert_eq!(purged.code, 0, "{}{}", purged.stdout, purged.stderr);
    assert_eq!(
        changed_targets(&purged.json()),
        [
            "/etc/ssl/certagent/site.key",
            "/var/lib/certagent",
            "/etc/certagent",
            "/etc/ssl/certagent",
        ]
    );
    for gone in ["etc/certagent", "var/lib/certagent", "etc/ssl/certagent"] {
        assert!(!root.join(gone).exists(), "{gone} survived the purge");
    }
    assert_eq!(
        certagent(root, &["uninstall", "--purge", "--json"]).json()["changed"],
        false
    );
}

#[test]
fn a_packaged_unit_is_left_to_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let packaged = root.join("usr/lib/systemd/system/certagent.service");
    std::fs::create_dir_all(packaged.parent().unwrap()).unwrap();
    std::fs::write(&packaged, "[Unit]\n").unwrap();
    let run = certagent(root, &["install", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!root.join("etc/systemd/system/certagent.service").exists());
    assert!(!root.join("etc/certagent/config.example.toml").exists());
    assert_eq!(
        std::fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants/certagent.service")
        )
        .unwrap(),
        Path::new("/usr/lib/systemd/system/certagent.service")
    );
    let refused = certagent(root, &["uninstall"]);
    assert_eq!(refused.code, 2);
    assert_eq!(
        refused.stderr,
        "certagent: failed to uninstall: certagent was installed from a package (its unit is /usr/lib/systemd/system/certagent.service)\n  hint: remove it with the package manager: apt-get remove certagent (apt-get purge to delete its state too)\n"
    );
}

#[test]
fn the_metrics_directory_exists_before_the_service_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc/certagent")).unwrap();
    std::fs::write(
        root.join("etc/certagent/config.toml"),
        "[agent]\nmetrics_file = \"/srv/metrics/certagent.prom\"\n",
    )
    .unwrap();
    let run = certagent(root, &["install", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(mode(&root.join("srv/metrics")), 0o755);
    let granted = std::fs::read_to_string(
        root.join("etc/systemd/system/certagent.service.d/certificate-paths.conf"),
    )
    .unwrap();
    assert!(
        granted.ends_with("ReadWritePaths=-/srv/metrics\n"),
        "{granted}"
    );
    assert_eq!(
        certagent(root, &["install", "--json"]).json()["changed"],
        false
    );
}
