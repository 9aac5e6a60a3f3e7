//! inotify (through notify) on the directories that hold the configured files, the config and
//! its drop-ins, `compromised_dir` and the blocklists. Directories, not files: a file that is
//! replaced by rename or deleted is seen too. Reads (open/close-nowrite) are filtered out on
//! notify's thread, so certagent's own observations never wake the loop.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::{Error, Result};

/// What an event concerns.
pub(crate) enum Touched {
    Nothing,
    Config,
    Certs(Vec<String>),
    /// A file was completely written into (or moved into) the inbox.
    Inbox,
    /// The kernel dropped events (queue overflow) or a watched directory went away.
    All,
}

pub(crate) struct Watcher {
    inner: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
    files: HashMap<PathBuf, Vec<String>>,
    config_file: PathBuf,
    dropin_dir: PathBuf,
    /// compromised_dir and blocklist files: any change there concerns every certificate.
    global: BTreeSet<PathBuf>,
    inbox: PathBuf,
}

impl Watcher {
    pub(crate) fn new(tx: mpsc::Sender<Event>) -> Result<Watcher> {
        let inner = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let event = match res {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("inotify error, rescanning: {e}");
                    Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
                }
            };
            if matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
                return;
            }
            // A full queue means the loop is behind; it rescans everything anyway.
            let _ = tx.try_send(event);
        })
        .map_err(|e| Error::msg(format!("failed to set up inotify: {e}")))?;
        Ok(Watcher {
            inner,
            watched: BTreeSet::new(),
            files: HashMap::new(),
            config_file: PathBuf::new(),
            dropin_dir: PathBuf::new(),
            global: BTreeSet::new(),
            inbox: PathBuf::new(),
        })
    }

    /// (Re)build the watch list for `config`.
    pub(crate) fn watch(&mut self, config: &Config, config_file: &Path) {
        let files = certificate_files(config);
        let config_file =
            std::path::absolute(config_file).unwrap_or_else(|_| config_file.to_path_buf());
        let config_dir = config_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let dropin_dir = config_dir.join("conf.d");
        let mut global = BTreeSet::new();
        global.insert(config.agent.compromised_dir.clone());
        global.extend(config.agent.key_blocklist.iter().cloned());

        let mut dirs: BTreeSet<PathBuf> = files
            .keys()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.insert(config_dir);
        dirs.insert(dropin_dir.clone());
        dirs.insert(config.agent.compromised_dir.clone());
        let inbox = crate::issuer::manual::inbox_dir(&config.agent.state_dir);
        if config
            .issuers
            .values()
            .any(|i| matches!(i.kind, crate::config::IssuerKind::Manual(_)))
        {
            let _ = crate::store::fsutil::ensure_dir(&inbox, 0o700);
            dirs.insert(inbox.clone());
        }
        dirs.extend(
            config
                .agent
                .key_blocklist
                .iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf)),
        );
        self.watch_only(dirs);
        self.files = files;
        self.config_file = config_file;
        self.dropin_dir = dropin_dir;
        self.global = global;
        self.inbox = inbox;
    }

    /// Watch exactly `dirs` (those that exist): stop watching the others.
    fn watch_only(&mut self, dirs: BTreeSet<PathBuf>) {
        for gone in self.watched.difference(&dirs).cloned().collect::<Vec<_>>() {
            let _ = self.inner.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in dirs {
            if self.watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            match self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => {
                    log::warn!(dir = dir.display().to_string().as_str(); "cannot watch directory: {e}")
                }
            }
        }
    }

    pub(crate) fn classify(&self, event: &Event) -> Touched {
        if event.need_rescan() {
            return Touched::All;
        }
        if event
            .paths
            .iter()
            .any(|p| p.parent() == Some(self.inbox.as_path()))
        {
            return inbox_event(&event.kind);
        }
        let mut names = Vec::new();
        let mut config = false;
        let mut all = false;
        for p in &event.paths {
            if *p == self.config_file
                || (p.parent() == Some(&self.dropin_dir)
                    && p.extension().is_some_and(|x| x == "toml"))
            {
                config = true;
            } else if let Some(certs) = self.files.get(p) {
                names.extend(certs.iter().cloned());
            } else {
                // A flag file or blocklist changed, or a watched directory itself went away.
                let global = self.global.iter().any(|g| p == g || p.parent() == Some(g));
                let dir_gone =
                    self.watched.contains(p) && matches!(event.kind, EventKind::Remove(_));
                all |= global || dir_gone;
            }
        }
        if config {
            Touched::Config
        } else if all {
            Touched::All
        } else if names.is_empty() {
            Touched::Nothing
        } else {
            Touched::Certs(names)
        }
    }
}

/// Every file a certificate is installed to, with the certificates that write it.
fn certificate_files(config: &Config) -> HashMap<PathBuf, Vec<String>> {
    let mut files: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for cert in config.certificates.values() {
        let paths = [
            Some(&cert.cert_file),
            Some(&cert.key_file),
            cert.chain_file.as_ref(),
            cert.leaf_file.as_ref(),
        ];
        for p in paths.into_iter().flatten() {
            files.entry(p.clone()).or_default().push(cert.name.clone());
        }
    }
    files
}

/// An event in the inbox counts once the file is complete: closed after writing, or
/// renamed into place.
fn inbox_event(kind: &EventKind) -> Touched {
    use notify::event::{ModifyKind, RenameMode};
    let complete = matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    );
    if complete {
        Touched::Inbox
    } else {
        Touched::Nothing
    }
}
