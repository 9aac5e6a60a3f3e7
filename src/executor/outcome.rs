//! How the executor's work ends, as types: the caller (`ops`) makes the JSON document from an
//! `Outcome` once, and the daemon schedules from it, without reading strings or the journal.

use crate::config::Certificate;
use crate::core::{Reason, Timestamp};
use crate::error::Error;

/// A certificate the transaction installed.
#[derive(Debug)]
pub(crate) struct Installed {
    /// Why this certificate was issued, as journalled: a resumed re-issue keeps its own
    /// reason, and a compromised key in service makes any re-issue a compromise response.
    pub(crate) reason: Reason,
    pub(crate) generation: u64,
    pub(crate) serial: String,
    pub(crate) not_after: Timestamp,
    pub(crate) loaded: bool,
    /// The post_install hook failed (the certificate is installed all the same).
    pub(crate) hook_error: Option<Error>,
    /// The ACME profile it was issued under (`None`: none).
    pub(crate) profile: Option<String>,
    /// The configured issuer it came from (of a failover list, the one that issued it).
    pub(crate) issuer: Option<String>,
}

/// Waiting on the CA or on a human (an approval e-mail); the old certificate stays in service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) message: String,
    /// When to look again (seconds), if the issuer knows.
    pub(crate) retry_in: Option<i64>,
    /// Something a human should hear about (a new CSR to submit, a reminder).
    pub(crate) news: bool,
}

/// How one piece of executor work ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Installed and proven served (or installed where there is no server to load it).
    Installed(Installed),
    /// Installed, but the web server is not running, so nothing loaded it.
    InstalledNotLoaded(Installed),
    /// Not a failure: the re-issue waits on the CA or a human and resumes later.
    Pending(Waiting),
    /// Nothing new serves; the certificate in service is unchanged (or, when the previous
    /// generation was unusable, the new one was kept).
    Failed(Error),
    /// The new generation was flipped in and failed its test, reload or proof; the previous
    /// one was flipped back.
    RolledBack(Error),
    /// Journalled work (an interrupted install, a compromise response) is done, or there was
    /// none.
    Finished,
    FinishFailed(Error),
    /// The CA's view (CRL, ARI) was fetched and journalled.
    Refreshed,
    RefreshFailed(Error),
    /// The kept generations have the configured access; `changed` files were changed.
    PermissionsFixed {
        changed: usize,
    },
    PermissionsFailed(Error),
}

impl Outcome {
    /// The outcome of an install attempt. "Not loaded" is only said of a certificate that
    /// has a server to load it.
    pub(super) fn of(cert: &Certificate, attempt: Attempt) -> Outcome {
        match attempt {
            Ok(i) if i.loaded || cert.server.is_none() => Outcome::Installed(i),
            Ok(i) => Outcome::InstalledNotLoaded(i),
            Err(Stop::Pending(w)) => Outcome::Pending(w),
            Err(Stop::Failed(e)) => Outcome::Failed(e),
            Err(Stop::RolledBack(e)) => Outcome::RolledBack(e),
        }
    }

    /// The error that ended the work (for an install: the failed post_install hook).
    pub(crate) fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Installed(i) | Outcome::InstalledNotLoaded(i) => i.hook_error.as_ref(),
            Outcome::Failed(e)
            | Outcome::RolledBack(e)
            | Outcome::FinishFailed(e)
            | Outcome::RefreshFailed(e)
            | Outcome::PermissionsFailed(e) => Some(e),
            Outcome::Pending(_)
            | Outcome::Finished
            | Outcome::Refreshed
            | Outcome::PermissionsFixed { .. } => None,
        }
    }
}

/// Why an install attempt stopped short. Any `Error` converts (`?`); an issuer's
/// `Error::Pending` becomes `Stop::Pending`, which is not a failure.
#[derive(Debug)]
pub(super) enum Stop {
    Pending(Waiting),
    Failed(Error),
    RolledBack(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        match e {
            Error::Pending {
                message,
                retry_in,
                news,
            } => Stop::Pending(Waiting {
                message,
                retry_in,
                news,
            }),
            e => Stop::Failed(e),
        }
    }
}

impl Stop {
    pub(super) fn into_error(self) -> Error {
        match self {
            Stop::Pending(w) => Error::Pending {
                message: w.message,
                retry_in: w.retry_in,
                news: w.news,
            },
            Stop::Failed(e) | Stop::RolledBack(e) => e,
        }
    }
}

/// An install attempt: what was installed, or why not.
pub(super) type Attempt = Result<Installed, Stop>;
