//! The host `install` and `uninstall` change: every file, directory, link and systemctl call
//! goes through here, so `--dry-run` announces exactly what the real run does and `--root`
//! redirects all of it to a scratch tree.

use super::*;

/// The host being installed on, and the log of what was (or would be) done.
pub(super) struct Host {
    pub(super) root: PathBuf,
    /// systemd runs here and `root` is the real root: use systemctl.
    pub(super) systemd: bool,
    pub(super) dry_run: bool,
    pub(super) steps: Vec<InstallStep>,
}

impl Host {
    pub(super) fn new(root: Option<&Path>, dry_run: bool) -> Result<Host> {
        let root = root.unwrap_or(Path::new("/")).to_path_buf();
        if !root.is_absolute() || !root.is_dir() {
            return Err(Error::msg(format!(
                "failed to install: --root {:?} is not an absolute path to a directory",
                root.display().to_string()
            )));
        }
        let systemd = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
        Ok(Host {
            root,
            systemd,
            dry_run,
            steps: Vec::new(),
        })
    }

    /// `path` (absolute, as the service sees it) on the target root.
    pub(super) fn at(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    pub(super) fn packaged_unit(&self) -> Option<&'static str> {
        PACKAGED_UNITS.into_iter().find(|p| self.at(p).exists())
    }

    pub(super) fn config(&self) -> Conf {
        let path = self.at(DEFAULT_CONFIG);
        // Drop-ins without config.toml are a configuration too (see `Config::load`).
        let dropins = path.with_file_name("conf.d");
        let any_dropin = std::fs::read_dir(&dropins).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "toml"))
        });
        if !path.exists() && !any_dropin {
            return Conf::Missing;
        }
        match Config::load_under(&path, &self.root) {
            Ok(c) => Conf::Valid(Box::new(c)),
            Err(e) => Conf::Invalid(e.0),
        }
    }

    pub(super) fn record(
        &mut self,
        action: &str,
        target: impl AsRef<Path>,
        changed: bool,
        detail: String,
    ) {
        self.steps.push(InstallStep {
            action: action.into(),
            target: target.as_ref().display().to_string(),
            changed,
            detail,
        });
    }

    pub(super) fn changed_any(&self, targets: &[&str]) -> bool {
        self.steps
            .iter()
            .any(|s| s.changed && targets.contains(&s.target.as_str()))
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let on_root = self.at(path);
        if on_root.is_dir() {
            self.record("directory", path, false, format!("keep {path}"));
            return Ok(());
        }
        if !self.dry_run {
            let what = || format!("failed to create {path:?}");
            if let Some(parent) = on_root.parent() {
                fs::create_dir_all(parent).with_context(what)?;
            }
            fs::DirBuilder::new()
                .mode(mode)
                .create(&on_root)
                .with_context(what)?;
            fs::set_permissions(&on_root, fs::Permissions::from_mode(mode)).with_context(what)?;
        }
        self.record(
            "directory",
            path,
            true,
            format!("create directory {path} ({mode:04o})"),
        );
        Ok(())
    }

    pub(super) fn file(&mut self, path: &str, content: &str, mode: u32) -> Result<()> {
        let on_root = self.at(path);
        let old = fs::read(&on_root).ok();
        let mode_now = fs::metadata(&on_root)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
        if old.as_deref() == Some(content.as_bytes()) && mode_now == Some(mode) {
            self.record("file", path, false, format!("keep {path}"));
            return Ok(());
        }
        if !self.dry_run {
            if let Some(parent) = on_root.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create the directory of {path:?}"))?;
            }
            fsutil::replace_file(&on_root, content.as_bytes(), Perms::mode(mode))?;
        }
        let verb = if old.is_some() { "update" } else { "write" };
        self.record("file", path, true, format!("{verb} {path}"));
        Ok(())
    }

    pub(super) fn symlink(&mut self, link: &str, target: &str) -> Result<()> {
        let on_root = self.at(link);
        if fs::read_link(&on_root).is_ok_and(|t| t == Path::new(target)) {
            self.record("symlink", link, false, format!("keep {link}"));
            return Ok(());
        }
        if !self.dry_run {
            if let Some(parent) = on_root.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create the directory of {link:?}"))?;
            }
            fsutil::replace_symlink(&on_root, Path::new(target))?;
        }
        self.record(
            "symlink",
            link,
            true,
            format!("enable certagent.service ({link} -> {target})"),
        );
        Ok(())
    }

    /// Remove a file or symlink, if there is one.
    pub(super) fn remove(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let on_root = self.at(path);
        if fs::symlink_metadata(&on_root).is_err() {
            return Ok(());
        }
        if !self.dry_run {
            fs::remove_file(&on_root)
                .with_context(|| format!("failed to remove {:?}", path.display().to_string()))?;
        }
        self.record("remove", path, true, format!("remove {}", path.display()));
        Ok(())
    }

    pub(super) fn remove_empty_dir(&mut self, path: &str) -> Result<()> {
        let on_root = self.at(path);
        let empty = fs::read_dir(&on_root).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Ok(());
        }
        if !self.dry_run {
            fs::remove_dir(&on_root).with_context(|| format!("failed to remove {path:?}"))?;
        }
        self.record("remove", path, true, format!("remove directory {path}"));
        Ok(())
    }

    /// Remove a whole directory tree, but only one whose name says it is certagent's: a
    /// `state_dir = "/var"` typo must not cost the machine.
    pub(super) fn remove_tree_named_certagent(&mut self, path: &Path) -> Result<()> {
        let on_root = self.at(path);
        if fs::symlink_metadata(&on_root).is_err() {
            return Ok(());
        }
        let shown = path.display().to_string();
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("certagent"));
        if !ours {
            self.record(
                "remove",
                path,
                false,
                format!(
                    "keep {shown}: its name does not say it is certagent's; remove it yourself"
                ),
            );
            return Ok(());
        }
        if !self.dry_run {
            fs::remove_dir_all(&on_root).with_context(|| format!("failed to remove {shown:?}"))?;
        }
        self.record(
            "remove",
            path,
            true,
            format!("remove {shown} and everything in it"),
        );
        Ok(())
    }

    pub(super) fn systemctl(&mut self, args: &[&str], detail: &str) -> Result<()> {
        let verb = args.join(" ");
        if !self.dry_run {
            let (status, stderr) =
                crate::child::stderr_tail(crate::child::std_command("systemctl").args(args))
                    .with_context(|| format!("failed to run systemctl {verb}"))?;
            if !status.success() {
                let stderr = String::from_utf8_lossy(&stderr);
                return Err(Error::msg(format!(
                    "failed to {detail}: systemctl {verb}: {}",
                    stderr.trim()
                )));
            }
        }
        self.steps.push(InstallStep {
            action: "systemctl".into(),
            target: verb,
            changed: true,
            detail: detail.to_string(),
        });
        Ok(())
    }

    pub(super) fn is_active(&self) -> bool {
        self.systemd
            && crate::child::std_command("systemctl")
                .args(["is-active", "--quiet", UNIT_NAME])
                .status()
                .is_ok_and(|s| s.success())
    }

    pub(super) fn finish(self, service: ServiceReport, errors: Vec<ConfigError>) -> InstallDoc {
        InstallDoc {
            schema: SCHEMA,
            changed: self.steps.iter().any(|s| s.changed),
            dry_run: self.dry_run,
            steps: self.steps,
            service,
            errors,
        }
    }
}
