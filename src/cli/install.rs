//! `certagent install` and `certagent uninstall`: set certagent up as a systemd service on a
//! host where it came from a tarball or `cargo install` (the packages do the same in their
//! maintainer scripts). Every step looks before it acts and acts only when the host differs,
//! so a second run changes nothing and says `"changed": false`.
//!
//! Nothing here runs a shell; systemd is driven with `systemctl` only when it is PID 1 and the
//! real root is the target (not with `--root`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::{Challenge, Config, ConfigError, DEFAULT_CONFIG, Http01, IssuerKind};
use crate::error::{Context, Error, Result, exit};
use crate::output::{self, InstallDoc, InstallStep, SCHEMA, ServiceReport};
use crate::store::fsutil::{self, Perms};

/// The unit as shipped: the packages install it verbatim; `install` points `ExecStart` at the
/// running binary.
mod host;

use host::Host;

pub(crate) const UNIT: &str = include_str!("../../systemd/certagent.service");
const EXAMPLE: &str = include_str!("../../config.example.toml");

const UNIT_NAME: &str = "certagent.service";
const UNIT_FILE: &str = "/etc/systemd/system/certagent.service";
const PACKAGED_UNITS: [&str; 2] = [
    "/usr/lib/systemd/system/certagent.service",
    "/lib/systemd/system/certagent.service",
];
const DROPIN_DIR: &str = "/etc/systemd/system/certagent.service.d";
const DROPIN: &str = "/etc/systemd/system/certagent.service.d/certificate-paths.conf";
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/certagent.service";
const EXAMPLE_FILE: &str = "/etc/certagent/config.example.toml";
const CONFIG_DIR: &str = "/etc/certagent";
const CERT_DIR: &str = "/etc/ssl/certagent";
/// The shipped unit's command line, which `install` rewrites.
const PACKAGED_EXEC: &str = "ExecStart=/usr/bin/certagent run";

/// Directories `install` creates, and their modes (the packages create the same ones). The
/// unit creates the first and third itself too (`ConfigurationDirectory=`).
const DIRECTORIES: [(&str, u32); 5] = [
    (CONFIG_DIR, 0o700),
    ("/etc/certagent/conf.d", 0o755),
    ("/etc/certagent/credentials", 0o700),
    ("/var/lib/certagent", 0o711),
    (CERT_DIR, 0o755),
];

/// Where the unit lets the service write without a drop-in (StateDirectory,
/// RuntimeDirectory, ReadWritePaths); a unit test keeps this in step with the unit.
const UNIT_WRITABLE: [&str; 4] = [
    "/var/lib/certagent",
    "/run/certagent",
    CERT_DIR,
    "/var/lib/prometheus/node-exporter",
];

#[derive(Args, Debug)]
pub(crate) struct InstallArgs {
    /// Show what would be done; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Treat DIR as the root file system and leave systemd alone (tests, image builds).
    #[arg(long, value_name = "DIR", hide = true)]
    pub(crate) root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct UninstallArgs {
    /// Also remove the configuration, the state directory (the keys and certificates in
    /// service!) and the links to it.
    #[arg(long)]
    pub(crate) purge: bool,
    /// Show what would be done; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print a JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Treat DIR as the root file system and leave systemd alone (tests, image builds).
    #[arg(long, value_name = "DIR", hide = true)]
    pub(crate) root: Option<PathBuf>,
}

/// The configuration the service would run with.
enum Conf {
    Missing,
    Invalid(Vec<ConfigError>),
    Valid(Box<Config>),
}

pub(crate) fn install(config_path: &Path, args: &InstallArgs) -> Result<u8> {
    service_config_only(config_path)?;
    let mut host = Host::new(args.root.as_deref(), args.dry_run)?;
    let packaged = host.packaged_unit();
    let unit = place_unit(&mut host, packaged, args)?;
    for (dir, mode) in DIRECTORIES {
        host.dir(dir, mode)?;
    }
    // The package ships the example as a conffile; dpkg owns that copy.
    if packaged.is_none() {
        host.file(EXAMPLE_FILE, EXAMPLE, 0o644)?;
    }
    let conf = host.config();
    let metrics_dir = place_writable_dirs(&mut host, &conf)?;
    let unit_changed = host.changed_any(&[UNIT_FILE, DROPIN]);
    let restart = unit_changed || metrics_dir.is_some_and(|d| host.changed_any(&[d.as_str()]));
    host.symlink(WANTS_LINK, unit)?;

    let errors = match &conf {
        Conf::Invalid(errors) => errors.clone(),
        _ => Vec::new(),
    };
    let (service, failure) = run_service(&mut host, &conf, args, unit, unit_changed, restart);
    let doc = host.finish(service, errors);
    report(&doc, args.json);
    if let Some(e) = failure {
        eprintln!("certagent: {e}");
        eprintln!("  hint: journalctl -u certagent.service says why");
        return Ok(exit::ERROR);
    }
    Ok(match conf {
        Conf::Invalid(_) => exit::CONFIG,
        _ => exit::OK,
    })
}

/// With systemd running here, reload it and start or restart the service as needed; the
/// report on the service, and the error that kept it from starting.
fn run_service(
    host: &mut Host,
    conf: &Conf,
    args: &InstallArgs,
    unit: &str,
    unit_changed: bool,
    restart: bool,
) -> (ServiceReport, Option<Error>) {
    let mut service = ServiceReport {
        unit: Some(unit.to_string()),
        enabled: true,
        active: None,
        note: not_started_note(conf),
    };
    let mut failure = None;
    if host.systemd {
        if let Err(e) = start_service(host, conf, unit_changed, restart) {
            service.note = Some(e.to_string());
            failure = Some(e);
        }
        service.active = Some(if host.dry_run {
            matches!(conf, Conf::Valid(_)) || host.is_active()
        } else {
            host.is_active()
        });
    } else if service.note.is_none() {
        service.note = Some(if args.root.is_some() {
            "--root: systemd left alone; enabled for the next boot".into()
        } else {
            "systemd is not running here: enabled for the next boot, not started".into()
        });
    }
    (service, failure)
}

/// The unit file: the package's when there is one, else written for the running binary.
fn place_unit(
    host: &mut Host,
    packaged: Option<&'static str>,
    args: &InstallArgs,
) -> Result<&'static str> {
    if let Some(p) = packaged {
        host.record(
            "file",
            p,
            false,
            format!("keep {p}: the unit comes from the package"),
        );
        return Ok(p);
    }
    let exe =
        std::env::current_exe().context("failed to find the path of the running certagent")?;
    // The service would fail with 203/EXEC. (With --root the unit is for another
    // system, where the binary may well be somewhere else.)
    let shown = exe.display().to_string();
    if args.root.is_none() && ["/tmp/", "/var/tmp/"].iter().any(|t| shown.starts_with(t)) {
        return Err(Error::msg(format!(
            "failed to install the unit: certagent runs from {shown:?}, which the service cannot see (PrivateTmp=yes)"
        ))
        .with_hint("move the binary to /usr/local/bin/certagent and run it from there"));
    }
    host.file(UNIT_FILE, &render_unit(&exe)?, 0o644)?;
    Ok(UNIT_FILE)
}

/// For a valid configuration, the drop-in that lets the service write where it is
/// configured to, and the metrics directory, whose path is returned when there is one.
fn place_writable_dirs(host: &mut Host, conf: &Conf) -> Result<Option<String>> {
    let Conf::Valid(config) = conf else {
        return Ok(None);
    };
    match dropin(&extra_writable(config)) {
        Some(text) => host.file(DROPIN, &text, 0o644)?,
        None => host.remove(DROPIN)?,
    };
    // The metrics directory must exist before the service starts: ReadWritePaths= skips a
    // missing one, leaving the file unwritable until the next restart.
    let Some(dir) = config.agent.metrics_file.as_deref().and_then(Path::parent) else {
        return Ok(None);
    };
    let dir = dir.display().to_string();
    host.dir(&dir, 0o755)?;
    Ok(Some(dir))
}

/// Why the service is not started, when the configuration keeps it from starting.
fn not_started_note(conf: &Conf) -> Option<String> {
    match conf {
        Conf::Missing => Some(format!(
            "not started: there is no {DEFAULT_CONFIG} yet, nor a drop-in in conf.d/; write one (see {EXAMPLE_FILE}) or adopt what nginx and Apache serve (`certagent discover > /etc/certagent/conf.d/discovered.toml`), and run `certagent install` again"
        )),
        Conf::Invalid(_) => Some(
            "not started: the configuration is invalid (see `certagent config validate`)".into(),
        ),
        Conf::Valid(_) => None,
    }
}

/// Reload systemd when the unit changed; with a valid configuration, start the service,
/// or restart it when its unit or writable directories changed.
fn start_service(host: &mut Host, conf: &Conf, unit_changed: bool, restart: bool) -> Result<()> {
    if unit_changed {
        host.systemctl(&["daemon-reload"], "reload systemd's view of the unit")?;
    }
    if let Conf::Valid(_) = conf {
        if !host.is_active() {
            host.systemctl(&["start", UNIT_NAME], "start certagent.service")?;
        } else if restart {
            host.systemctl(
                &["restart", UNIT_NAME],
                "restart certagent.service: its unit or the directories it may write changed",
            )?;
        }
    }
    Ok(())
}

pub(crate) fn uninstall(config_path: &Path, args: &UninstallArgs) -> Result<u8> {
    service_config_only(config_path)?;
    let mut host = Host::new(args.root.as_deref(), args.dry_run)?;
    if let Some(p) = host.packaged_unit() {
        return Err(Error::msg(format!(
            "failed to uninstall: certagent was installed from a package (its unit is {p})"
        ))
        .with_hint(
            "remove it with the package manager: apt-get remove certagent (apt-get purge to delete its state too)",
        ));
    }
    // Read before anything is removed: purge needs to know where the state and links are.
    let conf = host.config();
    if host.systemd && host.at(UNIT_FILE).exists() && host.is_active() {
        host.systemctl(&["stop", UNIT_NAME], "stop certagent.service")?;
    }
    host.remove(WANTS_LINK)?;
    host.remove(UNIT_FILE)?;
    host.remove(DROPIN)?;
    host.remove_empty_dir(DROPIN_DIR)?;
    if host.systemd && host.changed_any(&[UNIT_FILE, DROPIN]) {
        host.systemctl(&["daemon-reload"], "reload systemd's view of the units")?;
    }
    if fs::read(host.at(EXAMPLE_FILE)).is_ok_and(|c| c == EXAMPLE.as_bytes()) {
        host.remove(EXAMPLE_FILE)?;
    }
    if args.purge {
        purge(&mut host, &conf)?;
    }
    let service = ServiceReport {
        unit: None,
        enabled: false,
        active: host.systemd.then_some(false),
        note: (!args.purge).then(|| {
            format!("kept the configuration ({CONFIG_DIR}) and the state; --purge removes them")
        }),
    };
    let doc = host.finish(service, Vec::new());
    report(&doc, args.json);
    Ok(exit::OK)
}

/// Remove what certagent made: the links at the configured paths that point into its state,
/// the metrics file, the state and runtime directories, the configuration.
fn purge(host: &mut Host, conf: &Conf) -> Result<()> {
    let defaults;
    let config = match conf {
        Conf::Valid(c) => c,
        _ => {
            let mut errors = Vec::new();
            defaults = Config::parse_sources(&[], &mut errors);
            &defaults
        }
    };
    let live = config.agent.state_dir.join("live");
    for cert in config.certificates.values() {
        let outputs = [
            Some(&cert.cert_file),
            Some(&cert.key_file),
            cert.chain_file.as_ref(),
            cert.leaf_file.as_ref(),
        ];
        for path in outputs.into_iter().flatten() {
            if fs::read_link(host.at(path)).is_ok_and(|t| t.starts_with(&live)) {
                host.remove(path)?;
            }
        }
    }
    if let Some(m) = &config.agent.metrics_file {
        host.remove(m)?;
    }
    for dir in [&config.agent.state_dir, &config.agent.runtime_dir] {
        host.remove_tree_named_certagent(dir)?;
    }
    host.remove_tree_named_certagent(Path::new(CONFIG_DIR))?;
    host.remove_empty_dir(CERT_DIR)
}

/// The service always reads the default configuration (its unit says so).
fn service_config_only(config_path: &Path) -> Result<()> {
    if config_path == Path::new(DEFAULT_CONFIG) {
        return Ok(());
    }
    Err(Error::msg(format!(
        "failed to install: the service reads {DEFAULT_CONFIG}, not {:?}",
        config_path.display().to_string()
    ))
    .with_hint("drop --config (and unset CERTAGENT_CONFIG) for install and uninstall"))
}

/// The shipped unit with `ExecStart` pointing at `exe`. A binary in a home directory (cargo
/// install) is exposed on its own: the unit hides every home directory.
fn render_unit(exe: &Path) -> Result<String> {
    let path = exe
        .to_str()
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
        })
        .ok_or_else(|| {
            Error::msg(format!(
                "failed to install the unit: the path of certagent, {:?}, needs quoting in a unit file",
                exe.display().to_string()
            ))
            .with_hint("move the binary to a plain path such as /usr/local/bin/certagent and run it from there")
        })?;
    let mut unit = UNIT.replacen(PACKAGED_EXEC, &format!("ExecStart={path} run"), 1);
    if ["/home/", "/root/"].iter().any(|h| path.starts_with(h)) {
        unit = unit.replacen(
            "ProtectHome=yes\n",
            &format!(
                "# certagent lives in a home directory: hide them all but expose the binary.\nProtectHome=tmpfs\nBindReadOnlyPaths={path}\n"
            ),
            1,
        );
    }
    Ok(format!(
        "# Installed by `certagent install` (certagent {}); `certagent uninstall` removes it.\n{unit}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The directories the configuration makes certagent write that the unit does not already
/// allow: where the certificate and key links go, ACME webroots, a state, runtime or metrics
/// directory moved elsewhere. Outermost directories only.
pub(crate) fn extra_writable(config: &Config) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    let agent = &config.agent;
    dirs.insert(agent.state_dir.clone());
    dirs.insert(agent.runtime_dir.clone());
    if let Some(dir) = agent.metrics_file.as_deref().and_then(Path::parent) {
        dirs.insert(dir.to_path_buf());
    }
    for cert in config.certificates.values() {
        let outputs = [
            Some(&cert.cert_file),
            Some(&cert.key_file),
            cert.chain_file.as_ref(),
            cert.leaf_file.as_ref(),
        ];
        for dir in outputs.into_iter().flatten().filter_map(|p| p.parent()) {
            dirs.insert(dir.to_path_buf());
        }
    }
    for issuer in config.issuers.values() {
        if let IssuerKind::Acme(acme) = &issuer.kind
            && let Challenge::Http01(Http01::Webroot(root)) = &acme.challenge
        {
            dirs.insert(root.clone());
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    // Sorted by components, so a directory comes before anything inside it.
    for dir in dirs {
        let covered = UNIT_WRITABLE.iter().any(|w| dir.starts_with(w));
        if !covered && !out.iter().any(|o| dir.starts_with(o)) {
            out.push(dir);
        }
    }
    out
}

/// The drop-in granting `dirs` (`None`: nothing to grant). `-`: a directory that does not
/// exist (yet) must not keep the service from starting.
fn dropin(dirs: &[PathBuf]) -> Option<String> {
    if dirs.is_empty() {
        return None;
    }
    let mut text = format!(
        "# Written by `certagent install` from {DEFAULT_CONFIG} (rewritten by every run):\n\
         # directories certagent writes that certagent.service does not already allow.\n\
         [Service]\n"
    );
    for dir in dirs {
        let escaped = dir.display().to_string().replace('%', "%%");
        if escaped.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
            let quoted = escaped.replace('\\', "\\\\").replace('"', "\\\"");
            text.push_str(&format!("ReadWritePaths=\"-{quoted}\"\n"));
        } else {
            text.push_str(&format!("ReadWritePaths=-{escaped}\n"));
        }
    }
    Some(text)
}

fn report(doc: &InstallDoc, json: bool) {
    if json {
        output::print_json(doc);
        return;
    }
    let would = if doc.dry_run { "would " } else { "" };
    for step in doc.steps.iter().filter(|s| s.changed) {
        println!("{would}{}", step.detail);
    }
    if !doc.changed {
        println!("nothing to do");
    }
    let state = match (doc.service.enabled, doc.service.active) {
        (true, Some(true)) => "enabled, running",
        (true, _) => "enabled",
        (false, _) => "not installed",
    };
    println!("certagent.service: {state}");
    if let Some(note) = &doc.service.note {
        println!("  {note}");
    }
    for e in &doc.errors {
        eprintln!("  {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_rewritten_for_the_running_binary() {
        let unit = render_unit(Path::new("/usr/local/bin/certagent")).unwrap();
        assert!(
            unit.contains("\nExecStart=/usr/local/bin/certagent run\n"),
            "{unit}"
        );
        assert!(unit.contains("\nProtectHome=yes\n"), "{unit}");
        let unit = render_unit(Path::new("/root/.cargo/bin/certagent")).unwrap();
        assert!(
            unit.contains("\nProtectHome=tmpfs\nBindReadOnlyPaths=/root/.cargo/bin/certagent\n"),
            "{unit}"
        );
        let err = render_unit(Path::new("/opt/my tools/certagent")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to install the unit: the path of certagent, \"/opt/my tools/certagent\", needs quoting in a unit file"
        );
    }

    #[test]
    fn the_shipped_unit_allows_what_install_assumes() {
        assert!(UNIT.contains(&format!("\n{PACKAGED_EXEC}\n")));
        assert!(UNIT.contains("\nStateDirectory=certagent\n"));
        assert!(UNIT.contains("\nRuntimeDirectory=certagent\n"));
        for dir in &UNIT_WRITABLE[2..] {
            assert!(
                UNIT.contains(&format!("\nReadWritePaths=-{dir}\n")),
                "the unit does not let certagent write {dir}"
            );
        }
    }

    #[test]
    fn the_dropin_grants_exactly_the_directories_the_unit_does_not() {
        let text = r#"
[agent]
metrics_file = "/srv/metrics/certagent.prom"

[issuer.le]
kind = "acme"
directory = "https://acme.test/dir"
webroot = "/var/www/acme"

[certificate.a]
names = ["a.test"]
issuer = "le"
cert_file = "/etc/nginx/ssl/a.pem"
key_file = "/etc/nginx/ssl/private/a.key"

[certificate.b]
names = ["b.test"]
cert_file = "/etc/ssl/certagent/b.pem"
key_file = "/etc/my certs/b.key"
"#;
        let mut errors = Vec::new();
        let config = Config::parse_sources(
            &[(PathBuf::from("/etc/certagent/config.toml"), text.into())],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let dirs = extra_writable(&config);
        assert_eq!(
            dirs,
            [
                "/etc/my certs",
                "/etc/nginx/ssl",
                "/srv/metrics",
                "/var/www/acme"
            ]
            .map(PathBuf::from)
        );
        let dropin = dropin(&dirs).unwrap();
        assert!(
            dropin.ends_with(
                "[Service]\nReadWritePaths=\"-/etc/my certs\"\nReadWritePaths=-/etc/nginx/ssl\nReadWritePaths=-/srv/metrics\nReadWritePaths=-/var/www/acme\n"
            ),
            "{dropin}"
        );
        assert_eq!(super::dropin(&[]), None);
    }
}
