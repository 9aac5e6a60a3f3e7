//! Logging through the `log` facade: journald's native protocol (structured fields
//! `CERTAGENT_*`) when stderr is the journal, else one readable line per event on stderr:
//! `certagent: info: installed certificate cert=site serial=1f generation=3`, the daemon's
//! lines prefixed with the time (`2026-12-03T00:55:00Z certagent: info: ...`).

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// `timestamps`: each line starts with the UTC time (the daemon, when stderr is not the
/// journal, which stamps lines itself).
struct Stderr {
    timestamps: bool,
}

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = value.to_string();
        if v.contains(' ') || v.is_empty() {
            self.0.push_str(&format!(" {key}={v:?}"));
        } else {
            self.0.push_str(&format!(" {key}={v}"));
        }
        Ok(())
    }
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("certagent") {
            return;
        }
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let stamp = if self.timestamps {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            format!("{} ", crate::core::rfc3339(now))
        } else {
            String::new()
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{stamp}certagent: {level}: {}{}",
            record.args(),
            fields.0
        );
    }

    fn flush(&self) {}
}

/// Sends records to the journal with fields renamed `cert` -> `CERTAGENT_CERT`, so an
/// operator can `journalctl CERTAGENT_CERT=site`.
struct Journal(systemd_journal_logger::JournalLog);

struct Collect(Vec<(String, String)>);

impl<'kvs> VisitSource<'kvs> for Collect {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push((
            format!("CERTAGENT_{}", key.as_str().to_ascii_uppercase()),
            value.to_string(),
        ));
        Ok(())
    }
}

impl Log for Journal {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("certagent") {
            return;
        }
        let mut fields = Collect(Vec::new());
        let _ = record.key_values().visit(&mut fields);
        let renamed = Record::builder()
            .args(*record.args())
            .level(record.level())
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .key_values(&fields.0)
            .build();
        let _ = self.0.journal_send(&renamed);
    }

    fn flush(&self) {}
}

/// `daemon`: `certagent run`, whose lines on a terminal or in a log file get timestamps.
/// Whether stderr is the journal is told as systemd tells it (`JOURNAL_STREAM` names
/// stderr's device and inode).
pub fn init(verbosity: u8, quiet: bool, daemon: bool) {
    let level = match (quiet, verbosity) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let logger: Box<dyn Log> = match systemd_journal_logger::connected_to_journal()
        .then(systemd_journal_logger::JournalLog::new)
    {
        Some(Ok(journal)) => Box::new(Journal(journal.with_syslog_identifier("certagent".into()))),
        _ => Box::new(Stderr { timestamps: daemon }),
    };
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
