//! Rolling back an install that failed after its flip: the previous generation back in place
//! and reloaded — unless it is not a usable pair while the new one is (loading it would take
//! the server down), in which case the new one stays and the failure says why.

use crate::config::Certificate;
use crate::error::Error;
use crate::server::WebServer;
use crate::store::{Flip, Journal, OutcomeKind};

use super::install::check_generation;
use super::{Executor, Stop};

impl Executor {
    /// Flip back to the previous generation, reload if the new one was loaded, and record
    /// it. Returns the error to report (the cause plus what was done about it). A previous
    /// generation that is not a usable pair is not restored when the new one is: loading it
    /// would take the server down (Apache) or fail at the next reload (logrotate's, daily).
    pub(super) async fn rollback(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        server: Option<&WebServer>,
        reloaded: bool,
        cause: Error,
    ) -> Stop {
        let new_usable = check_generation(&self.store.generation(&cert.name, flip.to)).is_ok();
        let previous_unusable = flip.from.and_then(|prev| {
            check_generation(&self.store.generation(&cert.name, prev))
                .err()
                .map(|why| (prev, why))
        });
        if let (true, Some((prev, why))) = (new_usable, previous_unusable) {
            return self.keep_new(cert, journal, flip, cause, prev, &why);
        }
        let notes = self.undo_flip(cert, flip, server, reloaded).await;
        journal.current = flip.from;
        journal.flip = None;
        let message = format!("{cause}; {}", notes.join(", "));
        log::error!(cert = cert.name.as_str(), reason = journal.said(flip.reason), generation = flip.to, event = "rolled-back"; "install failed: {message}");
        let _ = self.record(
            cert,
            journal,
            OutcomeKind::RolledBack,
            flip.reason,
            &message,
            Some(flip.to),
        );
        let hint = cause.hint().unwrap_or(
            "the previous certificate and key are in place; see the web server's error log",
        );
        Stop::RolledBack(Error::msg(message).with_hint(hint))
    }

    /// The new pair is usable and the previous one is not: keep the new one in place (a
    /// failure, not a rollback).
    fn keep_new(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        flip: &Flip,
        cause: Error,
        prev: u64,
        why: &str,
    ) -> Stop {
        let message = format!(
            "{cause}; kept generation {}: the previous generation {prev} is not a usable pair ({why}), restoring it would break the server",
            flip.to
        );
        journal.current = Some(flip.to);
        journal.flip = None;
        log::error!(cert = cert.name.as_str(), reason = journal.said(flip.reason), generation = flip.to, event = "failed"; "install failed: {message}");
        let _ = self.record(
            cert,
            journal,
            OutcomeKind::Failed,
            flip.reason,
            &message,
            Some(flip.to),
        );
        Stop::Failed(
            Error::msg(message).with_hint(
                "the new pair is valid and stays in place; see the web server's error log",
            ),
        )
    }

    /// Flip back (or remove the new files when there was nothing before), and reload if the
    /// new pair was loaded. Returns what was done, for the message.
    async fn undo_flip(
        &self,
        cert: &Certificate,
        flip: &Flip,
        server: Option<&WebServer>,
        reloaded: bool,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let flipped = match flip.from {
            Some(prev) => self
                .store
                .flip(&cert.name, prev)
                .map(|_| format!("rolled back to generation {prev}")),
            None => self
                .store
                .unlink_current(&cert.name)
                .map(|_| "removed the new files (there was nothing before)".into()),
        };
        match flipped {
            Ok(n) => notes.push(n),
            Err(e) => notes.push(format!("ROLLBACK FAILED: {e}")),
        }
        if let (true, Some(server)) = (reloaded, server) {
            match self.load_current(server, cert).await {
                Ok(()) => notes.push("reloaded the previous certificate".into()),
                Err(e) => notes.push(format!("reload after rollback failed: {e}")),
            }
        }
        notes
    }
}
